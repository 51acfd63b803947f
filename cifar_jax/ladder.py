"""Runs the seed's ladder, rung by rung, and writes the comparison report.

  python -m cifar_jax.ladder [--configs simple,large,...] [--epochs_scale 0.04]
      [--root ckpt/ladder] [--parallel N] [--config.key=value ...]

Each rung trains in its own run directory `<root>/<rung>/` (so a ladder that
was interrupted resumes: finished rungs are skipped, partial ones continue),
then `<root>/REPORT.md` compares every rung with the seed notebook's record
(`cifar_jax.seed_notebook`): ours final and best, the seed's final, the gap,
the mean |difference| of test accuracy over the epochs both printed, whether
the final is within 1.5 points, the epoch-by-epoch comparison, and the
curves with the seed's drawn beside ours; with parameters, seconds per
epoch, total time, machine, data and the commit each run was trained with
(its code.json). `--report_only` trains nothing and writes the report from
the runs in `<root>` (history.json, config.json), e.g. runs trained on
several machines brought into one root. `--epochs_scale F` trains
max(1, round(F * epochs)) epochs per rung, for short runs on a CPU.
`--config.key=value` overrides apply to every rung (e.g. the data options).
As in the seed, deep_adam_aug starts from the trained deep_adam: the one
this ladder trains, or without deep_adam in --configs, the finished run in
`<root>/deep_adam`.

`--parallel N` trains up to N rungs at once, each in its own process
(`cifar_jax.main`, output in `<root>/<rung>/log.txt`), deep_adam_aug after
deep_adam. The ladder's small models leave a GPU mostly idle between their
many small kernels, so rungs running side by side finish the ladder sooner;
each process gets 0.9/N of the GPU memory (XLA_PYTHON_CLIENT_MEM_FRACTION).
On a CPU, keep the default of 1.
"""

import os
import sys

from absl import app
from absl import flags

from cifar_jax import cli
from cifar_jax.config import loading
from cifar_jax.reporting import seed_notebook
from cifar_jax.training import checks

CONFIGS = flags.DEFINE_list(
    'configs', list(seed_notebook.rungs()), 'Rungs to train, in order.'
)
EPOCHS_SCALE = flags.DEFINE_float(
    'epochs_scale',
    1.0,
    'Train max(1, round(F * epochs)) epochs per rung.',
    lower_bound=1e-9,
)
ROOT = flags.DEFINE_string(
    'root', os.path.join('ckpt', 'ladder'), 'Holds <rung>/ and REPORT.md.'
)
REPORT_ONLY = flags.DEFINE_bool(
    'report_only',
    False,
    'Train nothing: write REPORT.md from the runs in --root.',
)
PARALLEL = flags.DEFINE_integer(
    'parallel',
    1,
    'Rungs trained at once, each in its own process.',
    lower_bound=1,
)
# Every rung's keys are configs/default.py's: its overrides apply to all.
OVERRIDES = cli.define_config_overrides()


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  names = [n.strip() for n in CONFIGS.value if n.strip()]
  with cli.exit_on_errors():
    for name in set(names) & set(seed_notebook.rungs()):  # Before JAX loads.
      checks.check(loading.load_config(name, cli.override_values()))
    from cifar_jax import rungs  # pylint: disable=g-import-not-at-top  # After --help.

    rungs.run_ladder(
        names,
        EPOCHS_SCALE.value,
        cli.override_values(),
        ROOT.value,
        'python -m cifar_jax.ladder ' + ' '.join(sys.argv[1:]),
        parallel=PARALLEL.value,
        report_only=REPORT_ONLY.value,
    )


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
