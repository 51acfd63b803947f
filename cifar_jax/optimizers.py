"""Optax chains that reproduce Keras 2.3's SGD, Adam and MaxNorm exactly.

Keras and Optax disagree on three details that change results:
- Keras SGD puts the learning rate inside the velocity (v = m*v - lr_t*g) and
  decays it per update, lr_t = lr / (1 + decay * t). `optax.sgd` scales after
  the momentum trace and has no inverse-time schedule, so we chain
  `scale_by_learning_rate(schedule)` before `trace(momentum)`.
- Keras 2.3 Adam adds epsilon to sqrt(v) *after* folding the bias correction
  into the step size; `optax.adam` adds it to sqrt(v_hat). We implement the
  Keras placement (`scale_by_keras_adam`).
- A Keras `kernel_constraint=max_norm(c)` rescales the kernel after every
  update; Optax has no per-unit max-norm, so `keras_max_norm` is a
  transformation that returns the update which lands on the projected kernel.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

KERAS_EPSILON = 1e-7  # keras.backend.epsilon(), used by Adam and MaxNorm.


def inverse_time_decay(learning_rate: float, decay: float) -> optax.Schedule:
  """Keras' `decay`: lr / (1 + decay * t), t = updates made before this one."""

  def schedule(count):
    return learning_rate / (1.0 + decay * count)

  return schedule


def keras_sgd(
    learning_rate: float, momentum: float, decay: float
) -> optax.GradientTransformation:
  """Keras SGD: v = momentum * v - lr_t * g; w = w + v."""
  return optax.chain(
      optax.scale_by_learning_rate(inverse_time_decay(learning_rate, decay)),
      optax.trace(decay=momentum),
  )


class KerasAdamState(NamedTuple):
  count: jax.Array
  mu: Any
  nu: Any


def scale_by_keras_adam(
    b1: float, b2: float, eps: float
) -> optax.GradientTransformation:
  """Keras 2.3's Adam direction: sqrt(1-b2^t)/(1-b1^t) * m/(sqrt(v)+eps)."""

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
    t = count.astype(jnp.float32)
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
  """Projects constrained kernels after the update, as Keras constraints do.

  Args:
    max_values: a tree like the params with a float per leaf: the MaxNorm
      bound, or 0.0 for an unconstrained leaf (`max_norm_bounds`).
    axis: Keras' `axis` argument (default 0, as the seed used, even for conv
      kernels, where it bounds each length-3 column along the kernel height).

  Returns:
    A transformation to put last in a chain; it needs `params`.
  """

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


def triangle(
    total_steps: int, start: float, peak: float, end: float
) -> optax.Schedule:
  """A learning-rate multiplier: start -> 1 at `peak` (fraction) -> end.

  The fast recipes' schedule: a short linear warm-up, then a linear decay
  to near zero by the last step.
  """
  peak_step = peak * total_steps

  def schedule(count):
    count = jnp.asarray(count, jnp.float32)
    return jnp.interp(
        count,
        jnp.array([0.0, peak_step, total_steps]),
        jnp.array([start, 1.0, end]),
    )

  return schedule


def param_groups(params: Any) -> Any:
  """'norm_bias', 'whiten_kernel', 'whiten_bias' or 'weight', by name."""

  def label(path, leaf):
    del leaf
    names = [getattr(p, 'key', str(p)) for p in path]
    if names[0] == 'whiten':
      return f'whiten_{names[-1]}'
    if names[-1] == 'bias' and len(names) > 1 and names[-2].startswith('bn'):
      return 'norm_bias'
    return 'weight'

  return jax.tree_util.tree_map_with_path(label, params)


class LookaheadState(NamedTuple):
  count: jax.Array
  slow: Any


def ema_lookahead(
    every: int, max_decay: float, total_steps: int
) -> optax.GradientTransformation:
  """Every `every` steps: slow = d * slow + (1 - d) * fast, fast = slow.

  Lookahead (Zhang et al., 2019) with an exponential moving average as the
  slow weights, as airbench uses it: d grows as max_decay * (t / T)^3, so
  early training is left alone, and the last step syncs too, so the run
  ends on the slow weights. Must come last in a chain: it sees the update
  the rest proposes and returns the one that lands on the synced weights.
  """

  def init_fn(params):
    return LookaheadState(
        jnp.zeros([], jnp.int32), jax.tree.map(jnp.array, params)
    )

  def update_fn(updates, state, params):
    count = state.count + 1
    fast = optax.apply_updates(params, updates)
    last = count >= total_steps
    sync = jnp.logical_or(count % every == 0, last)
    decay = max_decay * (jnp.minimum(count, total_steps) / total_steps) ** 3
    slow = jax.tree.map(
        lambda s, f: jnp.where(sync, decay * s + (1 - decay) * f, s),
        state.slow,
        fast,
    )
    new = jax.tree.map(lambda s, f: jnp.where(sync, s, f), slow, fast)
    updates = jax.tree.map(lambda n, p: n - p, new, params)
    return updates, LookaheadState(count, slow)

  return optax.GradientTransformation(init_fn, update_fn)


def fast_sgd(
    config: ml_collections.ConfigDict,
    groups: Any,
    total_steps: int,
    steps_per_epoch: int,
) -> optax.GradientTransformation:
  """The fast recipes' SGD: Nesterov, weight decay, grouped learning rates.

  Weight decay is added to the gradient before the momentum (PyTorch's
  SGD, as airbench). BatchNorm biases get `bias_lr_scale` times the
  learning rate and 1/`bias_lr_scale` times the decay. The whitening
  layer's kernel (set from the data) is never trained; its bias learns for
  `whiten_bias_epochs` epochs, then is frozen.
  """
  schedule = triangle(
      total_steps,
      config.schedule_start,
      config.schedule_peak,
      config.schedule_end,
  )
  freeze_at = config.whiten_bias_epochs * steps_per_epoch

  def group(lr_scale, decay_scale, until=None):
    def lr(count):
      value = -config.learning_rate * lr_scale * schedule(count)
      return value if until is None else jnp.where(count < until, value, 0.0)

    return optax.chain(
        optax.add_decayed_weights(config.weight_decay * decay_scale),
        optax.trace(decay=config.momentum, nesterov=True),
        optax.scale_by_schedule(lr),
    )

  tx = optax.multi_transform(
      {
          'weight': group(1.0, 1.0),
          'norm_bias': group(config.bias_lr_scale, 1 / config.bias_lr_scale),
          'whiten_bias': group(1.0, 1.0, until=freeze_at),
          'whiten_kernel': optax.set_to_zero(),
      },
      groups,
  )
  if config.lookahead_every:
    tx = optax.chain(
        tx,
        ema_lookahead(
            config.lookahead_every, config.lookahead_decay, total_steps
        ),
    )
  return tx


def learning_rate(
    config: ml_collections.ConfigDict, step: int, total_steps: int = 0
) -> float:
  """The learning rate the optimizer applies at update `step` (for logs)."""
  if config.name == 'sgd':
    return float(inverse_time_decay(config.learning_rate, config.decay)(step))
  if config.name == 'fast_sgd':
    return float(
        config.learning_rate
        * triangle(
            total_steps,
            config.schedule_start,
            config.schedule_peak,
            config.schedule_end,
        )(step)
    )
  return float(config.learning_rate)


def create_optimizer(
    config: ml_collections.ConfigDict,
    params: Any,
    total_steps: int = 0,
    steps_per_epoch: int = 0,
) -> optax.GradientTransformation:
  """The optimizer named by `config.name`, followed by the MaxNorm projection.

  Args:
    config: the `optimizer` section of a config.
    params: the model's parameters (or their shapes): the MaxNorm bounds
      and the fast recipes' parameter groups follow their names.
    total_steps, steps_per_epoch: the run's length, for 'fast_sgd's
      schedule.
  """
  if config.name == 'sgd':
    tx = keras_sgd(config.learning_rate, config.momentum, config.decay)
  elif config.name == 'adam':
    tx = keras_adam(
        config.learning_rate, config.beta1, config.beta2, config.epsilon
    )
  elif config.name == 'fast_sgd':
    tx = fast_sgd(config, param_groups(params), total_steps, steps_per_epoch)
  else:
    raise ValueError(
        f'Unknown optimizer.name {config.name!r}; '
        "expected 'sgd', 'adam' or 'fast_sgd'."
    )
  bounds = max_norm_bounds(params, config)
  if any(jax.tree.leaves(bounds)):
    tx = optax.chain(tx, keras_max_norm(bounds))
  return tx
