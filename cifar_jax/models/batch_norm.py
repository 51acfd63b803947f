"""Flax's BatchNorm, with a masked batch's count taken from the mask itself.

The train step always passes a mask (1 for real examples, 0 for the padding
of an epoch's last, partial batch) so that the statistics match Keras' smaller
last batch. `flax.linen.BatchNorm` then counts the unmasked positions by
summing the mask broadcast to the activations' full shape: on XLA:CPU such a
reduction over a (64, 32, 32, 32) broadcast took about 10 ms, and the
bn_aug_sgd step ran 5-12% faster without them (a `jax.profiler` trace and
an A/B of the step; docs/cpu_performance.md). Here the count is the
number of real examples times the positions per example: the same float,
so the results are Flax's bit for bit (tests/batch_norm_test.py), and the
variables have Flax's names, so checkpoints are interchangeable.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def _count(x: jax.Array, mask: jax.Array | None) -> jax.Array | int:
  """Values per feature: positions of the real (unmasked) examples."""
  if mask is None:
    return math.prod(x.shape[:-1])
  per_example = math.prod(x.shape[1:-1])
  dtype = jnp.promote_types(x.dtype, jnp.float32)
  return jnp.sum(jnp.asarray(mask, bool), dtype=dtype) * per_example


def masked_moments(
    x: jax.Array, mask: jax.Array | None
) -> tuple[jax.Array, jax.Array]:
  """Per-feature mean and variance over all axes but the last, in float32.

  `mask` has shape (batch, 1, ..., 1) (True = counted). The variance is
  E[x^2] - E[x]^2, clipped at 0, as Flax's `use_fast_variance`.
  """
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  axes = tuple(range(x.ndim - 1))
  count = _count(x, mask)
  where = None
  if mask is not None:
    where = jnp.broadcast_to(jnp.asarray(mask, bool), x.shape)
  # Squares first, as Flax, so the gradient's terms add up in its order.
  squares = jax.lax.square(x)
  mean = jnp.sum(x, axes, where=where) / count
  mean_sq = jnp.sum(squares, axes, where=where) / count
  return mean, jnp.maximum(0.0, mean_sq - jax.lax.square(mean))


class BatchNorm(nn.Module):
  """BatchNorm over the last axis: `flax.linen.BatchNorm`'s attributes,
  running averages and parameters (statistics in float32 at least).

  `running_var_rescale`: what the running variance averages, n being the
  values per feature: 'none', the batch variance (Flax); 'bessel', times
  n / (n - 1) (PyTorch's, as airbench); 'keras2', times n / (n - 1) *
  n / (n - 1 - epsilon) (Keras 2.3 on TensorFlow 1, whose fused op returns
  the n / (n - 1) variance and `BatchNormalization` rescales it again:
  tests/keras23_test.py). Normalising uses the plain batch variance.
  """

  use_running_average: bool = False
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = jnp.float32
  use_scale: bool = True
  use_bias: bool = True
  running_var_rescale: str = 'none'

  @nn.compact
  def __call__(
      self, x: jax.Array, *, mask: jax.Array | None = None
  ) -> jax.Array:
    features = (x.shape[-1],)
    stat = lambda name, init: self.variable(
        'batch_stats', name, init, features, jnp.float32
    )
    running_mean, running_var = stat('mean', jnp.zeros), stat('var', jnp.ones)
    if self.use_running_average:
      mean, var = running_mean.value, running_var.value
    else:
      mean, var = masked_moments(x, mask)
      if not self.is_initializing():
        sample_var = var * self._rescale(_count(x, mask))
        m = self.momentum
        running_mean.value = m * running_mean.value + (1 - m) * mean
        running_var.value = m * running_var.value + (1 - m) * sample_var
    # Flax's `_normalize`, op for op (statistics and parameters shaped
    # (1, ..., 1, features) first), so that values and gradients round alike.
    axes = tuple(range(x.ndim - 1))
    shape = (1,) * len(axes) + features
    y = x - jnp.expand_dims(mean, axes)
    mul = jax.lax.rsqrt(jnp.expand_dims(var, axes) + self.epsilon)
    if self.use_scale:
      scale = self.param('scale', nn.initializers.ones, features, jnp.float32)
      mul *= scale.reshape(shape)
    y *= mul
    if self.use_bias:
      bias = self.param('bias', nn.initializers.zeros, features, jnp.float32)
      y += bias.reshape(shape)
    return jnp.asarray(y, self.dtype)

  def _rescale(self, n: jax.Array | int) -> jax.Array | float:
    """The factor of `running_var_rescale` for n values per feature."""
    if self.running_var_rescale == 'none':
      return 1.0
    bessel = n / jnp.maximum(n - 1, 1)
    if self.running_var_rescale == 'bessel':
      return bessel
    if self.running_var_rescale == 'keras2':
      return bessel * (n / (n - (1 + self.epsilon)))
    raise ValueError(f'running_var_rescale={self.running_var_rescale!r}')
