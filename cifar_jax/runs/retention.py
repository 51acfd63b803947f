"""Which checkpoints a run keeps: the newest `keep`, plus the best one.

Retention goes through Orbax preservation policies rather than `best_fn`,
which deletes the newest checkpoints (google/orbax#526). Orbax writes a
checkpoint's metrics to disk only with `best_fn`, so a policy ranking by
them would forget every score after a restart; the scores here come from
each checkpoint's own `meta` (`score`), which `checkpointing.Checkpoints`
reads again whenever it opens the directory.
"""

import dataclasses
from typing import Any

from orbax.checkpoint import checkpoint_managers


@dataclasses.dataclass
class KeepBest:
  """An Orbax preservation policy: keep the step with the best score.

  `scores` (step -> val_accuracy of the epoch it ends, None mid-epoch) is
  the caller's and is kept up to date by it.
  """

  scores: dict[int, float | None]

  def should_preserve(self, checkpoints, *, context) -> list[bool]:
    del context
    best = best_step({c.step: self.scores[c.step] for c in checkpoints})
    return [c.step == best for c in checkpoints]


def best_step(scores: dict[int, float | None]) -> int | None:
  """The best checkpoint, the one definition of it (retention, and
  `--checkpoint best`): the highest score (`score`), the later step on a
  tie; None if no step has a score."""
  scored = [(v, s) for s, v in scores.items() if v is not None]
  return max(scored)[1] if scored else None


def policy(keep: int, scores: dict[int, float | None]):
  """Keeps a checkpoint if it is one of the newest `keep` or the best."""
  return checkpoint_managers.AnyPreservationPolicy(
      [checkpoint_managers.LatestN(n=keep), KeepBest(scores)]
  )


def score(meta: dict[str, Any]) -> float | None:
  """The val_accuracy a checkpoint is ranked by, None if it ends no epoch.

  Checkpoints saved before meta held it: an epoch's end is saved right
  after its history row, with no time yet spent on the next epoch.
  """
  if 'val_accuracy' in meta:
    return meta['val_accuracy']
  if meta.get('history') and meta.get('epoch_seconds') == 0.0:
    return meta['history'][-1]['val_accuracy']
  return None
