"""benchmarks/keras_peer.comparison_curves: what the Keras comparison plot
draws (pure Python: Keras not needed)."""

from benchmarks import keras_peer
from cifar_jax.reporting import seed_notebook


def _rows(epochs: int, accuracy: float) -> list[dict]:
  keys = ('loss', 'accuracy', 'val_loss', 'val_accuracy')
  return [
      {'epoch': e, **{k: accuracy for k in keys}} for e in range(1, epochs + 1)
  ]


def test_a_short_keras_run_is_drawn_over_its_own_epochs_with_the_seeds():
  ours, keras_rows = _rows(100, 0.7), _rows(9, 0.6)
  title, rows, reference, others = keras_peer.comparison_curves(
      'deep_adam', ours, keras_rows, 'Keras 3'
  )
  assert [r['epoch'] for r in rows] == list(range(1, 10))
  assert others == [('Keras 3', keras_rows)]
  # The seed printed deep_adam's epochs 1-9 and 91-100: only 1-9 remain.
  seed_epochs = [r['epoch'] for r in seed_notebook.load('deep_adam').epochs]
  assert max(seed_epochs) == 100
  assert [r['epoch'] for r in reference[1]] == [
      e for e in seed_epochs if e <= 9
  ]
  assert title == (
      'deep_adam, epochs 1-9: cifar_jax, the seed notebook and Keras 3'
  )


def test_no_seed_curve_when_the_seed_printed_none_of_keras_epochs():
  # deep_adam_aug: the seed printed epochs 184-200 only.
  title, rows, reference, _ = keras_peer.comparison_curves(
      'deep_adam_aug', _rows(200, 0.8), _rows(20, 0.8), 'Keras 3'
  )
  assert reference is None
  assert len(rows) == 20
  assert title == 'deep_adam_aug, epochs 1-20: cifar_jax and Keras 3'


def test_without_a_run_of_ours_keras_is_the_solid_curve():
  keras_rows = _rows(3, 0.5)
  title, rows, reference, others = keras_peer.comparison_curves(
      'bn_aug_sgd', [], keras_rows, 'Keras 3'
  )
  assert rows == keras_rows and others == []
  assert [r['epoch'] for r in reference[1]] == [1, 2]  # Of 1-2, 43-50.
  assert title == 'bn_aug_sgd, epochs 1-3: the seed notebook and Keras 3'
