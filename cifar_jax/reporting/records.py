"""What a run writes for people: TensorBoard summaries, history, curves.

TensorBoard goes through `clu.metric_writers` (train and eval loss and
accuracy per epoch, learning rate, steps and images per second, and the
hyperparameters); `clu.periodic_actions.ReportProgress` adds throughput
during epochs. `history.json` and `curves.png` are rewritten after every
epoch; a ladder rung's (`config.seed_rung`) draws the seed notebook's
printed curves beside ours. Only process 0 writes; the others only log.
"""

from collections.abc import Callable, Sequence, Set
import contextlib
import json
import os
import platform
import subprocess
from typing import Any

from absl import logging
import jax
import ml_collections

from cifar_jax import cpu_info
from cifar_jax.data import tensorflow_cpu
from cifar_jax.errors import UserError
from cifar_jax.errors import write_failure
from cifar_jax.reporting import plots
from cifar_jax.reporting import seed_notebook


def flatten(d: dict, prefix: str = '') -> dict[str, Any]:
  """{'a.b': v} from {'a': {'b': v}}; lists become tuples."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = tuple(v) if isinstance(v, list) else v
  return out


# The x86 vector extensions that decide CPU speed, as /proc/cpuinfo's flags
# name them: XLA:CPU and TensorFlow's oneDNN use them unequally.
_VECTOR_EXTENSIONS = {'AVX2': 'avx2', 'AVX-512': 'avx512f',
                      'AVX512_BF16': 'avx512_bf16',
                      'AMX': 'amx_tile'}  # fmt: skip


def vector_extensions(cpu_flags: Set[str]) -> list[str]:
  """The names of the vector extensions among a CPU's flags."""
  return [
      name for name, flag in _VECTOR_EXTENSIONS.items() if flag in cpu_flags
  ]


def machine_description() -> str:
  """The accelerator, or the CPU model, core count and vector extensions."""
  device = jax.devices()[0]
  if device.platform != 'cpu':
    return f'{jax.device_count()} x {device.device_kind}'
  model, cpu_flags = cpu_info.read()
  model = model or platform.processor() or platform.machine()
  extensions = ' '.join(vector_extensions(cpu_flags)) or 'no AVX2'
  return f'{model}, {os.cpu_count()} CPU cores ({extensions})'


# What a trained run's data set was: class names (in label order), sizes.
DATASET_INFO = 'dataset_info.json'
# The code a run was trained with: one entry per start that changed it.
CODE = 'code.json'


# The checkout this package runs from, when it runs from one.
_CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def code_version(checkout: str = _CHECKOUT) -> dict[str, Any]:
  """The commit of the cifar_jax checkout that is running, whether it had
  uncommitted changes to tracked files, the jax version and the machine.

  The commit is None unless `checkout` is the top of a git work tree: an
  installed wheel inside some other repository is not that repository's
  commit.
  """
  root = os.path.realpath(checkout)

  def git(*args: str) -> str | None:
    try:
      r = subprocess.run(['git', '-C', root, *args], capture_output=True,
                         text=True, timeout=10, check=False)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
      return None
    return r.stdout.strip() if r.returncode == 0 else None

  top = git('rev-parse', '--show-toplevel')
  at_top = top is not None and os.path.realpath(top) == root
  commit = git('rev-parse', 'HEAD') if at_top else None
  status = commit and git('status', '--porcelain', '--untracked-files=no')
  return {
      'commit': commit,
      'dirty': None if status is None else bool(status),
      'jax': jax.__version__,
      'machine': machine_description(),
  }


def record_code(workdir: str, step: int) -> None:
  """Adds the running code to `<workdir>/code.json` when it differs from
  the last entry (a run resumed under other code has one entry per code)."""
  path = os.path.join(workdir, CODE)
  entries = read_code(workdir)
  version = code_version()
  if entries and {k: entries[-1].get(k) for k in version} == version:
    return
  write_json(path, entries + [{'from_step': step, **version}])


def read_code(workdir: str) -> list[dict[str, Any]]:
  """`<workdir>/code.json`'s entries; [] for a run written without one."""
  try:
    with open(os.path.join(workdir, CODE)) as f:
      return json.load(f)
  except FileNotFoundError:
    return []


def machines_text(entries: list[dict[str, Any]]) -> list[str]:
  """The machines (with their jax) a run was trained on, in order."""
  found = []
  for e in entries:
    if e.get('machine'):
      name = f'{e["machine"]}; JAX {e.get("jax", "?")}'
      if name not in found:
        found.append(name)
  return found


def commits_text(entries: list[dict[str, Any]]) -> str:
  """'3ce53da', '3ce53da, f5a4881+dirty' for a run resumed under other
  code, or '–' when unknown."""
  names = []
  for e in entries:
    if not e.get('commit'):
      continue
    name = e['commit'][:7] + ('+dirty' if e.get('dirty') else '')
    if name not in names:
      names.append(name)
  return ', '.join(names) or '–'


def write_atomically(path: str, write: Callable[[str], None]) -> None:
  """`write(tmp)`, then renames tmp to `path`: never a truncated file.

  A failed write (full disk, read-only) removes tmp and raises UserError.
  """
  tmp = f'{path}.tmp'
  try:
    write(tmp)
    os.replace(tmp, path)
  except OSError as e:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    cause = write_failure(e)
    if cause is None:
      raise
    raise UserError(
        f'Cannot write {path} ({cause}); the checkpoints are '
        'intact. Free space or fix the directory, then run the '
        'same command to resume.'
    ) from e


def _write_text(path: str, text: str) -> None:
  with open(path, 'w') as f:
    f.write(text)


def write_json(path: str, value: Any) -> None:
  def write(tmp):
    with open(tmp, 'w') as f:
      json.dump(value, f, indent=2)

  write_atomically(path, write)


class _LogWriter:
  """clu's MetricWriter interface, to the log only: where TensorFlow (which
  clu's TensorBoard writer needs) is not installed, as on many GPU images."""

  def write_hparams(self, hparams: dict[str, Any]) -> None:
    logging.info('Hyperparameters: %s', hparams)

  def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
    values = ', '.join(f'{k}={v:.6g}' for k, v in scalars.items())
    logging.info('[%d] %s', step, values)

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


class Reporter:
  """Writes a run's summaries; `progress(step)` after every train step."""

  def __init__(
      self, workdir: str, config: ml_collections.ConfigDict, total_steps: int
  ):
    self.workdir = workdir
    self.total_steps = total_steps
    self.is_writer = jax.process_index() == 0
    self.title = os.path.basename(os.path.normpath(workdir))
    self.seed_rung = config.seed_rung
    self.not_seeds = (
        seed_notebook.protocol_differences(config, config.seed_rung)
        if config.seed_rung
        else []
    )
    try:
      # clu's writers import TensorFlow: keep it off the GPUs first.
      tensorflow_cpu.import_tensorflow()
      from clu import metric_writers  # pylint: disable=g-import-not-at-top
      from clu import periodic_actions  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      logging.warning('No TensorBoard summaries (%s); history.json and '
                      'curves.png are written as usual.', e)  # fmt: skip
      self.writer = _LogWriter()
      self.progress = lambda step: None
      return
    self.writer = metric_writers.create_default_writer(
        workdir, just_logging=not self.is_writer, asynchronous=True
    )
    hparams = flatten(json.loads(config.to_json_best_effort()))
    scalar = lambda v: v if isinstance(v, (bool, int, float, str)) else str(v)
    self.writer.write_hparams({k: scalar(v) for k, v in hparams.items()})
    self.progress = periodic_actions.ReportProgress(
        num_train_steps=total_steps, writer=self.writer, every_secs=60
    )

  def start(
      self,
      config: ml_collections.ConfigDict,
      class_names: Sequence[str],
      train_examples: int,
      eval_examples: int,
      steps_per_epoch: int,
      step: int,
  ) -> None:
    """Writes config.json, dataset_info.json (what evaluate, predict and a
    resume read back) and code.json (the code it runs from `step`)."""
    if not self.is_writer:
      return
    record_code(self.workdir, step)
    write_atomically(
        os.path.join(self.workdir, 'config.json'),
        lambda tmp: _write_text(tmp, config.to_json_best_effort(indent=2)),
    )
    write_json(os.path.join(self.workdir, DATASET_INFO), {
        'class_names': list(class_names), 'train_examples': train_examples,
        'eval_examples': eval_examples, 'steps_per_epoch': steps_per_epoch,
        'total_steps': self.total_steps,
    })  # fmt: skip

  def epoch(
      self,
      step: int,
      history: list[dict[str, float]],
      learning_rate: float,
      train_seconds: float,
      num_steps: int,
      num_images: int,
  ) -> None:
    """Records the epoch `history[-1]` (all epochs so far), ending at
    `step`: its `num_steps` and `num_images` trained in `train_seconds`
    (evaluation left out), and the learning rate at `step`."""
    row = history[-1]
    self._summaries(step, {
        'train_loss': row['loss'], 'train_accuracy': row['accuracy'],
        'eval_loss': row['val_loss'], 'eval_accuracy': row['val_accuracy'],
        'learning_rate': learning_rate,
        'steps_per_second': num_steps / train_seconds,
        'images_per_second': num_images / train_seconds,
    })  # fmt: skip
    if self.is_writer:
      write_json(os.path.join(self.workdir, 'history.json'), history)
      title, reference = seed_notebook.comparison(
          self.seed_rung, self.title, self.not_seeds, history[-1]['epoch']
      )
      write_atomically(
          os.path.join(self.workdir, 'curves.png'),
          lambda tmp: plots.curves(history, tmp, title, reference),
      )

  def _summaries(self, step: int, scalars: dict[str, float]) -> None:
    """Writes TensorBoard scalars; a failed write is one clear error."""
    try:
      self.writer.write_scalars(step, scalars)
      self.writer.flush()
    except Exception as e:  # pylint: disable=broad-except
      cause = write_failure(e)
      if cause is None:
        raise
      raise UserError(
          f'Cannot write TensorBoard summaries to '
          f'{self.workdir} ({cause}); the checkpoints are '
          'intact. Free space or fix the directory, then run '
          'the same command to resume.'
      ) from e

  def close(self) -> None:
    try:
      self.writer.close()
    except Exception as e:  # pylint: disable=broad-except
      if write_failure(e) is None:
        raise
      logging.warning('Closing the TensorBoard writer failed: %s', e)
