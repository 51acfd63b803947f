"""Optax chains that reproduce Keras 2.3's SGD, Adam and MaxNorm exactly
(step for step against Keras 2.3.1 itself: tests/keras23_test.py).

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
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from cifar_jax import rules

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
  to near zero by the last step. The peak is at step floor(peak * total),
  as airbench's `int(peak * steps)`.
  """
  peak_step = math.floor(peak * total_steps)

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


@dataclasses.dataclass(frozen=True)
class Lookahead:
  """airbench's Lookahead: an EMA of the model's variables, synced into it.

  Lookahead (Zhang et al., 2019) with an exponential moving average as the
  slow weights. Every `every` steps: slow = d * slow + (1 - d) * fast, then
  fast = slow, with d = max_decay * (t / T)^3, so early training is left
  alone. At the last step (T) the model becomes the slow weights (after a
  regular sync if T is a multiple of `every`), so the run ends on them.

  The variables are the parameters *and* the BatchNorm running statistics:
  airbench averages its whole `state_dict`. So this acts on the train
  state, after the optimizer's update (`steps.TrainState.after_update`),
  not inside the Optax chain, which sees only parameters.
  """

  every: int
  max_decay: float
  total_steps: int

  def sync(self, step: jax.Array, slow: Any, fast: Any) -> tuple[Any, Any]:
    """(new slow, new fast) after update number `step` (1-based)."""
    regular = step % self.every == 0
    decay = self.max_decay * (step / self.total_steps) ** 3
    slow = jax.tree.map(
        lambda s, f: jnp.where(regular, decay * s + (1 - decay) * f, s),
        slow,
        fast,
    )
    synced = jnp.logical_or(regular, step >= self.total_steps)
    fast = jax.tree.map(lambda s, f: jnp.where(synced, s, f), slow, fast)
    return slow, fast


def lookahead(
    config: ml_collections.ConfigDict, total_steps: int
) -> Lookahead | None:
  """The `optimizer` section's Lookahead, or None where it is off."""
  if config.get('name') != 'fast_sgd' or not config.lookahead_every:
    return None
  return Lookahead(config.lookahead_every, config.lookahead_decay, total_steps)


@dataclasses.dataclass(frozen=True)
class RunShape:
  """What an optimizer needs of the run beyond its own config section."""

  total_steps: int = 0  # For the fast recipes' schedules.
  steps_per_epoch: int = 0  # For the whitening bias's epochs.
  batch_size: int = 0  # For the fast recipes' per-1024-example rates.


def fast_sgd_rates(
    config: ml_collections.ConfigDict, batch_size: int
) -> tuple[float, float]:
  """'fast_sgd's (learning rate, weight decay) for our mean loss.

  airbench gives them per 1024 examples of a summed loss, for PyTorch's
  SGD: lr_torch = lr / K and weight_decay_torch = (wd * B / K) / lr_torch,
  with K = 1024 * (1 + 1 / (1 - momentum)) and B the batch size. A summed
  loss has B times the mean loss's gradient, so the same updates come from
  a mean loss with learning rate lr * B / K and weight decay wd / lr.
  """
  kilostep = 1024 * (1 + 1 / (1 - config.momentum))
  return (
      config.learning_rate * batch_size / kilostep,
      config.weight_decay / config.learning_rate,
  )


@dataclasses.dataclass(frozen=True)
class FastSchedule:
  """'fast_sgd's learning rate: `base` (the mean loss's, from
  `fast_sgd_rates`) times the triangle `multiplier`."""

  base: float
  multiplier: optax.Schedule

  def __call__(self, count: jax.Array) -> jax.Array:
    return self.base * self.multiplier(count)


def fast_sgd(
    config: ml_collections.ConfigDict,
    groups: Any,
    run: RunShape,
    schedule: FastSchedule,
) -> optax.GradientTransformation:
  """The fast recipes' SGD: Nesterov, weight decay, grouped learning rates.

  Weight decay is added to the gradient before the momentum (PyTorch's
  SGD, as airbench). BatchNorm biases get `bias_lr_scale` times the
  learning rate and 1/`bias_lr_scale` times the decay. The whitening
  layer's kernel (set from the data) is never trained; its bias learns for
  `whiten_bias_epochs` epochs, then is frozen. The rates are per 1024
  examples (`fast_sgd_rates`). The recipes' Lookahead acts on the train
  state, outside this chain (`Lookahead`).
  """
  freeze_at = config.whiten_bias_epochs * run.steps_per_epoch
  _, weight_decay = fast_sgd_rates(config, run.batch_size)

  def group(lr_scale, decay_scale, until=None):
    def lr(count):
      value = -schedule.base * lr_scale * schedule.multiplier(count)
      return value if until is None else jnp.where(count < until, value, 0.0)

    return optax.chain(
        optax.add_decayed_weights(weight_decay * decay_scale),
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
  return tx


def learning_rate_schedule(
    config: ml_collections.ConfigDict, run: RunShape = RunShape()
) -> optax.Schedule:
  """The learning rate at each update: the one object the optimizer applies
  (`create_optimizer`) and the loop logs."""
  if config.name == 'sgd':
    return inverse_time_decay(config.learning_rate, config.decay)
  if config.name == 'fast_sgd':
    return FastSchedule(
        fast_sgd_rates(config, run.batch_size)[0],
        triangle(
            run.total_steps,
            config.schedule_start,
            config.schedule_peak,
            config.schedule_end,
        ),
    )
  return optax.constant_schedule(config.learning_rate)  # Adam's.


def has_constant_learning_rate(config: ml_collections.ConfigDict) -> bool:
  """Whether the learning rate is the same at every update (Adam; SGD
  without decay): only then may a run continue another's optimizer, whose
  count the rate would otherwise follow while the loop logs its own."""
  return config.name == 'adam' or (config.name == 'sgd' and not config.decay)


OPTIMIZERS = ('sgd', 'adam', 'fast_sgd')
# The `optimizer` section's keys.
RULES = {
    'name': rules.one_of(*OPTIMIZERS),
    'learning_rate': rules.POSITIVE,
    'conv_max_norm': rules.NON_NEGATIVE,
    'hidden_max_norm': rules.NON_NEGATIVE,
    'momentum': rules.FRACTION,
    'decay': rules.NON_NEGATIVE,
    'beta1': rules.FRACTION,
    'beta2': rules.FRACTION,
    'epsilon': rules.POSITIVE,
    'weight_decay': rules.NON_NEGATIVE,
    'bias_lr_scale': rules.POSITIVE,
    'whiten_bias_epochs': rules.integer(0),
    'schedule_start': rules.NON_NEGATIVE,
    'schedule_peak': rules.real(0, 1),
    'schedule_end': rules.NON_NEGATIVE,
    'lookahead_every': rules.integer(0),
    'lookahead_decay': rules.real(0, 1),
}


def create_optimizer(
    config: ml_collections.ConfigDict,
    params: Any,
    run: RunShape = RunShape(),
    schedule: optax.Schedule | None = None,
) -> optax.GradientTransformation:
  """The optimizer named by `config.name`, followed by the MaxNorm projection.

  Args:
    config: the `optimizer` section of a config.
    params: the model's parameters (or their shapes): the MaxNorm bounds
      and the fast recipes' parameter groups follow their names.
    run: the run's length and batch size, for 'fast_sgd'.
    schedule: `learning_rate_schedule(config, run)`, if made already.
  """
  rules.check(config, RULES, 'optimizer.')
  schedule = schedule or learning_rate_schedule(config, run)
  if config.name == 'sgd':
    tx = keras_sgd(schedule, config.momentum)
  elif config.name == 'adam':
    tx = keras_adam(
        config.learning_rate, config.beta1, config.beta2, config.epsilon
    )
  else:
    tx = fast_sgd(config, param_groups(params), run, schedule)
  bounds = max_norm_bounds(params, config)
  if any(jax.tree.leaves(bounds)):
    tx = optax.chain(tx, keras_max_norm(bounds))
  return tx
