"""The XLA:CPU defaults: how they are applied, and that results keep."""

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from cifar_jax.cpu import xla_cpu
from conftest import REPO

FLAG = '--xla_cpu_experimental_ynn_fusion_type'

OPTIONS = {xla_cpu.YNN_FUSION_TYPE: xla_cpu.YNN_FUSIONS_WITHOUT_CONVOLUTIONS}


def test_cpu_programs_get_the_options_and_others_none():
  assert xla_cpu.compiler_options('cpu', {}) == OPTIONS
  assert xla_cpu.compiler_options('gpu', {}) == {}
  assert xla_cpu.compiler_options('tpu', {}) == {}


def test_the_users_own_xla_flag_wins():
  env = {'XLA_FLAGS': f'--xla_force_host_platform_device_count=2 {FLAG}='}
  assert xla_cpu.compiler_options('cpu', env) == {}
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}
  assert xla_cpu.compiler_options('cpu', env) == OPTIONS


def test_the_opt_out_gives_xlas_defaults():
  assert xla_cpu.compiler_options('cpu', {xla_cpu.OPT_OUT: '1'}) == {}
  assert xla_cpu.compiler_options('cpu', {xla_cpu.OPT_OUT: '0'}) == OPTIONS


def test_a_jaxlib_that_refuses_the_option_compiles_with_defaults(
    monkeypatch, caplog
):
  monkeypatch.setattr(
      xla_cpu,
      'YNN_FUSIONS_WITHOUT_CONVOLUTIONS',
      'LIBRARY_FUSION_TYPE_NO_SUCH_THING',
  )
  with caplog.at_level(logging.WARNING):
    assert xla_cpu.compiler_options('cpu', {}) == {}
  assert 'refuses the XLA:CPU options' in caplog.text


@pytest.mark.slow
def test_importing_cifar_jax_leaves_the_environment_alone():
  code = (
      'import os; import cifar_jax, cifar_jax.train; '
      'print(repr(os.environ.get("XLA_FLAGS")))'
  )
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  out = subprocess.run(
      [sys.executable, '-c', code],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
      check=True,
  ).stdout
  assert out.strip() == 'None'


_TRAIN_A_FEW_STEPS = r"""
import hashlib, json, re, sys
import jax
from cifar_jax import train
from cifar_jax.training import experiment
from configs import test
config = test.get_config()
config.data.name = 'synthetic'
config.data.synthetic_train_size = 4 * config.batch_size
config.data.synthetic_eval_size = config.eval_batch_size
config.steps_per_epoch = 0
exp = experiment.create_experiment(config)
run = exp.start(0)
hlo = exp.train_steps(1).lower(
    run.state, run.epoch_metrics, exp.train, run.order.pass_order(0), 0,
    run.keys
).compile().as_text()
ynn_convs = sum('__ynn_fusion' in line and 'conv_general_dilated' in line
                for line in hlo.splitlines())
train.run_steps(exp, run, 4)
leaves = [x.tolist() for x in jax.tree.leaves(run.state.params)]
# The program, without the numbers XLA appends to instruction names.
program = hashlib.sha256(re.sub(r'\.\d+', '', hlo).encode()).hexdigest()
print(json.dumps({'ynn_convs': ynn_convs, 'params': leaves,
                  'program': program}))
"""


def _train_a_few_steps(**env):
  env = dict(
      {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'},
      JAX_PLATFORMS='cpu',
      **env,
  )
  out = subprocess.run(
      [sys.executable, '-c', _TRAIN_A_FEW_STEPS],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
      check=True,
  ).stdout
  return json.loads(out.splitlines()[-1])


@pytest.mark.slow
def test_the_defaults_move_convolutions_off_ynnpack_and_keep_results():
  tuned = _train_a_few_steps()
  xla_default = _train_a_few_steps(**{xla_cpu.OPT_OUT: '1'})
  # The flag takes effect: XLA's default fuses the convs into YNNPACK calls.
  assert tuned['ynn_convs'] == 0 < xla_default['ynn_convs']
  # The options keep YNNPACK's other fusions as they were: the program is
  # the one XLA_FLAGS' '-individual_convolution' (the default set, less
  # convolutions) gives. Fails when a jaxlib changes its default set.
  by_flag = _train_a_few_steps(XLA_FLAGS=f'{FLAG}=-individual_convolution')
  assert by_flag['program'] == tuned['program'] != xla_default['program']
  # 4 steps of configs/test.py (the simple rung's layers, narrower: convs,
  # pool, dropout, MaxNorm, Keras SGD):
  # the same parameters up to float32 rounding, relative to the model's
  # largest parameter (a small bias's own scale is no yardstick: its
  # gradient sums thousands of terms of both signs). (Not bn_aug_sgd: there
  # any rounding difference grew ~30x per step on synthetic data, about
  # 1 / sqrt(BatchNorm epsilon), from channels of near-zero variance.)
  pairs = [
      (np.asarray(a), np.asarray(b))
      for a, b in zip(tuned['params'], xla_default['params'])
  ]
  largest = max(np.abs(b).max() for _, b in pairs)
  assert max(np.abs(a - b).max() for a, b in pairs) <= 3e-5 * largest
