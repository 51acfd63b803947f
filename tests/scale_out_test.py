"""Data parallelism: the same run on 1, 2, 4 or 8 devices, in 1 or 2 processes.

Fake CPU devices (--xla_force_host_platform_device_count) and two processes
joined by jax.distributed on 127.0.0.1 stand in for GPUs, TPUs and hosts.

Float32 sums over a batch split across devices are added in a different
order, so runs differ by ~1e-7 at first. Training amplifies that: with
dropout or augmentation on, a 1e-7 nudge to the initial parameters grows to
1e-2 in the loss within 100 steps even on one device. So the long runs here
use a calm config (BatchNorm, a partial last batch, a padded last eval
batch; no dropout or augmentation) over 128 steps, compared closely over
their first 32 (TOLERANCE below), and the random parts are
checked on the first step, where any difference in dropout masks or
augmentation would show at 1e-2.
"""

import json
import socket

import pytest

from cifar_jax.runs import evaluation
from conftest import run_main
from conftest import start_main

EPOCHS = 8  # 16 steps each: 500 examples, batch 32, last batch of 20.
# The first two epochs (32 steps: an epoch boundary and a partial batch)
# agree to float32 rounding: a batch sharded wrongly, BatchNorm statistics
# per device, or the padded rows of a partial batch counted would show at
# 1e-2 there. Later, near-ties in max pooling and ReLU let 1e-7 flip a
# gradient path: on this overfitting synthetic data the loss of 2 processes
# x 2 devices then parts from one device's by up to 4.5e-3 by epoch 4
# (learning rate 0.001; 8 devices in one process: 2e-5). Those epochs check
# that a resume on another mesh carries on the same run, not a new one.
TOLERANCE = dict(rel=1e-4, abs=1e-6)
LATER_TOLERANCE = dict(rel=1e-2, abs=1e-2)
CALM = (
    '--config',
    'configs/test.py',
    '--config.data.synthetic_train_size=500',
    '--config.model.batch_norm=True',
    '--config.model.conv_dropout=(0.0,)',
    '--config.model.hidden_dropout=0.0',
    '--config.optimizer.learning_rate=0.001',
)
RANDOM = (
    '--config',
    'configs/test.py',
    '--config.model.batch_norm=True',
    '--config.augment.horizontal_flip=True',
    '--config.augment.width_shift_range=0.1',
    '--config.augment.zoom_range=0.1',
    '--config.augment.crop_padding=2',
    '--config.augment.cutout_size=4',
    '--config.num_epochs=1',
    '--config.steps_per_epoch=1',
)


def _train(workdir, *args, devices, epochs=EPOCHS):
  r = run_main(
      *CALM,
      '--workdir',
      workdir,
      f'--config.num_epochs={epochs}',
      *args,
      devices=devices,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  return r.stdout


def _history(workdir):
  return json.loads((workdir / 'history.json').read_text())


def _assert_same_metrics(history, reference):
  assert [h['epoch'] for h in history] == [
      h['epoch'] for h in reference[: len(history)]
  ]
  for h, ref in zip(history, reference):
    for key in ('loss', 'accuracy', 'val_loss', 'val_accuracy'):
      tolerance = TOLERANCE if h['epoch'] <= 2 else LATER_TOLERANCE
      assert h[key] == pytest.approx(ref[key], **tolerance), (h['epoch'], key)


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _train_two_processes(workdir, epochs, devices_per_process, monkeypatch):
  # Under jax 0.12.1, two CPU processes whose programs come from JAX's
  # persistent compilation cache (conftest.compilation_cache) wait on each
  # other at their first step for ever; under 0.10.2 they do not.
  monkeypatch.delenv('JAX_COMPILATION_CACHE_DIR', raising=False)
  port = _free_port()
  procs = [
      start_main(
          *CALM,
          '--workdir',
          workdir,
          f'--config.num_epochs={epochs}',
          f'--coordinator_address=127.0.0.1:{port}',
          '--num_processes=2',
          f'--process_id={i}',
          devices=devices_per_process,
      )
      for i in range(2)
  ]
  outputs = []
  for proc in procs:
    try:
      out, err = proc.communicate(timeout=300)
    finally:
      proc.kill()
    assert proc.returncode == 0, err[-3000:]
    outputs.append(out)
  return outputs


@pytest.fixture(scope='module')
def one_device(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('one_device')
  out = _train(workdir, devices=1)
  assert '(1 device(s): cpu; ' in out
  return _history(workdir)


@pytest.mark.slow
def test_two_devices_match_one_device_over_128_steps(tmp_path, one_device):
  out = _train(tmp_path, devices=2)
  assert '(2 device(s): cpu; ' in out
  _assert_same_metrics(_history(tmp_path), one_device)
  assert len(_history(tmp_path)) == EPOCHS


@pytest.mark.slow
def test_checkpoint_from_eight_devices_resumes_on_two(tmp_path, one_device):
  out = _train(tmp_path, devices=8, epochs=EPOCHS // 2)
  assert '(8 device(s): cpu; ' in out
  _assert_same_metrics(_history(tmp_path), one_device)  # 8 devices vs 1.
  out = _train(tmp_path, devices=2)
  steps = EPOCHS // 2 * 16
  assert f'Resuming from step {steps}' in out
  assert '(2 device(s): cpu; ' in out
  history = _history(tmp_path)
  assert len(history) == EPOCHS
  _assert_same_metrics(history, one_device)


@pytest.mark.slow
def test_two_processes_match_one_process_and_resume_together(
    tmp_path, one_device, monkeypatch
):
  """2 processes x 2 devices, stopped halfway and resumed by both."""
  first = _train_two_processes(
      tmp_path, EPOCHS // 2, devices_per_process=2, monkeypatch=monkeypatch
  )
  assert '(4 device(s): cpu; ' in first[0]
  assert 'Epoch' not in first[1]  # Only process 0 reports.
  second = _train_two_processes(
      tmp_path, EPOCHS, devices_per_process=2, monkeypatch=monkeypatch
  )
  assert f'Resuming from step {EPOCHS // 2 * 16}' in second[0]
  history = _history(tmp_path)
  assert len(history) == EPOCHS
  _assert_same_metrics(history, one_device)
  # This (one-device) process reads the 4-device checkpoint for evaluation.
  result = evaluation.evaluate(str(tmp_path), 'latest')
  assert result['accuracy'] == pytest.approx(
      history[-1]['val_accuracy'], abs=1e-6
  )


@pytest.mark.slow
def test_dropout_and_augmentation_do_not_depend_on_the_device_count(tmp_path):
  """One step with every random part on: same loss on 1 and 8 devices.

  Dropout and augmentation draw from keys split over the global batch, so
  example i gets the same mask and transform wherever it is computed.
  """
  rows = {}
  for devices in (1, 8):
    workdir = tmp_path / str(devices)
    r = run_main(*RANDOM, '--workdir', workdir, devices=devices)
    assert r.returncode == 0, r.stderr[-3000:]
    rows[devices] = _history(workdir)
  for devices in (8,):
    _assert_same_metrics(rows[devices], rows[1])
    assert rows[devices][0]['loss'] == pytest.approx(
        rows[1][0]['loss'], rel=1e-6
    )
