"""The figures a notebook shows: images with labels or guesses, confusions."""

import io

import numpy as np
import pytest
from PIL import Image

from cifar_jax.reporting import plots

CLASSES = ('cat', 'dog', 'ship', 'truck')


def _images(n: int) -> np.ndarray:
  return np.random.default_rng(0).integers(0, 256, (n, 8, 8, 3), np.uint8)


def test_a_figure_shows_in_jupyter_as_the_png_it_saves():
  fig = plots.image_grid(_images(3), ['a', 'b', 'c'])
  png = fig._repr_png_()  # pylint: disable=protected-access
  image = Image.open(io.BytesIO(png))
  assert image.format == 'PNG'
  width, height = fig.get_size_inches() * 100
  assert image.size == (round(width), round(height))


def test_image_grid_puts_each_label_over_its_image_in_rows():
  images = _images(10)
  fig = plots.image_grid(images, [f'label {k}' for k in range(10)], columns=4)
  assert len(fig.axes) == 12  # 3 rows of 4; the last two empty.
  for k, ax in enumerate(fig.axes[:10]):
    assert ax.get_title() == f'label {k}'
    np.testing.assert_array_equal(ax.get_images()[0].get_array(), images[k])
  assert not fig.axes[10].get_images() and not fig.axes[11].get_images()


def test_predictions_show_the_top_classes_and_colour_the_true_one():
  probabilities = np.array(
      [[0.1, 0.6, 0.2, 0.1], [0.05, 0.15, 0.3, 0.5]]
  )  # Guesses: dog, truck.
  fig = plots.predictions_figure(
      _images(2), probabilities, CLASSES, labels=[1, 2], top=3
  )
  pictures, bars = fig.axes[:2], fig.axes[2:]  # Row 1: images; row 2: bars.
  assert [p.get_title() for p in pictures] == ['dog', 'ship']
  assert [p.title.get_color() for p in pictures] == ['green', 'red']
  # Bars bottom to top: the third, second and first most likely classes.
  names = [t.get_text() for t in bars[1].get_yticklabels()]
  assert names == ['dog', 'ship', 'truck']
  widths = [r.get_width() for r in bars[1].patches]
  assert widths == [0.15, 0.3, 0.5]


def test_confusion_matrix_figure_writes_every_count_in_its_cell():
  counts = np.array([[5, 1], [0, 7]])
  fig = plots.confusion_matrix_figure(counts, ('cat', 'dog'))
  texts = {t.get_position(): t.get_text() for t in fig.axes[0].texts}
  assert texts == {(0, 0): '5', (1, 0): '1', (0, 1): '0', (1, 1): '7'}


def _flat_history(num_epochs: int) -> list[dict[str, float]]:
  """A run's history whose curves are flat: only the epochs matter."""
  return [
      {
          'epoch': e,
          'loss': 1.0,
          'accuracy': 0.5,
          'val_loss': 1.0,
          'val_accuracy': 0.5,
      }
      for e in range(1, num_epochs + 1)
  ]


def _styles(figure) -> dict[str, str]:
  """Each line's label -> its line style, on the accuracy panel."""
  return {l.get_label(): l.get_linestyle() for l in figure.axes[0].lines}


def test_the_seed_is_dashed_and_another_run_dotted_with_or_without_the_seed():
  rows = _flat_history(2)
  others = [('Keras 3', rows)]
  with_seed = _styles(plots.curves_figure(rows, '', ('seed', rows), others))
  assert with_seed['test, seed'] == '--'
  assert with_seed['test, Keras 3'] == ':'
  assert with_seed['test'] == '-'
  without_seed = _styles(plots.curves_figure(rows, '', None, others))
  assert without_seed['test, Keras 3'] == ':'
  assert 'test, seed' not in without_seed


def test_a_seed_that_printed_none_of_the_epochs_is_not_in_the_legend():
  rows = _flat_history(1)
  styles = _styles(plots.curves_figure(rows, '', ('seed', []), ()))
  assert set(styles) == {'training', 'test'}


@pytest.mark.parametrize('num_epochs', [5, 20, 100, 200])
def test_epoch_ticks_are_whole_round_numbers_however_long_the_run(num_epochs):
  rows = _flat_history(num_epochs)
  figure = plots.curves_figure(rows)
  figure.canvas.draw()
  for ax in figure.axes:
    ticks = [t for t in ax.get_xticks() if 1 <= t <= num_epochs]
    assert len(ticks) >= 3
    assert all(float(t).is_integer() for t in ticks), ticks
    # One step between ticks, 1, 2 or 5 times a power of ten.
    steps = set(np.diff(ticks))
    assert len(steps) == 1, ticks
    (step,) = steps
    assert step / 10 ** np.floor(np.log10(step)) in (1, 2, 5), ticks
