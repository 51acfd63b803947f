"""The fast recipes' optimizer (`optimizer.name='fast_sgd'`), as airbench's.

PyTorch's Nesterov SGD with weight decay in the gradient and grouped
learning rates (`sgd`), its rates per 1024 examples of a summed loss
(`rates`), a triangle schedule (`triangle`), and Lookahead on the train
state (`Lookahead`); side by side with airbench in tests/airbench_test.py.
"""

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax


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
    steps = jnp.array([0.0, peak_step, total_steps])
    values = jnp.array([start, 1.0, end])
    return jnp.interp(jnp.asarray(count, jnp.float32), steps, values)

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
    progress = jnp.asarray(step, jnp.result_type(float)) / self.total_steps
    decay = self.max_decay * progress**3  # In float64 under x64 (tests).
    average = lambda s, f: jnp.where(regular, decay * s + (1 - decay) * f, s)
    slow = jax.tree.map(average, slow, fast)
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


def rates(
    config: ml_collections.ConfigDict, batch_size: int
) -> tuple[float, float]:
  """The fast recipes' (learning rate, weight decay) for our mean loss.

  airbench gives them per 1024 examples of a summed loss, for PyTorch's
  SGD: lr_torch = lr / K and weight_decay_torch = (wd * B / K) / lr_torch,
  with K = 1024 * (1 + 1 / (1 - momentum)) and B the batch size. A summed
  loss has B times the mean loss's gradient, so the same updates come from
  a mean loss with learning rate lr * B / K and weight decay wd / lr.
  """
  kilostep = 1024 * (1 + 1 / (1 - config.momentum))
  lr = config.learning_rate
  return lr * batch_size / kilostep, config.weight_decay / lr


@dataclasses.dataclass(frozen=True)
class Schedule:
  """The fast recipes' learning rate: `base` (the mean loss's, from
  `rates`) times the triangle `multiplier`."""

  base: float
  multiplier: optax.Schedule

  def __call__(self, count: jax.Array) -> jax.Array:
    return self.base * self.multiplier(count)


def sgd(
    config: ml_collections.ConfigDict,
    groups: Any,
    steps_per_epoch: int,
    batch_size: int,
    schedule: Schedule,
) -> optax.GradientTransformation:
  """The fast recipes' SGD: Nesterov, weight decay added to the gradient
  before the momentum (PyTorch's SGD, as airbench), grouped rates:
  BatchNorm biases at `bias_lr_scale` times the rate and its inverse times
  the decay; the whitening kernel (set from the data) never trained, its
  bias only for `whiten_bias_epochs` epochs. (Lookahead acts on the train
  state, outside this chain.)
  """
  freeze_at = config.whiten_bias_epochs * steps_per_epoch
  _, weight_decay = rates(config, batch_size)

  def group(lr_scale, decay_scale, until=None):
    def lr(count):
      value = -schedule.base * lr_scale * schedule.multiplier(count)
      return value if until is None else jnp.where(count < until, value, 0.0)

    return optax.chain(
        optax.add_decayed_weights(weight_decay * decay_scale),
        optax.trace(decay=config.momentum, nesterov=True),
        optax.scale_by_schedule(lr),
    )

  return optax.multi_transform(
      {
          'weight': group(1.0, 1.0),
          'norm_bias': group(config.bias_lr_scale, 1 / config.bias_lr_scale),
          'whiten_bias': group(1.0, 1.0, until=freeze_at),
          'whiten_kernel': optax.set_to_zero(),
      },
      groups,
  )
