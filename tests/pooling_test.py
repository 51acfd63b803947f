"""2x2 max-pooling: both methods agree, and 'auto' picks by platform."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cifar_jax import cpu
from cifar_jax.cpu import pooling
from conftest import get_config

window_max = functools.partial(pooling.max_pool_2x2, method='window_max')


def test_auto_pooling_is_window_max_on_cpu_and_xlas_own_elsewhere():
  assert pooling.method_for('auto', 'cpu') == 'window_max'
  assert pooling.method_for('auto', 'gpu') == 'reduce_window'
  assert pooling.method_for('auto', 'tpu') == 'reduce_window'
  assert pooling.method_for('reduce_window', 'cpu') == 'reduce_window'
  with pytest.raises(ValueError, match='cpu.pooling'):
    pooling.method_for('average', 'cpu')


def test_the_seam_resolves_the_pooling_for_the_platform():
  config = get_config('simple').cpu
  assert cpu.for_platform(config, 'cpu').kernels.pooling == 'window_max'
  assert cpu.for_platform(config, 'gpu').kernels.pooling == 'reduce_window'
  config.pooling = 'reduce_window'
  assert cpu.for_platform(config, 'cpu').kernels.pooling == 'reduce_window'


@pytest.mark.parametrize('size', [32, 31, 7])
def test_window_max_pool_equals_flax_max_pool_in_values_and_gradients(size):
  x = jax.random.normal(jax.random.key(size), (2, size, size, 3))

  def flax_pool(x):
    return nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')

  np.testing.assert_array_equal(window_max(x), flax_pool(x))
  assert window_max(x).shape == (2, size // 2, size // 2, 3)
  weights = jax.random.normal(jax.random.key(1), (2, size // 2, size // 2, 3))

  def loss(pool):
    return lambda x: jnp.sum(pool(x) * weights)

  np.testing.assert_allclose(
      jax.grad(loss(window_max))(x),
      jax.grad(loss(flax_pool))(x),
      atol=1e-6,
  )


def test_window_max_pool_sends_a_tied_windows_gradient_where_flax_does():
  # Integers in 0..2: most windows hold ties.
  x = jax.random.randint(jax.random.key(0), (2, 8, 9, 3), 0, 3).astype(float)
  weights = jax.random.normal(jax.random.key(1), (2, 4, 4, 3))

  def grad(pool):
    return jax.jit(jax.grad(lambda x: jnp.sum(pool(x) * weights)))(x)

  flax_grad = grad(lambda x: nn.max_pool(x, (2, 2), strides=(2, 2)))
  np.testing.assert_array_equal(grad(window_max), flax_grad)
