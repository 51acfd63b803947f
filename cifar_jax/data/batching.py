"""Which examples make up each batch: training order and evaluation batches.

The training order is drawn on the device and is a pure function of
(seed, step), so a run can be resumed at any step and gets the same data it
would have seen.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class TrainOrder:
  """Which examples make up training batch `step`: a function of (key, step).

  Passes over the data, each a permutation from fold_in(key, pass), cut
  into ceil(N / B) batches, the last one padded (mask 0), as Keras' `fit`
  and `fit_generator` drew them; with `drop_remainder`, floor(N / B) whole
  ones (PyTorch's `drop_last`, as airbench's loader). `shuffle_batch_order`
  visits a pass's batches shuffled (`fit_generator`'s enqueuer). Epochs are
  windows of `steps_per_epoch` batches over that stream, so a resumed run
  sees the batches it would have seen. Computed on the device(s) once per
  pass; the step slices its batch out (`batch_at`): no host data.
  """

  def __init__(
      self,
      num_examples: int,
      batch_size: int,
      key: jax.Array,
      sharding: jax.sharding.Sharding | None = None,
      drop_remainder: bool = False,
      shuffle_batch_order: bool = False,
  ):
    self.num_examples = num_examples
    self.batch_size = batch_size
    self.batches_per_pass = batches_per_pass(
        num_examples, batch_size, drop_remainder
    )
    permute = _pass_order_fn(
        num_examples,
        self.batches_per_pass * batch_size,
        batch_size if shuffle_batch_order else 0,
        sharding,
    )
    self._permute = functools.partial(permute, key)
    self._compile = lambda: permute.lower(key, 0).compile()
    self._cached = (-1, None)

  def pass_shapes(self) -> Any:
    """`pass_order`'s shapes, dtypes and shardings, its program compiled
    and no pass computed."""
    return self._compile().out_info

  def locate(self, step: int) -> tuple[int, int]:
    """(pass, position of the batch within the pass)."""
    return divmod(step, self.batches_per_pass)

  def pass_order(self, pass_index: int) -> tuple[jax.Array, jax.Array]:
    """(indices, mask) of a whole pass, padded to whole batches."""
    if self._cached[0] != pass_index:
      self._cached = (pass_index, self._permute(pass_index))
    return self._cached[1]

  def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, mask) of batch `step`, on the host (for inspection)."""
    pass_index, position = self.locate(step)
    order = self.pass_order(pass_index)
    return tuple(
        np.asarray(batch_at(a, position, self.batch_size)) for a in order
    )


def batches_per_pass(
    num_examples: int, batch_size: int, drop_remainder: bool
) -> int:
  """Batches in one pass over the data (see `TrainOrder`)."""
  if drop_remainder:
    return num_examples // batch_size
  return -(-num_examples // batch_size)


@functools.cache
def _pass_order_fn(
    num_examples: int,
    length: int,
    shuffled_batch: int,
    sharding: jax.sharding.Sharding | None,
):
  """`_pass_order` jitted once per shape, shared by every seed's order."""
  fn = functools.partial(_pass_order, num_examples=num_examples,
                         length=length,
                         shuffled_batch=shuffled_batch)  # fmt: skip
  return jax.jit(fn, out_shardings=sharding)


def _pass_order(
    key: jax.Array,
    pass_index: jax.Array,
    *,
    num_examples: int,
    length: int,
    shuffled_batch: int = 0,
) -> tuple[jax.Array, jax.Array]:
  """(indices, mask) of a pass; with `shuffled_batch` (the batch size),
  its batches in a shuffled order."""
  pass_key = jax.random.fold_in(key, pass_index)
  perm = jax.random.permutation(pass_key, num_examples)
  if length <= num_examples:  # Whole batches only (drop_remainder).
    indices = perm[:length].astype(jnp.int32)
    mask = jnp.ones(length, jnp.float32)
  else:
    perm = perm.astype(jnp.int32)
    indices = jnp.zeros(length, jnp.int32).at[:num_examples].set(perm)
    mask = (jnp.arange(length) < num_examples).astype(jnp.float32)
  if shuffled_batch:
    order = jax.random.permutation(
        jax.random.fold_in(pass_key, 1), length // shuffled_batch
    )
    indices, mask = (
        a.reshape(-1, shuffled_batch)[order].reshape(-1)
        for a in (indices, mask)
    )
  return indices, mask


def batch_at(
    order: jax.Array, position: jax.Array, batch_size: int
) -> jax.Array:
  """Batch number `position` of a pass's order (works inside jit)."""
  return jax.lax.dynamic_slice_in_dim(order, position * batch_size, batch_size)


def eval_batch_shapes(batch_size: int, sharding: jax.sharding.Sharding) -> Any:
  """An `eval_batches` batch's shapes and dtypes on the device(s)."""
  dtypes = (a.dtype for a in _pad(np.zeros(0, np.int64), 0))
  return tuple(
      jax.ShapeDtypeStruct((batch_size,), jax.dtypes.canonicalize_dtype(d),
                           sharding=sharding)  # fmt: skip
      for d in dtypes
  )


def eval_batches(num_examples: int, batch_size: int):
  """(indices, mask) covering every example once; the last batch is padded."""
  for start in range(0, num_examples, batch_size):
    yield _pad(
        np.arange(start, min(start + batch_size, num_examples)), batch_size
    )


def _pad(idx: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
  """Pads indices to `size` (with index 0) and returns (indices, mask)."""
  mask = np.zeros(size, np.float32)
  mask[: len(idx)] = 1
  padded = np.zeros(size, np.int64)
  padded[: len(idx)] = idx
  return padded, mask
