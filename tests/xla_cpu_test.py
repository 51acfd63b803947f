"""The XLA:CPU defaults: how they are applied, and that results keep."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cifar_jax import xla_cpu
from conftest import REPO

FLAG = '--xla_cpu_experimental_ynn_fusion_type'


@pytest.fixture
def backend_not_started(monkeypatch):
  monkeypatch.setattr(xla_cpu, '_backend_started', lambda: False)


def test_defaults_are_appended_to_the_users_other_flags(backend_not_started):
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}
  assert xla_cpu.apply_defaults(env) == [f'{FLAG}=-individual_convolution']
  assert env['XLA_FLAGS'].split() == [
      '--xla_force_host_platform_device_count=2',
      f'{FLAG}=-individual_convolution']
  assert xla_cpu.apply_defaults(env) == []  # Idempotent.


def test_a_flag_the_user_set_is_kept(backend_not_started):
  env = {'XLA_FLAGS': f'{FLAG}='}
  assert xla_cpu.apply_defaults(env) == []
  assert env['XLA_FLAGS'] == f'{FLAG}='


def test_the_opt_out_leaves_xla_flags_alone(backend_not_started):
  env = {xla_cpu.OPT_OUT: '1'}
  assert xla_cpu.apply_defaults(env) == []
  assert 'XLA_FLAGS' not in env


def test_after_the_backend_started_nothing_changes_but_a_warning(
    monkeypatch, caplog):
  monkeypatch.setattr(xla_cpu, '_backend_started', lambda: True)
  env = {}
  assert xla_cpu.apply_defaults(env) == []
  assert env == {}
  assert 'without' in caplog.text


_TRAIN_A_FEW_STEPS = """
import json, io, sys
import jax
from cifar_jax import progress, train
from configs import test
config = test.get_config()
config.dataset = 'synthetic'
config.synthetic_train_size = 4 * config.batch_size
config.synthetic_eval_size = config.eval_batch_size
config.steps_per_epoch = 0
exp = train.create_experiment(config)
hlo = exp.jit_train_step.lower(
    exp.state, train.empty_metrics(exp.replicated), *exp.train,
    exp.order.pass_order(0), 0, exp.dropout_key, exp.augment_key
).compile().as_text()
ynn_convs = sum('__ynn_fusion' in line and 'conv_general_dilated' in line
                for line in hlo.splitlines())
state, _, _ = train.run_steps(exp, exp.state,
                              train.empty_metrics(exp.replicated), 0, 4,
                              progress.ProgressBar(4, out=io.StringIO()))
leaves = [x.tolist() for x in jax.tree.leaves(state.params)]
print(json.dumps({'ynn_convs': ynn_convs, 'params': leaves}))
"""


def _train_a_few_steps(**env):
  env = dict(os.environ, JAX_PLATFORMS='cpu', **env)
  env.pop('XLA_FLAGS', None)
  out = subprocess.run([sys.executable, '-c', _TRAIN_A_FEW_STEPS], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=300,
                       check=True).stdout
  return json.loads(out.splitlines()[-1])


def test_the_defaults_move_convolutions_off_ynnpack_and_keep_results():
  tuned = _train_a_few_steps()
  xla_default = _train_a_few_steps(**{xla_cpu.OPT_OUT: '1'})
  # The flag takes effect: XLA's default fuses the convs into YNNPACK calls.
  assert tuned['ynn_convs'] == 0 < xla_default['ynn_convs']
  # 4 steps of configs/test.py (the simple rung's layers, narrower: convs,
  # pool, dropout, MaxNorm, Keras SGD):
  # the same parameters up to float32 rounding. (Not bn_aug_sgd: there any
  # rounding difference grew ~30x per step on synthetic data, about
  # 1 / sqrt(BatchNorm epsilon), from channels of near-zero variance.)
  for a, b in zip(tuned['params'], xla_default['params']):
    a, b = np.asarray(a), np.asarray(b)
    assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()
