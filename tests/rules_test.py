"""Every config key's rule: the named choices match their code."""

import numpy as np

from cifar_jax.cpu import conv3x3
from cifar_jax.cpu import pooling
from cifar_jax.data import images
from cifar_jax import models
from cifar_jax.models import fastnet
from cifar_jax import rules
from cifar_jax.training import checks
from cifar_jax.training import optimizers
from conftest import get_config


def test_each_named_choice_of_the_rules_is_one_the_code_has():
  assert rules.MODELS == tuple(models.MODELS)
  assert rules.COMPUTE_DTYPES == tuple(models.COMPUTE_DTYPES)
  assert rules.GELUS == tuple(fastnet.GELUS)
  assert rules.ACTIVATIONS == tuple(fastnet.ACTIVATIONS)
  assert rules.HEAD_INITS == tuple(fastnet.HEAD_INITS)
  assert rules.CONV3X3 == conv3x3.METHODS
  assert rules.POOLING == pooling.METHODS
  assert (rules.IMAGE_SIDE, rules.IMAGE_SIDE, 3) == images.SHAPE
  for mode in rules.PADDING_MODES:  # np.pad takes each.
    np.pad(np.zeros((2, 2)), 1, mode=mode)
  config = get_config('default')
  for name in rules.OPTIMIZERS:  # Each builds an optimizer.
    config.optimizer.name = name
    params = {'conv': {'kernel': np.zeros((3, 3, 1, 1))}}
    optimizers.create_optimizer(config.optimizer, params)


def test_a_data_set_name_is_ours_or_one_tfds_knows():
  known, _ = rules.DATA['name']
  assert all(map(known, ['cifar10', 'image_folder', 'synthetic']))
  assert known('cifar100') and known('mnist:3.0.1')
  assert not any(map(known, ['cifar_10', 'imagefolder', '', None]))
  config = get_config('simple')
  config.data.name = 'cifar_10'
  assert checks.problems(config) == [
      "data.name='cifar_10' must be a data set name ('cifar10', "
      "'image_folder', 'synthetic' or another TFDS name)"
  ]


def test_a_model_too_deep_for_the_images_is_a_config_problem():
  config = get_config('simple')
  config.model.stage_features = (32,) * 6
  for key in ('second_conv_padding', 'conv_dropout', 'stage_dropout'):
    config.model[key] = config.model[key][:1] * 6
  (problem,) = checks.problems(config)
  assert problem.startswith(
      'model.stage_features has 6 stages, but stage 6 gets 1x1'
  )
