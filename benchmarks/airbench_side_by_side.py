"""The fast recipes and their references (PyTorch), run for run on the same data.

    pip install -e '.[airbench]'
    JAX_PLATFORMS=cpu python benchmarks/airbench_side_by_side.py \\
        --recipe fast94 --seeds 0,1 --workdir /tmp/side_by_side \\
        --config.data.name=image_folder --config.data.dir=cifar10-jpeg.zip

For each seed, one full run of our config (`configs/<recipe>.py`, timed
as `benchmarks/speedrun.py` times it: training and the final evaluation
with test-time augmentation, after compiling ahead of time) and one of
airbench's own code from the `airbench` package (timed as airbench times
itself), alternately, in the same sitting; for fast94_muon and fast94_hive
the reference is the record's script itself (benchmarks/reference_cpu.py),
kept as the 'airbench' side of the results. Both sides see the images
cifar_jax loads for the config, in the same order: airbench gets them as
its own data files (`<workdir>/cifar10/*.pt`). airbench's code and
hyperparameters are its own (its seed: `torch.manual_seed(seed)`). On a
GPU it runs as it is (float16), after one warm-up run, and ours with the
config's bfloat16. On a CPU both compute in float32: ours with
`model.compute_dtype=float32`, airbench's with the three changes of
benchmarks/airbench_cpu.py.

Every finished run is added to `<workdir>/results.json` at once, so the
same command resumes after an interruption with the runs still missing
(a run cut short starts again). Prints each run, then per side the mean
and standard deviation of accuracy and the mean seconds per run, the
difference of the mean accuracies with its standard error, and the ratio
of mean seconds (ours / airbench's).
"""

import json
import math
import os
import statistics
import sys
import time

from absl import app
from absl import flags
import jax
import numpy as np

# The repository's root: `benchmarks` (and this checkout's cifar_jax).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top
from benchmarks import airbench_cpu
from benchmarks import reference_cpu
from cifar_jax import cli
from cifar_jax.config import loading
from cifar_jax.errors import UserError
from cifar_jax.reporting import records
from cifar_jax import train
from cifar_jax.training import experiment
from cifar_jax.training import plan

# pylint: enable=g-import-not-at-top

RECIPE = flags.DEFINE_enum(
    'recipe',
    'fast94',
    [*airbench_cpu.RECIPES, *reference_cpu.SCRIPTS],
    'Our config to compare.',
)
SEEDS = flags.DEFINE_list('seeds', ['0', '1'], 'Seeds, one run each side.')
SIDES = flags.DEFINE_list(
    'sides', ['ours', 'airbench'], "Which sides to run: 'ours', 'airbench'."
)
WORKDIR = cli.define_workdir('Where results.json and the data files go.')
OVERRIDES = cli.define_config_overrides()


def _summary(runs: dict[str, dict]) -> dict[str, float]:
  accuracies = [r['accuracy'] for r in runs.values()]
  seconds = [r['seconds'] for r in runs.values()]
  return {
      'runs': len(runs),
      'accuracy_mean': statistics.mean(accuracies),
      'accuracy_std': statistics.stdev(accuracies) if len(runs) > 1 else 0.0,
      'seconds_mean': statistics.mean(seconds),
  }


def comparison(results: dict) -> str:
  """The report: each side's accuracy and time, the difference, the ratio."""
  lines, sides = [], {}
  for side in ('ours', 'airbench'):
    runs = results.get(side, {})
    if not runs:
      continue
    s = sides[side] = _summary(runs)
    per_seed = ', '.join(
        f'seed {k} {100 * r["accuracy"]:.2f}%' for k, r in sorted(runs.items())
    )
    lines.append(
        f'{side}: {100 * s["accuracy_mean"]:.2f}% +- '
        f'{100 * s["accuracy_std"]:.2f} (n={s["runs"]}; {per_seed}); '
        f'{s["seconds_mean"]:.0f} s per run'
    )
  if len(sides) == 2:
    ours, theirs = sides['ours'], sides['airbench']
    error = math.sqrt(
        ours['accuracy_std'] ** 2 / ours['runs']
        + theirs['accuracy_std'] ** 2 / theirs['runs']
    )
    lines.append(
        'difference of the means (ours - airbench): '
        f'{100 * (ours["accuracy_mean"] - theirs["accuracy_mean"]):+.2f} '
        f'points, standard error {100 * error:.2f}'
    )
    lines.append(
        f'time per run, ours / airbench: '
        f'{ours["seconds_mean"] / theirs["seconds_mean"]:.2f}'
    )
  return '\n'.join(lines)


def main(argv):
  del argv
  with cli.exit_on_errors():
    unknown = set(SIDES.value) - {'ours', 'airbench'}
    if unknown:
      raise UserError(
          f"--sides: unknown {sorted(unknown)}; 'ours', 'airbench'."
      )
    config = experiment_config()
    os.makedirs(WORKDIR.value, exist_ok=True)
    path = os.path.join(WORKDIR.value, 'results.json')
    results = {}
    if os.path.exists(path):
      with open(path) as f:
        results = json.load(f)
    exp = experiment.create_experiment(config)
    airbench_cpu.write_data(
        WORKDIR.value, _arrays(exp.train), _arrays(exp.eval), exp.class_names
    )
    results.update(
        recipe=RECIPE.value,
        machine=records.machine_description(),
        versions=f'jax {jax.__version__}, {airbench_cpu.versions()}',
        data=f'{config.data.name} {config.data.dir or ""}'.strip(),
    )
    print(
        f'{results["machine"]}; {results["versions"]}; {RECIPE.value}: '
        f'{config.num_epochs:g} epochs ({exp.total_steps} steps) of '
        f'{config.batch_size}; data {results["data"]}',
        flush=True,
    )
    if 'ours' in SIDES.value:
      seconds = plan.compile_ahead(exp, exp.start(config.seed))
      print(f'ours: compiled ahead of time in {seconds:.1f} s', flush=True)
    for seed in SEEDS.value:
      for side in SIDES.value:
        if seed in results.get(side, {}):
          continue
        print(f'{side}, seed {seed}: training', flush=True)
        if side == 'ours':
          accuracy, seconds = train.timed_run(exp, int(seed), sys.stdout)
        elif RECIPE.value in reference_cpu.SCRIPTS:
          accuracy, seconds = reference_cpu.train_and_time(
              RECIPE.value, int(seed), _arrays(exp.train), _arrays(exp.eval),
              _Progress(),
          )  # fmt: skip
        else:
          accuracy, seconds = _airbench_run(int(seed))
        results.setdefault(side, {})[seed] = {
            'accuracy': accuracy,
            'seconds': seconds,
        }
        records.write_json(path, results)
        print(
            f'{side}, seed {seed}: {100 * accuracy:.2f}% in {seconds:.0f} s',
            flush=True,
        )
    print(comparison(results))


def experiment_config():
  """Our recipe's config with the overrides (float32 on a CPU)."""
  config = loading.config_module(RECIPE.value).get_config()
  if jax.default_backend() == 'cpu':
    # airbench's float16 is a GPU's; on a CPU both sides run in float32.
    config.model.compute_dtype = 'float32'
  loading.apply_overrides(config, cli.override_values())
  return config


def _arrays(data) -> tuple[np.ndarray, np.ndarray]:
  return np.asarray(data[0]), np.asarray(data[1])


def _airbench_run(seed: int) -> tuple[float, float]:
  cwd = os.getcwd()
  os.chdir(WORKDIR.value)  # airbench reads ./cifar10/.
  try:
    with airbench_cpu.device():
      return airbench_cpu.train_and_time(
          RECIPE.value, seed, progress=_Progress()
      )
  finally:
    os.chdir(cwd)


class _Progress:
  """A line every `every` seconds: steps done (airbench prints nothing)."""

  def __init__(self, every: float = 60.0):
    self.every, self.last, self.steps = every, time.monotonic(), 0

  def __call__(self, total: int = 0) -> None:
    self.steps += 1
    if time.monotonic() - self.last >= self.every or self.steps == total:
      self.last = time.monotonic()
      of = f'/{total}' if total else ''
      print(f'  reference: step {self.steps}{of}', flush=True)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
