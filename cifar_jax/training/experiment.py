"""What a run builds once: model, data on the device(s), compiled programs.

`create_experiment` loads both splits onto the device(s) as uint8 and jits
the steps with the CPU's compiler options; the seed's initial state, data
order and keys come with it (`with_seed` swaps them, sharing everything
compiled, so benchmarks can repeat runs).
"""

from collections.abc import Mapping
import dataclasses
import functools
import math
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
import optax

from cifar_jax import cpu
from cifar_jax.data import augment
from cifar_jax.data import batching
from cifar_jax.data import images as images_lib
from cifar_jax.data import input_pipeline
from cifar_jax.errors import UserError
from cifar_jax import models
from cifar_jax.models import initializers
from cifar_jax import rules
from cifar_jax.training import mesh as mesh_lib
from cifar_jax.training import optimizers
from cifar_jax.training import steps

# The loop's keys (the top of a config) that make the experiment.
RULES = {
    'batch_size': rules.integer(1, 2**31 - 1),  # Batch indices are int32.
    'eval_batch_size': rules.integer(1, 2**31 - 1),
    'num_epochs': rules.POSITIVE,
    'drop_remainder': rules.BOOL,
    'shuffle_batch_order': rules.BOOL,
    'steps_per_epoch': rules.integer(0),
    'steps_per_dispatch': rules.integer(0),
    'seed': rules.integer(0, 2**32 - 1),
    'label_smoothing': rules.FRACTION,
    'eval_tta': rules.integer(0, 2),
}
# The `whitening` section's keys (the data-dependent init).
WHITENING_RULES = {'images': rules.integer(0), 'epsilon': rules.POSITIVE}


@dataclasses.dataclass(frozen=True)
class Experiment:
  """A run's fixed parts, and the initial state, order and keys of a seed."""

  config: ml_collections.ConfigDict
  model: Any
  shardings: mesh_lib.Shardings
  train: tuple[jax.Array, jax.Array]  # uint8 images, labels; replicated.
  eval: tuple[jax.Array, jax.Array]
  class_names: tuple[str, ...]
  steps_per_epoch: int
  steps_per_dispatch: int  # Train steps per call (a scan when > 1).
  init_params: dict[str, Any]  # Data-dependent params (whitening), NumPy.
  init_seconds: float  # Host time spent computing init_params.
  init_state: Callable[..., steps.TrainState]  # steps.state_initializer.
  # The learning rate at each update: the optimizer's own schedule.
  learning_rate: optax.Schedule
  train_steps: Callable[[int], Any]  # num_steps -> its jitted function.
  eval_step: Any  # Jitted steps.eval_step.
  # Of the seed:
  state: steps.TrainState
  order: batching.TrainOrder
  keys: steps.Keys

  @property
  def replicated(self) -> jax.sharding.Sharding:
    return self.shardings.replicated

  @property
  def total_steps(self) -> int:
    return total_steps(self.config.num_epochs, self.steps_per_epoch)


def create_experiment(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None
) -> Experiment:
  """Loads the data and builds the model; compiles nothing yet (jit is lazy).

  `config` has passed `config.checks.check` (the commands check it once).
  `mesh` is a 1-D mesh with axis 'data' (default: `mesh.create_mesh()`).
  Raises UserError for a config or data problem the user can fix.
  """
  shardings = _shardings(config, mesh or mesh_lib.create_mesh())
  platform = cpu.for_platform(config.cpu, shardings.platform)
  try:
    model = models.create_model(config.model, platform.kernels)
    augment_config = augment.AugmentConfig.from_config(config.augment)
    normalization = images_lib.Normalization.from_config(config.data)
  except (TypeError, ValueError) as e:
    raise UserError(f'Bad config: {e}') from e

  train_ds, eval_ds = _load_data(config)
  per_pass = batching.batches_per_pass(
      len(train_ds), config.batch_size, config.drop_remainder
  )
  if not per_pass:
    raise UserError(
        f'drop_remainder with batch_size={config.batch_size} leaves no '
        f'batch of the {len(train_ds)} training examples.'
    )
  steps_per_epoch = config.steps_per_epoch or per_pass
  wanted = config.num_epochs * steps_per_epoch  # A float: it may be huge.
  about = f'num_epochs={config.num_epochs:g} of {steps_per_epoch} steps is '
  if wanted > MAX_STEPS:
    raise UserError(
        f'{about}{wanted:.3g} steps; the step counter (int32) counts to '
        f'{MAX_STEPS}: lower num_epochs.'
    )
  num_steps = total_steps(config.num_epochs, steps_per_epoch)
  if num_steps < 1:
    raise UserError(
        f'{about}{wanted:.3g} steps; a run trains at least one: raise '
        'num_epochs.'
    )
  run = optimizers.RunShape(num_steps, steps_per_epoch, config.batch_size)
  schedule = optimizers.learning_rate_schedule(config.optimizer, run)
  init_params, init_seconds = _data_dependent_params(
      config,
      normalization(train_ds.images[: config.whitening.images], np.float64),
  )
  # Both splits live on the device(s) for the whole run, as uint8.
  train_arrays, eval_arrays = jax.device_put(
      ((train_ds.images, train_ds.labels), (eval_ds.images, eval_ds.labels)),
      shardings.replicated,
  )
  train_steps, eval_step = _programs(
      config,
      shardings,
      platform.compiler_options,
      augment_config,
      normalization,
      per_pass,
      len(train_ds.class_names),
  )
  return _seeded(
      config.seed,
      config=config,
      model=model,
      shardings=shardings,
      train=train_arrays,
      eval=eval_arrays,
      class_names=train_ds.class_names,
      steps_per_epoch=steps_per_epoch,
      steps_per_dispatch=platform.steps_per_dispatch(
          config.steps_per_dispatch, steps_per_epoch
      ),
      init_params=init_params,
      init_seconds=init_seconds,
      init_state=steps.state_initializer(
          model, config.optimizer, shardings.replicated, run, schedule
      ),
      learning_rate=schedule,
      train_steps=train_steps,
      eval_step=eval_step,
  )


# The training state counts steps in int32 (as Optax's counters do).
MAX_STEPS = 2**31 - 1


def total_steps(num_epochs: float, steps_per_epoch: int) -> int:
  """Train steps of a run: ceil(epochs x steps per epoch), as airbench counts
  its 9.9 epochs (a fractional last epoch is cut short)."""
  return math.ceil(round(num_epochs * steps_per_epoch, 6))


def _shardings(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
) -> mesh_lib.Shardings:
  """The mesh's shardings, once both batch sizes are known to divide."""
  mesh_lib.check_divisible('batch_size', config.batch_size, mesh)
  mesh_lib.check_divisible('eval_batch_size', config.eval_batch_size, mesh)
  return mesh_lib.Shardings.of(mesh)


def _load_data(
    config: ml_collections.ConfigDict,
) -> tuple[input_pipeline.Dataset, input_pipeline.Dataset]:
  """The train and eval splits, checked against the model's outputs."""
  train_ds = input_pipeline.load_split(config.data, config.data.train_split)
  eval_ds = input_pipeline.load_split(config.data, config.data.eval_split)
  if len(train_ds.class_names) > config.model.num_classes:
    raise UserError(
        f'The data has {len(train_ds.class_names)} classes but '
        f'model.num_classes={config.model.num_classes}; set '
        f'--config.model.num_classes={len(train_ds.class_names)}.'
    )
  return train_ds, eval_ds


def _programs(
    config: ml_collections.ConfigDict,
    shardings: mesh_lib.Shardings,
    compiler_options: Mapping[str, str],
    augment_config: augment.AugmentConfig,
    normalization: images_lib.Normalization,
    batches_per_pass: int,
    num_classes: int,
) -> tuple[Callable[[int], Any], Any]:
  """The jitted train steps (one program per scan length) and eval step.

  They hold the convolutions, so they are compiled with the platform's
  options (`cpu.for_platform`); the state and metrics they are handed are
  donated.
  """
  options = steps.StepOptions(
      batch_size=config.batch_size,
      batches_per_pass=batches_per_pass,
      augmentation=augment_config,
      normalization=normalization,
      label_smoothing=config.label_smoothing,
      batch_sharding=shardings.batch,
  )
  jit = functools.partial(jax.jit, compiler_options=compiler_options)
  replicated = shardings.replicated
  train_steps = functools.cache(
      lambda n: jit(
          functools.partial(steps.train_steps, num_steps=n, options=options),
          donate_argnums=(0, 1),
          out_shardings=(replicated, replicated),
      )
  )
  eval_step = jit(
      functools.partial(
          steps.eval_step,
          tta=config.eval_tta,
          num_classes=num_classes,
          normalization=normalization,
      ),
      donate_argnums=(1,),
      out_shardings=replicated,
  )
  return train_steps, eval_step


def with_seed(exp: Experiment, seed: int) -> Experiment:
  """`exp` with the initial state, data order and keys of `seed`.

  The data on the device(s), the optimizer and the compiled programs are
  shared, so repeated runs (benchmarks/speedrun.py) compile once.
  """
  fixed = {
      f.name: getattr(exp, f.name)
      for f in dataclasses.fields(exp)
      if f.name not in ('state', 'order', 'keys')
  }
  return _seeded(seed, **fixed)


def _seeded(seed: int, **fixed: Any) -> Experiment:
  # As uint32: the seed rule's whole range (a Python int past 2**31 - 1
  # overflows jit's int32); the same keys as the int, negative ones (the
  # benchmarks' warm-up seeds) included.
  init_key, dropout_key, augment_key, order_key = _split_seed_fn(
      fixed['shardings'].replicated
  )(np.uint32(seed % 2**32))
  return Experiment(
      **fixed,
      state=fixed['init_state'](init_key, fixed['init_params']),
      order=batching.TrainOrder(
          len(fixed['train'][1]),
          fixed['config'].batch_size,
          order_key,
          fixed['shardings'].replicated,
          fixed['config'].drop_remainder,
          fixed['config'].shuffle_batch_order,
      ),
      keys=steps.Keys(dropout_key, augment_key),
  )


@functools.cache
def _split_seed_fn(sharding: jax.sharding.Sharding):
  """seed -> 4 keys (init, dropout, augment, order), compiled once."""
  return jax.jit(
      lambda seed: tuple(jax.random.split(jax.random.key(seed), 4)),
      out_shardings=sharding,
  )


def _data_dependent_params(
    config: ml_collections.ConfigDict, images: np.ndarray
) -> tuple[dict[str, Any], float]:
  """The whitening layer's params from the first training images (as the
  model sees them: normalised), and the time it took."""
  start = time.perf_counter()
  if not config.whitening.images:
    return {}, 0.0
  kernel, bias = initializers.whitening(
      images, config.model.whiten_patch, config.whitening.epsilon
  )
  return {'whiten': {'kernel': kernel, 'bias': bias}}, (
      time.perf_counter() - start
  )
