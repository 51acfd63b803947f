"""The ladder's models: exact Keras parameter counts, shapes, initialisers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cifar_jax import cpu
from cifar_jax import models
from cifar_jax.models import fastnet
from cifar_jax.reporting import summary
from cifar_jax.training import optimizers
from conftest import get_config
from conftest import RUNGS

# (total, non-trainable): the seed notebook's model.summary() of each rung.
PARAMS = {
    'simple': (4_210_090, 0),
    'large': (2_915_114, 0),
    'large_100': (2_915_114, 0),
    'large_less_dropout': (2_915_114, 0),
    'deep_adam': (1_172_410, 0),
    'deep_adam_aug': (1_172_410, 0),
    'deep_adam_aug_dropout': (1_172_410, 0),
    'bn_aug_sgd': (685_354, 896),
}


def _init(name):
  model = models.create_model(get_config(name).model)
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  )
  return model, variables


@pytest.mark.parametrize('name', RUNGS)
def test_parameter_counts_equal_the_seeds_keras_models(name):
  _, variables = _init(name)
  total, non_trainable = PARAMS[name]
  assert summary.count_params(variables) == total
  assert summary.count_params(variables.get('batch_stats', {})) == non_trainable


@pytest.mark.parametrize('name', RUNGS)
def test_summary_prints_keras_totals_with_thousands_separators(name):
  model, variables = _init(name)
  text = summary.keras_summary(model, variables, (32, 32, 3))
  total, non_trainable = PARAMS[name]
  assert f'Total params: {total:,}' in text
  assert f'Trainable params: {total - non_trainable:,}' in text
  assert f'Non-trainable params: {non_trainable:,}' in text
  rows = [line.split() for line in text.splitlines() if '(None,' in line]
  assert rows[0][0] == 'stage1/conv1' and rows[-1][0] == 'logits'
  # Rows in call order; their parameter column adds up to the total.
  assert sum(int(r[-1].replace(',', '')) for r in rows) == total


def test_simple_summary_rows_match_the_seed():
  model, variables = _init('simple')
  text = summary.keras_summary(model, variables, (32, 32, 3))
  rows = [line for line in text.splitlines() if '(None,' in line]
  # The seed's table: conv 896, dropout, conv 9,248, pool to 16x16,
  # flatten 8192, dense 4,194,816, dropout, dense 5,130.
  expected = [
      ('(Conv)', '(None, 32, 32, 32)', '896'),
      ('(Dropout)', '(None, 32, 32, 32)', '0'),
      ('(Conv)', '(None, 32, 32, 32)', '9,248'),
      ('(MaxPool)', '(None, 16, 16, 32)', '0'),
      ('(Flatten)', '(None, 8192)', '0'),
      ('(Dense)', '(None, 512)', '4,194,816'),
      ('(Dropout)', '(None, 512)', '0'),
      ('(Dense)', '(None, 10)', '5,130'),
  ]
  assert len(rows) == len(expected)
  for row, (kind, shape, n) in zip(rows, expected):
    assert kind in row and shape in row and row.endswith(n)


@pytest.mark.parametrize(
    'name,stochastic',
    [('simple', True), ('deep_adam', False), ('bn_aug_sgd', True)],
)
@pytest.mark.slow
def test_logits_shape_and_dropout_only_in_training(name, stochastic):
  model = models.create_model(get_config(name).model)
  x = jax.random.uniform(jax.random.key(1), (4, 32, 32, 3))
  variables = model.init(jax.random.key(0), x)
  logits = model.apply(variables, x)
  assert logits.shape == (4, 10)
  np.testing.assert_array_equal(logits, model.apply(variables, x))
  train_out, _ = model.apply(
      variables,
      x,
      train=True,
      rngs={'dropout': jax.random.key(2)},
      mutable=['batch_stats'],
  )
  # deep_adam has neither dropout nor BatchNorm: training mode changes nothing.
  assert np.allclose(train_out, logits) != stochastic


def test_kernels_are_glorot_uniform_and_biases_zero():
  model = models.create_model(get_config('large').model)
  params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params']
  kernel = params['stage2']['conv2']['kernel']  # (3, 3, 64, 64)
  limit = np.sqrt(6 / (9 * 64 + 9 * 64))
  assert np.abs(kernel).max() <= limit
  assert np.abs(kernel).max() > 0.99 * limit
  # Uniform on [-limit, limit] has variance limit^2 / 3.
  np.testing.assert_allclose(np.var(kernel), limit**2 / 3, rtol=0.05)
  biases = [
      leaf
      for path, leaf in jax.tree_util.tree_leaves_with_path(params)
      if path[-1].key == 'bias'
  ]
  assert len(biases) == 9  # 6 convs, 2 hidden dense layers, logits.
  assert not any(np.any(b) for b in biases)


@pytest.mark.slow
def test_batch_norm_uses_keras_momentum_and_epsilon():
  model = models.create_model(get_config('bn_aug_sgd').model)
  x = jax.random.uniform(jax.random.key(1), (8, 32, 32, 3))
  variables = model.init(jax.random.key(0), x)
  _, updates = model.apply(
      variables,
      x,
      train=True,
      rngs={'dropout': jax.random.key(2)},
      mutable=['batch_stats', 'intermediates'],
      capture_intermediates=True,
  )
  stats = updates['batch_stats']['stage1']['bn1']
  conv = updates['intermediates']['stage1']['conv1']['__call__'][0]
  relu = np.maximum(conv, 0)
  # Running mean moves 1% of the way from 0 towards the batch mean.
  np.testing.assert_allclose(
      stats['mean'], 0.01 * relu.mean((0, 1, 2)), rtol=1e-4, atol=1e-7
  )
  bn_out = updates['intermediates']['stage1']['bn1']['__call__'][0]
  mean, var = relu.mean((0, 1, 2)), relu.var((0, 1, 2))
  np.testing.assert_allclose(
      bn_out, (relu - mean) / np.sqrt(var + 1e-3), atol=2e-4
  )


def test_max_norm_marks_exactly_the_seeds_constrained_kernels():
  _, variables = _init('simple')
  values = optimizers.max_norm_bounds(
      variables['params'], get_config('simple').optimizer
  )
  assert values['stage1']['conv1']['kernel'] == 3.0
  assert values['stage1']['conv2']['kernel'] == 3.0
  assert values['dense1']['kernel'] == 3.0
  assert values['logits']['kernel'] == 0.0
  assert values['dense1']['bias'] == 0.0
  _, variables = _init('large')
  values = optimizers.max_norm_bounds(
      variables['params'], get_config('large').optimizer
  )
  assert values['stage1']['conv1']['kernel'] == 0.0
  assert values['dense1']['kernel'] == values['dense2']['kernel'] == 3.0


def test_mismatched_stage_lists_are_refused_with_a_clear_message():
  config = get_config('large').model
  config.conv_dropout = (0.2,)
  with pytest.raises(
      ValueError, match=r'conv_dropout has 1 entries for 3 stages'
  ):
    models.create_model(config)


@pytest.mark.slow
@pytest.mark.parametrize('residual', [False, True])
def test_residual_fast_block_adds_its_first_activation_to_its_output(residual):
  """With the later convolutions zeroed, their BN-GELU path outputs 0, so a
  residual block returns its first activation and a plain one returns 0."""
  block = fastnet.FastBlock(
      8, bn_momentum=0.4, bn_epsilon=1e-12, depth=3, residual=residual
  )
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
  variables = block.init(jax.random.key(1), x, train=True)
  params = dict(variables['params'])
  for name in ('conv2', 'conv3'):
    params[name] = {'kernel': jnp.zeros_like(params[name]['kernel'])}
  variables = {**variables, 'params': params}
  out, _ = block.apply(variables, x, train=True, mutable=['batch_stats'])
  first = fastnet.FastBlock(8, bn_momentum=0.4, bn_epsilon=1e-12, depth=1)
  first_vars = {
      'params': {k: params[k] for k in ('conv1', 'bn1')},
      'batch_stats': {'bn1': variables['batch_stats']['bn1']},
  }
  expected, _ = first.apply(first_vars, x, train=True, mutable=['batch_stats'])
  if residual:
    np.testing.assert_allclose(out, expected, atol=1e-6)
  else:
    np.testing.assert_allclose(out, 0.0, atol=1e-6)
  assert float(jnp.abs(expected).max()) > 0.1


def test_fast96_has_ten_convolutions_and_residual_blocks():
  config = get_config('fast96')
  model = models.create_model(config.model)
  params = jax.eval_shape(
      model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3))
  )['params']
  convs = [
      k for block in params.values() for k in block if k.startswith('conv')
  ] + ['whiten']
  assert len(convs) == 10 and model.residual


@pytest.mark.slow
def test_jitted_gradient_of_a_batch_norm_model_equals_the_eager_one():
  """The gradient through the CPU pool does not depend on XLA's fusion.

  After one training step (BatchNorm on batch statistics, a mask, a conv
  stage and the pool), jaxlib 0.12 compiled the autodiff of a max over a
  reshape into gradients up to 100% off; the custom gradient fixes that.
  """
  config = get_config('test')
  config.model.batch_norm = True
  config.model.conv_dropout = (0.0,)
  config.model.hidden_dropout = 0.0
  model = models.create_model(config.model)
  x = jax.random.uniform(jax.random.key(0), (32, 32, 32, 3))
  labels = jnp.arange(32) % 10
  mask = jnp.ones(32)
  variables = model.init(jax.random.key(1), x[:1], train=False)

  def loss(params, batch_stats, x, mask):
    logits, updates = model.apply(
        {'params': params, 'batch_stats': batch_stats},
        x,
        train=True,
        mask=mask,
        mutable=['batch_stats'],
    )
    per_example = -jax.nn.log_softmax(logits)[jnp.arange(32), labels]
    return jnp.sum(per_example * mask) / jnp.sum(mask), updates

  grad = jax.grad(loss, has_aux=True)
  params, batch_stats = variables['params'], variables['batch_stats']
  # One SGD step, so BatchNorm's statistics and scale are not their init.
  g, updates = jax.jit(grad)(params, batch_stats, x, mask)
  params = jax.tree.map(lambda p, d: p - 0.5 * d, params, g)
  batch_stats = updates['batch_stats']
  jitted, _ = jax.jit(grad)(params, batch_stats, x, mask)
  with jax.disable_jit():
    eager, _ = grad(params, batch_stats, x, mask)
  for a, b in zip(jax.tree.leaves(jitted), jax.tree.leaves(eager)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5 * np.abs(b).max())


def test_dropout_masks_are_hashed_once_only_on_cpus():
  config = get_config('large').cpu
  assert cpu.for_platform(config, 'cpu').kernels.dropout_hash_once
  assert not cpu.for_platform(config, 'gpu').kernels.dropout_hash_once
  assert not cpu.for_platform(config, 'tpu').kernels.dropout_hash_once
