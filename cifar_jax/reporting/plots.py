"""The pictures people judge a run by: learning curves, confusion matrix,
images with their labels or the model's guesses.

The seed's author judged every model from two plots side by side, accuracy
and loss per epoch, training against test; `curves` draws the same, with
the notebook's own curves dashed beside a ladder rung's. The `*_figure`
functions return the figure (a notebook shows it); the others write PNGs.
Rendered headless (Agg), so it works on any server.
"""

from collections.abc import Sequence
import io
import os

import matplotlib
import matplotlib.figure
from matplotlib import ticker
import numpy as np

if not os.environ.get('MPLBACKEND'):  # A notebook's inline backend stays.
  matplotlib.use('Agg')


class Figure(matplotlib.figure.Figure):
  """A figure outside pyplot (nothing to close), shown as a PNG by Jupyter."""

  def _repr_png_(self) -> bytes:
    buffer = io.BytesIO()
    self.savefig(buffer, format='png', dpi=100)
    return buffer.getvalue()


CURVES_SIZE = (12, 5)  # Inches; at 100 dpi the PNG is 1200 x 500.
_COMPARED_STYLES = ('s--', '^:', 'v-.')


def curves_figure(
    history: Sequence[dict[str, float]],
    title: str = '',
    reference: tuple[str, Sequence[dict]] | None = None,
    others: Sequence[tuple[str, Sequence[dict]]] = (),
) -> Figure:
  """The seed's two panels, accuracy and loss per epoch, training and test.

  `reference` is (label, rows) of another run's curves (the seed notebook's)
  drawn dashed in the same colours; its missing values leave gaps. `others`
  are more such runs (e.g. the same rung in Keras 3), dotted, then dash-dot.
  """
  # The seed is always dashed and the others always dotted, then dash-dot,
  # so that a run keeps its style on a plot without the seed; a seed that
  # printed none of the run's epochs yet is not on it (nor in its legend).
  if reference is not None and not reference[1]:
    reference = None
  if len(others) > len(_COMPARED_STYLES) - 1:
    raise ValueError(
        f'At most {len(_COMPARED_STYLES) - 1} runs beside ours and the seed.'
    )
  compared = ([(reference, _COMPARED_STYLES[0])] if reference else []) + list(
      zip(others, _COMPARED_STYLES[1:])
  )
  epochs = [h['epoch'] for h in history]
  fig = Figure(figsize=CURVES_SIZE)
  acc, loss = fig.subplots(1, 2)
  for ax, key, name in ((acc, 'accuracy', 'Accuracy'), (loss, 'loss', 'Loss')):
    for prefix, split, color in (
        ('', 'training', 'C0'),
        ('val_', 'test', 'C1'),
    ):
      ours = [h[prefix + key] for h in history]
      ax.plot(epochs, ours, 'o-', color=color, label=split)
      for (label, rows), style in compared:
        xs, values = _with_gaps(rows, prefix + key)
        ax.plot(xs, values, style, color=color, alpha=0.7, markersize=3,
                label=f'{split}, {label}')  # fmt: skip
    ax.set_title(f'Model {name} per epoch')
    ax.set_xlabel('epoch')
    ax.set_ylabel(name.lower())
    ax.grid(alpha=0.3)
    if len(epochs) < 15:
      ax.set_xticks(epochs)
    else:  # Whole epochs, in round steps: 5, 10, 20 (not 2.5, nor 15).
      ax.xaxis.set_major_locator(
          ticker.MaxNLocator(integer=True, steps=[1, 2, 5, 10])
      )
  if title:
    fig.suptitle(title)
  # One legend, below the panels: inside, it covered the curves.
  handles, labels = acc.get_legend_handles_labels()
  fig.legend(handles, labels, loc='lower center', fontsize='small',
             ncol=min(len(labels), 4), frameon=False)  # fmt: skip
  rows = -(-len(labels) // 4)
  fig.tight_layout(rect=(0, 0.05 + 0.05 * rows, 1, 1))
  return fig


def _with_gaps(rows: Sequence[dict], key: str) -> tuple[list, list]:
  """(epochs, values) of `rows`, NaN where a value or an epoch is missing.

  The notebook printed only some epochs (e.g. 1-20 and 82-100): a NaN
  between two that are not consecutive keeps the line from drawing the
  epochs it never printed as a straight segment.
  """
  xs, values = [], []
  for r in rows:
    if xs and r['epoch'] > xs[-1] + 1:
      xs.append(xs[-1] + 1)
      values.append(np.nan)
    xs.append(r['epoch'])
    values.append(np.nan if r[key] is None else r[key])
  return xs, values


def curves(
    history: Sequence[dict[str, float]],
    path: str,
    title: str = '',
    reference: tuple[str, Sequence[dict]] | None = None,
    others: Sequence[tuple[str, Sequence[dict]]] = (),
) -> None:
  """Writes `curves_figure` as a PNG."""
  figure = curves_figure(history, title, reference, others)
  figure.savefig(path, dpi=100, format='png')


def confusion_matrix(
    labels: np.ndarray, predictions: np.ndarray, num_classes: int
) -> np.ndarray:
  """counts[true, predicted]."""
  counts = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(counts, (labels, predictions), 1)
  return counts


def confusion_matrix_figure(
    counts: np.ndarray, class_names: Sequence[str], title: str = ''
) -> Figure:
  """A heat map of `counts` with class names and the count in every cell."""
  n = len(class_names)
  fig = Figure(figsize=(1.0 + 0.7 * n, 0.6 + 0.7 * n))
  ax = fig.subplots()
  ax.imshow(counts, cmap='Blues')
  ax.set_xticks(range(n), class_names, rotation=45, ha='right')
  ax.set_yticks(range(n), class_names)
  ax.set_xlabel('predicted')
  ax.set_ylabel('true')
  threshold = counts.max() / 2
  for i in range(n):
    for j in range(n):
      color = 'white' if counts[i, j] > threshold else 'black'
      ax.text(j, i, str(counts[i, j]), ha='center', va='center', fontsize=8,
              color=color)  # fmt: skip
  ax.set_title(title or 'Confusion matrix')
  fig.tight_layout()
  return fig


def confusion_matrix_png(
    counts: np.ndarray, class_names: Sequence[str], path: str, title: str = ''
) -> None:
  """Writes `confusion_matrix_figure` as a PNG."""
  confusion_matrix_figure(counts, class_names, title).savefig(path, dpi=100)


def image_grid(
    images: np.ndarray,
    labels: Sequence[str] = (),
    columns: int = 8,
    title: str = '',
) -> Figure:
  """uint8 images (N, H, W, C) in rows of `columns`, each under its label."""
  rows = max(1, -(-len(images) // columns))
  fig = Figure(figsize=(1.2 * columns, 1.35 * rows))
  axes = fig.subplots(rows, columns, squeeze=False)
  for k, ax in enumerate(axes.flat):
    ax.axis('off')
    if k < len(images):
      ax.imshow(images[k], interpolation='nearest')
      if k < len(labels):
        ax.set_title(labels[k], fontsize=8)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  return fig


def predictions_figure(
    images: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    labels: Sequence[int] | None = None,
    top: int = 3,
) -> Figure:
  """Each image above its `top` classes and their probabilities.

  With `labels`, the title says the true class, green when the most likely
  class is it and red when not.
  """
  n = len(images)
  fig = Figure(figsize=(1.6 * n, 3.2))
  axes = fig.subplots(2, n, squeeze=False, height_ratios=(1, 0.8))
  for k in range(n):
    picture, bars = axes[0, k], axes[1, k]
    picture.imshow(images[k], interpolation='nearest')
    picture.axis('off')
    best = np.argsort(-probabilities[k])[:top]
    if labels is not None:
      color = 'green' if best[0] == labels[k] else 'red'
      picture.set_title(class_names[labels[k]], fontsize=9, color=color)
    bars.barh(range(top), probabilities[k][best][::-1], color='C0')
    bars.set_yticks(range(top), [class_names[i] for i in best][::-1])
    bars.set_xlim(0, 1)
    bars.tick_params(labelsize=7)
  fig.tight_layout()
  return fig
