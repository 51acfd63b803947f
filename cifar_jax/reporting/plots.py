"""The pictures people judge a run by: learning curves, confusion matrix.

The seed's author judged every model from two plots side by side, accuracy
and loss per epoch, training against test; `curves` draws the same, with
the notebook's own curves dashed beside a ladder rung's. Rendered headless
(Agg), so it works on any server.
"""

from collections.abc import Sequence

import matplotlib
import matplotlib.figure
import numpy as np

matplotlib.use('Agg')
from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

CURVES_SIZE = (12, 4.5)  # Inches; at 100 dpi the PNG is 1200 x 450.
_COMPARED_STYLES = ('s--', '^:', 'v-.')


def curves_figure(
    history: Sequence[dict[str, float]],
    title: str = '',
    reference: tuple[str, Sequence[dict]] | None = None,
    others: Sequence[tuple[str, Sequence[dict]]] = (),
) -> matplotlib.figure.Figure:
  """The seed's two panels, accuracy and loss per epoch, training and test.

  `reference` is (label, rows) of another run's curves (the seed notebook's)
  drawn dashed in the same colours; its missing values leave gaps. `others`
  are more such runs (e.g. the same rung in Keras 3), dotted, then dash-dot.
  """
  compared = ([reference] if reference else []) + list(others)
  if len(compared) > len(_COMPARED_STYLES):
    raise ValueError(f'At most {len(_COMPARED_STYLES)} runs beside ours.')
  epochs = [h['epoch'] for h in history]
  fig, (acc, loss) = plt.subplots(1, 2, figsize=CURVES_SIZE)
  for ax, key, name in ((acc, 'accuracy', 'Accuracy'), (loss, 'loss', 'Loss')):
    for prefix, split, color in (
        ('', 'training', 'C0'),
        ('val_', 'test', 'C1'),
    ):
      ax.plot(
          epochs,
          [h[prefix + key] for h in history],
          'o-',
          color=color,
          label=split,
      )
      for (label, rows), style in zip(compared, _COMPARED_STYLES):
        values = [
            np.nan if r[prefix + key] is None else r[prefix + key] for r in rows
        ]
        ax.plot(
            [r['epoch'] for r in rows],
            values,
            style,
            color=color,
            alpha=0.7,
            markersize=3,
            label=f'{split}, {label}',
        )
    ax.set_title(f'Model {name} per epoch')
    ax.set_xlabel('epoch')
    ax.set_ylabel(name.lower())
    ax.legend(fontsize='small')
    ax.grid(alpha=0.3)
    if len(epochs) < 15:
      ax.set_xticks(epochs)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  return fig


def curves(
    history: Sequence[dict[str, float]],
    path: str,
    title: str = '',
    reference: tuple[str, Sequence[dict]] | None = None,
    others: Sequence[tuple[str, Sequence[dict]]] = (),
) -> None:
  """Writes `curves_figure` as a PNG."""
  fig = curves_figure(history, title, reference, others)
  fig.savefig(path, dpi=100, format='png')
  plt.close(fig)


def confusion_matrix(
    labels: np.ndarray, predictions: np.ndarray, num_classes: int
) -> np.ndarray:
  """counts[true, predicted]."""
  counts = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(counts, (labels, predictions), 1)
  return counts


def confusion_matrix_png(
    counts: np.ndarray, class_names: Sequence[str], path: str, title: str = ''
) -> None:
  """A heat map of `counts` with class names and the count in every cell."""
  n = len(class_names)
  fig, ax = plt.subplots(figsize=(1.0 + 0.7 * n, 0.6 + 0.7 * n))
  ax.imshow(counts, cmap='Blues')
  ax.set_xticks(range(n), class_names, rotation=45, ha='right')
  ax.set_yticks(range(n), class_names)
  ax.set_xlabel('predicted')
  ax.set_ylabel('true')
  threshold = counts.max() / 2
  for i in range(n):
    for j in range(n):
      ax.text(
          j,
          i,
          str(counts[i, j]),
          ha='center',
          va='center',
          fontsize=8,
          color='white' if counts[i, j] > threshold else 'black',
      )
  ax.set_title(title or 'Confusion matrix')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
