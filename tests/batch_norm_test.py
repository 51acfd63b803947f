"""batch_norm.BatchNorm computes what flax.linen.BatchNorm does, bit for bit."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cifar_jax.models import batch_norm

SETTINGS = {
    'keras': dict(momentum=0.99, epsilon=1e-3),
    'no_scale_bf16': dict(
        momentum=0.6, epsilon=1e-12, use_scale=False, dtype=jnp.bfloat16
    ),
}


def _inputs(setting='keras'):
  """Inputs and variables (no scale where the setting learns none)."""
  rng = np.random.default_rng(0)
  x = rng.normal(2.0, 3.0, (6, 5, 4, 3)).astype(np.float32)
  variables = {
      'params': {
          'scale': rng.uniform(0.5, 2, 3).astype(np.float32),
          'bias': rng.normal(size=3).astype(np.float32),
      },
      'batch_stats': {
          'mean': rng.normal(size=3).astype(np.float32),
          'var': rng.uniform(0.5, 2, 3).astype(np.float32),
      },
  }
  if not SETTINGS[setting].get('use_scale', True):
    del variables['params']['scale']
  return x, variables


def _pair(setting, train):
  kwargs = dict(SETTINGS[setting], use_running_average=not train)
  return batch_norm.BatchNorm(**kwargs), nn.BatchNorm(**kwargs)


@pytest.mark.parametrize('setting', sorted(SETTINGS))
def test_init_creates_flax_variables(setting):
  ours, flax_bn = _pair(setting, train=True)
  x, _ = _inputs()
  key = jax.random.key(0)
  a, b = ours.init(key, x), flax_bn.init(key, x)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize('setting', sorted(SETTINGS))
@pytest.mark.parametrize('masked', [None, 'all', 'partial'])
def test_training_output_stats_and_gradient_equal_flax(setting, masked):
  ours, flax_bn = _pair(setting, train=True)
  x, variables = _inputs(setting)
  mask = {
      None: None,
      'all': np.ones((6, 1, 1, 1), bool),
      'partial': np.array([1, 1, 0, 1, 0, 0], bool).reshape(6, 1, 1, 1),
  }[masked]

  def run(module):
    def loss(x, params):
      y, updates = module.apply(
          {'params': params, 'batch_stats': variables['batch_stats']},
          x,
          mask=mask,
          mutable=['batch_stats'],
      )
      return jnp.sum(jnp.sin(y.astype(jnp.float32))), (y, updates)

    grads, (y, updates) = jax.jit(jax.grad(loss, (0, 1), has_aux=True))(
        x, variables['params']
    )
    return y, updates, grads

  for u, v in zip(jax.tree.leaves(run(ours)), jax.tree.leaves(run(flax_bn))):
    assert u.dtype == v.dtype
    np.testing.assert_array_equal(u, v)


def test_masked_examples_do_not_move_the_statistics():
  ours, _ = _pair('keras', train=True)
  x, variables = _inputs()
  mask = np.array([1, 0, 1, 0, 0, 1], bool).reshape(6, 1, 1, 1)
  garbage = x.copy()
  garbage[~mask[:, 0, 0, 0]] = 1e6
  stats = [
      ours.apply(variables, v, mask=mask, mutable=['batch_stats'])[1]
      for v in (x, garbage)
  ]
  np.testing.assert_array_equal(
      stats[0]['batch_stats']['mean'], stats[1]['batch_stats']['mean']
  )
  kept = x[mask[:, 0, 0, 0]].reshape(-1, 3).astype(np.float64)
  expected = 0.99 * variables['batch_stats']['mean'] + 0.01 * kept.mean(0)
  np.testing.assert_allclose(
      stats[0]['batch_stats']['mean'], expected, rtol=1e-5
  )


@pytest.mark.parametrize('setting', sorted(SETTINGS))
def test_evaluation_uses_running_statistics_as_flax(setting):
  ours, flax_bn = _pair(setting, train=False)
  x, variables = _inputs(setting)
  a, b = ours.apply(variables, x), flax_bn.apply(variables, x)
  assert a.dtype == b.dtype
  np.testing.assert_array_equal(a, b)
