"""A rung trained by the seed's own Keras 2.3.1 on the same data, beside ours.

    bash benchmarks/keras23/make_venv.sh        # once: .venv-keras23
    JAX_PLATFORMS=cpu python benchmarks/keras23_side_by_side.py \
        --rung deep_adam_aug_dropout --workdir /tmp/k23_dad \
        [--ours ckpt/deep_adam_aug_dropout] [--epochs 20] [--init <k23 run>] \
        --config.data.name=image_folder --config.data.dir=cifar10-jpeg.zip

The seed notebook's own cell (`keras23/seed_cells.py`: its layers, compile
and fit call as written) runs in Keras 2.3.1 on TensorFlow 1.15
(`keras23/peer.py`, in the Python 3.7 venv that `keras23/make_venv.sh`
builds), on exactly the images and labels `main` reads for the config:
cifar_jax's reader writes them once to `<workdir>/data.npz`. After every
epoch the peer writes `history.json` (our format) and its state, so the
same command resumes an interrupted run; this script then draws
`curves.png`: the seed notebook (dashed), Keras 2.3.1 on the same data
(dotted) and our run (--ours, solid), test and training accuracy.

A rung that continues another (deep_adam_aug continues deep_adam, as the
seed did) starts from the peer's run of that rung: --init <its workdir>.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# pylint: disable=g-import-not-at-top
import keras_peer
from cifar_jax import cli
from cifar_jax.data import input_pipeline
from cifar_jax.errors import UserError
from cifar_jax.reporting import records

# pylint: enable=g-import-not-at-top

PEER = 'Keras 2.3.1'

RUNG = flags.DEFINE_string('rung', None, 'The config, e.g. deep_adam.')
WORKDIR = cli.define_workdir('Where the Keras 2.3.1 run lives.')
OURS = flags.DEFINE_string(
    'ours', None, 'A cifar_jax run directory of the rung (its history.json).'
)
EPOCHS = flags.DEFINE_integer(
    'epochs',
    None,
    "Stop after this epoch (default: the cell's).",
    lower_bound=1,
)
INIT = flags.DEFINE_string(
    'init', None, 'The Keras 2.3.1 run this rung continues (its workdir).'
)
OVERRIDES = cli.define_config_overrides()


def write_data(data, path: str) -> None:
  """The config's train and eval splits, as cifar_jax reads them, to .npz."""
  arrays = {}
  for name, split in (('train', data.train_split), ('test', data.eval_split)):
    ds = input_pipeline.load_split(data, split)
    arrays[f'{name}_images'], arrays[f'{name}_labels'] = ds.images, ds.labels

  def write(tmp):
    with open(tmp, 'wb') as f:  # A file: np.savez would add '.npz' to a name.
      np.savez(f, **arrays)

  records.write_atomically(path, write)


def main(argv: list[str]) -> None:
  del argv
  with cli.exit_on_errors():
    config = keras_peer.checked_rung(RUNG.value, WORKDIR.value)
    workdir = WORKDIR.value
    ours = keras_peer.ours_history(OURS.value)
    os.makedirs(workdir, exist_ok=True)
    data_path = os.path.join(workdir, 'data.npz')
    if not os.path.exists(data_path):
      write_data(config.data, data_path)
    args = ['train', '--rung', RUNG.value, '--data', data_path]
    args += ['--workdir', workdir, '--seed', str(config.seed)]
    if EPOCHS.value:
      args += ['--epochs', str(EPOCHS.value)]
    if INIT.value:
      args += ['--init', os.path.join(INIT.value, 'state.npz')]
    result = keras_peer.run_keras23(*args)
    history = keras_peer.read_history(workdir)
    if history:
      keras_peer.draw(workdir, config.seed_rung, ours, history, PEER)
    if result.returncode:
      raise UserError(f'The {PEER} peer failed (exit {result.returncode}).')
  print(keras_peer.last_line(PEER, RUNG.value, workdir, history))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
