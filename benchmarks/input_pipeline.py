"""Input-path benchmark: load times, host overhead, the cost of augmentation.

  python benchmarks/input_pipeline.py [--data_dir DIR | --zip FILE] [--steps N]

Prints, on the machine it runs on:
1. first (decode + cache) and cached load times of the JPEG copy;
2. for the simple and bn_aug_sgd rungs, the share of an epoch's training
   time spent outside the compiled train step: the real epoch loop
   (`train.run_steps`, as `main` runs it) against the same number of calls
   of the compiled step, each timed alone until its result is ready;
3. bn_aug_sgd's epoch time with augmentation over its time without.
The variants being compared run in alternating chunks (`--chunks`), so a
change in the machine's speed during the run affects them alike.
The data is the shared JPEG copy, read straight from the zip unless
--data_dir names a folder. Evaluation is not part of any timing.
"""

import io
import os
import pathlib
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# pylint: disable=g-import-not-at-top
from cifar_jax import cli
from cifar_jax.data import input_pipeline
from cifar_jax.reporting import progress
from cifar_jax.reporting import records
from cifar_jax import train
from cifar_jax.training import experiment
from cifar_jax.training import steps
from configs import bn_aug_sgd
from configs import simple

# pylint: enable=g-import-not-at-top


def data_config(config, data_dir, cache_dir):
  config.data.name = 'image_folder'
  config.data.dir = data_dir
  config.data.cache_dir = cache_dir
  return config


def time_loads(data_dir: str, cache_dir: str) -> None:
  config = data_config(simple.get_config(), data_dir, cache_dir)
  times = []
  for _ in range(2):
    start = time.perf_counter()
    for split in ('train', 'test'):
      input_pipeline.load_split(config.data, split)
    times.append(time.perf_counter() - start)
  print(
      f'load train+test: first (decode JPEGs, write cache) {times[0]:.1f} s,'
      f' cached {times[1]:.2f} s ({times[0] / times[1]:.0f}x faster)'
  )


class LoopTimer:
  """The real epoch loop (`train.run_steps`, as `main` runs it)."""

  def __init__(self, exp: experiment.Experiment):
    self.exp, self.run = exp, exp.start(0)
    self(3)  # Compiles.

  def __call__(self, steps: int) -> float:
    bar = progress.ProgressBar(steps, out=io.StringIO())
    start = time.perf_counter()
    train.run_steps(self.exp, self.run, self.run.step + steps, bar)
    return time.perf_counter() - start


class CompiledStepTimer:
  """The compiled step alone: each call timed until its result is ready.

  (A `lax.fori_loop` over the steps would avoid per-call dispatch too, but
  XLA:CPU runs this step about 12x slower inside a while loop.)
  """

  def __init__(self, exp: experiment.Experiment):
    self.exp, self.run, self.step = exp, exp.start(0), 0
    self.state = self.run.state
    self.metrics = steps.Metrics.empty()
    self.compiled = (
        exp.train_steps(1)
        .lower(self.state, self.metrics, *self._args())
        .compile()
    )

  def _args(self):
    exp = self.exp
    return (
        exp.train,
        self.run.order.pass_order(0),
        self.step % exp.batches_per_pass,
        self.run.keys,
    )

  def __call__(self, steps: int) -> float:
    total = 0.0
    for _ in range(steps):
      args = self._args()
      start = time.perf_counter()
      self.state, self.metrics = jax.block_until_ready(
          self.compiled(self.state, self.metrics, *args)
      )
      total += time.perf_counter() - start
      self.step += 1
    return total


def timers(config) -> tuple[int, LoopTimer, CompiledStepTimer]:
  exp = experiment.create_experiment(config)
  return exp.steps_per_epoch, LoopTimer(exp), CompiledStepTimer(exp)


def interleaved(named_timers: dict, steps: int, chunks: int) -> dict:
  """Seconds of each timer over `steps` steps, run in alternating chunks so
  that drift in the machine's speed affects all of them alike."""
  totals = dict.fromkeys(named_timers, 0.0)
  for c in range(chunks):
    n = steps // chunks + (c < steps % chunks)
    for name, timer in named_timers.items():
      totals[name] += timer(n)
  return totals


def report(
    name: str, steps: int, batch: int, loop: float, compiled: float
) -> None:
  share = max(loop - compiled, 0.0) / loop
  print(
      f'{name}: {steps} steps of batch {batch}: loop {loop:.1f} s '
      f'({1000 * loop / steps:.1f} ms/step), compiled steps alone '
      f'{compiled:.1f} s; outside the compiled step: {100 * share:.1f}%'
  )


DATA_DIR = flags.DEFINE_string('data_dir', None, 'Unzipped cifar10-jpeg root.')
ZIP = flags.DEFINE_string(
    'zip',
    str(REPO.parent / 'shared' / 'data' / 'cifar10-jpeg.zip'),
    'The cifar10-jpeg zip, read as it is (without --data_dir).',
)
STEPS = flags.DEFINE_integer(
    'steps', 0, 'Steps per timing (0 = one full epoch).', lower_bound=0
)
CHUNKS = flags.DEFINE_integer(
    'chunks', 8, 'Alternations between the timed variants.', lower_bound=1
)


def main(argv):
  del argv
  print(f'Machine: {records.machine_description()}, jax {jax.__version__}')
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = DATA_DIR.value or ZIP.value  # A zip is read as it is.
    cache = os.path.join(tmp, 'cache')
    time_loads(data_dir, cache)

    config = data_config(simple.get_config(), data_dir, cache)
    epoch, loop, compiled = timers(config)
    steps = STEPS.value or epoch
    t = interleaved({'loop': loop, 'compiled': compiled}, steps, CHUNKS.value)
    report('simple', steps, config.batch_size, t['loop'], t['compiled'])

    augmented = data_config(bn_aug_sgd.get_config(), data_dir, cache)
    plain = data_config(bn_aug_sgd.get_config(), data_dir, cache)
    plain.augment.width_shift_range = plain.augment.height_shift_range = 0.0
    plain.augment.horizontal_flip = False
    epoch, aug_loop, aug_compiled = timers(augmented)
    _, plain_loop, plain_compiled = timers(plain)
    steps = STEPS.value or epoch
    t = interleaved(
        {
            'aug_loop': aug_loop,
            'aug_compiled': aug_compiled,
            'plain_loop': plain_loop,
            'plain_compiled': plain_compiled,
        },
        steps,
        CHUNKS.value,
    )
    report(
        'bn_aug_sgd (augmented)',
        steps,
        augmented.batch_size,
        t['aug_loop'],
        t['aug_compiled'],
    )
    report(
        'bn_aug_sgd (no augmentation)',
        steps,
        plain.batch_size,
        t['plain_loop'],
        t['plain_compiled'],
    )
    print(
        f'bn_aug_sgd epoch time with / without augmentation: '
        f'{t["aug_loop"] / t["plain_loop"]:.2f}x'
    )


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
