"""A run's classes, in label order: part of what its weights mean.

Label i of a run is its i-th class name; data with other classes (or the
same in another order) would give its outputs other meanings, silently. So
a checkpoint's meta records them, and whatever reads its weights against
data (a resume, `init_from`, `evaluate`) compares them first.
"""

import json
import os
from collections.abc import Sequence
from typing import Any

from cifar_jax.errors import UserError
from cifar_jax.reporting import records


def saved(meta: dict[str, Any], directory: str) -> tuple[str, ...] | None:
  """The classes a checkpoint of `directory` (a run's `checkpoints/`) was
  trained on: its meta's, or (checkpoints written before the meta held
  them) its run's `dataset_info.json`'s."""
  if 'class_names' in meta:
    return tuple(meta['class_names'])
  try:
    run_dir = os.path.dirname(directory)
    with open(os.path.join(run_dir, records.DATASET_INFO)) as f:
      return tuple(json.load(f)['class_names'])
  except (OSError, ValueError, KeyError):
    return None


def check(
    trained: Sequence[str] | None, data: Sequence[str], what: str
) -> None:
  """Refuses data whose classes are not `trained`, in the same order.

  `what` opens the message: 'The checkpoints in X were', 'init_from=X
  was', ... (unknown classes, None, are not checked).
  """
  trained, data = list(trained or data), list(data)
  if trained == data:
    return
  added = [c for c in data if c not in trained]
  missing = [c for c in trained if c not in data]
  change = '; '.join(
      [f'added {added}'] * bool(added) + [f'missing {missing}'] * bool(missing)
  )
  raise UserError(
      f'{what} trained on the classes {trained}, but the data has {data} '
      f'({change or "the same classes in another order"}): its labels '
      'would mean other classes. Use the data it was trained on.'
  )
