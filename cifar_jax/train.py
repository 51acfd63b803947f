"""Training and evaluation: state, jitted steps, and the epoch loop.

Data parallelism is JAX's SPMD: one `jax.jit` program over a 1-D device mesh
with axis 'data'. The state is replicated, each batch is sharded along
'data', and XLA inserts the gradient all-reduce; BatchNorm statistics are over
the global batch, as on Keras' single device. (The design named `pmap`; since
JAX 0.8 pmap is itself built on jit + shard_map and in maintenance mode.)

Every random choice is a function of (config.seed, step): data order
(`input_pipeline.TrainOrder`), augmentation and dropout (`fold_in(key, step)`
of keys split from `key(seed)`). Data and augmentation live on the device:
the host only dispatches steps.
"""

import dataclasses
import functools
import io
import json
import sys
import time
from typing import Any

from absl import logging
from clu import metrics
import flax
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cifar_jax import augment
from cifar_jax import images as images_lib
from cifar_jax import checkpointing
from cifar_jax import config_checks
from cifar_jax import initializers
from cifar_jax import input_pipeline
from cifar_jax import models
from cifar_jax import optimizers
from cifar_jax import preemption
from cifar_jax import progress
from cifar_jax import reporting
from cifar_jax import rundir
from cifar_jax import summary
from cifar_jax import xla_cpu
from cifar_jax.errors import NonFiniteLossError
from cifar_jax.errors import Preempted
from cifar_jax.errors import UserError

P = jax.sharding.PartitionSpec


class TrainState(train_state.TrainState):
  """Flax's TrainState plus the BatchNorm statistics ({} without BN)."""

  batch_stats: Any


@flax.struct.dataclass
class Metrics(metrics.Collection):
  """Example-weighted mean loss and accuracy, as Keras reports them."""

  loss: metrics.Average.from_output('loss')
  accuracy: metrics.Accuracy


def create_mesh(devices: list[jax.Device] | None = None) -> jax.sharding.Mesh:
  """`devices` (default: every device of every process) on one 'data' axis.

  Auto axes: under the Explicit default of `jax.make_mesh`, linen's Dropout
  fails to trace (../shared/notes/ECOSYSTEM.md).
  """
  devices = devices or jax.devices()
  return jax.make_mesh(
      (len(devices),),
      ('data',),
      devices=devices,
      axis_types=(jax.sharding.AxisType.Auto,),
  )


def state_initializer(
    config: ml_collections.ConfigDict,
    model: Any,
    sharding: jax.sharding.Sharding | None = None,
    total_steps: int = 0,
    steps_per_epoch: int = 0,
):
  """A jitted `(rng, replace) -> TrainState` that inits params and optimizer.

  The optimizer is built once, here: it is a static part of the state's
  tree structure, so every state made by this function has the same
  structure, and the compiled steps serve all of them (one compilation for
  many seeds). The state is made by one jitted program that writes it
  straight to `sharding`: on several processes, moving arrays made on one
  device to a global sharding is not supported.

  Args:
    config: the run's config.
    model: the Flax module.
    sharding: where the state lives.
    total_steps, steps_per_epoch: the run's length (for schedules).

  Returns:
    init(rng, replace): `replace` holds top-level parameter subtrees to use
    instead of the random ones (the data-dependent whitening layer).
  """

  def init_variables(rng):
    return model.init(rng, jnp.zeros((1,) + images_lib.SHAPE), train=False)

  abstract = jax.eval_shape(init_variables, jax.random.key(0))
  tx = optimizers.create_optimizer(
      config.optimizer,
      model.max_norm_values(abstract['params']),
      total_steps,
      steps_per_epoch,
  )

  def init(rng, replace):
    variables = init_variables(rng)
    return TrainState.create(
        apply_fn=model.apply,
        params={**variables['params'], **replace},
        tx=tx,
        batch_stats=variables.get('batch_stats', {}),
    )

  return jax.jit(init, out_shardings=sharding)


def create_train_state(
    config: ml_collections.ConfigDict,
    model: Any,
    rng: jax.Array,
    sharding: jax.sharding.Sharding | None = None,
    total_steps: int = 0,
    steps_per_epoch: int = 0,
    replace: dict[str, Any] | None = None,
) -> TrainState:
  """One initial state (see `state_initializer`)."""
  return state_initializer(
      config, model, sharding, total_steps, steps_per_epoch
  )(rng, replace or {})


def empty_metrics(sharding: jax.sharding.Sharding | None = None) -> Metrics:
  """`Metrics.empty()`, made on `sharding` (see `create_train_state`)."""
  return _empty_metrics_fn(sharding)()


@functools.cache
def _empty_metrics_fn(sharding: jax.sharding.Sharding | None):
  return jax.jit(Metrics.empty, out_shardings=sharding)  # Compiled once.


def _variables(state: TrainState, params: Any) -> dict[str, Any]:
  if state.batch_stats:
    return {'params': params, 'batch_stats': state.batch_stats}
  return {'params': params}


def train_step(
    state: TrainState,
    epoch_metrics: Metrics,
    data: jax.Array,
    labels: jax.Array,
    order: tuple[jax.Array, jax.Array],
    position: jax.Array,
    dropout_key: jax.Array,
    augment_key: jax.Array,
    *,
    batch_size: int,
    augment_config: augment.AugmentConfig,
    label_smoothing: float = 0.0,
    batch_sharding: jax.sharding.Sharding | None = None,
) -> tuple[TrainState, Metrics]:
  """One update on batch `position` of the current pass's `order`.

  The batch is gathered from `data` (uint8, on the device) and augmented
  here, inside the compiled step. Padded examples (mask 0) of a pass's last
  batch are left out of the loss, so the gradient is Keras' on its smaller
  last batch.

  Returns:
    The new state and `epoch_metrics` merged with this batch's metrics.
  """
  indices, mask = (
      input_pipeline.batch_at(a, position, batch_size) for a in order
  )
  if batch_sharding is not None:  # Each device gathers only its share.
    indices, mask = jax.lax.with_sharding_constraint(
        (indices, mask), batch_sharding
    )
  images = images_lib.to_unit_range(data[indices])
  flips = None
  if augment_config.flip_mode == 'alternating':
    pass_index = state.step // (order[0].shape[0] // batch_size)
    flips = augment.alternating_flips(augment_key, indices, pass_index)
  images = augment.augment_batch(
      jax.random.fold_in(augment_key, state.step), images, augment_config, flips
  )
  labels = labels[indices]
  rng = jax.random.fold_in(dropout_key, state.step)

  def loss_fn(params):
    logits, updates = state.apply_fn(
        _variables(state, params),
        images,
        train=True,
        mask=mask,
        rngs={'dropout': rng},
        mutable=['batch_stats'],
    )
    per_example = optax.softmax_cross_entropy_with_integer_labels(
        logits, labels
    )
    targets = optax.smooth_labels(
        jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing
    )
    objective = optax.softmax_cross_entropy(logits, targets)
    loss = jnp.sum(objective * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    return loss, (logits, per_example, updates)

  grads, (logits, per_example, updates) = jax.grad(loss_fn, has_aux=True)(
      state.params
  )
  state = state.apply_gradients(grads=grads)
  if state.batch_stats:
    state = state.replace(batch_stats=updates['batch_stats'])
  batch_metrics = Metrics.single_from_model_output(
      loss=per_example, logits=logits, labels=labels, mask=mask
  )
  return state, epoch_metrics.merge(batch_metrics)


def train_steps(
    state: TrainState,
    epoch_metrics: Metrics,
    data: jax.Array,
    labels: jax.Array,
    order: tuple[jax.Array, jax.Array],
    position: jax.Array,
    dropout_key: jax.Array,
    augment_key: jax.Array,
    *,
    num_steps: int,
    **step_kwargs,
) -> tuple[TrainState, Metrics]:
  """`num_steps` consecutive `train_step`s of one pass, as one `lax.scan`.

  One dispatch for many steps: on a GPU or TPU the host then never waits
  between steps, and a whole epoch is one program.
  """

  def body(carry, i):
    return (
        train_step(
            *carry,
            data,
            labels,
            order,
            position + i,
            dropout_key,
            augment_key,
            **step_kwargs,
        ),
        None,
    )

  (state, epoch_metrics), _ = jax.lax.scan(
      body, (state, epoch_metrics), jnp.arange(num_steps)
  )
  return state, epoch_metrics


def eval_step(
    state: TrainState,
    epoch_metrics: Metrics,
    data: jax.Array,
    labels: jax.Array,
    indices: jax.Array,
    mask: jax.Array,
    *,
    tta: int = 0,
    num_classes: int | None = None,
) -> Metrics:
  """Adds the metrics of `data[indices]` (inference mode) to `epoch_metrics`.

  `tta` is the test-time augmentation level of `augment.tta_logits`. Only
  the first `num_classes` outputs (the data set's classes) are ranked: a
  model with more outputs never trained the others.
  """
  labels = labels[indices]
  variables = _variables(state, state.params)
  logits = augment.tta_logits(
      lambda x: state.apply_fn(variables, x, train=False),
      images_lib.to_unit_range(data[indices]),
      tta,
  )[:, :num_classes]
  per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return epoch_metrics.merge(
      Metrics.single_from_model_output(
          loss=per_example, logits=logits, labels=labels, mask=mask
      )
  )


def _computed(m: Metrics) -> dict[str, float]:
  return {k: float(v) for k, v in m.compute().items()}


def _check_finite(values: dict[str, float], step: int) -> None:
  if not np.isfinite(values['loss']):
    raise NonFiniteLossError(
        f'The training loss became {values["loss"]} by step {step}; the run '
        'stops here. Try a lower optimizer.learning_rate.'
    )


def _check_divisible(name: str, value: int, num_devices: int) -> None:
  if value % num_devices:
    raise UserError(
        f'{name}={value} must be divisible by the number of '
        f'devices ({num_devices}), since each gets an equal '
        'share of the global batch.'
    )


def evaluate(
    jit_eval_step,
    state: TrainState,
    data: jax.Array,
    labels: jax.Array,
    batch_size: int,
    index_sharding: jax.sharding.Sharding,
) -> dict[str, float]:
  """Loss and accuracy over every example of `data` exactly once."""
  m = empty_metrics(
      jax.sharding.NamedSharding(index_sharding.mesh, P())
      if isinstance(index_sharding, jax.sharding.NamedSharding)
      else index_sharding
  )
  for idx, mask in input_pipeline.eval_batches(len(labels), batch_size):
    m = jit_eval_step(
        state,
        m,
        data,
        labels,
        jax.device_put(idx, index_sharding),
        jax.device_put(mask, index_sharding),
    )
  return _computed(m)


@dataclasses.dataclass
class Experiment:
  """What a run builds once: model, data on the device(s), compiled steps."""

  config: ml_collections.ConfigDict
  model: Any
  state: TrainState  # The initial state.
  init_params: dict[str, Any]  # Data-dependent params (whitening), NumPy.
  init_seconds: float  # Host time spent computing init_params.
  init_state: Any  # (rng, init_params) -> TrainState; see state_initializer.
  train: tuple[jax.Array, jax.Array]  # uint8 images, labels; replicated.
  eval: tuple[jax.Array, jax.Array]
  order: input_pipeline.TrainOrder
  steps_per_epoch: int
  dropout_key: jax.Array
  augment_key: jax.Array
  jit_train_step: Any
  jit_eval_step: Any
  steps_per_dispatch: int  # Steps per call (a `train_steps` scan if > 1).
  jit_train_steps: Any  # num_steps -> the jitted scan of that many steps.
  class_names: tuple[str, ...]
  replicated: jax.sharding.Sharding
  batch_sharding: jax.sharding.Sharding


def create_experiment(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None
) -> Experiment:
  """Validates the config, loads the data onto the device(s), jits the steps.

  Args:
    config: the run's config.
    mesh: a 1-D mesh with axis 'data' (default: `create_mesh()`).

  Raises:
    UserError: for a config or data problem the user can fix.
  """
  config_checks.check(config)
  mesh = mesh or create_mesh()
  num_devices = mesh.devices.size
  _check_divisible('batch_size', config.batch_size, num_devices)
  _check_divisible('eval_batch_size', config.eval_batch_size, num_devices)
  replicated = jax.sharding.NamedSharding(mesh, P())
  batch_sharding = jax.sharding.NamedSharding(mesh, P('data'))
  try:
    model = models.create_model(config.model, config.compute_dtype)
    augment_config = augment.AugmentConfig.from_config(config.augment)
  except (TypeError, ValueError) as e:
    raise UserError(f'Bad config: {e}') from e

  train_ds = input_pipeline.load_split(config, config.train_split)
  eval_ds = input_pipeline.load_split(config, config.eval_split)
  if len(train_ds.class_names) > config.model.num_classes:
    raise UserError(
        f'The data has {len(train_ds.class_names)} classes but '
        f'model.num_classes={config.model.num_classes}; set '
        f'--config.model.num_classes={len(train_ds.class_names)}.'
    )
  steps_per_epoch = config.steps_per_epoch or -(
      -len(train_ds) // config.batch_size
  )
  init_params, start = {}, time.perf_counter()
  if config.whitening.images:
    kernel, bias = initializers.whitening(
        images_lib.to_unit_range(
            train_ds.images[: config.whitening.images], np.float64
        ),
        config.model.whiten_patch,
        config.whitening.epsilon,
    )
    init_params = {'whiten': {'kernel': kernel, 'bias': bias}}
  init_seconds = time.perf_counter() - start
  # Both splits live on the device(s) for the whole run, as uint8.
  train_arrays, eval_arrays = jax.device_put(
      ((train_ds.images, train_ds.labels), (eval_ds.images, eval_ds.labels)),
      replicated,
  )
  # The steps hold the convolutions: compiled with the CPU's options.
  jit = functools.partial(
      jax.jit,
      compiler_options=xla_cpu.compiler_options(mesh.devices.flat[0].platform),
  )
  step_kwargs = dict(
      batch_size=config.batch_size,
      augment_config=augment_config,
      label_smoothing=config.label_smoothing,
      batch_sharding=batch_sharding,
  )
  exp = Experiment(
      config=config,
      model=model,
      state=None,
      train=train_arrays,
      eval=eval_arrays,
      order=None,
      init_params=init_params,
      init_seconds=init_seconds,
      init_state=state_initializer(
          config,
          model,
          replicated,
          config.num_epochs * steps_per_epoch,
          steps_per_epoch,
      ),
      steps_per_epoch=steps_per_epoch,
      dropout_key=None,
      augment_key=None,
      jit_train_step=jit(
          functools.partial(train_step, **step_kwargs),
          donate_argnums=(0, 1),
          out_shardings=(replicated, replicated),
      ),
      steps_per_dispatch=_steps_per_dispatch(config, steps_per_epoch, mesh),
      jit_train_steps=functools.cache(
          lambda n: jit(
              functools.partial(train_steps, num_steps=n, **step_kwargs),
              donate_argnums=(0, 1),
              out_shardings=(replicated, replicated),
          )
      ),
      jit_eval_step=jit(
          functools.partial(
              eval_step,
              tta=config.eval_tta,
              num_classes=len(train_ds.class_names),
          ),
          donate_argnums=(1,),
          out_shardings=replicated,
      ),
      class_names=train_ds.class_names,
      replicated=replicated,
      batch_sharding=batch_sharding,
  )
  return with_seed(exp, config.seed)


def with_seed(exp: Experiment, seed: int) -> Experiment:
  """`exp` with the initial state, data order and keys of `seed`.

  The data on the device(s), the optimizer and the compiled programs are
  shared, so repeated runs (benchmarks/speedrun.py) compile once.
  """
  init_key, dropout_key, augment_key, order_key = _split_seed_fn(
      exp.replicated
  )(seed)
  return dataclasses.replace(
      exp,
      state=exp.init_state(init_key, exp.init_params),
      order=input_pipeline.TrainOrder(
          len(exp.train[1]), exp.config.batch_size, order_key, exp.replicated
      ),
      dropout_key=dropout_key,
      augment_key=augment_key,
  )


@functools.cache
def _split_seed_fn(sharding: jax.sharding.Sharding):
  """seed -> 4 keys (init, dropout, augment, order), compiled once."""
  return jax.jit(
      lambda seed: tuple(jax.random.split(jax.random.key(seed), 4)),
      out_shardings=sharding,
  )


def _steps_per_dispatch(
    config: ml_collections.ConfigDict,
    steps_per_epoch: int,
    mesh: jax.sharding.Mesh,
) -> int:
  """config.steps_per_dispatch, with 0 = a whole epoch on GPU/TPU, 1 on CPU.

  On XLA:CPU a scan of train steps ran 14-27x slower per step than
  dispatching them one by one (benchmarks/dispatch.py), so CPUs keep
  single steps.
  """
  if config.steps_per_dispatch:
    return config.steps_per_dispatch
  return 1 if mesh.devices.flat[0].platform == 'cpu' else steps_per_epoch


def dispatch_sizes(
    exp: Experiment, stops: list[int], start: int = 0
) -> list[int]:
  """The scan lengths `run_steps` dispatches from `start` through `stops`.

  `stops` are the steps where the caller's loop calls `run_steps` anew
  (epoch ends, checkpoints); the last is the end of the run.
  """
  sizes, step = set(), start
  for stop in sorted(stops):
    while step < stop:
      _, position = exp.order.locate(step)
      n = min(
          exp.steps_per_dispatch,
          stop - step,
          exp.order.batches_per_pass - position,
      )
      sizes.add(n)
      step += n
  return sorted(sizes)


def compile_ahead(exp: Experiment, stops: list[int], start: int = 0) -> float:
  """Compiles every program a run calls (`dispatch_sizes`); returns seconds.

  Ahead-of-time (`lower(...).compile()`), so a timed run measures only
  running: JAX keeps the executables, and the run's calls with the same
  shapes and shardings reuse them.
  """
  begin = time.perf_counter()
  state, metrics = exp.state, empty_metrics(exp.replicated)
  order = exp.order.pass_order(0)
  for n in dispatch_sizes(exp, stops, start):
    fn = exp.jit_train_step if n == 1 else exp.jit_train_steps(n)
    fn.lower(
        state, metrics, *exp.train, order, 0, exp.dropout_key, exp.augment_key
    ).compile()
  idx, mask = next(
      input_pipeline.eval_batches(len(exp.eval[1]), exp.config.eval_batch_size)
  )
  exp.jit_eval_step.lower(
      state,
      metrics,
      *exp.eval,
      jax.device_put(idx, exp.batch_sharding),
      jax.device_put(mask, exp.batch_sharding),
  ).compile()
  return time.perf_counter() - begin


def run_steps(
    exp: Experiment,
    state: TrainState,
    epoch_metrics: Metrics,
    step: int,
    stop: int,
    bar: progress.ProgressBar,
    should_stop=lambda step: False,
    after_step=lambda step: None,
) -> tuple[TrainState, Metrics, int]:
  """Runs training steps [step, stop), drawing `bar` (steps since epoch start).

  The host only dispatches steps (`exp.steps_per_dispatch` at a time); it
  reads the metrics (a device sync) only when the bar is due and at `stop`.
  `should_stop(step)` is asked before each step, so a preemption stops at a
  step boundary; `after_step(step)` runs after each (throughput reporting).

  Returns:
    The state, the epoch's metrics so far, and the step reached.
  """
  epoch_start = step - bar.initial
  while step < stop and not should_stop(step):
    pass_index, position = exp.order.locate(step)
    # A scan never crosses the end of a pass (a new order) or `stop`.
    n = min(
        exp.steps_per_dispatch,
        stop - step,
        exp.order.batches_per_pass - position,
    )
    fn = exp.jit_train_step if n == 1 else exp.jit_train_steps(n)
    state, epoch_metrics = fn(
        state,
        epoch_metrics,
        *exp.train,
        exp.order.pass_order(pass_index),
        position,
        exp.dropout_key,
        exp.augment_key,
    )
    step += n
    after_step(step)
    if bar.due() or step == stop:
      values = _computed(epoch_metrics)
      _check_finite(values, step)
      bar.update(step - epoch_start, values)
  return state, epoch_metrics, step


# Config keys that may change when a run resumes: they do not change what
# the checkpointed steps computed.
RESUMABLE_CHANGES = (
    'num_epochs',
    'data_dir',
    'cache_dir',
    'eval_batch_size',
    'eval_split',
    'eval_tta',
    'checkpoint_every_steps',
    'keep_checkpoints',
    'init_from',
    'steps_per_dispatch',
    'seed_rung',
)


def config_differences(saved: dict, current: dict) -> list[str]:
  """'key: saved -> current' for every key that must not change on resume."""
  saved, current = reporting.flatten(saved), reporting.flatten(current)
  return [
      f'{k}: {saved.get(k, "<absent>")!r} in the checkpoint, '
      f'{current.get(k, "<absent>")!r} now'
      for k in sorted(set(saved) | set(current))
      if k not in RESUMABLE_CHANGES and saved.get(k) != current.get(k)
  ]


def _abstract(tree: Any) -> Any:
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      tree,
  )


def state_from_run(exp: Experiment, path: str) -> TrainState:
  """The initial state with params and BN statistics of another run."""
  loaded = checkpointing.restore_params(path, exp.replicated)
  ours = {'params': exp.state.params, 'batch_stats': exp.state.batch_stats}
  theirs_shapes = jax.tree.map(np.shape, loaded)
  ours_shapes = jax.tree.map(np.shape, ours)
  if theirs_shapes != ours_shapes:
    raise UserError(
        f'init_from={path}: its parameters do not fit this '
        f'model.\n  checkpoint: {theirs_shapes}\n  model: '
        f'{ours_shapes}'
    )
  loaded = jax.tree.map(lambda new, old: new.astype(old.dtype), loaded, ours)
  return exp.state.replace(
      params=loaded['params'], batch_stats=loaded['batch_stats']
  )


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, out=sys.stdout
) -> tuple[TrainState, list[dict[str, float]]]:
  """Trains `config` in `workdir`, evaluating after every epoch.

  Resumes automatically from the newest good checkpoint in
  `<workdir>/checkpoints`; a finished run only says so.

  Args:
    config: a config as in configs/default.py.
    workdir: the run directory; gets config.json, history.json and
      checkpoints/.
    out: where the Keras-style progress goes (process 0's only).

  Returns:
    The final state and the history: one dict per epoch (epoch, loss,
    accuracy, val_loss, val_accuracy, seconds).

  Raises:
    UserError: a config, data or disk problem the user can fix.
    NonFiniteLossError: training diverged.
    Preempted: SIGTERM/SIGINT arrived; a checkpoint was saved first.
  """
  config_checks.check(config)
  workdir = rundir.prepare(workdir)
  if jax.process_index() > 0:  # One progress report per run, not per host.
    out = io.StringIO()
  with rundir.hold(workdir, take=jax.process_index() == 0):
    exp = create_experiment(config)
    ckpt = checkpointing.Checkpoints(
        checkpointing.checkpoint_dir(workdir), config.keep_checkpoints
    )
    try:
      result = _train(exp, ckpt, config, workdir, out)
    except BaseException:
      ckpt.close(quietly=True)
      raise
    ckpt.close()  # Waits for the last asynchronous save.
    return result


def _train(
    exp: Experiment,
    ckpt: checkpointing.Checkpoints,
    config: ml_collections.ConfigDict,
    workdir: str,
    out,
):
  """The loop of `train_and_evaluate`, with `ckpt` open.

  Nothing is written to `workdir` (summaries, config.json) before the
  checkpoints there are known to belong to this config.
  """
  config_dict = json.loads(config.to_json_best_effort())

  def check_meta(meta):
    diffs = config_differences(meta['config'], config_dict)
    if diffs:
      raise UserError(
          f'The checkpoints in {ckpt.directory} come from a different '
          'config:\n  '
          + '\n  '.join(diffs)
          + '\nUse another --workdir, or the config they were made with.'
      )

  spe = exp.steps_per_epoch
  total_steps = config.num_epochs * spe
  restored = ckpt.restore_latest(
      _abstract(exp.state), _abstract(empty_metrics(exp.replicated)), check_meta
  )
  if restored:
    state, epoch_metrics, step = (
        restored.state,
        restored.metrics,
        restored.step,
    )
    history = restored.meta['history']
    epoch_seconds = restored.meta['epoch_seconds']
    if step >= total_steps:
      print(
          f'Run in {workdir} already finished: {len(history)}/'
          f'{config.num_epochs} epochs; nothing to do.',
          file=out,
      )
      return state, history
    print(
        f'Resuming from step {step} (epoch {step // spe + 1}/'
        f'{config.num_epochs}, batch {step % spe}/{spe}) of checkpoint '
        f'{ckpt.directory}/{step}.',
        file=out,
        flush=True,
    )
    logging.info('Resuming from step %d.', step)
  else:
    state = (
        state_from_run(exp, config.init_from) if config.init_from else exp.state
    )
    epoch_metrics, step, history, epoch_seconds = (
        empty_metrics(exp.replicated),
        0,
        [],
        0.0,
    )

  reporter = reporting.Reporter(workdir, config, total_steps)
  try:
    return _loop(
        exp,
        ckpt,
        reporter,
        config,
        workdir,
        out,
        state,
        epoch_metrics,
        step,
        history,
        epoch_seconds,
    )
  finally:
    reporter.close()


def _loop(
    exp,
    ckpt,
    reporter,
    config,
    workdir,
    out,
    state,
    epoch_metrics,
    step,
    history,
    epoch_seconds,
):
  """Trains from `step` to the end, checkpointing and reporting."""
  config_dict = json.loads(config.to_json_best_effort())
  spe = exp.steps_per_epoch
  total_steps = config.num_epochs * spe
  reporter.start(
      config, exp.class_names, len(exp.train[1]), len(exp.eval[1]), spe
  )
  print(
      summary.keras_summary(
          exp.model,
          {'params': state.params, 'batch_stats': state.batch_stats},
          images_lib.SHAPE,
      ),
      file=out,
  )
  print(
      f'Train on {len(exp.train[1])} samples, validate on '
      f'{len(exp.eval[1])} samples ({jax.device_count()} device(s): '
      f'{jax.devices()[0].platform})',
      file=out,
  )

  def save(step, val_accuracy=None):
    # A snapshot of history: the JSON may be written after we append to it.
    ckpt.save(
        step,
        state,
        epoch_metrics,
        {
            'config': config_dict,
            'history': [dict(r) for r in history],
            'epoch_seconds': epoch_seconds,
        },
        val_accuracy,
    )

  every = config.checkpoint_every_steps
  stops = set(range(spe, total_steps + 1, spe))
  if every:
    stops |= set(range(every, total_steps + 1, every))
  compile_seconds = compile_ahead(exp, sorted(stops), step)
  print(
      f'Compiled ahead of time in {compile_seconds:.1f}s.', file=out, flush=True
  )
  with preemption.PreemptionWatch() as watch:
    while step < total_steps:
      epoch = step // spe
      epoch_end = (epoch + 1) * spe
      bar = progress.ProgressBar(spe, out=out, initial=step - epoch * spe)
      started = time.monotonic() - epoch_seconds
      while step < epoch_end:
        stop = min(
            epoch_end, (step // every + 1) * every if every else epoch_end
        )
        state, epoch_metrics, step = run_steps(
            exp,
            state,
            epoch_metrics,
            step,
            stop,
            bar,
            watch.requested,
            reporter.progress,
        )
        epoch_seconds = time.monotonic() - started
        if step < stop:  # Asked to stop: save where we are, then exit.
          bar.close()
          save(step)
          ckpt.wait()
          raise Preempted(
              f'Stopped by {watch.name} at step {step} (epoch {epoch + 1}/'
              f'{config.num_epochs}); saved checkpoint {ckpt.directory}/'
              f'{step}. Run the same command to resume.',
              128 + (watch.signum or 15),
          )
        if step < epoch_end:
          save(step)
      bar.close()
      train_seconds = time.monotonic() - started
      train_values = _computed(epoch_metrics)
      eval_values = evaluate(
          exp.jit_eval_step,
          state,
          *exp.eval,
          config.eval_batch_size,
          exp.batch_sharding,
      )
      row = {
          'epoch': epoch + 1,
          **train_values,
          **{f'val_{k}': v for k, v in eval_values.items()},
          'seconds': time.monotonic() - started,
      }
      history.append(row)
      epoch_metrics = empty_metrics(exp.replicated)
      epoch_seconds = 0.0
      reporter.epoch(
          step,
          history,
          optimizers.learning_rate(config.optimizer, step, total_steps),
          train_seconds,
          spe,
          spe * config.batch_size,
      )
      save(step, row['val_accuracy'])
      print(
          progress.epoch_line(
              epoch + 1,
              config.num_epochs,
              row['seconds'],
              {
                  k: row[k]
                  for k in ('loss', 'accuracy', 'val_loss', 'val_accuracy')
              },
          ),
          file=out,
          flush=True,
      )
  if history:
    print(
        f'Accuracy: {history[-1]["val_accuracy"] * 100:.2f}%',
        file=out,
        flush=True,
    )
  return state, history
