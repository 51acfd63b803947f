"""The seed's ladder: each rung trained in its run directory, then REPORT.md.

`run_ladder` trains rungs in order (or side by side, each in its own
process: `rung_processes`) in `<root>/<rung>/`, so an interrupted ladder
resumes: finished rungs are skipped, partial ones continue. Then
`<root>/REPORT.md` compares every rung with the seed notebook's record
(`reporting.ladder_report`). As in the seed, deep_adam_aug starts from the
trained deep_adam. The command is `cifar_jax.ladder`.
"""

from collections.abc import Mapping
import json
import os
import sys
import time
from typing import Any

import ml_collections

from cifar_jax.config import loading
from cifar_jax.config import renames
from cifar_jax.errors import UserError
from cifar_jax.reporting import ladder_report
from cifar_jax.reporting import records
from cifar_jax.reporting import seed_notebook
from cifar_jax import rung_processes
from cifar_jax import train

RUNGS = seed_notebook.rungs()


def rung_config(
    name: str, epochs_scale: float, overrides: Mapping[str, Any]
) -> ml_collections.ConfigDict:
  """The rung's config, its epochs scaled, with the ladder's overrides."""
  config = loading.load_config(name)
  config.num_epochs = max(1, round(config.num_epochs * epochs_scale))
  loading.apply_overrides(config, overrides)
  return config


def _rung_configs(
    names: list[str],
    epochs_scale: float,
    overrides: Mapping[str, Any],
    root: str,
    to_train: bool = True,
) -> dict[str, ml_collections.ConfigDict]:
  """Each rung's config; `to_train`: a rung that continues another (as
  the seed's deep_adam_aug did) starts from that rung's run in `root`."""
  unknown = [n for n in names if n not in RUNGS]
  if unknown:
    raise UserError(f'Unknown rungs {unknown}; the ladder has {RUNGS}.')
  configs = {}
  for name in names:
    config = rung_config(name, epochs_scale, overrides)
    parent = seed_notebook.load(name).continues_from
    if to_train and parent and not config.init_from:
      if parent not in names:
        _check_finished(parent, epochs_scale, overrides, root, name)
      config.init_from = os.path.join(root, parent)  # As the seed did.
    configs[name] = config
  return configs


def _check_finished(
    parent: str,
    epochs_scale: float,
    overrides: Mapping[str, Any],
    root: str,
    name: str,
) -> None:
  """Raises UserError unless `<root>/<parent>` holds a finished run: `name`
  continues it, and would otherwise continue a partial one."""
  want = rung_config(parent, epochs_scale, overrides).num_epochs
  path = os.path.join(root, parent, 'history.json')
  try:
    with open(path) as f:
      done = len(json.load(f))
  except (OSError, ValueError):
    done = 0
  if done < want:
    raise UserError(
        f'{name} continues {parent}, as the seed did, and {path} has '
        f'{done} of its {want:g} epochs: add {parent} to --configs.'
    )


def run_ladder(
    names: list[str],
    epochs_scale: float,
    overrides: Mapping[str, Any],
    root: str,
    command: str,
    out=sys.stdout,
    parallel: int = 1,
    report_only: bool = False,
) -> list[dict]:
  """Trains the rungs (resuming), `parallel` at a time, then the report.

  `report_only`: trains nothing; the report is written from the runs
  already in `<root>/<rung>/` (their history.json, and config.json where
  there is one), e.g. runs trained elsewhere and brought together.
  """
  configs = _rung_configs(
      names, epochs_scale, overrides, root, to_train=not report_only
  )
  os.makedirs(root, exist_ok=True)
  start = time.monotonic()
  if report_only:
    configs, histories = _saved_runs(root, _found(root, configs, out))
  elif parallel > 1:
    files = {n: loading.config_module(n).__file__ for n in configs}
    histories = rung_processes.RungProcesses(
        configs, files, overrides, root, parallel, out
    ).run()
  else:
    histories = {}
    for name, config in configs.items():
      print(f'=== {name}: {config.num_epochs:g} epochs ===', file=out)
      workdir = os.path.join(root, name)
      _, histories[name] = train.train_and_evaluate(config, workdir, out=out)
  wall = None if report_only else time.monotonic() - start
  rows = _report_rows(root, configs, histories)
  codes = [records.read_code(os.path.join(root, n)) for n in configs]
  machines = list(
      dict.fromkeys(m for c in codes for m in records.machines_text(c))
  )
  data = '; '.join(sorted({
      c.data.name + (f' ({c.data.dir})' if c.data.dir else '')
      for c in configs.values()
  }))  # fmt: skip
  ladder_report.write_report(rows, root, data, command, wall, machines)
  print('\n'.join(ladder_report.readme_table(rows)), file=out)
  took = '' if wall is None else f'{wall / 60:.1f} min wall-clock. '
  print(f'Ladder: {took}Wrote {os.path.join(root, "REPORT.md")}', file=out)
  return rows


def saved_rows(
    names: list[str], root: str, overrides: Mapping[str, Any] | None = None
) -> list[dict]:
  """The report rows (`ladder_report.report_row`) of the runs already in
  `<root>/<rung>/`, as `--report_only` reads them: one reader for the report
  and for what checks the published results."""
  configs = _rung_configs(names, 1.0, overrides or {}, root, to_train=False)
  return _report_rows(root, *_saved_runs(root, configs))


def _saved_runs(
    root: str, configs: dict[str, ml_collections.ConfigDict]
) -> tuple[dict[str, ml_collections.ConfigDict], dict[str, list[dict]]]:
  """Each rung's saved config (else its own) and history."""
  return (
      {n: _saved_config(root, n, c) for n, c in configs.items()},
      {n: _saved_history(root, n) for n in configs},
  )


def _found(
    root: str, configs: dict[str, ml_collections.ConfigDict], out
) -> dict[str, ml_collections.ConfigDict]:
  """The rungs with epochs in `root`, saying which others are left out."""
  found = {n: c for n, c in configs.items() if _saved_history(root, n, True)}
  if not found:
    raise UserError(
        f'No runs of {", ".join(configs)} in {root} (no epochs in '
        '<rung>/history.json); train them first (without --report_only).'
    )
  if len(found) < len(configs):
    left_out = [n for n in configs if n not in found]
    print(
        f'Not in the report (no epochs in {root}/<rung>/history.json): '
        + ', '.join(left_out),
        file=out,
    )
  return found


def _report_rows(
    root: str,
    configs: dict[str, ml_collections.ConfigDict],
    histories: dict[str, list[dict]],
) -> list[dict]:
  commits = lambda n: records.commits_text(records.read_code(f'{root}/{n}'))
  return [
      ladder_report.report_row(n, config, histories[n], commits(n),
                               _saved_history(root, f'{n}_keras23', True))
      for n, config in configs.items()
  ]  # fmt: skip


def _saved_config(
    root: str, name: str, config: ml_collections.ConfigDict
) -> ml_collections.ConfigDict:
  """The config a run in `<root>/<name>` saved, else the rung's `config`."""
  path = os.path.join(root, name, 'config.json')
  if not os.path.exists(path):
    return config
  with open(path) as f:
    return ml_collections.ConfigDict(renames.upgrade(json.load(f)))


def _saved_history(
    root: str, name: str, missing_ok: bool = False
) -> list[dict]:
  """`<root>/<name>/history.json`; with `missing_ok`, [] where there is none."""
  path = os.path.join(root, name, 'history.json')
  try:
    with open(path) as f:
      history = json.load(f)
  except FileNotFoundError:
    history = []
  except (OSError, ValueError) as e:
    raise UserError(f'{path}: cannot read it ({e}).') from e
  if not history and not missing_ok:
    raise UserError(
        f'{name}: no epochs in {path}; train the rung first (without '
        '--report_only).'
    )
  return history
