"""What a run builds once (model, data on the device(s), compiled programs),
and each seed's run of it.

`create_experiment` loads both splits onto the device(s) as uint8 and jits
the steps with the CPU's compiler options; `Experiment.start(seed)` makes a
seed's initial state, data order and keys, sharing everything compiled, so
benchmarks repeat runs with one compilation.
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
from cifar_jax.training import checks
from cifar_jax.training import mesh as mesh_lib
from cifar_jax.training import optimizers
from cifar_jax.training import steps


@dataclasses.dataclass(frozen=True)
class Experiment:
  """A run's fixed parts, built once and shared by every seed's `Run`."""

  config: ml_collections.ConfigDict
  model: Any
  shardings: mesh_lib.Shardings
  train: tuple[jax.Array, jax.Array]  # uint8 images, labels; replicated.
  eval: tuple[jax.Array, jax.Array]
  class_names: tuple[str, ...]
  steps_per_epoch: int
  batches_per_pass: int  # Of the data order (`batching.TrainOrder`).
  steps_per_dispatch: int  # Train steps per call (a scan when > 1).
  learning_rate: optax.Schedule  # At each update: the optimizer's own.
  train_steps: Callable[[int], Any]  # num_steps -> its jitted function.
  eval_step: Any  # Jitted steps.eval_step.
  initial_state: Callable[[jax.Array], steps.TrainState]  # From a key.
  init_seconds: float  # Host time spent on the data-dependent init.

  @property
  def replicated(self) -> jax.sharding.Sharding:
    return self.shardings.replicated

  @property
  def total_steps(self) -> int:
    return total_steps(self.config.num_epochs, self.steps_per_epoch)

  def start(self, seed: int) -> 'Run':
    """A fresh run of `seed`: its initial state, data order and keys."""
    # As uint32: the seed rule's whole range (a Python int past 2**31 - 1
    # overflows jit's int32); negative seeds (benchmark warm-ups) wrap.
    init_key, dropout_key, augment_key, order_key = _split_seed_fn(
        self.replicated
    )(np.uint32(seed % 2**32))
    c = self.config
    order = batching.TrainOrder(len(self.train[1]), c.batch_size, order_key,
                                self.replicated, c.drop_remainder,
                                c.shuffle_batch_order)  # fmt: skip
    return Run(order, steps.Keys(dropout_key, augment_key),
               self.initial_state(init_key),
               steps.empty_metrics(self.replicated))  # fmt: skip


@dataclasses.dataclass
class Run:
  """One seed's run: its data order and keys, and where the loop is (the
  state, the metrics of the epoch in progress: what a checkpoint saves)."""

  order: batching.TrainOrder
  keys: steps.Keys
  state: steps.TrainState
  epoch_metrics: steps.Metrics
  step: int = 0
  history: list[dict[str, float]] = dataclasses.field(default_factory=list)
  epoch_seconds: float = 0.0  # Already spent on the epoch in progress.


def create_experiment(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None
) -> Experiment:
  """Checks `config`, loads the data and builds the model; compiles nothing
  yet (jit is lazy). `mesh`: 1-D, axis 'data' (default `create_mesh()`).

  Raises UserError for a config or data problem the user can fix.
  """
  checks.check(config)
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
  steps_per_epoch = _steps_per_epoch(config, per_pass, len(train_ds))
  num_steps = total_steps(config.num_epochs, steps_per_epoch)
  run = optimizers.RunShape(num_steps, steps_per_epoch, config.batch_size)
  schedule = optimizers.learning_rate_schedule(config.optimizer, run)
  start = time.perf_counter()
  first = normalization(train_ds.images[: config.whitening.images], np.float64)
  init_params = _data_dependent_params(config, first)
  init_seconds = time.perf_counter() - start
  # Both splits live on the device(s) for the whole run, as uint8.
  train_arrays, eval_arrays = jax.device_put(
      ((train_ds.images, train_ds.labels), (eval_ds.images, eval_ds.labels)),
      shardings.replicated,
  )
  options = steps.StepOptions(
      config.batch_size, per_pass, augment_config, normalization,
      config.label_smoothing, shardings.batch)  # fmt: skip
  train_steps, eval_step = _programs(
      config, shardings, platform.compiler_options, options,
      len(train_ds.class_names))  # fmt: skip
  initializer = steps.state_initializer(
      model, config.optimizer, shardings.replicated, run, schedule
  )
  per_dispatch = platform.steps_per_dispatch(
      config.steps_per_dispatch, steps_per_epoch
  )
  return Experiment(
      config=config, model=model, shardings=shardings, train=train_arrays,
      eval=eval_arrays, class_names=train_ds.class_names,
      steps_per_epoch=steps_per_epoch, batches_per_pass=per_pass,
      steps_per_dispatch=per_dispatch, learning_rate=schedule,
      train_steps=train_steps, eval_step=eval_step,
      initial_state=lambda key: initializer(key, init_params),
      init_seconds=init_seconds)  # fmt: skip


def _steps_per_epoch(
    config: ml_collections.ConfigDict, per_pass: int, num_examples: int
) -> int:
  """`steps_per_epoch` (default: one pass), once the run's length is known
  to be at least one step and to fit the step counter."""
  if not per_pass:
    raise UserError(
        f'drop_remainder with batch_size={config.batch_size} leaves no '
        f'batch of the {num_examples} training examples.'
    )
  steps_per_epoch = config.steps_per_epoch or per_pass
  wanted = config.num_epochs * steps_per_epoch  # A float: it may be huge.
  about = f'num_epochs={config.num_epochs:g} of {steps_per_epoch} steps is '
  if wanted > MAX_STEPS:
    raise UserError(
        f'{about}{wanted:.3g} steps; the step counter (int32) counts to '
        f'{MAX_STEPS}: lower num_epochs.'
    )
  if total_steps(config.num_epochs, steps_per_epoch) < 1:
    raise UserError(
        f'{about}{wanted:.3g} steps; a run trains at least one: raise '
        'num_epochs.'
    )
  return steps_per_epoch


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
    options: steps.StepOptions,
    num_classes: int,
) -> tuple[Callable[[int], Any], Any]:
  """The jitted train steps (one program per scan length) and eval step.

  They hold the convolutions, so they are compiled with the platform's
  options (`cpu.for_platform`); the state and metrics they are handed are
  donated.
  """
  jit = functools.partial(jax.jit, compiler_options=compiler_options)
  replicated = shardings.replicated
  train_steps = functools.cache(
      lambda n: jit(
          functools.partial(steps.train_steps, num_steps=n, options=options),
          donate_argnums=(0, 1),
          out_shardings=(replicated, replicated),
      )
  )
  evaluate = functools.partial(steps.eval_step,
                               tta=augment.TTA.from_config(config),
                               num_classes=num_classes,
                               normalization=options.normalization)  # fmt: skip
  eval_step = jit(evaluate, donate_argnums=(1,), out_shardings=replicated)
  return train_steps, eval_step


@functools.cache
def _split_seed_fn(sharding: jax.sharding.Sharding):
  """seed -> 4 keys (init, dropout, augment, order), compiled once."""
  return jax.jit(
      lambda seed: tuple(jax.random.split(jax.random.key(seed), 4)),
      out_shardings=sharding,
  )


def _data_dependent_params(
    config: ml_collections.ConfigDict, images: np.ndarray
) -> dict[str, Any]:
  """The whitening layer's params from the first training images (as the
  model sees them: normalised)."""
  if not config.whitening.images:
    return {}
  kernel, bias = initializers.whitening(
      images,
      config.model.whiten_patch,
      config.whitening.epsilon,
      config.whitening.decomposition,
  )
  return {'whiten': {'kernel': kernel, 'bias': bias}}
