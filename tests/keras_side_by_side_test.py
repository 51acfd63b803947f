"""benchmarks/keras_side_by_side.py: trains, records, resumes (Keras needed)."""

import json
import os
import subprocess
import sys

import pytest

from conftest import HISTORY_KEYS
from conftest import REPO
from conftest import run_main

keras = pytest.importorskip('keras')

SYNTHETIC = [
    '--config.data.name=synthetic',
    '--config.data.synthetic_train_size=64',
    '--config.data.synthetic_eval_size=32',
]


def _run(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, 'benchmarks/keras_side_by_side.py', *args],
      cwd=REPO,
      env=dict(os.environ, JAX_PLATFORMS='cpu'),
      capture_output=True,
      text=True,
      timeout=600,
  )


@pytest.mark.slow
def test_an_interrupted_keras_run_resumes_where_it_stopped(tmp_path):
  workdir = tmp_path / 'keras'
  ours = tmp_path / 'ours'
  ours.mkdir()
  (ours / 'history.json').write_text(
      json.dumps(
          [
              dict(
                  epoch=e,
                  loss=2.0,
                  accuracy=0.2,
                  val_loss=2.1,
                  val_accuracy=0.2,
              )
              for e in (1, 2, 3)
          ]
      )
  )
  common = ['--rung', 'simple', '--workdir', str(workdir), *SYNTHETIC]
  first = _run(*common, '--epochs', '2')
  assert first.returncode == 0, first.stderr
  second = _run(*common, '--epochs', '3', '--ours', str(ours))
  assert second.returncode == 0, second.stderr
  assert 'Resuming the Keras run at epoch 3.' in second.stdout
  assert 'Epoch 3/3' in second.stdout  # Progress counts the whole run.
  history = json.loads((workdir / 'history.json').read_text())
  assert [r['epoch'] for r in history] == [1, 2, 3]
  assert all(set(r) == HISTORY_KEYS for r in history)
  # The optimizer (and its learning-rate decay) continued: 2 batches of 32
  # per epoch, 3 epochs.
  model = keras.models.load_model(workdir / 'keras_model.keras')
  assert int(model.optimizer.iterations) == 3 * 2
  assert (workdir / 'curves.png').stat().st_size > 10_000


@pytest.mark.slow
def test_the_same_command_on_a_finished_run_only_redraws_its_curves(tmp_path):
  workdir = tmp_path / 'keras'
  common = ['--rung', 'simple', '--workdir', str(workdir), '--epochs', '1']
  first = _run(*common, *SYNTHETIC)
  assert first.returncode == 0, first.stderr
  history = (workdir / 'history.json').read_bytes()
  (workdir / 'curves.png').unlink()
  (workdir / 'keras_model.keras').unlink()  # Not needed to redraw.
  # No data options: a finished run reads no images.
  again = _run(*common)
  assert again.returncode == 0, again.stderr
  assert 'Epoch' not in again.stdout  # Keras' fit printed nothing.
  assert (workdir / 'history.json').read_bytes() == history
  assert (workdir / 'curves.png').stat().st_size > 10_000


@pytest.mark.slow
def test_an_unknown_rung_or_a_missing_run_of_ours_is_one_line(tmp_path):
  r = _run('--rung', 'huge', '--workdir', str(tmp_path), *SYNTHETIC)
  assert r.returncode == 1 and 'Traceback' not in r.stderr
  assert r.stderr.strip().startswith("error: Unknown rung 'huge'")
  missing = tmp_path / 'no_run'
  r = _run(
      '--rung', 'simple', '--workdir', str(tmp_path), '--ours', str(missing),
      *SYNTHETIC,
  )  # fmt: skip
  assert r.returncode == 1 and 'Traceback' not in r.stderr
  assert r.stderr.strip() == f'error: --ours {missing} has no history.json.'


@pytest.mark.slow
def test_deep_adam_aug_without_our_deep_adam_run_is_one_line(tmp_path):
  # Keras from scratch would be drawn as the seed's continued deep_adam_aug.
  r = _run('--rung', 'deep_adam_aug', '--workdir', str(tmp_path), *SYNTHETIC)
  assert r.returncode == 1 and 'Traceback' not in r.stderr
  assert r.stderr.strip() == (
      'error: deep_adam_aug continues deep_adam, as the seed did: pass '
      '--config.init_from=<our run of deep_adam> (Keras starts from its '
      'state), or --config.init_from_optimizer=false to start from scratch.'
  )
  assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_keras_deep_adam_aug_continues_our_deep_adam_and_its_adam(tmp_path):
  ours = tmp_path / 'deep_adam'
  trained = run_main(
      '--config', 'configs/deep_adam.py', '--workdir', ours,
      '--config.num_epochs=1', *SYNTHETIC,
  )  # fmt: skip
  assert trained.returncode == 0, trained.stderr
  r = _run(
      '--rung', 'deep_adam_aug', '--workdir', str(tmp_path / 'keras'),
      f'--config.init_from={ours}', '--epochs', '1', *SYNTHETIC,
  )  # fmt: skip
  assert r.returncode == 0, r.stderr
  # 64 images in batches of 128: one update of deep_adam, one of Keras.
  assert (
      f'Keras starts from the weights and Adam state of {ours} (update 1).'
      in r.stdout
  )
  model = keras.models.load_model(tmp_path / 'keras' / 'keras_model.keras')
  # Keras 3's counter starts one ahead of ours, so that its t is Keras
  # 2.3's (keras_peer.load_ours): 1 + 1, then its own update.
  assert int(model.optimizer.iterations) == 3
