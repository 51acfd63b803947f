"""Steps dispatched one by one vs scanned in one program, per backend.

    python benchmarks/dispatch.py [--configs simple,bn_aug_sgd] [--steps 32]

For each config (synthetic data of the config's batch size), times `steps`
train steps dispatched one at a time (`steps_per_dispatch=1`) and as one
`lax.scan` (`steps_per_dispatch=steps`), interleaved three times after a
warm-up, and prints ms per step and the ratio. This is what decides the
default `steps_per_dispatch=0`: a whole epoch per dispatch on GPU/TPU, one
step on CPU.
"""

import io
import time

from absl import app
from absl import flags
import jax

from cifar_jax import cli
from cifar_jax.config import loading
from cifar_jax.reporting import progress
from cifar_jax.reporting import records
from cifar_jax import train
from cifar_jax.training import experiment


def _experiment(name: str, steps_per_dispatch: int, num_steps: int):
  config = loading.config_module(name).get_config()
  config.data.name = 'synthetic'
  config.data.synthetic_train_size = num_steps * config.batch_size
  config.data.synthetic_eval_size = config.eval_batch_size
  config.steps_per_dispatch = steps_per_dispatch
  return experiment.create_experiment(config)


def _time(exp, num_steps: int) -> float:
  bar = progress.ProgressBar(num_steps, out=io.StringIO())
  run = exp.start(0)
  jax.block_until_ready((run.state, run.epoch_metrics))
  start = time.perf_counter()
  train.run_steps(exp, run, num_steps, bar)
  jax.block_until_ready((run.state, run.epoch_metrics))
  return (time.perf_counter() - start) / num_steps


CONFIGS = flags.DEFINE_list('configs', ['simple', 'bn_aug_sgd'], 'Rungs.')
STEPS = flags.DEFINE_integer('steps', 32, 'Steps per timing.', lower_bound=1)


def main(argv):
  del argv
  num_steps = STEPS.value
  print(
      f'{records.machine_description()}, {jax.devices()[0].platform}; '
      f'JAX {jax.__version__}; {num_steps} steps'
  )
  for name in CONFIGS.value:
    single = _experiment(name, 1, num_steps)
    scanned = _experiment(name, num_steps, num_steps)
    _time(single, num_steps)  # Warm-up: compiles.
    _time(scanned, num_steps)
    times = {'single': [], 'scan': []}
    for _ in range(3):
      times['single'].append(_time(single, num_steps))
      times['scan'].append(_time(scanned, num_steps))
    best = {k: min(v) for k, v in times.items()}
    print(
        f'{name}: one by one {1000 * best["single"]:.1f} ms/step, scanned '
        f'{1000 * best["scan"]:.1f} ms/step; scan / single = '
        f'{best["scan"] / best["single"]:.2f}',
        flush=True,
    )


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
