"""Input-path benchmark: load times, host overhead, the cost of augmentation.

  python benchmarks/input_pipeline.py [--data_dir DIR | --zip FILE] [--steps N]

Prints, on the machine it runs on:
1. first (decode + cache) and cached load times of the JPEG copy;
2. for the simple and bn_aug_sgd rungs, the share of an epoch's training
   time spent outside the compiled train step: the real epoch loop
   (`train.run_steps`, as `main` runs it) against the same number of calls
   of the compiled step, each timed alone until its result is ready;
3. bn_aug_sgd's epoch time with augmentation over its time without.
The data is the shared JPEG copy (unzipped to a temporary folder if only the
zip is given). Evaluation is not part of any timing.
"""

import argparse
import io
import os
import pathlib
import platform
import sys
import tempfile
import time
import zipfile

import jax

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cifar_jax import input_pipeline  # pylint: disable=g-import-not-at-top
from cifar_jax import progress
from cifar_jax import train
from configs import bn_aug_sgd
from configs import simple


def machine() -> str:
  model = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      model = next(l.split(':', 1)[1].strip() for l in f
                   if l.startswith('model name'))
  except (OSError, StopIteration):
    pass
  return (f'{model}, {os.cpu_count()} CPUs, jax {jax.__version__}, '
          f'devices: {jax.devices()}')


def data_config(config, data_dir, cache_dir):
  config.dataset = 'image_folder'
  config.data_dir = data_dir
  config.cache_dir = cache_dir
  return config


def time_loads(data_dir: str, cache_dir: str) -> None:
  config = data_config(simple.get_config(), data_dir, cache_dir)
  times = []
  for _ in range(2):
    start = time.perf_counter()
    for split in ('train', 'test'):
      input_pipeline.load_split(config, split)
    times.append(time.perf_counter() - start)
  print(f'load train+test: first (decode JPEGs, write cache) {times[0]:.1f} s,'
        f' cached {times[1]:.2f} s ({times[0] / times[1]:.0f}x faster)')


def compiled_step_seconds(exp: train.Experiment, state, steps: int):
  """Seconds inside the compiled step: each call timed alone, to completion.

  (A `lax.fori_loop` over the steps would avoid the per-call dispatch too,
  but XLA:CPU runs this step about 12x slower inside a while loop.)
  Returns the seconds and the state.
  """
  metrics = train.Metrics.empty()
  args = lambda i: (*exp.train, exp.order.pass_order(0),
                    i % exp.order.batches_per_pass, exp.dropout_key,
                    exp.augment_key)
  compiled = exp.jit_train_step.lower(state, metrics, *args(0)).compile()
  total = 0.0
  for i in range(steps):
    start = time.perf_counter()
    state, metrics = jax.block_until_ready(compiled(state, metrics, *args(i)))
    total += time.perf_counter() - start
  return total, state


def loop_seconds(exp: train.Experiment, state, steps: int):
  """Seconds for the real epoch loop over `steps` steps; returns the state."""
  def run(state, first, count):
    bar = progress.ProgressBar(count, out=io.StringIO())
    state, _, _ = train.run_steps(exp, state, train.Metrics.empty(), first,
                                  first + count, bar)
    return state
  state = run(state, 0, 3)  # Compiles.
  start = time.perf_counter()
  state = run(state, 3, steps)
  return time.perf_counter() - start, state


def epoch_report(name: str, config, steps: int) -> float:
  exp = train.create_experiment(config)
  steps = steps or exp.steps_per_epoch
  loop, state = loop_seconds(exp, exp.state, steps)
  device, _ = compiled_step_seconds(exp, state, steps)
  share = max(loop - device, 0.0) / loop
  print(f'{name}: {steps} steps of batch {config.batch_size}: loop '
        f'{loop:.1f} s ({1000 * loop / steps:.1f} ms/step), compiled steps '
        f'alone {device:.1f} s; outside the compiled step: {100 * share:.1f}%')
  return loop


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data_dir', help='unzipped cifar10-jpeg root')
  parser.add_argument('--zip', default=str(
      REPO.parent / 'shared' / 'data' / 'cifar10-jpeg.zip'))
  parser.add_argument('--steps', type=int, default=0,
                      help='steps per timing (0 = one full epoch)')
  args = parser.parse_args()
  print(f'Machine: {machine()}')
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = args.data_dir
    if not data_dir:
      start = time.perf_counter()
      with zipfile.ZipFile(args.zip) as z:
        z.extractall(tmp)
      data_dir = os.path.join(tmp, 'cifar10-jpeg')
      print(f'unzipped {args.zip} in {time.perf_counter() - start:.1f} s')
    cache = os.path.join(tmp, 'cache')
    time_loads(data_dir, cache)
    epoch_report('simple', data_config(simple.get_config(), data_dir, cache),
                 args.steps)
    with_aug = epoch_report(
        'bn_aug_sgd (augmented)',
        data_config(bn_aug_sgd.get_config(), data_dir, cache), args.steps)
    config = data_config(bn_aug_sgd.get_config(), data_dir, cache)
    config.augment.width_shift_range = config.augment.height_shift_range = 0.
    config.augment.horizontal_flip = False
    without = epoch_report('bn_aug_sgd (no augmentation)', config, args.steps)
    print(f'bn_aug_sgd epoch time with / without augmentation: '
          f'{with_aug / without:.2f}x')


if __name__ == '__main__':
  main()
