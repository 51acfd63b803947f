"""Which checkpoints a run keeps: the newest few and the best by score."""

import types

from cifar_jax.runs import retention


def _checkpoints(*steps):
  return [types.SimpleNamespace(step=s) for s in steps]


def test_keep_best_preserves_only_the_best_scored_step():
  policy = retention.KeepBest({10: 0.5, 20: 0.7, 30: None, 40: 0.6})
  kept = policy.should_preserve(_checkpoints(10, 20, 30, 40), context=None)
  assert kept == [False, True, False, False]


def test_keep_best_gives_a_tie_to_the_later_step():
  policy = retention.KeepBest({10: 0.7, 20: 0.7})
  kept = policy.should_preserve(_checkpoints(10, 20), context=None)
  assert kept == [False, True]


def test_keep_best_keeps_nothing_when_no_step_ends_an_epoch():
  policy = retention.KeepBest({10: None, 20: None})
  assert policy.should_preserve(_checkpoints(10, 20), context=None) == [
      False,
      False,
  ]


def test_score_is_the_checkpoints_val_accuracy_or_none_mid_epoch():
  assert retention.score({'val_accuracy': 0.61}) == 0.61
  assert retention.score({'val_accuracy': None}) is None
  # Older checkpoints: an epoch's end has its history row and no time spent.
  row = {'val_accuracy': 0.55}
  assert retention.score({'history': [row], 'epoch_seconds': 0.0}) == 0.55
  assert retention.score({'history': [row], 'epoch_seconds': 12.5}) is None
  assert retention.score({'history': [], 'epoch_seconds': 0.0}) is None
