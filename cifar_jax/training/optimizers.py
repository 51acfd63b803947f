"""Optax chains that reproduce Keras 2.3's SGD, Adam and MaxNorm exactly
(step for step against Keras 2.3.1 itself: tests/keras23_test.py), and
the one place an `optimizer` section becomes a transformation (the fast
recipes' own are `fast_sgd` and `muon`).

Keras and Optax disagree on details that change results:
- Keras SGD puts the learning rate inside the velocity (v = m*v - lr_t*g) and
  decays it per update, lr_t = lr / (1 + decay * t), t counting this update.
  `optax.sgd` scales after the momentum trace and has no inverse-time
  schedule, so we chain `scale_by_learning_rate(schedule)` before
  `trace(momentum)`.
- Keras 2.3 Adam adds epsilon to sqrt(v) *after* folding the bias correction
  into the step size; `optax.adam` adds it to sqrt(v_hat). We implement the
  Keras placement and its t, one ahead (`scale_by_keras_adam`).
- A Keras `kernel_constraint=max_norm(c)` rescales the kernel after every
  update; Optax has no per-unit max-norm, so `keras_max_norm` is a
  transformation that returns the update which lands on the projected kernel.
"""

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from cifar_jax import rules
from cifar_jax.training import fast_sgd
from cifar_jax.training import muon

KERAS_EPSILON = 1e-7  # keras.backend.epsilon(), used by Adam and MaxNorm.


def inverse_time_decay(learning_rate: float, decay: float) -> optax.Schedule:
  """Keras' `decay`: lr / (1 + decay * t), t = updates made, this one
  included (`count` + 1).

  Keras 2.3's SGD reads its update counter with no control dependency on
  the op that increments it, and on TensorFlow 1.15 it reads it after: the
  first update already divides by 1 + decay (tests/keras23_test.py).
  """

  def schedule(count):
    return learning_rate / (1.0 + decay * (count + 1))

  return schedule


def keras_sgd(
    learning_rate: optax.Schedule, momentum: float
) -> optax.GradientTransformation:
  """Keras SGD: v = momentum * v - lr_t * g; w = w + v.

  `learning_rate` is Keras' decayed rate (`inverse_time_decay`).
  """
  return optax.chain(
      optax.scale_by_learning_rate(learning_rate),
      optax.trace(decay=momentum),
  )


class KerasAdamState(NamedTuple):
  count: jax.Array
  mu: Any
  nu: Any


def scale_by_keras_adam(
    b1: float, b2: float, eps: float
) -> optax.GradientTransformation:
  """Keras 2.3's Adam direction: sqrt(1-b2^t)/(1-b1^t) * m/(sqrt(v)+eps),
  t = updates made, this one included, plus one (as Keras 2.3.1 computes
  it on TensorFlow 1.15: tests/keras23_test.py)."""

  def init_fn(params):
    # Two separate trees: aliased buffers could not both be donated to jit.
    return KerasAdamState(
        jnp.zeros([], jnp.int32),
        jax.tree.map(jnp.zeros_like, params),
        jax.tree.map(jnp.zeros_like, params),
    )

  def update_fn(updates, state, params=None):
    del params
    count = state.count + 1
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, updates)
    # Keras 2.3 reads its update counter after incrementing it (see
    # `inverse_time_decay`), so its t is one ahead: 2 at the first update.
    # In the variables' dtype (float32; float64 in tests), as Keras'.
    dtype = jnp.promote_types(jax.tree.leaves(mu)[0].dtype, jnp.float32)
    t = (count + 1).astype(dtype)
    correction = jnp.sqrt(1 - b2**t) / (1 - b1**t)
    updates = jax.tree.map(
        lambda m, v: correction * m / (jnp.sqrt(v) + eps), mu, nu
    )
    return updates, KerasAdamState(count, mu, nu)

  return optax.GradientTransformation(init_fn, update_fn)


def keras_adam(
    learning_rate: float, b1: float, b2: float, eps: float
) -> optax.GradientTransformation:
  """Keras 2.3 Adam: w = w - lr_t * m / (sqrt(v) + eps)."""
  return optax.chain(
      scale_by_keras_adam(b1, b2, eps),
      optax.scale_by_learning_rate(learning_rate),
  )


def max_norm_project(w: jax.Array, max_value: float, axis=0) -> jax.Array:
  """Keras `MaxNorm(max_value, axis)`: w * clip(n, 0, c) / (eps + n)."""
  norms = jnp.sqrt(jnp.sum(jnp.square(w), axis=axis, keepdims=True))
  return w * (jnp.clip(norms, 0, max_value) / (KERAS_EPSILON + norms))


def keras_max_norm(max_values: Any, axis=0) -> optax.GradientTransformation:
  """Projects constrained kernels after the update, as Keras constraints
  do: last in a chain (it needs `params`). `max_values`: a float per param
  leaf, 0.0 unconstrained (`max_norm_bounds`); `axis`: Keras' (0, as the
  seed used, bounds each length-3 column of a conv kernel's height)."""

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError('keras_max_norm needs params.')

    def project(update, param, max_value):
      if not max_value:
        return update
      return max_norm_project(param + update, max_value, axis) - param

    return jax.tree.map(project, updates, params, max_values), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)


def max_norm_bounds(params: Any, config: ml_collections.ConfigDict) -> Any:
  """A tree like `params`: each kernel's MaxNorm bound, 0.0 = unconstrained.

  Keras attaches `kernel_constraint` to a layer; here the bounds follow
  ConvNet's layer names: `conv_max_norm` for its stages' conv kernels,
  `hidden_max_norm` for its dense ReLU layers' kernels (never the logits).
  """

  def bound(path, leaf):
    del leaf
    names = [getattr(p, 'key', str(p)) for p in path]
    if names[-1] != 'kernel':
      return 0.0
    if names[0].startswith('stage'):
      return float(config.conv_max_norm)
    if names[0].startswith('dense'):
      return float(config.hidden_max_norm)
    return 0.0

  return jax.tree_util.tree_map_with_path(bound, params)


@dataclasses.dataclass(frozen=True)
class RunShape:
  """What an optimizer needs of the run beyond its own config section."""

  total_steps: int = 0  # For the fast recipes' schedules.
  steps_per_epoch: int = 0  # For the whitening bias's epochs.
  batch_size: int = 0  # For the fast recipes' per-1024-example rates.


def learning_rate_schedule(
    config: ml_collections.ConfigDict, run: RunShape = RunShape()
) -> optax.Schedule:
  """The learning rate at each update: the one object the optimizer applies
  (`create_optimizer`) and the loop logs."""
  if config.name == 'sgd':
    return inverse_time_decay(config.learning_rate, config.decay)
  if config.name == 'fast_sgd':
    c = config
    triangle = fast_sgd.triangle(
        run.total_steps, c.schedule_start, c.schedule_peak, c.schedule_end
    )
    return fast_sgd.Schedule(
        fast_sgd.rates(config, run.batch_size)[0], triangle
    )
  if config.name == 'muon':  # The filters' rate; the other groups' decay alike.
    return muon.linear_decay(config.learning_rate, run.total_steps)
  return optax.constant_schedule(config.learning_rate)  # Adam's.


def has_constant_learning_rate(config: ml_collections.ConfigDict) -> bool:
  """Whether the learning rate is the same at every update (Adam; SGD
  without decay): only then may a run continue another's optimizer, whose
  count the rate would otherwise follow while the loop logs its own."""
  return config.name == 'adam' or (config.name == 'sgd' and not config.decay)


def create_optimizer(
    config: ml_collections.ConfigDict,
    params: Any,
    run: RunShape = RunShape(),
    schedule: optax.Schedule | None = None,
) -> optax.GradientTransformation:
  """The `optimizer` section's optimizer, then the MaxNorm projection;
  `params` (or their shapes) name the bounds and the fast recipes' groups,
  `run` is for 'fast_sgd', `schedule` the learning rate if made already."""
  rules.check(config, rules.OPTIMIZER, 'optimizer.')
  schedule = schedule or learning_rate_schedule(config, run)
  if config.name == 'sgd':
    tx = keras_sgd(schedule, config.momentum)
  elif config.name == 'adam':
    c = config
    tx = keras_adam(c.learning_rate, c.beta1, c.beta2, c.epsilon)
  elif config.name == 'muon':
    tx = muon.optimizer(config, params, run.total_steps, run.steps_per_epoch,
                        run.batch_size)  # fmt: skip
  else:
    groups = fast_sgd.param_groups(params)
    tx = fast_sgd.sgd(config, groups, run.steps_per_epoch, run.batch_size,
                      schedule)  # fmt: skip
  bounds = max_norm_bounds(params, config)
  if any(jax.tree.leaves(bounds)):
    tx = optax.chain(tx, keras_max_norm(bounds))
  return tx
