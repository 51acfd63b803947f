"""benchmarks/keras_peer.py: our trained state, put into the Keras 3 peer,
computes what ours computes (Keras needed)."""

import io

import jax
import numpy as np
import optax
import pytest

from benchmarks import keras_peer
from cifar_jax.runs import resume
from cifar_jax import train
from cifar_jax.training import experiment
from conftest import get_config

keras = pytest.importorskip('keras')


def _trained(tmp_path):
  """A config that starts from a trained Adam run with BatchNorm."""
  config = get_config('test')
  config.optimizer.name = 'adam'
  config.optimizer.conv_max_norm = 3.0
  config.model.batch_norm = True
  config.num_epochs = 1
  train.train_and_evaluate(config, str(tmp_path / 'run'), out=io.StringIO())
  config.init_from = str(tmp_path / 'run')
  config.init_from_optimizer = True
  return config


def test_our_state_in_keras_predicts_as_ours_and_takes_our_next_adam_step(
    tmp_path,
):
  config = _trained(tmp_path)
  model = keras_peer.keras_model(config)
  loaded = keras_peer.load_ours(config, model)
  assert loaded.endswith('(update 16)')  # 512 images / 32.
  exp = experiment.create_experiment(config)
  ours = jax.device_get(
      resume.state_from_run(exp, exp.start(0).state, config.init_from)
  )
  # The same function of the image: weights, BatchNorm statistics and the
  # flatten order all in place.
  x = np.random.default_rng(0).random((8, 32, 32, 3), np.float32)
  logits = exp.model.apply(
      {'params': ours.params, 'batch_stats': ours.batch_stats}, x, train=False
  )
  np.testing.assert_allclose(
      model(x, training=False), jax.nn.softmax(logits), rtol=0, atol=1e-5
  )
  # The same next update: Adam's moments, and Keras 2.3's t = 18 after 16
  # updates, not 1 (which would double the step).
  grads = jax.tree.map(
      lambda p: np.random.default_rng(p.size).normal(size=p.shape) * 1e-2,
      ours.params,
  )
  grads = jax.tree.map(lambda g: g.astype(np.float32), grads)
  updates, _ = ours.tx.update(grads, ours.opt_state, ours.params)
  ours_after = optax.apply_updates(ours.params, updates)
  model.optimizer.apply_gradients(
      zip(
          keras_peer.in_keras_order(config.model, grads),
          model.trainable_variables,
      )
  )
  keras_after = [np.asarray(v) for v in model.trainable_variables]
  expected = keras_peer.in_keras_order(config.model, ours_after)
  before = keras_peer.in_keras_order(config.model, ours.params)
  for k, e, b in zip(keras_after, expected, before, strict=True):
    step = np.abs(e - b).max()
    assert step > 0
    np.testing.assert_allclose(k, e, rtol=0, atol=1e-3 * step)
  assert int(model.optimizer.iterations) == 18


def test_without_init_from_optimizer_keras_takes_the_weights_only(tmp_path):
  config = _trained(tmp_path)
  config.init_from_optimizer = False
  model = keras_peer.keras_model(config)
  assert keras_peer.load_ours(config, model) == (
      f'the weights of {config.init_from}'
  )
  assert int(model.optimizer.iterations) == 0
