"""Soak test: SIGKILL one run at random moments, resume, compare bit for bit.

  python benchmarks/kill_resume.py [--kills 20] [--seed S]
      [--config.key=value ...]

Trains a config twice in temporary run directories: once uninterrupted, and
once killed with SIGKILL at `--kills` random moments (each after the run has
made progress since its last start), resuming with the same command every
time. Then checks that both runs end with identical history.json values
(every float; wall-clock seconds excepted) and bitwise identical parameters
and BatchNorm statistics. Exits non-zero on any difference.
"""

import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cifar_jax import cli  # pylint: disable=g-import-not-at-top
from cifar_jax.runs import reading  # pylint: disable=g-import-not-at-top

KILLS = flags.DEFINE_integer('kills', 20, 'SIGKILLs of the soaked run.')
SEED = flags.DEFINE_integer(
    'seed', None, 'Seeds the kill moments (default: the time).'
)
OVERRIDES = cli.define_config_overrides()

# BatchNorm, dropout and augmentation all on: every random and stateful part.
DEFAULT_RUN = [
    '--config',
    'configs/test.py',
    '--config.num_epochs=12',
    '--config.data.synthetic_train_size=2048',
    '--config.checkpoint_every_steps=10',
    '--config.model.batch_norm=True',
    '--config.augment.horizontal_flip=True',
    '--config.augment.width_shift_range=0.1',
]


def command(workdir, overrides):
  return [
      sys.executable,
      '-m',
      'cifar_jax.main',
      *DEFAULT_RUN,
      *overrides,
      '--workdir',
      workdir,
  ]


def outcome(workdir):
  history = json.loads(pathlib.Path(workdir, 'history.json').read_text())
  return (
      [{k: v for k, v in row.items() if k != 'seconds'} for row in history],
      reading.read_run(workdir).state,
  )


def latest_step(workdir):
  ckpt = pathlib.Path(workdir, 'checkpoints')
  steps = (
      [int(p.name) for p in ckpt.iterdir() if p.name.isdigit()]
      if (ckpt.exists())
      else []
  )
  return max(steps, default=-1)


def main(argv):
  del argv
  seed = int(time.time()) if SEED.value is None else SEED.value
  overrides = [f'--config.{k}={v}' for k, v in cli.override_values().items()]
  rng = random.Random(seed)
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  with tempfile.TemporaryDirectory() as tmp:
    reference, soaked = os.path.join(tmp, 'ref'), os.path.join(tmp, 'soak')
    start = time.monotonic()
    subprocess.run(
        command(reference, overrides),
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
    )
    run_seconds = time.monotonic() - start
    print(f'uninterrupted run: {run_seconds:.1f} s (seed {seed})')
    kills = 0
    while kills < KILLS.value:
      before = latest_step(soaked)
      proc = subprocess.Popen(
          command(soaked, overrides),
          cwd=REPO,
          env=env,
          stdout=subprocess.PIPE,
          stderr=subprocess.PIPE,
      )
      # Kill only after a new checkpoint, so every life makes progress.
      while latest_step(soaked) == before and proc.poll() is None:
        time.sleep(0.02)
      time.sleep(rng.uniform(0, 1.5))
      if proc.poll() is not None:
        break  # Finished before this kill.
      proc.send_signal(signal.SIGKILL)
      proc.wait()
      kills += 1
      print(f'kill {kills}: at checkpoint step {latest_step(soaked)}')
    subprocess.run(
        command(soaked, overrides),
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
    )
    (ref_history, ref_params), (history, params) = (
        outcome(reference),
        outcome(soaked),
    )
    same_history = ref_history == history
    same_params = all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(ref_params), jax.tree.leaves(params))
    )
    print(
        f'{kills} kills; history identical: {same_history}; params and '
        f'BatchNorm statistics bitwise identical: {same_params}'
    )
    sys.exit(0 if same_history and same_params else 1)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
