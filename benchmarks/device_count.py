"""How far apart runs on 1, 2, 4 and 8 devices end up, and why.

    python benchmarks/device_count.py [--epochs 20]

One process with 8 fake CPU devices trains `configs/test.py` (synthetic
data, 500 examples, batch 32: 16 steps per epoch with a partial last batch)
on meshes of 1, 2, 4 and 8 devices and prints the largest relative
difference of any epoch's loss and val_loss from the one-device run.

Two variants: 'calm' (BatchNorm, no dropout or augmentation; what
tests/scale_out_test.py checks to 1e-4) and 'random' (BatchNorm, dropout,
flips, shifts, zoom, crops, cutout). For scale, it also trains the one-device
run again from initial parameters nudged by a relative 1e-7, the size of the
rounding differences between device counts: how fast that grows is a
property of training, not of sharding.
"""

import os
import platform

os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '')
    + ' --xla_force_host_platform_device_count=8'
)
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top
import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from cifar_jax import cli  # pylint: disable=g-import-not-at-top
from cifar_jax.config import loading  # pylint: disable=g-import-not-at-top
from cifar_jax.reporting import records  # pylint: disable=g-import-not-at-top
from cifar_jax import train  # pylint: disable=g-import-not-at-top
from cifar_jax.training import experiment  # pylint: disable=g-import-not-at-top
from cifar_jax.training import mesh  # pylint: disable=g-import-not-at-top
from cifar_jax.training import steps  # pylint: disable=g-import-not-at-top

VARIANTS = {
    'calm': {'model.conv_dropout': (0.0,), 'model.hidden_dropout': 0.0},
    'random': {
        'augment.horizontal_flip': True,
        'augment.width_shift_range': 0.1,
        'augment.zoom_range': 0.1,
        'augment.crop_padding': 2,
        'augment.cutout_size': 4,
    },
}


def make_config(variant: str):
  config = loading.config_module('test').get_config()
  config.data.synthetic_train_size = 500
  config.model.batch_norm = True
  config.optimizer.learning_rate = 0.001  # as tests/scale_out_test.py
  for key, value in VARIANTS[variant].items():
    section, name = key.split('.')
    config[section][name] = value
  return config


def losses(
    config, num_devices: int, epochs: int, nudge: float = 0.0
) -> np.ndarray:
  """(epochs, 2): each epoch's training loss and val_loss."""
  exp = experiment.create_experiment(
      config, mesh.create_mesh(jax.devices()[:num_devices])
  )
  run = exp.start(config.seed)
  state = run.state
  if nudge:
    leaves, treedef = jax.tree.flatten(state.params)
    keys = jax.random.split(jax.random.key(99), len(leaves))
    state = state.replace(
        params=jax.tree.unflatten(
            treedef,
            [
                x * (1 + nudge * jax.random.normal(k, x.shape))
                for x, k in zip(leaves, keys)
            ],
        )
    )
  run.state, rows = state, []
  for _ in range(epochs):
    run.epoch_metrics = steps.empty_metrics(exp.replicated)
    train.run_steps(exp, run, run.step + exp.steps_per_epoch)
    evaluation = train.evaluate(exp, run.state)
    rows.append((steps.computed(run.epoch_metrics)['loss'], evaluation['loss']))
  return np.array(rows)


def max_relative(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.max(np.abs(a - b) / np.abs(b)))


EPOCHS = flags.DEFINE_integer('epochs', 20, 'Epochs of 16 steps per run.')


def main(argv):
  del argv
  epochs = EPOCHS.value
  print(
      f'Machine: {records.machine_description()}; JAX {jax.__version__}, '
      f'{platform.python_version()}; {epochs} epochs x 16 steps'
  )
  print(
      'variant  | 2 devices | 4 devices | 8 devices | 1 device, params '
      'nudged by 1e-7'
  )
  for variant in VARIANTS:
    config = make_config(variant)
    reference = losses(config, 1, epochs)
    cells = [
        max_relative(losses(config, n, epochs), reference) for n in (2, 4, 8)
    ]
    cells.append(max_relative(losses(config, 1, epochs, nudge=1e-7), reference))
    print(
        f'{variant:8} | ' + ' | '.join(f'{c:9.1e}' for c in cells), flush=True
    )


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
