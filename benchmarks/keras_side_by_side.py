"""A rung trained in Keras 3 on the same data, beside ours and the seed's.

    pip install -e '.[bench]'
    JAX_PLATFORMS=cpu python benchmarks/keras_side_by_side.py \
        --rung bn_aug_sgd --workdir /tmp/keras_bn_aug_sgd \
        [--ours ckpt/bn_aug_sgd] [--epochs 20] \
        --config.data.name=image_folder --config.data.dir=cifar10-jpeg.zip

When one of our rungs ends more than a little below the seed notebook, this
says whether the gap is ours or the data's: the same model and optimizer in
Keras 3 on TensorFlow (`keras_peer.keras_model`: the same layers,
initialisers, MaxNorm, SGD with inverse-time decay or Adam, the
augmentation as RandomTranslation/RandomFlip layers), trained with
`model.fit` on exactly the images and labels `main` reads for the config.
After every epoch it writes `history.json` (our format) and `curves.png`
over the epochs Keras trained: our run (--ours, solid), the seed notebook
(dashed, where it printed those epochs) and Keras 3 (dotted). The same
command on a finished run only redraws `curves.png`.
The model is saved after every epoch, so the same command resumes an
interrupted run from its last epoch (Keras does not save its shuffling
state, so a resumed run differs from an uninterrupted one by its order).

A rung that continues another (deep_adam_aug: the seed fit the trained
deep_adam again without compile()) starts from our run of that rung,
`--config.init_from=<run dir>`, as `main` does: its weights, BatchNorm
statistics and, with `init_from_optimizer`, Adam's moments and update
count put into the Keras model and its optimizer
(`keras_peer.load_ours`). Both
models then start from the very same state, and the curves show what the
two frameworks make of the same epochs from there.
"""

import os
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('KERAS_BACKEND', 'tensorflow')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import ml_collections
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# pylint: disable=g-import-not-at-top
import keras_peer
from cifar_jax import cli
from cifar_jax.data import images
from cifar_jax.data import input_pipeline
from cifar_jax.errors import UserError
from cifar_jax.reporting import records
from cifar_jax.reporting import seed_notebook

# pylint: enable=g-import-not-at-top

RUNG = flags.DEFINE_string('rung', None, 'The config, e.g. bn_aug_sgd.')
WORKDIR = cli.define_workdir('Where the Keras run lives.')
OURS = flags.DEFINE_string(
    'ours', None, 'A cifar_jax run directory of the rung (its history.json).'
)
EPOCHS = flags.DEFINE_integer(
    'epochs', None, "Epochs in all (default: the rung's).", lower_bound=1
)
OVERRIDES = cli.define_config_overrides()

MODEL_FILE = 'keras_model.keras'
_KEYS = ('loss', 'accuracy', 'val_loss', 'val_accuracy')  # Of fit's history.


def _arrays(
    data: ml_collections.ConfigDict, split: str
) -> tuple[np.ndarray, np.ndarray]:
  ds = input_pipeline.load_split(data, split)
  return images.to_unit_range(ds.images, np.float32), ds.labels


def train(
    config: ml_collections.ConfigDict,
    workdir: str,
    epochs: int,
    ours: list[dict],
) -> list[dict]:
  """Trains (or resumes) the Keras run up to `epochs`; its history rows.

  `ours` is our run's history, drawn beside it ([] for none).
  """
  import keras  # pylint: disable=g-import-not-at-top

  os.makedirs(workdir, exist_ok=True)
  model_path = os.path.join(workdir, MODEL_FILE)
  history_path = os.path.join(workdir, 'history.json')
  history = keras_peer.read_history(workdir)
  if len(history) >= epochs:  # Finished: main only redraws its curves.
    return history
  if history and not os.path.exists(model_path):
    raise UserError(f'{history_path} has epochs but {model_path} is missing.')
  keras.utils.set_random_seed(config.seed + len(history))
  if history:
    model = keras.models.load_model(model_path)
    print(f'Resuming the Keras run at epoch {len(history) + 1}.')
  else:
    model = keras_peer.keras_model(config)
    if config.init_from:
      print(f'Keras starts from {keras_peer.load_ours(config, model)}.')
  x, y = _arrays(config.data, config.data.train_split)
  eval_x, eval_y = _arrays(config.data, config.data.eval_split)

  class SaveEachEpoch(keras.callbacks.Callback):
    """Records the epoch, then saves the model and its history."""

    def on_epoch_begin(self, epoch, logs=None):
      self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
      row = {k: float(v) for k, v in logs.items() if k in _KEYS}
      seconds = time.perf_counter() - self.start
      history.append(dict(epoch=epoch + 1, **row, seconds=seconds))
      tmp = os.path.join(workdir, f'tmp-{os.getpid()}.keras')
      self.model.save(tmp)
      os.replace(tmp, model_path)  # The model, then its history: a crash
      records.write_json(history_path, history)  # re-runs one epoch.
      keras_peer.draw(workdir, config.seed_rung, ours, history)

  if len(history) < epochs:
    model.fit(
        x,
        y,
        batch_size=config.batch_size,
        epochs=epochs,
        initial_epoch=len(history),
        validation_data=(eval_x, eval_y),
        validation_batch_size=config.eval_batch_size,
        shuffle=True,
        verbose=2,
        callbacks=[SaveEachEpoch()],
    )
  return history


def main(argv: list[str]) -> None:
  del argv
  with cli.exit_on_errors():
    config = keras_peer.checked_rung(RUNG.value, WORKDIR.value)
    if config.init_from_optimizer and not config.init_from:
      parent = seed_notebook.load(RUNG.value).continues_from or 'another run'
      raise UserError(
          f'{RUNG.value} continues {parent}, as the seed did: pass '
          f'--config.init_from=<our run of {parent}> (Keras starts from its '
          'state), or --config.init_from_optimizer=false to start from '
          'scratch.'
      )
    ours = keras_peer.ours_history(OURS.value)
    history = train(
        config, WORKDIR.value, EPOCHS.value or round(config.num_epochs), ours
    )
    keras_peer.draw(WORKDIR.value, config.seed_rung, ours, history)
  print(keras_peer.last_line('Keras 3', RUNG.value, WORKDIR.value, history))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
