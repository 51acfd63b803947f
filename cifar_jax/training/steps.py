"""The training state and the pure, jitted train and eval steps.

Every random choice inside a step is a function of (seed, step): dropout
and augmentation use `fold_in(key, step)` of keys split once from the seed,
and the batch is sliced from the pass's order (`batching.TrainOrder`).
Data and augmentation live on the device: the host only dispatches steps.
"""

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

from clu import metrics
import flax
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import optax

from cifar_jax.data import augment
from cifar_jax.data import batching
from cifar_jax.data import images as images_lib
from cifar_jax.training import fast_sgd
from cifar_jax.training import optimizers


class TrainState(train_state.TrainState):
  """Flax's TrainState plus the BatchNorm statistics ({} without BN)."""

  batch_stats: Any

  def with_variables(self, params: Any, batch_stats: Any) -> 'TrainState':
    """This state with other params and statistics."""
    return self.replace(params=params, batch_stats=batch_stats)

  def after_update(self, grads: Any, batch_stats: Any) -> 'TrainState':
    """The optimizer's update and the batch's new statistics."""
    return self.apply_gradients(grads=grads).replace(batch_stats=batch_stats)


class LookaheadTrainState(TrainState):
  """A TrainState with Lookahead (the fast recipes): its slow copy of the
  variables, {'params': ..., 'batch_stats': ...}, synced after updates.

  A subclass, so the states (and checkpoints) of runs without Lookahead
  keep their structure.
  """

  slow: Any
  lookahead: fast_sgd.Lookahead = flax.struct.field(pytree_node=False)

  @classmethod
  def create(cls, *, params, batch_stats, lookahead, **kwargs):
    slow = _copy(params, batch_stats)
    return super().create(params=params, batch_stats=batch_stats,
                          lookahead=lookahead, slow=slow, **kwargs)  # fmt: skip

  def with_variables(self, params: Any, batch_stats: Any) -> TrainState:
    """This state with other params and statistics (Lookahead restarts)."""
    slow = _copy(params, batch_stats)
    return self.replace(params=params, batch_stats=batch_stats, slow=slow)

  def after_update(self, grads: Any, batch_stats: Any) -> TrainState:
    """The optimizer's update, the new statistics, then Lookahead's sync."""
    state = self.apply_gradients(grads=grads)
    fast = {'params': state.params, 'batch_stats': batch_stats}
    slow, fast = self.lookahead.sync(state.step, self.slow, fast)
    return state.replace(slow=slow, **fast)


def _copy(params: Any, batch_stats: Any) -> dict[str, Any]:
  return jax.tree.map(jnp.array, {'params': params, 'batch_stats': batch_stats})


@flax.struct.dataclass
class Metrics(metrics.Collection):
  """Example-weighted mean loss and accuracy, as Keras reports them."""

  loss: metrics.Average.from_output('loss')
  accuracy: metrics.Accuracy


class Keys(NamedTuple):
  """The run's dropout and augmentation keys; steps fold in their step."""

  dropout: jax.Array
  augment: jax.Array


@dataclasses.dataclass(frozen=True)
class StepOptions:
  """What a train step is compiled for (closed over, not traced)."""

  batch_size: int
  batches_per_pass: int  # Of the train order: alternating flips count passes.
  augmentation: augment.AugmentConfig = augment.AugmentConfig()
  normalization: images_lib.Normalization = images_lib.Normalization()
  label_smoothing: float = 0.0
  # Where each batch's indices go: each device gathers only its share.
  batch_sharding: jax.sharding.Sharding | None = None


def state_initializer(
    model: Any,
    optimizer_config: ml_collections.ConfigDict,
    sharding: jax.sharding.Sharding | None = None,
    run: optimizers.RunShape = optimizers.RunShape(),
    schedule: optax.Schedule | None = None,
):
  """A jitted `(rng, replace) -> TrainState`: params and optimizer state.

  The optimizer is built once, here: a static part of the state's tree, so
  every state this makes has one structure and the compiled steps serve
  them all (one compilation for many seeds). One jitted program writes the
  state straight to `sharding` (moving arrays made on one device to a
  global sharding is not supported across processes). `replace`: top-level
  parameter subtrees used instead of the random ones (the whitening layer).
  """

  def init_variables(rng):
    return model.init(rng, jnp.zeros((1,) + images_lib.SHAPE), train=False)

  abstract = jax.eval_shape(init_variables, jax.random.key(0))
  tx = optimizers.create_optimizer(
      optimizer_config, abstract['params'], run, schedule
  )
  lookahead = fast_sgd.lookahead(optimizer_config, run.total_steps)

  def init(rng, replace):
    variables = init_variables(rng)
    params = {**variables['params'], **replace}
    kwargs = dict(apply_fn=model.apply, params=params, tx=tx,
                  batch_stats=variables.get('batch_stats', {}))  # fmt: skip
    if lookahead is None:
      return TrainState.create(**kwargs)
    return LookaheadTrainState.create(lookahead=lookahead, **kwargs)

  return jax.jit(init, out_shardings=sharding)


def create_train_state(
    model: Any,
    optimizer_config: ml_collections.ConfigDict,
    rng: jax.Array,
    sharding: jax.sharding.Sharding | None = None,
) -> TrainState:
  """One initial state with random parameters (see `state_initializer`)."""
  return state_initializer(model, optimizer_config, sharding)(rng, {})


def empty_metrics(sharding: jax.sharding.Sharding | None = None) -> Metrics:
  """`Metrics.empty()`, made on `sharding` (see `state_initializer`)."""
  return _empty_metrics_fn(sharding)()


@functools.cache
def _empty_metrics_fn(sharding: jax.sharding.Sharding | None):
  return jax.jit(Metrics.empty, out_shardings=sharding)  # Compiled once.


def computed(m: Metrics) -> dict[str, float]:
  """The metrics' values as Python floats (a device sync)."""
  return {k: float(v) for k, v in m.compute().items()}


def _variables(state: TrainState, params: Any) -> dict[str, Any]:
  if state.batch_stats:
    return {'params': params, 'batch_stats': state.batch_stats}
  return {'params': params}


def _augmented_images(
    step: jax.Array,
    images: jax.Array,
    indices: jax.Array,
    keys: Keys,
    options: StepOptions,
) -> jax.Array:
  """The batch's model inputs, augmented with keys folded from `step`."""
  batch = options.normalization(images[indices])
  flips = None
  if options.augmentation.flip_mode == 'alternating':
    flips = augment.alternating_flips(
        keys.augment, indices, step // options.batches_per_pass
    )
  key = jax.random.fold_in(keys.augment, step)
  return augment.augment_batch(key, batch, options.augmentation, flips)


def train_step(
    state: TrainState,
    epoch_metrics: Metrics,
    data: tuple[jax.Array, jax.Array],
    batch: tuple[jax.Array, jax.Array],
    keys: Keys,
    options: StepOptions,
) -> tuple[TrainState, Metrics]:
  """One update on `batch` (indices into `data`, and their mask): the new
  state, and `epoch_metrics` merged with the batch's.

  The batch is gathered from `data` (uint8, on the device) and augmented
  inside the compiled step. Padded examples (mask 0) of a pass's last batch
  are left out of the loss: the gradient is Keras' on its smaller batch.
  """
  indices, mask = batch
  if options.batch_sharding is not None:
    indices, mask = jax.lax.with_sharding_constraint(
        (indices, mask), options.batch_sharding
    )
  images = _augmented_images(state.step, data[0], indices, keys, options)
  labels = data[1][indices]
  rng = jax.random.fold_in(keys.dropout, state.step)

  def loss_fn(params):
    logits, updates = state.apply_fn(
        _variables(state, params), images, train=True, mask=mask,
        rngs={'dropout': rng}, mutable=['batch_stats'])  # fmt: skip
    per_example = optax.softmax_cross_entropy_with_integer_labels(
        logits, labels
    )
    targets = optax.smooth_labels(
        jax.nn.one_hot(labels, logits.shape[-1]), options.label_smoothing
    )
    objective = optax.softmax_cross_entropy(logits, targets)
    loss = jnp.sum(objective * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    return loss, (logits, per_example, updates)

  grads, (logits, per_example, updates) = jax.grad(loss_fn, has_aux=True)(
      state.params
  )
  state = state.after_update(grads, updates.get('batch_stats', {}))
  batch_metrics = Metrics.single_from_model_output(
      loss=per_example, logits=logits, labels=labels, mask=mask
  )
  return state, epoch_metrics.merge(batch_metrics)


def train_steps(
    state: TrainState,
    epoch_metrics: Metrics,
    data: tuple[jax.Array, jax.Array],
    order: tuple[jax.Array, jax.Array],
    position: jax.Array,
    keys: Keys,
    *,
    num_steps: int,
    options: StepOptions,
) -> tuple[TrainState, Metrics]:
  """Steps `position` .. `position + num_steps - 1` of one pass's `order`.

  More than one step runs as one `lax.scan`: one dispatch for many steps,
  so on a GPU or TPU the host never waits between them.
  """

  def step(carry, i):
    batch = tuple(
        batching.batch_at(a, position + i, options.batch_size) for a in order
    )
    return train_step(*carry, data, batch, keys, options), None

  if num_steps == 1:
    return step((state, epoch_metrics), 0)[0]
  (state, epoch_metrics), _ = jax.lax.scan(
      step, (state, epoch_metrics), jnp.arange(num_steps)
  )
  return state, epoch_metrics


def logits(
    apply_fn: Callable[..., jax.Array],
    variables: Any,
    images: jax.Array,
    normalization: images_lib.Normalization,
    tta: augment.TTA,
) -> jax.Array:
  """A batch's logits in inference mode, from uint8 images: the one path
  of the loop's evaluation and of evaluate and predict (`runs.inference`),
  with test-time augmentation `tta`."""
  return augment.tta_logits(
      lambda x: apply_fn(variables, x, train=False), normalization(images), tta
  )


def eval_step(
    state: TrainState,
    epoch_metrics: Metrics,
    data: tuple[jax.Array, jax.Array],
    batch: tuple[jax.Array, jax.Array],
    *,
    tta: augment.TTA = augment.TTA(),
    num_classes: int | None = None,
    normalization: images_lib.Normalization = images_lib.Normalization(),
) -> Metrics:
  """Adds the metrics of `batch` (inference mode) to `epoch_metrics`.

  `tta`: the test-time augmentation (`augment.tta_logits`). Only
  the first `num_classes` outputs (the data set's classes) are ranked: a
  model with more outputs never trained the others.
  """
  indices, mask = batch
  labels = data[1][indices]
  variables = _variables(state, state.params)
  ranked = logits(
      state.apply_fn, variables, data[0][indices], normalization, tta
  )[:, :num_classes]
  per_example = optax.softmax_cross_entropy_with_integer_labels(ranked, labels)
  return epoch_metrics.merge(
      Metrics.single_from_model_output(
          loss=per_example, logits=ranked, labels=labels, mask=mask
      )
  )
