"""The seed notebook's own record, and how a run of ours compares with it.

`seed_notebook.json` holds every epoch line the notebook printed (loss,
accuracy, val_loss, val_accuracy, seconds), per rung, exactly as printed:
where the notebook skipped epochs or a line was cut off, the record has the
same gaps. It is the one source of the seed's numbers: the ladder's rungs
and their order, the final accuracies, the configs' docstrings, the overlay
in every ladder run's curves.png and the ladder report all read it.
"""

import dataclasses
import functools
import json
import os
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

FILENAME = 'seed_notebook.json'
COLUMNS = ('epoch', 'seconds', 'loss', 'accuracy', 'val_loss', 'val_accuracy')
# How close (in accuracy points) a final result must be to the seed's for
# the ladder report to call the rung reproduced.
TOLERANCE_POINTS = 1.5


@dataclasses.dataclass(frozen=True)
class SeedRun:
  """One rung as the notebook ran it."""

  rung: str
  num_epochs: int
  final_accuracy: float | None  # A fraction; None where nothing was printed.
  final_text: str  # As the seed printed it, e.g. '69.88%'.
  reference: str | None  # A rung whose curve stands in for a missing log.
  continues_from: str | None  # The rung whose trained model it started from.
  note: str  # What the notebook shows and leaves out for this rung.
  epochs: tuple[dict, ...]  # COLUMNS -> value; None where cut off.
  steps_per_epoch: int = 0  # fit_generator's, where it set one; 0: full passes.


@functools.cache
def _record() -> dict:
  with open(os.path.join(os.path.dirname(__file__), FILENAME)) as f:
    return json.load(f)


def rungs() -> tuple[str, ...]:
  """The ladder's rungs in the notebook's order."""
  return tuple(_record()['rungs'])


def load(rung: str) -> SeedRun:
  entry = _record()['rungs'][rung]
  columns = _record()['columns']
  epochs = tuple(dict(zip(columns, row)) for row in entry['epochs'])
  return SeedRun(rung=rung, **{**entry, 'epochs': epochs})


def summary(rung: str) -> str:
  """One line for a config's docstring: the seed's result and speed."""
  run = load(rung)
  seconds = [r['seconds'] for r in run.epochs]
  speed = f', {statistics.median(seconds):.0f} s per epoch' if seconds else ''
  result = run.final_text
  if run.final_accuracy is not None:
    result += ' test accuracy'
  epochs = f'{run.num_epochs} epochs{speed}'
  return f'Seed notebook (Keras 2.3, laptop CPU): {result} after {epochs}.'


def reference(rung: str, up_to_epoch: int) -> tuple[str, list[dict]] | None:
  """(label, rows) of the seed's curve to draw beside a run of `rung`.

  Only the epochs the run has reached. A rung the notebook printed no log
  for is drawn against the rung its record names (large: large_100, the
  same model and optimizer with a slower decay). None for no rung ('').
  """
  if not rung:
    return None
  run = load(rung)
  label = 'seed notebook (Keras 2.3)'
  if run.reference:
    label = f'{run.reference} in the {label}'
    run = load(run.reference)
  return label, [r for r in run.epochs if r['epoch'] <= up_to_epoch]


def protocol_differences(config: Mapping[str, Any], rung: str) -> list[str]:
  """How a run's config departs from the seed's protocol for `rung` (its
  steps per epoch over CIFAR-10's 50,000 training images, each epoch
  evaluated on the 10,000 test images). With any, its epochs are not the
  seed's: nothing of it may be set beside the seed's numbers."""
  data, found = config['data'], []
  if config.get('steps_per_epoch', 0) != load(rung).steps_per_epoch:
    found.append(f'{config["steps_per_epoch"]} steps per epoch')
  if data['name'] == 'synthetic':
    found.append('synthetic data')
  if data['train_split'] != 'train':
    found.append(f'trained on {data["train_split"]}')
  if data['eval_split'] != 'test':
    found.append(f'evaluated on {data["eval_split"]}')
  return found


def comparison(
    rung: str, title: str, differences: Sequence[str], epochs: int
) -> tuple[str, tuple[str, list[dict]] | None]:
  """A run's plot title and the seed's curve to draw beside it (`reference`):
  none for a run off the seed's protocol, whose title says why; a run of
  fewer epochs than the seed's (a scaled ladder) says that too."""
  if not rung:
    return title, None
  if differences:
    return f"{title} (not the seed's protocol: {', '.join(differences)})", None
  if epochs < load(rung).num_epochs:
    title += f" ({epochs} of the seed's {load(rung).num_epochs} epochs)"
  return title, reference(rung, epochs)


def accuracy_by_epoch(rows: Sequence[dict]) -> dict[int, float]:
  """{epoch: val_accuracy} of the rows that printed one."""
  return {
      r['epoch']: r['val_accuracy']
      for r in rows
      if r['val_accuracy'] is not None
  }


@dataclasses.dataclass(frozen=True)
class Comparison:
  """A run of ours against the seed's, in accuracy points (percent)."""

  final: float
  best: float
  best_epoch: int
  seed_final: float | None
  # ours - seed's, only when ours ran all the seed's epochs (else None).
  gap: float | None
  # Mean |ours - seed's| of val_accuracy over the epochs both printed.
  mean_abs_diff: float | None
  common_epochs: int
  within: bool | None  # |gap| <= TOLERANCE_POINTS; None without a gap.


def compare(
    rung: str, history: Sequence[dict], comparable: bool = True
) -> Comparison:
  """Compares `history` (history.json's rows) with the seed's `rung`; only
  ours, where the run is not `comparable` (`protocol_differences`)."""
  run = load(rung)
  best = max(history, key=lambda h: h['val_accuracy'])
  final = 100 * history[-1]['val_accuracy']
  seed_final = None if run.final_accuracy is None else 100 * run.final_accuracy
  gap = None
  if seed_final is not None and history[-1]['epoch'] == run.num_epochs:
    gap = final - seed_final if comparable else None
  _, rows = reference(rung, up_to_epoch=history[-1]['epoch'] * comparable)
  seed_by_epoch = accuracy_by_epoch(rows)
  diffs = [
      abs(h['val_accuracy'] - seed_by_epoch[h['epoch']]) * 100
      for h in history
      if h['epoch'] in seed_by_epoch
  ]
  return Comparison(
      final=final,
      best=100 * best['val_accuracy'],
      best_epoch=best['epoch'],
      seed_final=seed_final,
      gap=gap,
      mean_abs_diff=statistics.fmean(diffs) if diffs else None,
      common_epochs=len(diffs),
      within=None if gap is None else abs(gap) <= TOLERANCE_POINTS,
  )
