"""The Keras peers of a ConvNet rung: Keras 3's model, our state put into
it, the seed's own Keras 2.3.1 (`keras23/peer.py`, in its own Python 3.7
venv) and what their comparison plots draw.

For the benchmarks that run Keras beside cifar_jax (`cpu_vs_keras.py`,
`keras_side_by_side.py`, `keras23_side_by_side.py`) and the tests that
compare with them; Keras is imported only when a model is built. It
defines no flags, so tests can import it.
"""

from collections.abc import Sequence
import json
import os
import subprocess
from typing import Any

import jax
import ml_collections
import numpy as np

from cifar_jax import cli
from cifar_jax.errors import UserError
from cifar_jax import rungs
from cifar_jax.reporting import plots
from cifar_jax.reporting import records
from cifar_jax.reporting import seed_notebook
from cifar_jax.runs import resume
from cifar_jax.training import experiment
from cifar_jax.training import optimizers

_HERE = os.path.dirname(os.path.abspath(__file__))
KERAS23_PEER = os.path.join(_HERE, 'keras23', 'peer.py')


def keras23_python() -> str:
  """The Keras 2.3.1 venv's interpreter: $KERAS23_PYTHON, else the
  repository's .venv-keras23 (`keras23/make_venv.sh`)."""
  return os.environ.get(
      'KERAS23_PYTHON',
      os.path.join(os.path.dirname(_HERE), '.venv-keras23', 'bin', 'python'),
  )


def run_keras23(*args: str, **kwargs: Any) -> subprocess.CompletedProcess:
  """`keras23/peer.py *args` in the Keras 2.3.1 venv.

  Raises:
    UserError: the venv is missing.
  """
  python = keras23_python()
  if not os.path.exists(python):
    raise UserError(
        f'No Keras 2.3.1 venv at {python}: run bash '
        'benchmarks/keras23/make_venv.sh (or set $KERAS23_PYTHON).'
    )
  return subprocess.run([python, KERAS23_PEER, *args], check=False, **kwargs)


def keras_model(config: ml_collections.ConfigDict):
  """The rung's `models.ConvNet` in Keras 3, with its augmentation."""
  import keras  # pylint: disable=g-import-not-at-top

  m, aug = config.model, config.augment
  layers = [keras.Input((32, 32, 3))]
  if aug.width_shift_range or aug.height_shift_range:
    layers.append(
        keras.layers.RandomTranslation(
            aug.height_shift_range, aug.width_shift_range, fill_mode='nearest'
        )
    )
  if aug.zoom_range:
    layers.append(
        keras.layers.RandomZoom(
            aug.zoom_range, aug.zoom_range, fill_mode='nearest'
        )
    )
  if aug.horizontal_flip:
    layers.append(keras.layers.RandomFlip('horizontal'))

  def max_norm(value):
    return keras.constraints.MaxNorm(value) if value else None

  for i, features in enumerate(m.stage_features):
    for j, padding in enumerate(('same', m.second_conv_padding[i].lower())):
      layers.append(
          keras.layers.Conv2D(
              features,
              3,
              padding=padding,
              activation='relu',
              kernel_constraint=max_norm(config.optimizer.conv_max_norm),
          )
      )
      if m.batch_norm:
        layers.append(keras.layers.BatchNormalization())
      if j == 0 and m.conv_dropout[i]:
        layers.append(keras.layers.Dropout(m.conv_dropout[i]))
    layers.append(keras.layers.MaxPooling2D(2))
    if m.stage_dropout[i]:
      layers.append(keras.layers.Dropout(m.stage_dropout[i]))
  layers.append(keras.layers.Flatten())
  if m.flatten_dropout:
    layers.append(keras.layers.Dropout(m.flatten_dropout))
  for features in m.hidden_features:
    layers.append(
        keras.layers.Dense(
            features,
            activation='relu',
            kernel_constraint=max_norm(config.optimizer.hidden_max_norm),
        )
    )
    if m.hidden_dropout:
      layers.append(keras.layers.Dropout(m.hidden_dropout))
  layers.append(keras.layers.Dense(m.num_classes, activation='softmax'))
  model = keras.Sequential(layers)
  opt = config.optimizer
  if opt.name == 'sgd':
    schedule = keras.optimizers.schedules.InverseTimeDecay(
        opt.learning_rate, decay_steps=1, decay_rate=opt.decay
    )
    optimizer = keras.optimizers.SGD(schedule, momentum=opt.momentum)
  elif opt.name == 'adam':
    optimizer = keras.optimizers.Adam(
        opt.learning_rate, opt.beta1, opt.beta2, opt.epsilon
    )
  else:
    raise SystemExit(f'No Keras peer for optimizer {opt.name!r}.')
  model.compile(
      optimizer, 'sparse_categorical_crossentropy', metrics=['accuracy']
  )
  return model


def keras_paths(
    model: ml_collections.ConfigDict, stats: bool = False
) -> list[tuple[str, ...]]:
  """Where each Keras variable of the ConvNet `model` lives in ours, in the
  Keras model's order: ('params' | 'batch_stats', *keys), its trainable
  variables (and its optimizer's slots), or with `stats` all of them,
  BatchNorm's moving mean and variance included (`model.get_weights()`).

  The layouts agree: conv kernels are HWIO and dense kernels (in, out) in
  both, and both flatten NHWC feature maps in the same order.
  """
  paths = []
  for i in range(len(model.stage_features)):
    stage = f'stage{i + 1}'
    for j in (1, 2):
      paths += [('params', stage, f'conv{j}', k) for k in ('kernel', 'bias')]
      if model.batch_norm:
        bn = (stage, f'bn{j}')
        paths += [('params', *bn, k) for k in ('scale', 'bias')]
        if stats:
          paths += [('batch_stats', *bn, k) for k in ('mean', 'var')]
  for name in [f'dense{i + 1}' for i in range(len(model.hidden_features))]:
    paths += [('params', name, 'kernel'), ('params', name, 'bias')]
  paths += [('params', 'logits', 'kernel'), ('params', 'logits', 'bias')]
  return paths


def in_keras_order(
    model: ml_collections.ConfigDict, params: Any, stats: Any = None
) -> list[np.ndarray]:
  """Our ConvNet's arrays in the order of the Keras model's variables
  (`keras_paths`): its trainable ones, or with `stats` (our batch_stats)
  all of them."""
  trees = {'params': params, 'batch_stats': stats}
  arrays = []
  for collection, *keys in keras_paths(model, stats is not None):
    node = trees[collection]
    for key in keys:
      node = node[key]
    arrays.append(np.asarray(node))
  return arrays


def from_keras_order(
    model: ml_collections.ConfigDict, arrays: Sequence[np.ndarray]
) -> tuple[dict, dict]:
  """(params, batch_stats) of our ConvNet from a Keras model's
  `get_weights()` (the inverse of `in_keras_order` with stats)."""
  trees = {'params': {}, 'batch_stats': {}}
  for (collection, *keys), array in zip(
      keras_paths(model, stats=True), arrays, strict=True
  ):
    node = trees[collection]
    for key in keys[:-1]:
      node = node.setdefault(key, {})
    node[keys[-1]] = array
  return trees['params'], trees['batch_stats']


def load_ours(config: ml_collections.ConfigDict, model: Any) -> str:
  """Puts the state our run `config.init_from` ended with into the Keras
  `model` (built by `keras_model(config)`), as `main` starts a run from
  it: the weights and BatchNorm statistics, and with `init_from_optimizer`
  Adam's moments and update count. Returns what it loaded, for the log.

  Raises:
    UserError: as `main` would (no such run, another optimizer, ...).
  """
  exp = experiment.create_experiment(config)
  state = resume.state_from_run(exp, exp.start(0).state, config.init_from)
  state = jax.device_get(state)
  layers = [l for l in model.layers if l.trainable_weights]
  variables = [v for l in layers for v in l.weights]
  arrays = in_keras_order(config.model, state.params, state.batch_stats)
  for variable, array in zip(variables, arrays, strict=True):
    variable.assign(array)
  if not config.init_from_optimizer:
    return f'the weights of {config.init_from}'
  is_adam = lambda x: isinstance(x, optimizers.KerasAdamState)
  (adam,) = [
      x for x in jax.tree.leaves(state.opt_state, is_leaf=is_adam) if is_adam(x)
  ]
  optimizer = model.optimizer
  optimizer.build(model.trainable_variables)
  slots = {v.path: v for v in optimizer.variables}
  trainable = [v for l in layers for v in l.trainable_weights]
  for kind, tree in (('momentum', adam.mu), ('velocity', adam.nu)):
    for variable, array in zip(
        trainable, in_keras_order(config.model, tree), strict=True
    ):
      slots[
          f'{optimizer.name}/{variable.path.replace("/", "_")}_{kind}'
      ].assign(array)
  # Keras 3's Adam takes t = iterations + 1; Keras 2.3's (ours) is one
  # ahead of that for the same updates made (`scale_by_keras_adam`).
  optimizer.iterations.assign(int(adam.count) + 1)
  return (
      f'the weights and Adam state of {config.init_from} '
      f'(update {int(adam.count):,})'
  )


def checked_rung(
    rung: str | None, workdir: str | None
) -> ml_collections.ConfigDict:
  """The rung's config with the command line's overrides, for a side-by-side
  run in `workdir`; UserError for a missing flag or an unknown rung."""
  if not rung or not workdir:
    raise UserError('--rung and --workdir are required.')
  if rung not in rungs.RUNGS:
    raise UserError(f'Unknown rung {rung!r}; one of {rungs.RUNGS}.')
  return rungs.rung_config(rung, 1.0, cli.override_values())


def ours_history(run: str | None) -> list[dict]:
  """The history of our run `run` to draw beside the peer's ([] for none)."""
  if not run:
    return []
  history = read_history(run)
  if not history:
    raise UserError(f'--ours {run} has no history.json.')
  return history


def draw(
    workdir: str,
    rung: str,
    ours: list[dict],
    peer_rows: list[dict],
    peer: str = 'Keras 3',
) -> None:
  """`<workdir>/curves.png` over the peer's epochs (`comparison_curves`)."""
  title, rows, reference, others = comparison_curves(
      rung, ours, peer_rows, f'{peer}, same data', peer
  )
  records.write_atomically(
      os.path.join(workdir, 'curves.png'),
      lambda tmp: plots.curves(rows, tmp, title, reference, others),
  )


def last_line(peer: str, rung: str, workdir: str, history: list[dict]) -> str:
  """What a side-by-side command prints when it is done."""
  last = history[-1]
  return (
      f'{peer}, {rung}, epoch {last["epoch"]}: val_accuracy '
      f'{100 * last["val_accuracy"]:.2f}%  ({workdir}/curves.png)'
  )


def read_history(workdir: str) -> list[dict]:
  """A run's history.json rows ([] where it has none yet)."""
  try:
    with open(os.path.join(workdir, 'history.json')) as f:
      return json.load(f)
  except FileNotFoundError:
    return []


def comparison_curves(
    rung: str,
    ours: Sequence[dict],
    keras_rows: Sequence[dict],
    keras_label: str,
    peer: str = 'Keras 3',
) -> tuple[str, list[dict], tuple[str, list[dict]] | None, list]:
  """(title, solid rows, the seed's rows, others) for `plots.curves`.

  Only the epochs Keras trained: a Keras run of 9 or 20 epochs beside our
  100 or 200 would otherwise be a smudge at the plot's left edge (the whole
  run beside the seed is the rung's own curves.png). Our run, else Keras'
  alone, is solid; the seed's printed epochs among them, if any, dashed.
  """
  first = min(r['epoch'] for r in keras_rows)
  last = max(r['epoch'] for r in keras_rows)
  ours = [r for r in ours if r['epoch'] <= last]
  reference = seed_notebook.reference(rung, last)
  if reference is not None and not reference[1]:
    reference = None
  names = ['cifar_jax'] if ours else []
  names += ['the seed notebook'] if reference else []
  names += [peer]
  drawn = ', '.join(names[:-1]) + ' and ' if len(names) > 1 else ''
  title = f'{rung}, epochs {first}-{last}: {drawn}{names[-1]}'
  if ours:
    return title, ours, reference, [(keras_label, list(keras_rows))]
  return title, list(keras_rows), reference, []
