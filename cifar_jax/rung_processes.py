"""The ladder's rungs trained side by side, each a `cifar_jax.main` process.

For `python -m cifar_jax.ladder --parallel N`: up to N rungs at once, a
rung that continues another (deep_adam_aug) only after it, each with its
output in `<root>/<rung>/log.txt`; SIGTERM or Ctrl-C stops them all, each
saving a checkpoint.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import ml_collections

from cifar_jax.errors import Preempted
from cifar_jax.errors import UserError
from cifar_jax.reporting import seed_notebook


class RungProcesses:
  """Trains rungs as `python -m cifar_jax.main` processes, N at a time."""

  def __init__(
      self,
      configs: dict[str, ml_collections.ConfigDict],
      config_files: dict[str, str],
      overrides: list[tuple[str, str]],
      root: str,
      parallel: int,
      out,
  ):
    self.configs, self.overrides, self.root = configs, overrides, root
    self.config_files = config_files  # Each rung's configs/<rung>.py.
    self.parallel, self.out = parallel, out
    self.waits_for = {
        name: parent
        for name in configs
        if (parent := seed_notebook.load(name).continues_from) in configs
    }
    self.env = {'XLA_PYTHON_CLIENT_MEM_FRACTION': f'{0.9 / parallel:.3f}',
                **os.environ}  # fmt: skip
    self.pending = list(configs)
    self.running = {}  # name -> (Popen, log file, start time)
    self.done, self.failed = set(), {}

  def run(self) -> dict[str, list[dict]]:
    """Trains every rung; returns their histories.

    SIGTERM or Ctrl-C stops the running rungs (each saves a checkpoint, as
    `main` does when preempted), so the same command resumes the ladder.
    """
    previous = {}
    if threading.current_thread() is threading.main_thread():
      previous = {
          s: signal.signal(s, self._stop)
          for s in (signal.SIGTERM, signal.SIGINT)
      }
    try:
      while self.pending or self.running:
        self._reap()
        self._start_ready()
        time.sleep(0.2)
    finally:
      for s, handler in previous.items():
        signal.signal(s, handler)
      for proc, _, _ in self.running.values():
        proc.send_signal(signal.SIGTERM)
      for proc, log, _ in self.running.values():
        proc.wait()
        log.close()
    if self.failed:
      raise UserError(
          f'Rungs failed: {sorted(self.failed)}; their logs are '
          f'in {self.root}/<rung>/log.txt.'
      )
    histories = {}
    for name in self.configs:
      with open(os.path.join(self.root, name, 'history.json')) as f:
        histories[name] = json.load(f)
    return histories

  def _stop(self, signum, unused_frame):
    raise Preempted(
        f'Stopped by {signal.Signals(signum).name}: the running '
        'rungs saved checkpoints. Run the same command to resume.',
        128 + signum,
    )

  def _print(self, text: str) -> None:
    print(f'=== {text}', file=self.out, flush=True)

  def _reap(self) -> None:
    for name, (proc, log, started) in list(self.running.items()):
      if proc.poll() is None:
        continue
      log.close()
      del self.running[name]
      seconds = time.monotonic() - started
      if proc.returncode:
        self.failed[name] = proc.returncode
        self._print(
            f'{name} failed (exit {proc.returncode}) after '
            f'{seconds:.0f} s; see {log.name}'
        )
      else:
        self.done.add(name)
        self._print(f'{name} finished in {seconds:.0f} s')

  def _start_ready(self) -> None:
    for name in list(self.pending):
      before = self.waits_for.get(name)
      if before in self.failed:
        self.pending.remove(name)
        self.failed[name] = None
        self._print(f'{name} skipped: {before} failed')
      elif len(self.running) < self.parallel and (
          before is None or before in self.done
      ):
        self.pending.remove(name)
        self._start(name)

  def _start(self, name: str) -> None:
    config = self.configs[name]
    workdir = os.path.join(self.root, name)
    os.makedirs(workdir, exist_ok=True)
    args = [sys.executable, '-m', 'cifar_jax.main', '--config',
            self.config_files[name], '--workdir', workdir,
            f'--config.num_epochs={config.num_epochs:g}']  # fmt: skip
    args += [f'--config.{k}={v}' for k, v in self.overrides.items()]
    if config.init_from:  # Its parent's run (`_rung_configs`).
      args.append(f'--config.init_from={config.init_from}')
    log = open(os.path.join(workdir, 'log.txt'), 'a')
    proc = subprocess.Popen(
        args, stdout=log, stderr=subprocess.STDOUT, env=self.env
    )
    self.running[name] = (proc, log, time.monotonic())
    self._print(f'{name}: {config.num_epochs:g} epochs, started')
