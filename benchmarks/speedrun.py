"""The speed-record protocol: n seeded runs of a config, accuracy and time.

    python benchmarks/speedrun.py --config configs/fast94.py --runs 25 \\
        [--target 0.94] [--first_seed 0] [--config.key=value ...]

The protocol of the airbench records (arXiv 2404.00498): the data set is
loaded and every program compiled first (ahead of time, timed and reported
on its own line; then one warm-up run, not counted); the clock of each run
covers training and the final evaluation with the config's test-time
augmentation (`eval_tta`), and excludes loading, compilation and per-epoch
evaluations (none are made here). Runs differ only in the seed
(initialisation, data order, augmentation); all of them share the compiled
programs. One difference from airbench: the whitening layer's
data-dependent init is computed once, on the host, before the clock
(it is the same for every seed); its time is printed too.

Prints each run, then the mean and standard deviation of test accuracy, the
mean and range of seconds, the compile time, and a one-sided t-test of
"mean accuracy >= target".
"""

import math
import statistics
import time

from absl import app
from absl import flags
import jax

from cifar_jax import cli
from cifar_jax.reporting import records
from cifar_jax import train
from cifar_jax.training import experiment
from cifar_jax.training import plan

_CONFIG = cli.define_config()
_RUNS = flags.DEFINE_integer('runs', 5, 'Counted runs (seeds).')
_TARGET = flags.DEFINE_float(
    'target', 0.94, 'Accuracy to test the mean ' 'against.'
)
_FIRST_SEED = flags.DEFINE_integer(
    'first_seed',
    0,
    'Seed of the first ' 'counted run; the warm-up uses the one ' 'before.',
)
_WARMUP = flags.DEFINE_integer(
    'warmup_runs', 1, 'Uncounted runs after the ' 'ahead-of-time compilation.'
)
_JSON = flags.DEFINE_string('json', '', 'Also write the results here.')


def one_sided_p(values: list[float], target: float) -> float:
  """p-value of "mean >= target" against "mean < target" (Student's t)."""
  n = len(values)
  if n < 2:
    return float('nan')
  sd = statistics.stdev(values)
  if sd == 0:
    return 0.0 if statistics.mean(values) >= target else 1.0
  t = (statistics.mean(values) - target) / (sd / math.sqrt(n))
  try:
    from scipy import stats  # pylint: disable=g-import-not-at-top

    return float(stats.t.sf(t, n - 1))
  except ImportError:  # Normal approximation.
    return 0.5 * math.erfc(t / math.sqrt(2))


def main(argv):
  del argv
  config = _CONFIG.value
  with cli.exit_on_errors():
    start = time.perf_counter()
    exp = experiment.create_experiment(config)
    setup_s = time.perf_counter() - start
  print(
      f'{records.machine_description()}; JAX {jax.__version__}; '
      f'{config.num_epochs:g} epochs ({exp.total_steps} steps) of '
      f'{config.batch_size}, {exp.steps_per_dispatch} steps per dispatch; '
      f'TTA level {config.eval_tta}; data {config.data.name}',
      flush=True,
  )
  print(
      f'setup (load data to the device, whitening init): '
      f'{setup_s:.2f} s, of which whitening {exp.init_seconds:.2f} s',
      flush=True,
  )
  compile_s = plan.compile_ahead(exp, exp.start(config.seed))
  print(f'compilation (ahead of time): {compile_s:.2f} s', flush=True)
  warm_s = 0.0
  for i in range(_WARMUP.value):
    warm_acc, warm_s = train.timed_run(exp, _FIRST_SEED.value - 1 - i)
    print(f'warm-up run: {100 * warm_acc:.2f}% in {warm_s:.2f} s', flush=True)
  accuracies, seconds = [], []
  for seed in range(_FIRST_SEED.value, _FIRST_SEED.value + _RUNS.value):
    acc, sec = train.timed_run(exp, seed)
    accuracies.append(acc)
    seconds.append(sec)
    print(
        f'run {len(seconds):3d} (seed {seed}): {100 * acc:.2f}% in '
        f'{sec:.3f} s',
        flush=True,
    )
  sd = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
  p = one_sided_p(accuracies, _TARGET.value)
  mean_s = statistics.mean(seconds)
  summary = {
      'runs': len(accuracies),
      'accuracy_mean': statistics.mean(accuracies),
      'accuracy_std': sd,
      'seconds_mean': mean_s,
      'seconds_min': min(seconds),
      'seconds_max': max(seconds),
      'compile_seconds': compile_s,
      'warmup_seconds': warm_s,
      'setup_seconds': setup_s,
      'whitening_seconds': exp.init_seconds,
      'target': _TARGET.value,
      'p_value': p,
      'accuracies': accuracies,
      'seconds': seconds,
      'machine': records.machine_description(),
  }
  print(
      f'accuracy: {100 * summary["accuracy_mean"]:.2f}% +- {100 * sd:.2f} '
      f'(n={len(accuracies)})\n'
      f'time: {mean_s:.3f} s mean ({min(seconds):.3f} to '
      f'{max(seconds):.3f}); compilation: {compile_s:.2f} s\n'
      f'mean >= {100 * _TARGET.value:.2f}%: one-sided t-test p = {p:.3g}'
  )
  if _JSON.value:
    records.write_json(_JSON.value, summary)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=cli.parse_flags)
