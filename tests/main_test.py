"""The command line, end to end, in subprocesses on synthetic data."""

import json
import os
import re
import subprocess
import sys

import pytest

from cifar_jax import cli
from cifar_jax.config import loading
from conftest import HISTORY_KEYS
from conftest import REPO
from conftest import run_main as _run


@pytest.mark.slow
def test_cli_trains_and_writes_history_config_and_keras_lines(tmp_path):
  r = _run(
      '--config',
      'configs/test.py',
      '--workdir',
      str(tmp_path),
      '--config.num_epochs=2',
      '--config.seed=3',
  )
  assert r.returncode == 0, r.stderr[-3000:]
  history = json.loads((tmp_path / 'history.json').read_text())
  assert [h['epoch'] for h in history] == [1, 2]
  for h in history:
    assert set(h) == HISTORY_KEYS
  config = json.loads((tmp_path / 'config.json').read_text())
  assert config['num_epochs'] == 2 and config['seed'] == 3
  out = r.stdout
  assert 'Total params: 66,706' in out
  lines = re.findall(
      r'^Epoch (\d)/2 - \d+s - loss: ([\d.]+) - accuracy: ([\d.]+) - '
      r'val_loss: ([\d.]+) - val_accuracy: ([\d.]+)$',
      out,
      re.M,
  )
  assert len(lines) == 2
  for line, h in zip(lines, history):
    assert float(line[1]) == pytest.approx(h['loss'], abs=1e-4)
    assert float(line[4]) == pytest.approx(h['val_accuracy'], abs=1e-4)
  final = re.search(r'^Accuracy: (\d+\.\d\d)%$', out, re.M)
  assert final and float(final.group(1)) == pytest.approx(
      100 * history[-1]['val_accuracy'], abs=0.005
  )


@pytest.mark.slow
def test_cli_refuses_a_batch_that_does_not_split_over_devices(tmp_path):
  r = _run(
      '--config',
      'configs/test.py',
      '--workdir',
      str(tmp_path),
      '--config.batch_size=33',
      devices=2,
  )
  assert r.returncode == 1
  assert 'batch_size=33 must be divisible by the number of devices (2)' in (
      r.stderr
  )
  assert 'Traceback' not in r.stderr


@pytest.mark.slow
def test_cli_typo_in_an_override_fails_with_a_clear_message(tmp_path):
  r = _run(
      '--config',
      'configs/test.py',
      '--workdir',
      str(tmp_path),
      '--config.num_epoch=3',
      timeout=120,
  )
  assert r.returncode == 2 and r.stderr == (
      "error: bad --config override: this config has no key 'num_epoch'; "
      "did you mean 'num_epochs'?\n"
  )
  assert not (tmp_path / 'history.json').exists()
  r = _run('--config.num_epochs=3', '--workdir', tmp_path, timeout=120)
  assert r.returncode == 2 and r.stderr.startswith(
      "error: --config.num_epochs=3 overrides a config file's key: name the "
      'file too, --config configs/<name>.py (bn_aug_sgd, '
  )
  assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_cli_missing_image_folder_is_one_clear_line(tmp_path):
  r = _run(
      '--config',
      'configs/simple.py',
      '--workdir',
      str(tmp_path),
      '--config.data.name=image_folder',
      f'--config.data.dir={tmp_path}/missing',
      timeout=120,
  )
  assert r.returncode == 1
  assert 'is not a directory' in r.stderr
  assert 'Traceback' not in r.stderr


def test_default_workdir_is_ckpt_slash_config_name():
  assert cli.default_workdir('configs/large.py') == os.path.join(
      'ckpt', 'large'
  )
  assert cli.default_workdir('/abs/configs/bn_aug_sgd.py:arg') == (
      os.path.join('ckpt', 'bn_aug_sgd')
  )


def test_load_config_gives_the_files_config_with_the_overrides():
  config = loading.load_config(
      'simple', {'num_epochs': 3, 'optimizer.learning_rate': 0.5}
  )
  plain = loading.load_config('simple')
  assert (config.num_epochs, config.optimizer.learning_rate) == (3, 0.5)
  assert plain.num_epochs == 25  # The seed's; the overrides touched a copy.
  config.num_epochs, config.optimizer.learning_rate = (
      25,
      plain.optimizer.learning_rate,
  )
  assert config.to_dict() == plain.to_dict()


def test_load_config_refuses_an_unknown_key_or_config_in_one_line():
  with pytest.raises(cli.UserError, match="no key 'optimizer.lr'"):
    loading.load_config('simple', {'optimizer.lr': 0.5})
  with pytest.raises(cli.UserError, match='configs/nope.py: no such file'):
    loading.load_config('nope')


# `python -m cifar_jax.<command> ARGS`, then whether JAX loaded.
_COMMAND = """
import runpy, sys
sys.argv = ['{0}', *{1!r}]
try:
  runpy.run_module('cifar_jax.{0}', run_name='__main__')
finally:
  print('jax imported:', 'jax' in sys.modules)
"""


def _command(command: str, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, '-c', _COMMAND.format(command, args)],
      cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
  )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    'command,flags',
    [
        ('main', ['config', 'workdir', 'distributed']),
        ('evaluate', ['workdir', 'checkpoint', 'split', 'tta_level']),
        ('predict', ['workdir', 'checkpoint']),
        ('ladder', ['config', 'configs', 'epochs_scale', 'root', 'parallel']),
        ('show_augment', ['config', 'out', 'num_images']),
    ],
)
def test_help_exits_0_with_the_commands_own_flags_before_jax_loads(
    command, flags
):
  r = _command(command, '--help')
  assert r.returncode == 0, r.stderr[-2000:]
  out = r.stdout
  assert out.rstrip().endswith('jax imported: False')
  listed = re.findall(r'^  --(\w+):', out, re.M)
  assert set(flags) <= set(listed), listed
  assert 'logtostderr' not in out and 'Traceback' not in r.stderr  # absl's.
  with_config = 'config' in flags
  for name in ('simple', 'large', 'fast94'):
    assert (re.search(rf'^  {name} +\S', out, re.M) is not None) == with_config
  assert ('--config.data.name=image_folder' in out) == with_config


@pytest.mark.slow
@pytest.mark.parametrize(
    'command,args,code,line',
    [
        ('main', ['--config.data.name=cifar_10'], 1, "error: bad config: data.name='cifar_10' must be a data set name"),
        ('main', ['--config.batch_size=0'], 1, 'error: bad config: batch_size=0 must be an integer from 1'),
        ('main', ['--config.model.stage_features=(8,8,8,8,8,8)'], 1, 'error: bad config: model.'),
        ('main', ['--config.num_epoch=3'], 2, "error: bad --config override: this config has no key 'num_epoch'"),
        ('main', ['--config.num_epochs=many'], 2, 'error: flag --config.num_epochs=many'),
        ('show_augment', ['--config.augment.flip_mode=sideways'], 1, "error: bad config: augment.flip_mode='sideways'"),
        ('ladder', ['--config.batch_size=0'], 1, 'error: bad config: batch_size=0 must be'),
        ('evaluate', ['--checkpoint=foo'], 2, "error: flag --checkpoint=foo: must be 'best', 'latest' or a step"),
    ],
)  # fmt: skip
def test_a_bad_config_is_refused_before_jax_loads_and_before_any_write(
    tmp_path, command, args, code, line
):
  out = tmp_path / 'out'
  where = {'main': '--workdir', 'show_augment': '--out', 'ladder': '--root',
           'evaluate': '--workdir'}  # fmt: skip
  args = [*args, f'{where[command]}={out}']
  if command in ('main', 'show_augment'):
    args = ['--config', 'configs/simple.py', *args]
  r = _command(command, *args)
  assert r.returncode == code and r.stderr.startswith(line), r.stderr
  assert len(r.stderr.strip().splitlines()) == 1, r.stderr
  assert r.stdout.strip() == 'jax imported: False'
  assert os.listdir(tmp_path) == []  # Not even the workdir.
