"""2x2 max-pooling, in two forms that differ only in speed.

Keras' `MaxPooling2D((2, 2))`: window 2, stride 2, 'valid' padding. XLA's
`reduce_window` form is native on GPUs and TPUs; on CPUs the max of each
window's four pixels with a hand-written gradient is cheaper.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

METHODS = ('reduce_window', 'window_max')


def method_for(pooling: str, platform: str) -> str:
  """The pooling of config `cpu.pooling` on `platform` ('auto' resolved).

  On XLA:CPU the gradient of `nn.max_pool` (select-and-scatter) cost 4x
  the pooling itself, about a tenth of the simple rung's step
  (benchmarks/cpu_vs_keras.py), so CPUs take the max of each window's four
  pixels (`window_max`), whose gradient is a cheap select. GPUs and TPUs
  keep XLA's own pooling (`reduce_window`).
  """
  if pooling == 'auto':
    return 'window_max' if platform == 'cpu' else 'reduce_window'
  if pooling not in METHODS:
    raise ValueError(
        f"cpu.pooling must be 'auto' or one of {METHODS}, not {pooling!r}"
    )
  return pooling


def max_pool_2x2(x: jax.Array, method: str = 'reduce_window') -> jax.Array:
  """2x2 max-pooling with stride 2, 'valid' padding (odd sizes round down).

  Both methods compute the same values and gradients; they differ in speed.
  """
  if method == 'reduce_window':
    return nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')
  return _window_max(x)


def _windows(x: jax.Array) -> jax.Array:
  """(b, h, w, c) -> (b, h // 2, w // 2, c, 4): each 2x2 window's pixels."""
  batch, height, width, channels = x.shape
  x = x[:, : height - height % 2, : width - width % 2]
  x = x.reshape(batch, height // 2, 2, width // 2, 2, channels)
  return jnp.stack([x[:, :, i, :, j] for i in (0, 1) for j in (0, 1)], -1)


@jax.custom_vjp
def _window_max(x: jax.Array) -> jax.Array:
  return jnp.max(_windows(x), axis=-1)


def _window_max_fwd(x):
  """The max, and which pixel it came from (the first, as select-and-scatter).

  The gradient goes to that recorded pixel. Autodiff of `jnp.max` would
  instead find the maximum again by comparing the input with the output in
  the backward pass, and under jit XLA may recompute the input there with
  other rounding, so that no pixel compares equal: with jaxlib 0.12 that
  gave the BatchNorm rungs wrong gradients on the CPU, and NaNs without
  optimisation.
  """
  windows = _windows(x)
  first = jnp.argmax(windows, axis=-1)
  pooled = jnp.take_along_axis(windows, first[..., None], axis=-1)[..., 0]
  return pooled, (first, x.shape)


def _window_max_bwd(residuals, g):
  first, shape = residuals
  batch, height, width, channels = shape
  grads = jax.nn.one_hot(first, 4, dtype=g.dtype) * g[..., None]
  grads = grads.reshape(batch, height // 2, width // 2, channels, 2, 2)
  even = (batch, height // 2 * 2, width // 2 * 2, channels)
  grads = grads.transpose(0, 1, 4, 2, 5, 3).reshape(even)
  grads = jnp.pad(grads, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)))
  return (grads,)


_window_max.defvjp(_window_max_fwd, _window_max_bwd)
