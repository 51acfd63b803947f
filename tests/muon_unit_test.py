"""training/muon.py on its own (tests/muon_test.py: against the references)."""

import jax
import jax.numpy as jnp
import numpy as np

from cifar_jax.training import muon
from cifar_jax.training import optimizers
from conftest import get_config

AIRBENCH = (3.4445, -4.7750, 2.0315)


def test_newton_schulz_keeps_the_singular_vectors_and_flattens_the_values():
  g = np.random.default_rng(0).normal(size=(8, 20))
  o = np.asarray(muon.newton_schulz(jnp.asarray(g), AIRBENCH, 5, 1e-7))
  u, s, vt = np.linalg.svd(g, full_matrices=False)
  inner = u.T @ o @ vt.T  # Diagonal if O = U D V^T.
  np.testing.assert_allclose(inner, np.diag(np.diag(inner)), atol=1e-5)
  # The quintic overshoots on purpose: values near 1, not on it.
  assert 0.5 < np.diag(inner).min() and np.diag(inner).max() < 1.3
  assert np.ptp(s) > 1  # Unlike G's.
  tall = np.asarray(muon.newton_schulz(jnp.asarray(g.T), AIRBENCH, 5, 1e-7))
  np.testing.assert_allclose(tall, o.T, atol=1e-5)


def test_muon_optimizer_trains_each_group_as_its_recipe_says():
  config = get_config('fast94_muon').optimizer
  rng = np.random.default_rng(0)
  params = {
      'whiten': {'kernel': np.ones((2, 2, 3, 24)), 'bias': np.zeros(24)},
      'block1': {
          'conv1': {'kernel': rng.normal(size=(3, 3, 24, 8))},
          'bn1': {'bias': np.zeros(8)},
      },
      'head': {'kernel': rng.normal(size=(8, 10))},
  }
  params = jax.tree.map(jnp.float32, params)
  run = optimizers.RunShape(total_steps=10, steps_per_epoch=1, batch_size=4)
  tx = optimizers.create_optimizer(config, params, run)
  state = tx.init(params)
  history = [params]
  for _ in range(run.total_steps):
    grads = jax.tree.map(
        lambda p: jnp.asarray(rng.normal(size=p.shape)), params
    )
    updates, state = tx.update(grads, state, params)
    params = jax.tree.map(lambda p, u: p + u.astype(p.dtype), params, updates)
    history.append(params)
  kernel = lambda h: h['block1']['conv1']['kernel']
  whiten_bias = [h['whiten']['bias'] for h in history]
  # The whitening kernel never trains; its bias for whiten_bias_epochs (3).
  for h in history:
    np.testing.assert_array_equal(h['whiten']['kernel'], 1.0)
  assert not np.array_equal(whiten_bias[3], whiten_bias[2])
  for b in whiten_bias[4:]:
    np.testing.assert_array_equal(b, whiten_bias[3])
  # Each filter update starts from the kernel rescaled to norm sqrt(8), and
  # the rate decays to lr / T at the last: the last step ends near it.
  norm = float(jnp.linalg.norm(kernel(history[-1])))
  assert abs(norm - np.sqrt(8)) < 2 * config.learning_rate / run.total_steps
  assert abs(float(jnp.linalg.norm(kernel(history[0]))) - np.sqrt(8)) > 1
  # The SGD groups move, and less at the end (the linear decay).
  head = [h['head']['kernel'] for h in history]
  first, last = (np.abs(head[i + 1] - head[i]).max() for i in (0, 9))
  assert 0 < last < first
