"""Configs saved before the keys moved into sections still resume and load."""

import json
import pathlib

import pytest

from cifar_jax import cli
from cifar_jax.config import renames
from cifar_jax.runs import resume
from conftest import get_config

# Every shipped config as the code before the move saved it (config.json).
BEFORE = json.loads(
    (
        pathlib.Path(__file__).parent / 'data' / 'configs_before_sections.json'
    ).read_text()
)


# The fast recipes changed since (they now equal airbench step for step):
# their old runs upgrade to what they computed, which today's configs no
# longer are.
RECIPES_SINCE_CHANGED = ('fast94', 'fast95', 'fast96')
# deep_adam_aug now starts with deep_adam's Adam state, as the seed did.
STARTS_SINCE_CHANGED = ('deep_adam_aug',)
# fit_generator's rungs now visit each pass's batches in a shuffled order.
BATCH_ORDER_SINCE_CHANGED = (
    'deep_adam_aug',
    'deep_adam_aug_dropout',
    'bn_aug_sgd',
)
SHUFFLED_NOW = ['shuffle_batch_order: False in the checkpoint, True now']


@pytest.mark.parametrize(
    'name',
    sorted(
        set(BEFORE)
        - set(RECIPES_SINCE_CHANGED)
        - set(STARTS_SINCE_CHANGED)
        - set(BATCH_ORDER_SINCE_CHANGED)
    ),
)
def test_an_old_saved_config_upgrades_to_exactly_todays(name):
  old = BEFORE[name]
  assert renames.is_old(old)
  now = resume.config_json(get_config(name))
  assert renames.upgrade(old) == now
  assert resume.config_differences(renames.upgrade(old), now) == []


@pytest.mark.parametrize('name', STARTS_SINCE_CHANGED)
def test_an_old_run_keeps_its_fresh_optimizer_start_and_resumes(name):
  upgraded = renames.upgrade(BEFORE[name])
  now = resume.config_json(get_config(name))
  assert upgraded['init_from_optimizer'] is False and now['init_from_optimizer']
  changed = {'init_from_optimizer': True, 'shuffle_batch_order': True}
  assert {**upgraded, **changed} == now
  # How a run started does not change what its checkpoints computed; the
  # order of its batches does.
  assert resume.config_differences(upgraded, now) == SHUFFLED_NOW


@pytest.mark.parametrize('name', BATCH_ORDER_SINCE_CHANGED)
def test_an_old_generator_run_keeps_its_batch_order_and_names_it(name):
  upgraded = renames.upgrade(BEFORE[name])
  now = resume.config_json(get_config(name))
  assert upgraded['shuffle_batch_order'] is False and now['shuffle_batch_order']
  # Resumed with today's config: refused, naming the key; with it set back
  # (--config.shuffle_batch_order=false), it resumes as it was.
  assert resume.config_differences(upgraded, now) == SHUFFLED_NOW
  as_it_was = {**now, 'shuffle_batch_order': False}
  assert resume.config_differences(upgraded, as_it_was) == []


@pytest.mark.parametrize('name', RECIPES_SINCE_CHANGED)
def test_an_old_fast_run_upgrades_to_what_it_computed_and_cannot_resume(name):
  upgraded = renames.upgrade(BEFORE[name])
  assert upgraded['model']['gelu'] == 'tanh'  # Flax's default then.
  assert upgraded['data']['mean'] == [] and not upgraded['drop_remainder']
  diffs = resume.config_differences(
      upgraded, resume.config_json(get_config(name))
  )
  changed = {d.split(':')[0] for d in diffs}
  assert changed == {
      'data.mean',
      'data.std',
      'drop_remainder',
      'model.bn_momentum',
      'model.gelu',
      'optimizer.learning_rate',
      'optimizer.weight_decay',
      'whitening.epsilon',
  }


def test_a_config_saved_before_a_key_was_added_gets_its_old_value():
  now = resume.config_json(get_config('large_100'))
  saved = json.loads(json.dumps(now))
  del saved['drop_remainder'], saved['data']['mean'], saved['data']['std']
  assert renames.is_old(saved)
  assert renames.upgrade(saved) == now
  assert resume.config_differences(renames.upgrade(saved), now) == []


def test_todays_config_is_left_as_it_is():
  now = resume.config_json(get_config('simple'))
  assert not renames.is_old(now)
  assert renames.upgrade(now) is now


def test_an_old_key_on_the_command_line_gets_one_line_naming_the_new(capsys):
  with pytest.raises(SystemExit) as e:
    cli.parse_flags(
        ['main', '--config=configs/test.py', '--config.dataset=synthetic']
    )
  assert e.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith('error: --config.dataset is now --config.data.name')
  assert len(err.splitlines()) == 1


@pytest.mark.parametrize('value', ['xla', 'avx512'])
@pytest.mark.parametrize('old', ['conv_kernel_grad', 'conv3x3'])
def test_a_config_saved_with_the_kernels_in_model_keeps_them_in_cpu(value, old):
  now = resume.config_json(get_config('large'))
  now['cpu']['conv3x3'] = value
  saved = json.loads(json.dumps(now))
  saved['model'][old] = saved['cpu'].pop('conv3x3')
  saved['model']['pooling'] = saved['cpu'].pop('pooling')
  del saved['cpu']
  assert renames.is_old(saved)
  assert renames.upgrade(saved) == now


def test_conv_kernel_grad_on_the_command_line_names_cpu_conv3x3(capsys):
  with pytest.raises(SystemExit):
    cli.parse_flags(
        [
            'main',
            '--config=configs/test.py',
            '--config.model.conv_kernel_grad=xla',
        ]
    )
  err = capsys.readouterr().err.strip()
  assert err.startswith(
      'error: --config.model.conv_kernel_grad is now --config.cpu.conv3x3'
  )
