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
import subprocess
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# pylint: disable=g-import-not-at-top
import keras_peer
from cifar_jax import cli
from cifar_jax import ladder
from cifar_jax.data import input_pipeline
from cifar_jax.errors import UserError
from cifar_jax.reporting import plots
from cifar_jax.reporting import records

# pylint: enable=g-import-not-at-top

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PEER = os.path.join(HERE, 'keras23', 'peer.py')
LABEL = 'Keras 2.3.1, same data'

RUNG = flags.DEFINE_string('rung', None, 'The config, e.g. deep_adam.')
WORKDIR = cli.define_workdir('Where the Keras 2.3.1 run lives.')
OURS = flags.DEFINE_string(
    'ours', None, 'A cifar_jax run directory of the rung (its history.json).'
)
EPOCHS = flags.DEFINE_integer(
    'epochs', None, "Stop after this epoch (default: the cell's).", lower_bound=1
)
INIT = flags.DEFINE_string(
    'init', None, 'The Keras 2.3.1 run this rung continues (its workdir).'
)
OVERRIDES = cli.define_config_overrides()


def peer_python() -> str:
  """The peer venv's interpreter: $KERAS23_PYTHON, else .venv-keras23."""
  return os.environ.get(
      'KERAS23_PYTHON', os.path.join(REPO, '.venv-keras23', 'bin', 'python')
  )


def write_data(data, path: str) -> None:
  """The config's train and eval splits, as cifar_jax reads them, to .npz."""
  arrays = {}
  for name, split in (('train', data.train_split), ('test', data.eval_split)):
    ds = input_pipeline.load_split(data, split)
    arrays[f'{name}_images'], arrays[f'{name}_labels'] = ds.images, ds.labels
  records.write_atomically(path, lambda tmp: np.savez(tmp, **arrays))


def run_peer(*args: str, **kwargs) -> subprocess.CompletedProcess:
  """peer.py in the Keras 2.3.1 venv; UserError if that venv is missing."""
  python = peer_python()
  if not os.path.exists(python):
    raise UserError(
        f'No Keras 2.3.1 venv at {python}: run bash '
        'benchmarks/keras23/make_venv.sh (or set $KERAS23_PYTHON).'
    )
  return subprocess.run([python, PEER, *args], check=False, **kwargs)


def main(argv: list[str]) -> None:
  del argv
  with cli.exit_on_errors():
    if not RUNG.value or not WORKDIR.value:
      raise UserError('--rung and --workdir are required.')
    if RUNG.value not in ladder.RUNGS:
      raise UserError(f'Unknown rung {RUNG.value!r}; one of {ladder.RUNGS}.')
    config = ladder.rung_config(RUNG.value, 1.0, cli.override_values())
    workdir = WORKDIR.value
    ours = []
    if OURS.value:
      ours = keras_peer.read_history(OURS.value)
      if not ours:
        raise UserError(f'--ours {OURS.value} has no history.json.')
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
    result = run_peer(*args)
    history = keras_peer.read_history(workdir)
    if history:
      title, rows, reference, others = keras_peer.comparison_curves(
          config.seed_rung, ours, history, LABEL, peer='Keras 2.3.1'
      )
      records.write_atomically(
          os.path.join(workdir, 'curves.png'),
          lambda tmp: plots.curves(rows, tmp, title, reference, others),
      )
    if result.returncode:
      raise UserError(f'The Keras 2.3.1 peer failed (exit {result.returncode}).')
  last = history[-1]
  print(
      f'Keras 2.3.1, {RUNG.value}, epoch {last["epoch"]}: val_accuracy '
      f'{100 * last["val_accuracy"]:.2f}%  ({workdir}/curves.png)'
  )


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
