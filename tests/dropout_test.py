"""cifar_jax.dropout: the masks of jax.random / flax, bit for bit, fused."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cifar_jax.cpu import dropout

KEYS = {
    'typed': jax.random.key(3),
    'raw': jax.random.PRNGKey(7),
    'folded': jax.random.fold_in(jax.random.key(1), 2**31 + 5),
}


@pytest.mark.parametrize('key_kind', sorted(KEYS))
@pytest.mark.parametrize(
    'p, shape', [(0.8, (16, 8, 8, 32)), (0.5, (7, 13)), (0.2, (1001,))]
)
def test_bernoulli_draws_the_bits_of_jax_random_bernoulli(key_kind, p, shape):
  key = KEYS[key_kind]
  ours = jax.jit(lambda k: dropout.bernoulli(k, p, shape))(key)
  theirs = jax.random.bernoulli(key, p, shape)
  assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
  np.testing.assert_array_equal(ours, theirs)


def test_threefry2x32_matches_the_published_known_answer():
  # Random123's known-answer test for Threefry-2x32 with 20 rounds.
  key = jnp.array([0x13198A2E, 0x03707344], jnp.uint32)
  x0 = jnp.array([0x243F6A88], jnp.uint32)
  x1 = jnp.array([0x85A308D3], jnp.uint32)
  y0, y1 = dropout.threefry2x32(key, x0, x1)
  assert (int(y0[0]), int(y1[0])) == (0xC4923A9C, 0x483DF7A0)


def test_the_mask_is_one_fused_kernel_without_a_loop():
  hlo = (
      jax.jit(lambda k: dropout.bernoulli(k, 0.5, (64, 32)))
      .lower(jax.random.key(0))
      .compile()
      .as_text()
  )
  assert ' while(' not in hlo and 'while.' not in hlo


def test_other_key_kinds_fall_back_to_jax_random():
  key = jax.random.key(0, impl='rbg')
  np.testing.assert_array_equal(
      dropout.bernoulli(key, 0.3, (5, 9)),
      jax.random.bernoulli(key, 0.3, (5, 9)),
  )


@pytest.mark.parametrize('rate', [0.0, 0.25, 0.5, 1.0])
@pytest.mark.parametrize('broadcast_dims', [(), (1, 2)])
def test_dropout_outputs_equal_flax_dropout(rate, broadcast_dims):
  x = jax.random.normal(jax.random.key(0), (4, 6, 6, 3))
  rngs = {'dropout': jax.random.key(11)}
  ours = dropout.Dropout(rate, broadcast_dims).apply(
      {}, x, deterministic=False, rngs=rngs
  )
  flax = nn.Dropout(rate, broadcast_dims).apply(
      {}, x, deterministic=False, rngs=rngs
  )
  np.testing.assert_array_equal(ours, flax)
  kept = np.mean(np.asarray(ours) != 0)
  assert abs(kept - (1 - rate)) < 0.2


def test_deterministic_dropout_is_the_identity():
  x = jnp.arange(12.0).reshape(3, 4)
  np.testing.assert_array_equal(
      dropout.Dropout(0.5, deterministic=True).apply({}, x), x
  )


@pytest.mark.parametrize('shape', [(8,), (3, 5, 16), (2, 4, 4, 32)])
def test_a_mask_hashed_once_has_the_same_bits(shape):
  mask = dropout.bernoulli(jax.random.key(3), 0.5, shape)
  np.testing.assert_array_equal(dropout.hashed_once(mask), mask)


def _xors_in_training_step(layer):
  """Xor ops in the compiled forward and backward pass through `layer`."""

  def loss(x):
    y = layer.apply({}, x, deterministic=False, rngs={'dropout': key})
    return jnp.sum(jnp.sin(y))

  key = jax.random.key(5)
  x = jax.random.normal(jax.random.key(6), (4, 8, 8, 16))
  step = jax.jit(jax.value_and_grad(loss))
  return step.lower(x).compile().as_text().count(' xor('), step(x)


def test_hash_once_computes_the_hash_once_and_the_same_values():
  plain_xors, plain = _xors_in_training_step(dropout.Dropout(0.25))
  once_xors, once = _xors_in_training_step(
      dropout.Dropout(0.25, hash_once=True)
  )
  # Threefry-2x32 is 20 rounds, each with a xor, plus its key's own.
  assert plain_xors >= 2 * 20  # In the forward and the backward pass.
  assert once_xors < plain_xors - 10
  for a, b in zip(jax.tree.leaves(once), jax.tree.leaves(plain)):
    np.testing.assert_array_equal(a, b)


def test_hash_once_leaves_a_last_axis_not_a_multiple_of_8_as_it_was():
  x = jax.random.normal(jax.random.key(0), (4, 6, 6, 3))
  rngs = {'dropout': jax.random.key(11)}
  once = dropout.Dropout(0.5, hash_once=True)
  np.testing.assert_array_equal(
      once.apply({}, x, deterministic=False, rngs=rngs),
      nn.Dropout(0.5).apply({}, x, deterministic=False, rngs=rngs),
  )
