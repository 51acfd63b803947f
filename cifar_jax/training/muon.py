"""The Muon recipes' optimizer (`optimizer.name='muon'`): airbench94_muon's
and hiverge's.

Muon (Jordan et al., 2024) on the convolution filters: Nesterov momentum,
then the update orthogonalised by a quintic Newton-Schulz iteration, a step
from weights renormalised to norm sqrt(filters); Nesterov SGD on the
biases and the head; every rate decaying linearly to zero. The references
sum their loss over the batch: each group here turns our mean loss's
gradient into theirs. Side by side with both references in
tests/muon_test.py.
"""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from cifar_jax.training import fast_sgd


def newton_schulz(
    g: jax.Array,
    coefficients: tuple[float, float, float],
    steps: int,
    epsilon: float,
    magnitude: jax.Array | None = None,
) -> jax.Array:
  """Roughly U V^T of G = U S V^T, for a (rows, cols) matrix.

  G over its norm (after scaling it to `magnitude`, as hiverge's does
  first: the two norms' epsilons differ), then `steps` iterations of
  X <- aX + (bA + cA^2)X, A = XX^T. The coefficients overshoot on purpose:
  the singular values land near 1, not on it. Transposing a tall G first
  changes only the cost, not the result.
  """
  a, b, c = coefficients
  x = g
  if magnitude is not None:
    x = x * (magnitude / (jnp.linalg.norm(x) + epsilon))
  x = x / (jnp.linalg.norm(x) + epsilon)
  tall = x.shape[0] > x.shape[1]
  if tall:
    x = x.T
  for _ in range(steps):
    s = x @ x.T
    x = a * x + (b * s + c * s @ s) @ x
  return x.T if tall else x


class MuonState(NamedTuple):
  count: jax.Array  # Updates made.
  last_normalized: jax.Array  # The update that last renormalised weights.


def muon_step(
    config: ml_collections.ConfigDict,
    learning_rate: optax.Schedule,
    total_steps: int,
    weight_decay: float,
) -> optax.GradientTransformation:
  """Orthogonalised momentum -> the update of each conv kernel (last in a
  chain after the momentum; needs `params`).

  Update k (from 1): every `normalize_every + floor(normalize_every_growth
  * k / total_steps)` updates since the last, the kernel is first rescaled
  to norm sqrt(filters) (airbench94_muon: at every update); then it steps
  by -lr * the orthogonalised update and decays by (1 - lr * weight_decay).
  """
  c = config
  magnitudes = tuple(c.ns_magnitude)

  def init_fn(params):
    del params
    return MuonState(jnp.zeros([], jnp.int32), jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError('muon_step needs params.')
    count = state.count + 1
    progress = _real(count) / total_steps
    period = c.normalize_every + jnp.floor(
        c.normalize_every_growth * progress
    ).astype(jnp.int32)
    normalize = count - state.last_normalized >= period
    lr = learning_rate(state.count)
    magnitude = None
    if magnitudes:
      magnitude = magnitudes[0] * (1 - progress) + magnitudes[1] * progress

    def update(u, p):
      filters = p.shape[-1]
      o = newton_schulz(
          u.reshape(-1, filters).T, tuple(c.ns_coefficients), c.ns_steps,
          c.ns_epsilon, magnitude,
      ).T.reshape(p.shape)  # fmt: skip
      scale = math.sqrt(filters) / (jnp.linalg.norm(p) + c.normalize_epsilon)
      start = jnp.where(normalize, p * scale.astype(p.dtype), p)
      return (start - lr * o) * (1 - lr * weight_decay) - p

    last = jnp.where(normalize, count, state.last_normalized)
    return jax.tree.map(update, updates, params), MuonState(count, last)

  return optax.GradientTransformation(init_fn, update_fn)


def param_groups(params: Any) -> Any:
  """fast_sgd's groups, its 'weight' split into 'filter' (conv kernels) and
  'head'."""
  return jax.tree.map(
      lambda group, p: group if group != 'weight'
      else 'filter' if len(p.shape) == 4 else 'head',
      fast_sgd.param_groups(params), params,
  )  # fmt: skip


def _real(count: jax.Array) -> jax.Array:
  """A step count as a float of JAX's default width (float64 under x64)."""
  return jnp.asarray(count, jnp.result_type(float))


def linear_decay(base: float, steps: float) -> optax.Schedule:
  """base * (1 - count / steps), then 0: the references' every rate."""
  return lambda count: base * jnp.maximum(1 - _real(count) / steps, 0.0)


def optimizer(
    config: ml_collections.ConfigDict,
    params: Any,
    total_steps: int,
    steps_per_epoch: int,
    batch_size: int,
) -> optax.GradientTransformation:
  """Muon on 'filter', Nesterov SGD on the rest, as one multi_transform.

  The references' loss is a sum: B times our mean's gradient. So Muon
  sees B x the gradient (its norms' epsilons then act as theirs), and SGD
  at rate lr_torch * B decays by weight_decay / lr_torch per example
  (PyTorch adds weight_decay * B / lr_torch times the weights to the
  summed gradient); the whitening bias trains for whiten_bias_epochs.
  """
  c = config
  whiten_steps = math.ceil(c.whiten_bias_epochs * steps_per_epoch)

  def sgd(lr, steps):
    if not steps:
      return optax.set_to_zero()
    return optax.chain(
        optax.add_decayed_weights(c.weight_decay / lr),
        optax.trace(decay=c.momentum, nesterov=True),
        optax.scale_by_schedule(linear_decay(-lr * batch_size, steps)),
    )

  filters = optax.chain(
      optax.scale(batch_size),
      optax.trace(decay=c.muon_momentum, nesterov=True),
      muon_step(c, linear_decay(c.learning_rate, total_steps), total_steps,
                c.muon_weight_decay * batch_size),
  )  # fmt: skip
  return optax.multi_transform(
      {
          'filter': filters,
          'head': sgd(c.head_learning_rate, total_steps),
          'norm_bias': sgd(c.bias_learning_rate, total_steps),
          'whiten_bias': sgd(c.bias_learning_rate, whiten_steps),
          'whiten_kernel': optax.set_to_zero(),
      },
      param_groups(params),
  )
