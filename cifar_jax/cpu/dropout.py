"""Dropout whose random bits cost a fraction as much on XLA:CPU.

`jax.random.bernoulli` hashes each element's index with Threefry-2x32 (20
rounds of add, rotate and xor). On the CPU, JAX lowers the hash as a loop
of 5 iterations, each a separate pass over the whole mask: memory-bound,
and about a fifth of the large rung's step (benchmarks/cpu_vs_keras.py).
Here the same hash is written out round by round with public `lax`
operations, so XLA fuses it into one elementwise kernel. The masks are
bit for bit those of `jax.random.bernoulli` under JAX's default
(partitionable) threefry (tests/dropout_test.py), so training computes
exactly what `flax.linen.Dropout` computes, faster. Other key kinds and
settings fall back to `jax.random.bernoulli`.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

# Threefry-2x32 (Salmon et al., "Parallel random numbers: as easy as 1, 2,
# 3", SC 2011): the rotation of each round, in two alternating groups of
# four, and the key schedule's parity constant.
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)
_INJECTIONS = 5  # A key injection after every 4 of the 20 rounds.


def _rotl(x: jax.Array, bits: int) -> jax.Array:
  return lax.shift_left(x, np.uint32(bits)) | lax.shift_right_logical(
      x, np.uint32(32 - bits)
  )


def threefry2x32(
    key: jax.Array, x0: jax.Array, x1: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Threefry-2x32 of the counter pairs (x0, x1) under `key` (2 uint32)."""
  schedule = (key[0], key[1], key[0] ^ key[1] ^ _PARITY)
  x0 = x0 + schedule[0]
  x1 = x1 + schedule[1]
  for i in range(_INJECTIONS):
    for bits in _ROTATIONS[i % 2]:
      x0 = x0 + x1
      x1 = x0 ^ _rotl(x1, bits)
    x0 = x0 + schedule[(i + 1) % 3]
    x1 = x1 + schedule[(i + 2) % 3] + np.uint32(i + 1)
  return x0, x1


def _threefry_key_data(key: jax.Array) -> jax.Array | None:
  """The 2 uint32 words of a threefry key, or None for any other kind."""
  if not jax.config.jax_threefry_partitionable:
    return None  # Counters are laid out differently then.
  if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(key)  # A raw key: the default impl's.
  if key.shape or str(jax.random.key_impl(key)) != 'threefry2x32':
    return None
  return jax.random.key_data(key)


def bernoulli(key: jax.Array, p: float, shape: Sequence[int]) -> jax.Array:
  """`jax.random.bernoulli(key, p, shape)`, the same bits, computed fused."""
  words = _threefry_key_data(key)
  size = int(np.prod(shape))
  if words is None or size >= 2**32:
    return jax.random.bernoulli(key, p, shape)
  # Element n's counter is the 64-bit n as (high, low) words; the 32 random
  # bits are the xor of the hash's two outputs, as in jax.random.bits.
  low = lax.iota(np.uint32, size).reshape(shape)
  y0, y1 = threefry2x32(words, jnp.zeros_like(low), low)
  bits = y0 ^ y1
  # jax.random.uniform: the top 23 bits as the mantissa of a float in
  # [1, 2), minus 1.
  one = np.array(1.0, np.float32).view(np.uint32)
  mantissa = lax.shift_right_logical(bits, np.uint32(32 - 23)) | one
  uniform = lax.bitcast_convert_type(mantissa, jnp.float32) - np.float32(1)
  return uniform < np.float32(p)


def hashed_once(mask: jax.Array) -> jax.Array:
  """`mask` (last axis a multiple of 8), computed once by XLA:CPU.

  XLA:CPU fuses the hash into every kernel that reads the mask, the
  forward pass's and the backward pass's, and so computes it twice. A
  reduction is not fused into its readers: packed into bytes by one, the
  mask is hashed once, and unpacked where it is read. The same bits.
  """
  *outer, last = mask.shape
  weights = lax.shift_left(np.uint8(1), jnp.arange(8, dtype=np.uint8))
  bits = mask.reshape(*outer, last // 8, 8).astype(np.uint8) * weights
  packed = jnp.sum(bits, axis=-1, dtype=np.uint8)  # Distinct bits: an or.
  return ((packed[..., None] & weights) != 0).reshape(mask.shape)


class Dropout(nn.Dropout):
  """`flax.linen.Dropout` (same attributes, same masks), with fused bits.

  `hash_once`: compute each mask once (`hashed_once`), for XLA:CPU; where
  the mask's last axis is not a multiple of 8, it is computed as usual.
  """

  hash_once: bool = False

  @nn.compact
  def __call__(
      self, inputs: jax.Array, deterministic: bool | None = None
  ) -> jax.Array:
    deterministic = nn.merge_param(
        'deterministic', self.deterministic, deterministic
    )
    if self.rate == 0.0 or deterministic:
      return inputs
    if self.rate == 1.0:  # No division by a keep rate of 0.
      return jnp.zeros_like(inputs)
    keep = 1.0 - self.rate
    shape = list(inputs.shape)
    for dim in self.broadcast_dims:
      shape[dim] = 1
    mask = bernoulli(self.make_rng(self.rng_collection), keep, shape)
    if self.hash_once and shape[-1] % 8 == 0:
      mask = hashed_once(mask)
    mask = jnp.broadcast_to(mask, inputs.shape)
    return lax.select(mask, inputs / keep, jnp.zeros_like(inputs))
