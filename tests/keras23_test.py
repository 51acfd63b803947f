"""Every rung against the seed's own Keras 2.3.1, step for step.

`benchmarks/keras23/peer.py steps` builds the rung with the seed notebook's
own cell (`benchmarks/keras23/seed_cells.py`: its layers, optimizer and
compile as written) in Keras 2.3.1 on TensorFlow 1.15, and trains the
compiled model with `train_on_batch` (the update `fit` makes) on batches
we hand it: cifar_jax's own training order, 32 images a batch, a partial
batch in every pass; the augmented rungs' images drawn through the cell's own
ImageDataGenerator, as its `flow` draws them. It records its initial
variables and, after every step, the loss and every variable (BatchNorm's
moving statistics included). cifar_jax starts from those initial variables
and replays the same images through its own train step (`steps.train_step`:
loss, gradients, Keras SGD with momentum and per-update decay or Keras
Adam, MaxNorm, BatchNorm): after every step, the loss, every parameter and
every BatchNorm statistic must agree. deep_adam_aug trains deep_adam's
cell first and continues the same model and optimizer with its own cell,
as the notebook did.

Dropout is off on both sides (the cells' `Dropout` layers get rate 0, and
ours are left out): TensorFlow's masks cannot be replayed into ours
(tests/dropout_test.py checks ours on its own). Both sides compute in
float64, so that a difference in what is computed is not lost in float32
rounding (behind BatchNorm, the conv biases' gradients are differences of
large numbers, and float32 rounding alone parts the two runs by 10% within
two steps). TensorFlow 1.15's fused batch norm has no float64 kernel, so
the peer computes its outputs with float64 ops (`peer._float64_batch_norm`);
`test_batch_norm_statistics_match_the_fused_kernel_in_float32` checks ours
against the real kernel. Our augmentation against the cell's
ImageDataGenerator, given the same random parameters, is
`test_augmentation_matches_keras_image_data_generator`.

Needs the Keras 2.3.1 venv (`bash benchmarks/keras23/make_venv.sh`, which
.ci/run calls); skipped with the reason where it is absent.
"""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

# pylint: disable=g-import-not-at-top,g-bad-import-order
from benchmarks import keras_peer
from cifar_jax import cpu
from cifar_jax.data import augment
from cifar_jax import models
from cifar_jax.models import convnet
from cifar_jax.training import experiment
from cifar_jax.training import optimizers
from cifar_jax.training import steps
from conftest import get_config
from conftest import HISTORY_KEYS
from conftest import REPO
from conftest import RUNGS
from conftest import small_synthetic

# pylint: enable=g-import-not-at-top,g-bad-import-order

pytestmark = pytest.mark.skipif(
    not os.path.exists(keras_peer.keras23_python()),
    reason=(
        f'no Keras 2.3.1 venv at {keras_peer.keras23_python()} (bash '
        'benchmarks/keras23/make_venv.sh, or set $KERAS23_PYTHON)'
    ),
)

STEPS = 32  # deep_adam_aug: 16 of deep_adam's, then 16 of its own.
# Largest difference allowed, relative to the largest value of the tensor
# (the loss: to itself). In float64 the two frameworks' sums, in different
# orders, part by rounding alone, far below this; the differences this
# test found were 4e-4 (SGD's decay one update behind) to 0.34 (Adam's
# bias correction one update behind).
TOLERANCE = 1e-9


# Examples a batch: `train_on_batch` takes any size, and 32 keeps the
# float64 steps of the big rungs affordable (the cells' own batch sizes are
# `test_epochs_take_the_batches_the_cells_fit_call_takes`').
BATCH = 32


def _config(rung: str) -> ml_collections.ConfigDict:
  """The rung on synthetic data: passes of two whole batches and a partial
  one, dropout off, XLA's own kernels (ours compute in float32 only)."""
  config = small_synthetic(get_config(rung), 2 * BATCH + 10, 8, BATCH, 8)
  m = config.model
  m.conv_dropout = (0.0,) * len(m.stage_features)
  m.stage_dropout = (0.0,) * len(m.stage_features)
  m.flatten_dropout = m.hidden_dropout = 0.0
  config.cpu.conv3x3, config.cpu.pooling = 'xla', 'reduce_window'
  return config


def _phases(rung: str) -> list[tuple[ml_collections.ConfigDict, int]]:
  """(config, steps) of each cell the rung runs, in order."""
  parent = {'deep_adam_aug': 'deep_adam'}.get(rung)
  if parent:
    return [(_config(parent), STEPS // 2), (_config(rung), STEPS // 2)]
  return [(_config(rung), STEPS)]


@functools.lru_cache(maxsize=1)  # A run's variables take up to 1.1 GB.
def _keras_run(
    rung: str, floatx: str, num_steps: int, tmp: str
) -> dict[str, np.ndarray]:
  """The batches (ours), and what Keras 2.3.1 made of them."""
  images, labels, sizes, augmented = [], [], [], []
  phases = _phases(rung) if num_steps == STEPS else [(_config(rung), num_steps)]
  for config, count in phases:
    exp = experiment.create_experiment(config)
    order = exp.start(config.seed).order
    data_images, data_labels = jax.device_get(exp.train)
    for step in range(count):
      indices, mask = order.batch(step)
      images.append(data_images[indices])
      labels.append(data_labels[indices])
      sizes.append(int(mask.sum()))
      augmented.append(config.augment.horizontal_flip)
  batches = os.path.join(tmp, f'{rung}_{floatx}_batches.npz')
  out = os.path.join(tmp, f'{rung}_{floatx}_keras.npz')
  np.savez(
      batches,
      images=np.stack(images),
      labels=np.stack(labels),
      sizes=np.array(sizes),
      augment=np.array(augmented),
  )
  result = keras_peer.run_keras23(
      'steps', '--rung', rung, '--batches', batches, '--out', out,
      '--floatx', floatx, '--no_dropout',
      capture_output=True, text=True, timeout=1200,
  )  # fmt: skip
  assert result.returncode == 0, result.stderr[-3000:]
  with np.load(batches) as b, np.load(out) as k:
    run = {**dict(b), **dict(k)}
  os.remove(out)
  return run


@pytest.fixture(name='keras_run')
def keras_run_fixture(tmp_path_factory):
  tmp = str(tmp_path_factory.getbasetemp() / 'keras23')
  os.makedirs(tmp, exist_ok=True)
  return lambda rung, floatx='float64', num_steps=STEPS: _keras_run(
      rung, floatx, num_steps, tmp
  )


def _cpu_kernels(config: ml_collections.ConfigDict) -> models.layers.Layers:
  """The layers a run on this CPU gets (`cpu.for_platform`)."""
  return cpu.for_platform(config.cpu, 'cpu').kernels


def _variables(run: dict, model: ml_collections.ConfigDict, prefix: str):
  arrays = [run[f'{prefix}_{i}'] for i in range(_count(run))]
  return keras_peer.from_keras_order(model, arrays)


def _count(run: dict) -> int:
  return sum(1 for k in run if k.startswith('init_'))


def _close(ours, theirs, tolerance: float) -> float:
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  scale = max(np.abs(theirs).max(), 1e-30)
  worst = np.abs(ours - theirs).max() / scale
  assert worst <= tolerance, f'off by {worst:.2e} of its largest value'
  return worst


def _replay(run: dict, dtype) -> jax.Array:
  """The images Keras trained on at each step, padded to whole batches."""
  batch = run['images'].shape[1]
  padded = []
  for k, size in enumerate(run['sizes']):
    x = run[f'inputs_{k}']
    padded.append(np.concatenate([x, np.zeros((batch - size,) + x.shape[1:])]))
  return jnp.asarray(np.stack(padded), dtype)


def _train_ours(rung: str, run: dict, monkeypatch) -> list[tuple]:
  """Our train step from Keras' initial variables on Keras' images: the
  (loss, params, batch_stats) after every step."""
  dtype = jnp.float64
  replay = _replay(run, dtype)
  # The step's inputs are the images Keras trained on (augmented by its
  # ImageDataGenerator where the cell had one); everything after is ours.
  monkeypatch.setattr(steps, '_augmented_images', lambda step, *_: replay[step])
  # TensorFlow 1.15's moving average takes 1 - momentum as a float32
  # constant: in float64, Keras' BatchNorm momentum is 1 - float32(0.01).
  monkeypatch.setattr(
      convnet,
      'KerasBatchNorm',
      functools.partial(
          convnet.KerasBatchNorm, momentum=1 - float(np.float32(1 - 0.99))
      ),
  )
  phases = _phases(rung)
  config = phases[0][0]
  params, stats = _variables(run, config.model, 'init')
  cast = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, dtype), tree)
  params, stats = cast(params), cast(stats)
  results, opt_state, step = [], None, 0
  for config, count in phases:
    exp = experiment.create_experiment(config)
    model = models.create_model(config.model, _cpu_kernels(config)).clone(
        dtype=dtype
    )
    tx = optimizers.create_optimizer(
        config.optimizer, params, schedule=exp.learning_rate
    )
    state = steps.TrainState.create(
        apply_fn=model.apply, params=params, tx=tx, batch_stats=stats
    )
    if opt_state is not None:  # The same optimizer goes on (deep_adam_aug).
      state = state.replace(opt_state=opt_state, step=step)
    options = steps.StepOptions(
        batch_size=config.batch_size,
        batches_per_pass=exp.batches_per_pass,
    )
    train_step = jax.jit(functools.partial(steps.train_step, options=options))
    seeded = exp.start(config.seed)
    for position in range(count):  # The batches _keras_run handed Keras.
      indices, mask = seeded.order.batch(position)
      metrics = steps.empty_metrics()
      state, metrics = train_step(
          state, metrics, exp.train, (indices, mask), seeded.keys
      )
      results.append(
          (steps.computed(metrics)['loss'], state.params, state.batch_stats)
      )
      step += 1
    params, stats, opt_state = state.params, state.batch_stats, state.opt_state
  return results


@pytest.mark.slow
@pytest.mark.parametrize('rung', RUNGS)
def test_rung_matches_keras_2_3_1_step_for_step(rung, keras_run, monkeypatch):
  run = keras_run(rung)
  tolerance = TOLERANCE
  model_config = _phases(rung)[0][0].model
  assert len(run['sizes']) == STEPS
  assert min(run['sizes']) < max(run['sizes'])  # Partial batches too.
  with jax.enable_x64(True):
    ours = _train_ours(rung, run, monkeypatch)
  for k, (loss, params, stats) in enumerate(ours):
    theirs_params, theirs_stats = _variables(run, model_config, f'step{k}')
    _close_or_fail(loss, run['loss'][k], tolerance, f'step {k + 1}, loss')
    for name, a, b in (('params', params, theirs_params), ('stats', stats, theirs_stats)):  # fmt: skip
      jax.tree_util.tree_map_with_path(
          lambda path, x, y: _close_or_fail(
              x,
              y,
              tolerance,
              f'step {k + 1}, {name}{jax.tree_util.keystr(path)}',
          ),
          a,
          b,
      )


def _close_or_fail(ours, theirs, tolerance, what):
  try:
    _close(ours, theirs, tolerance)
  except AssertionError as e:
    raise AssertionError(f'{what}: {e}') from None


@pytest.mark.slow
@pytest.mark.parametrize('rung', ['deep_adam_aug_dropout', 'bn_aug_sgd'])
def test_augmentation_matches_keras_image_data_generator(rung, keras_run):
  """Our resampling (`augment.keras_affine_matrices`, the flip after it),
  given the random parameters the cell's ImageDataGenerator drew for each
  image, makes the images that generator made, within 1e-5."""
  run = keras_run(rung, 'float64', 3)
  k = next(i for i, a in enumerate(run['augment']) if a)
  size = run['sizes'][k]
  params = run['params_0']  # tx, ty, zx, zy, flip of step k's images.
  x = jnp.asarray(run['images'][k][:size], jnp.float32) / 255.0
  tx, ty, zx, zy = (jnp.asarray(params[:, i], jnp.float32) for i in range(4))
  rows, cols = augment.keras_affine_matrices(tx, ty, zx, zy, 32, 32)
  ours = np.asarray(augment.resample(x, rows, cols))
  ours = np.where(params[:, 4, None, None, None] > 0, ours[:, :, ::-1], ours)
  theirs = run[f'inputs_{k}']
  assert np.abs(theirs - x).max() > 0.1  # The generator did something.
  assert np.abs(ours - theirs).max() <= 1e-5


@pytest.mark.slow
def test_batch_norm_statistics_match_the_fused_kernel_in_float32(keras_run):
  """TensorFlow's own fused batch norm (float32): from Keras' variables
  before each step, our BatchNorm's running statistics after a forward pass
  on the step's images are Keras' after the step, over whole and partial
  batches: the running variance averages the batch variance times
  n / (n - 1) * n / (n - 1 - epsilon) (`batch_norm.BatchNorm`, 'keras2')."""
  num_steps = 3  # Two whole batches and a partial one.
  run = keras_run('bn_aug_sgd', 'float32', num_steps)
  config = _config('bn_aug_sgd')
  model = models.create_model(config.model, _cpu_kernels(config))
  replay = _replay(run, jnp.float32)
  batch = config.batch_size
  for k in range(num_steps):
    before = 'init' if k == 0 else f'step{k - 1}'
    params, stats = _variables(run, config.model, before)
    mask = jnp.asarray(np.arange(batch) < run['sizes'][k], jnp.float32)
    _, updates = model.apply(
        {'params': params, 'batch_stats': stats},
        replay[k],
        train=True,
        mask=mask,
        mutable=['batch_stats'],
    )
    theirs = _variables(run, config.model, f'step{k}')[1]
    # The steps' increments, (1 - momentum) * (batch statistic - running):
    # float32 rounding leaves them within 1e-5; a variance rescaled by
    # n / (n - 1) once, not twice, would be 2e-3 off on the partial batch.
    increment = lambda after: jax.tree.map(
        lambda a, b: np.float64(a) - np.float64(b), after, stats
    )
    jax.tree_util.tree_map_with_path(
        lambda path, x, y: _close_or_fail(
            x, y, 1e-4, f'step {k + 1}, {jax.tree_util.keystr(path)}'
        ),
        increment(updates['batch_stats']),
        increment(theirs),
    )
  assert min(run['sizes']) < batch


def _sizes(exp: experiment.Experiment, num_steps: int) -> list[int]:
  order = exp.start(exp.config.seed).order
  return [int(order.batch(s)[1].sum()) for s in range(num_steps)]


@pytest.mark.slow
@pytest.mark.parametrize('rung', RUNGS)
def test_epochs_take_the_batches_the_cells_fit_call_takes(rung, tmp_path):
  """The cell's own `fit` or `fit_generator` call, 3 epochs on 300 images,
  against our training order: the same updates per epoch, and the same
  batches: `fit` one pass per epoch, the partial batch last;
  `fit_generator` (`steps_per_epoch` = examples // batch size, as the
  notebook's 390 and 781) going on through passes whose batches its
  enqueuer shuffles (`shuffle_batch_order`)."""
  epochs, size = 3, 300
  config = small_synthetic(get_config(rung), size, 20, 1, 20)
  config.batch_size = get_config(rung).batch_size
  generator = get_config(rung).steps_per_epoch > 0
  assert config.shuffle_batch_order == generator
  if generator:
    assert config.steps_per_epoch == 50_000 // config.batch_size
    config.steps_per_epoch = size // config.batch_size
  exp = experiment.create_experiment(config)
  images, labels = jax.device_get(exp.train)
  test_images, test_labels = jax.device_get(exp.eval)
  data = tmp_path / 'data.npz'
  np.savez(
      data,
      train_images=images,
      train_labels=labels,
      test_images=test_images,
      test_labels=test_labels,
  )
  out = tmp_path / 'loop.json'
  result = keras_peer.run_keras23(
      'loop', '--rung', rung, '--data', str(data), '--out', str(out),
      '--epochs', str(epochs), capture_output=True, text=True, timeout=600,
  )  # fmt: skip
  assert result.returncode == 0, result.stderr[-3000:]
  keras = json.loads(out.read_text())
  per_epoch = exp.steps_per_epoch
  assert keras['iterations'] == [per_epoch * (e + 1) for e in range(epochs)]
  ours = _sizes(exp, epochs * per_epoch)
  assert len(keras['sizes']) == len(ours)
  per_pass = exp.batches_per_pass
  if not generator:
    assert keras['sizes'] == ours
  for start in range(0, len(ours) - per_pass + 1, per_pass):  # Whole passes.
    chunk = slice(start, start + per_pass)
    assert sorted(keras['sizes'][chunk]) == sorted(ours[chunk])


@pytest.mark.slow
def test_a_whole_run_writes_history_and_curves_and_resumes(tmp_path):
  """benchmarks/keras23_side_by_side.py: the cell's own fit call on the
  data cifar_jax reads, epoch by epoch; the same command resumes it."""
  workdir = tmp_path / 'simple_keras23'

  def side_by_side(epochs):
    return subprocess.run(
        [
            sys.executable, 'benchmarks/keras23_side_by_side.py',
            '--rung', 'simple', '--workdir', str(workdir),
            '--epochs', str(epochs), '--config.data.name=synthetic',
            '--config.data.synthetic_train_size=64',
            '--config.data.synthetic_eval_size=32',
        ],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, JAX_PLATFORMS='cpu'),
    )  # fmt: skip

  first = side_by_side(1)
  assert first.returncode == 0, first.stderr[-3000:]
  second = side_by_side(2)
  assert second.returncode == 0, second.stderr[-3000:]
  assert 'Resuming the Keras 2.3.1 run at epoch 2.' in second.stdout
  assert 'Keras 2.3.1, simple, epoch 2: val_accuracy' in second.stdout
  history = json.loads((workdir / 'history.json').read_text())
  assert [h['epoch'] for h in history] == [1, 2]
  assert all(set(h) == HISTORY_KEYS for h in history)
  assert (workdir / 'curves.png').stat().st_size > 0
  with np.load(workdir / 'data.npz') as data:  # What cifar_jax read.
    assert data['train_images'].shape == (64, 32, 32, 3)
    assert data['test_labels'].shape == (32,)


@pytest.mark.slow
def test_deep_adam_aug_continues_the_peers_deep_adam_with_its_adam(tmp_path):
  """As the notebook continued its trained deep_adam: --init puts that
  run's weights and Adam state (moments, update count) into the cell."""
  rng = np.random.default_rng(0)
  data = tmp_path / 'data.npz'
  np.savez(
      data,
      train_images=rng.integers(0, 256, (300, 32, 32, 3), np.uint8),
      train_labels=rng.integers(0, 10, 300),
      test_images=rng.integers(0, 256, (20, 32, 32, 3), np.uint8),
      test_labels=rng.integers(0, 10, 20),
  )

  def train(rung, *extra):
    workdir = tmp_path / rung
    result = keras_peer.run_keras23(
        'train', '--rung', rung, '--data', str(data), '--workdir',
        str(workdir), '--epochs', '1', *extra,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout, np.load(workdir / 'state.npz')

  _, parent = train('deep_adam')
  out, child = train('deep_adam_aug', '--init', str(tmp_path / 'deep_adam' / 'state.npz'))  # fmt: skip
  assert 'Keras 2.3.1 starts from' in out
  # deep_adam: ceil(300 / 128) = 3 updates; then 300 // 128 = 2 more.
  assert (int(parent['o0']), int(child['o0'])) == (3, 5)
