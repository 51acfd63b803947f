"""Optimizers against NumPy transcriptions of the Keras 2.3 update formulas.

As Keras 2.3.1 runs them on TensorFlow 1.15: its optimizers read their
update counter `iterations` after the op that increments it
(tests/keras23_test.py checks them against Keras itself).
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from cifar_jax.training import optimizers

STEPS = 6


def _grads(shape, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.normal(size=shape).astype(np.float32) for _ in range(STEPS)]


def _run(tx, w0, grads):
  params = {'w': jnp.asarray(w0)}
  state = tx.init(params)
  out = []
  for g in grads:
    updates, state = tx.update({'w': jnp.asarray(g)}, state, params)
    params = optax.apply_updates(params, updates)
    out.append(np.asarray(params['w']))
  return out


def keras_sgd_reference(w, grads, lr, momentum, decay):
  """keras/optimizers.py SGD.get_updates (Keras 2.3), in NumPy."""
  v = np.zeros_like(w, np.float64)
  w = w.astype(np.float64)
  out = []
  for before, g in enumerate(grads):
    iterations = before + 1  # Read after its increment.
    lr_t = lr * (1.0 / (1.0 + decay * iterations))
    v = momentum * v - lr_t * g
    w = w + v
    out.append(w)
  return out


def keras_adam_reference(w, grads, lr, b1, b2, eps):
  """keras/optimizers.py Adam.get_updates (Keras 2.3), in NumPy."""
  m = np.zeros_like(w, np.float64)
  v = np.zeros_like(w, np.float64)
  w = w.astype(np.float64)
  out = []
  for before, g in enumerate(grads):
    iterations = before + 1  # Read after its increment.
    t = iterations + 1
    lr_t = lr * np.sqrt(1.0 - b2**t) / (1.0 - b1**t)
    m = b1 * m + (1.0 - b1) * g
    v = b2 * v + (1.0 - b2) * g**2
    w = w - lr_t * m / (np.sqrt(v) + eps)
    out.append(w)
  return out


def keras_max_norm_reference(w, max_value, axis=0):
  """keras/constraints.py MaxNorm.__call__, in NumPy."""
  norms = np.sqrt(np.sum(np.square(w), axis=axis, keepdims=True))
  desired = np.clip(norms, 0, max_value)
  return w * (desired / (1e-7 + norms))


def test_sgd_matches_keras_momentum_and_per_update_decay():
  w0 = np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32)
  grads = _grads((4, 3))
  # A large decay makes a per-epoch or off-by-one schedule visibly wrong.
  ours = _run(
      optimizers.keras_sgd(optimizers.inverse_time_decay(0.1, 0.5), 0.9),
      w0,
      grads,
  )
  ref = keras_sgd_reference(w0, grads, 0.1, 0.9, 0.5)
  for a, b in zip(ours, ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_sgd_differs_from_optax_sgd_as_documented():
  # Guards the reason keras_sgd exists: optax.sgd scales after the trace.
  w0 = np.ones((3,), np.float32)
  grads = _grads((3,))
  sched = optimizers.inverse_time_decay(0.1, 0.5)
  theirs = _run(optax.sgd(sched, momentum=0.9), w0, grads)
  ref = keras_sgd_reference(w0, grads, 0.1, 0.9, 0.5)
  assert not np.allclose(theirs[-1], ref[-1], atol=1e-4)


def test_adam_matches_keras_epsilon_hat_placement():
  w0 = np.random.default_rng(2).normal(size=(5,)).astype(np.float32)
  # Tiny gradients, where the epsilon placement matters.
  grads = [g * 1e-6 for g in _grads((5,))]
  ours = _run(optimizers.keras_adam(1e-3, 0.9, 0.999, 1e-7), w0, grads)
  ref = keras_adam_reference(w0, grads, 1e-3, 0.9, 0.999, 1e-7)
  for a, b in zip(ours, ref):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  optax_adam = _run(optax.adam(1e-3, eps=1e-7), w0, grads)
  assert not np.allclose(optax_adam[-1], ref[-1], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize('shape', [(6, 4), (3, 3, 2, 4)])
def test_max_norm_projection_matches_keras_axis_0(shape):
  w = np.random.default_rng(3).normal(size=shape).astype(np.float32) * 3
  ours = np.asarray(optimizers.max_norm_project(jnp.asarray(w), 3.0))
  np.testing.assert_allclose(ours, keras_max_norm_reference(w, 3.0), rtol=1e-6)
  norms = np.sqrt((ours**2).sum(axis=0))
  assert norms.max() <= 3.0 + 1e-5
  assert norms.max() > 2.9  # Something was actually projected.


def test_max_norm_runs_after_every_update_only_on_constrained_leaves():
  rng = np.random.default_rng(4)
  w0 = {
      'k': rng.normal(size=(3, 3, 2, 4)).astype(np.float32),
      'free': rng.normal(size=(6, 4)).astype(np.float32),
  }
  max_values = {'k': 3.0, 'free': 0.0}
  tx = optax.chain(
      optimizers.keras_sgd(optimizers.inverse_time_decay(0.5, 0.01), 0.9),
      optimizers.keras_max_norm(max_values),
  )
  params = jax.tree.map(jnp.asarray, w0)
  state = tx.init(params)
  ref_k, ref_free = w0['k'].astype(np.float64), w0['free'].astype(np.float64)
  v_k, v_free = np.zeros_like(ref_k), np.zeros_like(ref_free)
  for t in range(STEPS):
    g = {
        'k': rng.normal(size=(3, 3, 2, 4)) * 5,
        'free': rng.normal(size=(6, 4)) * 5,
    }
    updates, state = tx.update(jax.tree.map(jnp.float32, g), state, params)
    params = optax.apply_updates(params, updates)
    # Keras: the optimizer updates the variable, then the constraint runs.
    lr_t = 0.5 / (1 + 0.01 * (t + 1))  # The counter read after its increment.
    v_k = 0.9 * v_k - lr_t * g['k']
    ref_k = keras_max_norm_reference(ref_k + v_k, 3.0)
    v_free = 0.9 * v_free - lr_t * g['free']
    ref_free = ref_free + v_free
    np.testing.assert_allclose(params['k'], ref_k, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(params['free'], ref_free, rtol=1e-4, atol=1e-5)
  assert np.sqrt((ref_free**2).sum(axis=0)).max() > 3.0  # 'free' is free.


def test_create_optimizer_refuses_unknown_names():
  config = ml_collections.ConfigDict({'name': 'rmsprop'})
  with pytest.raises(
      ValueError,
      match="optimizer.name='rmsprop' must be one of 'sgd', 'adam', 'fast_sgd'",
  ):
    optimizers.create_optimizer(config, {})


def test_adam_state_can_be_donated_to_a_jitted_update():
  """mu and nu must not share buffers: jit refuses to donate one twice."""
  tx = optimizers.keras_adam(1e-3, 0.9, 0.999, 1e-7)
  params = {'w': jnp.ones((3, 2))}
  state = tx.init(params)

  def update(params, state):
    updates, state = tx.update({'w': jnp.ones((3, 2))}, state, params)
    return optax.apply_updates(params, updates), state

  update = jax.jit(update, donate_argnums=(0, 1))
  params, state = update(params, state)
  assert int(state[0].count) == 1
