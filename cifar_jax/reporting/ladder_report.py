"""The ladder's REPORT.md: every rung beside the seed notebook's record.

Per rung: ours final and best, the seed's final, the gap, the mean
|difference| of test accuracy over the epochs both printed, whether the
final is within `seed_notebook.TOLERANCE_POINTS`, the mean and sd of the
last 10 epochs (ours, and the seed's own cell in Keras 2.3.1 on the same
data where that run is in `<root>/<rung>_keras23/`), the epoch-by-epoch
table and the curves with the seed's drawn beside ours.
"""

import datetime
import os

import jax
import ml_collections
import numpy as np

from cifar_jax import models
from cifar_jax.reporting import plots
from cifar_jax.reporting import records
from cifar_jax.reporting import seed_notebook
from cifar_jax.reporting import summary


def _params(config: ml_collections.ConfigDict) -> int:
  model = models.create_model(config.model)
  x = jax.numpy.zeros((1, 32, 32, 3))
  return summary.count_params(jax.eval_shape(model.init, jax.random.key(0), x))


LAST = 10  # Epochs whose mean and sd sum a run's end up.


def last_epochs(history: list[dict]) -> tuple[float, float]:
  """Mean and sd (ddof 1) of test accuracy, in %, over the last `LAST`
  epochs: a run's end, less at the mercy of one epoch than its final."""
  values = [100 * h['val_accuracy'] for h in history[-LAST:]]
  sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
  return float(np.mean(values)), sd


def report_row(
    name: str,
    config: ml_collections.ConfigDict,
    history: list[dict],
    commit: str = '–',
    keras23: list[dict] | None = None,
) -> dict:
  """One rung's numbers for the report: ours against the seed's; `commit`
  names the code it was trained with (`records.commits_text`); `keras23`
  the history of the seed's own cell in Keras 2.3.1 on the same data."""
  seconds = [h['seconds'] for h in history]
  differences = seed_notebook.protocol_differences(config, name)
  return {
      'commit': commit,
      'rung': name,
      'history': history,
      'last': last_epochs(history),
      'keras23': keras23 or None,
      'protocol': differences,
      'compare': seed_notebook.compare(name, history, not differences),
      'params': _params(config),
      'epochs': len(history),
      'seed_epochs': seed_notebook.load(name).num_epochs,
      'sec_per_epoch': float(np.median(seconds)),
      'fastest_epoch': float(np.min(seconds)),
      'total_sec': float(np.sum(seconds)),
  }


def _pct(value: float | None) -> str:
  return '–' if value is None else f'{value:.2f}%'


def _last(mean_sd: tuple[float, float]) -> str:
  return f'{mean_sd[0]:.2f} ± {mean_sd[1]:.2f}'


def _keras23(r: dict) -> str:
  """The Keras 2.3.1 run's final and last epochs, or –."""
  history = r['keras23']
  if not history:
    return '–'
  epochs = (
      f' ({len(history)} epochs)' if len(history) < r['seed_epochs'] else ''
  )
  final = 100 * history[-1]['val_accuracy']
  return f'{final:.2f}%; {_last(last_epochs(history))}{epochs}'


def _points(value: float | None, signed: bool = False) -> str:
  if value is None:
    return '–'
  return f'{value:+.2f}' if signed else f'{value:.2f}'


def _name(r: dict) -> str:
  """The rung, and what departs from the seed's protocol if anything."""
  if not r['protocol']:
    return r['rung']
  return f"{r['rung']} (not the seed's protocol: {', '.join(r['protocol'])})"


def _summary_line(r: dict) -> str:
  c = r['compare']
  diff = (
      '–'
      if c.mean_abs_diff is None
      else f'{c.mean_abs_diff:.2f} ({c.common_epochs})'
  )
  within = {None: '–', True: 'yes', False: 'no'}[c.within]
  return (
      f'| {_name(r)} | {seed_notebook.load(r["rung"]).final_text} | '
      f'{_pct(c.final)} | {_pct(c.best)} (epoch {c.best_epoch}) | '
      f'{_last(r["last"])} | {_keras23(r)} | '
      f'{_points(c.gap, signed=True)} | {diff} | {within} | '
      f'{r["params"]:,} | {r["epochs"]}/{r["seed_epochs"]} | '
      f'{r["sec_per_epoch"]:.1f} ({r["fastest_epoch"]:.1f}) | '
      f'{r["total_sec"] / 60:.1f} min | {r["commit"]} |'
  )


def readme_table(rows: list[dict]) -> list[str]:
  """The README's Results table: the report's table with fewer columns.

  s/epoch is each run's fastest epoch: the one nearest an idle machine,
  as runs at low priority share it with whatever else is running.
  """
  lines = [
      '| rung | seed final | ours final | best | ours, last 10 | Keras 2.3.1, '
      'same data: final; last 10 | gap | mean \\|diff\\| per epoch | epochs '
      '| s/epoch | commit |',
      '|---|---|---|---|---|---|---|---|---|---|---|',
  ]
  for r in rows:
    c, seed = r['compare'], seed_notebook.load(r['rung'])
    diff = '–'
    if c.mean_abs_diff is not None:
      of = f' of {seed.reference}' if seed.reference else ''
      diff = f'{c.mean_abs_diff:.2f} ({c.common_epochs} epochs{of})'
    lines.append(
        f'| {_name(r)} | {seed.final_text} | {_pct(c.final)} | '
        f'{_pct(c.best)} | {_last(r["last"])} | {_keras23(r)} | '
        f'{_points(c.gap, signed=True)} | {diff} | '
        f'{r["epochs"]} | {r["fastest_epoch"]:.1f} | {r["commit"]} |'
    )
  return lines


def _epoch_table(r: dict) -> list[str]:
  """Ours beside the seed's, for every epoch both printed."""
  if r['protocol']:
    return [f"Not set beside the seed's epochs: {_name(r)}."]
  label, rows = seed_notebook.reference(r['rung'], r['history'][-1]['epoch'])
  seed = seed_notebook.accuracy_by_epoch(rows)
  lines = [f'| epoch | ours | {label} | difference |', '|---|---|---|---|']
  for h in r['history']:
    if h['epoch'] in seed:
      ours, theirs = 100 * h['val_accuracy'], 100 * seed[h['epoch']]
      difference = ours - theirs
      lines.append(
          f'| {h["epoch"]} | {ours:.2f}% | {theirs:.2f}% | {difference:+.2f} |'
      )
  if len(lines) == 2:
    return [f'No epoch of this run is among those the {label} printed.']
  return lines


def write_report(
    rows: list[dict],
    root: str,
    data: str,
    command: str,
    wall_seconds: float | None = None,
    machines: list[str] | None = None,
) -> str:
  """Writes `<root>/REPORT.md` and each rung's curves beside the seed's.

  `machines`: where the runs trained (their code.json); None: here.
  Returns the report's text. The curves are redrawn here, so runs trained
  before their config named its seed rung get the comparison too.
  """
  if machines is None:
    machines = [f'{records.machine_description()}; JAX {jax.__version__}']
  lines = _summary(rows, data, command, wall_seconds, machines)
  for r in rows:
    name = r['rung']
    title, reference = seed_notebook.comparison(
        name, name, r['protocol'], r['history'][-1]['epoch']
    )
    path = os.path.join(root, name, 'curves.png')
    plots.curves(r['history'], path, title, reference)
    lines += [
        f'## {name}',
        '',
        f'![{name}]({name}/curves.png)',
        '',
        f'The notebook: {seed_notebook.load(name).note}',
        '',
        *_epoch_table(r),
        '',
    ]
  text = '\n'.join(lines)
  with open(os.path.join(root, 'REPORT.md'), 'w') as f:
    f.write(text)
  return text


def _summary(
    rows: list[dict],
    data: str,
    command: str,
    wall_seconds: float | None,
    machines: list[str],
) -> list[str]:
  """The report's header, its table of rungs, and how to read it."""
  tolerance = seed_notebook.TOLERANCE_POINTS
  lines = [
      "# The seed's ladder, reproduced",
      '',
      f'- Machine: {" | ".join(machines) or "not recorded by the runs"}',
      f'- Data: {data}',
      f'- Command: `{command}`',
      f'- Written: {datetime.datetime.now().isoformat(timespec="seconds")}',
      '',
      '| rung | seed final | ours final | ours best | ours, last '
      f'{LAST} | Keras 2.3.1, same data: final; last {LAST} | gap | mean '
      f'\\|diff\\| (epochs) | within {tolerance} | params | epochs | s/epoch '
      '(fastest) | total | commit |',
      '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|',
  ]
  lines += [_summary_line(r) for r in rows]
  total = sum(r['total_sec'] for r in rows)
  lines += [
      '',
      f'Total training time: {total / 60:.1f} min (the sum of '
      "the rungs' epochs).",
  ]
  if wall_seconds is not None:
    lines += [
        f'Wall-clock time of the command: {wall_seconds / 60:.1f} min '
        '(with data loading, compilation and checkpoints).'
    ]
  lines += [
      '',
      "Accuracies are on the test split, as the seed's validation "
      "data was. The seed's final is what the notebook printed after "
      "all its epochs; the gap (ours - seed's, in points) and the "
      f'within-{tolerance}-points verdict need all of them run. Mean '
      '|diff| is the mean absolute difference of test accuracy, in '
      'points, over the epochs both printed (the notebook printed '
      'only some); a rung it printed no log for is compared with the '
      f'rung its record names. Last {LAST}: the mean ± sd of test accuracy '
      f'over the last {LAST} epochs. Keras 2.3.1, same data: the '
      "notebook's own cell in the seed's Keras on the same images "
      '(benchmarks/keras23_side_by_side.py), where it has run. s/epoch is '
      'the median epoch, with the fastest in brackets. Commit: the code '
      "each run was trained with (its code.json; '+dirty': with uncommitted "
      "changes). A rung off the seed's protocol (fewer steps per epoch, "
      'another split, synthetic data) is not compared with the seed at all.',
      '',
  ]
  return lines
