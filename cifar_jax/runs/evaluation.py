"""Evaluating a saved run: accuracy, loss, per class, confusion matrix.

The numbers equal what training logged for that checkpoint (same model,
same split, same test-time augmentation level `eval_tta`); another level
evaluates with the one test-time augmentation training uses,
`augment.tta_logits`. The command is `cifar_jax.evaluate`.
"""

import os

import numpy as np

from cifar_jax.data import input_pipeline
from cifar_jax.errors import UserError
from cifar_jax.errors import write_failure
from cifar_jax.reporting import plots
from cifar_jax.runs import classes
from cifar_jax.runs import inference


def _log_softmax(logits: np.ndarray) -> np.ndarray:
  shifted = logits - logits.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def metrics(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
  """Accuracy, mean cross-entropy, per-class accuracy, confusion counts."""
  predictions = logits.argmax(-1)
  log_p = _log_softmax(logits.astype(np.float64))
  loss = -log_p[np.arange(len(labels)), labels]
  counts = plots.confusion_matrix(labels, predictions, num_classes)
  with np.errstate(invalid='ignore'):
    per_class = np.diag(counts) / counts.sum(1)
  return {
      'accuracy': float((predictions == labels).mean()),
      'loss': float(loss.mean()),
      'per_class': per_class,
      'confusion': counts,
  }


def evaluate(
    workdir: str,
    checkpoint: str = 'latest',
    split: str = '',
    data_dir: str = '',
    tta_level: int | None = None,
) -> dict:
  """Evaluates, prints the report, writes confusion_matrix.png (if the run
  directory can be written to); returns the report."""
  if tta_level not in (None, 0, 1, 2):
    raise UserError(f'--tta_level must be 0, 1 or 2, not {tta_level}.')
  run = inference.load_run(workdir, checkpoint, tta_level)
  config = run.config
  if data_dir:
    config.data.dir = data_dir
  split = split or config.data.eval_split
  data = input_pipeline.load_split(config.data, split)
  what = f'{workdir} (checkpoint step {run.step}) was'
  classes.check(run.class_names, data.class_names, what)
  logits = inference.logits(run, data.images)
  result = metrics(logits, data.labels, len(run.class_names))
  print(
      f'{workdir}, checkpoint step {run.step}, {config.data.name} {split!r} '
      f'({len(data)} images), test-time augmentation level {run.tta.level} '
      f'({run.model.layers}):'
  )
  accuracy = f'{100 * result["accuracy"]:.2f}%'
  print(f'Accuracy: {accuracy} - loss: {result["loss"]:.4f}')
  print('Per class:')
  counts = result['confusion'].sum(1)
  for name, acc, count in zip(run.class_names, result['per_class'], counts):
    share = f'{100 * acc:6.2f}% of {count}' if count else f'no {split!r} images'
    print(f'  {name:>12}: {share}')
  path = os.path.join(workdir, 'confusion_matrix.png')
  title = (f'{os.path.basename(os.path.normpath(workdir))}, step '
           f'{run.step}, {split}: {accuracy}')  # fmt: skip
  try:
    plots.confusion_matrix_png(
        result['confusion'], run.class_names, path, title
    )
  except OSError as e:
    # The results above are the point; the picture is a convenience.
    cause = write_failure(e) or str(e)
    print(f'warning: could not write {path} ({cause}); the results stand.')
  else:
    print(f'Wrote {path}')
  return result
