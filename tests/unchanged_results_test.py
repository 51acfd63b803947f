"""Restructuring never changes results: history and parameters are recorded.

For a fixed config and seed, training is deterministic, so a run's
history.json and final parameters are a fingerprint of what the code
computes. `RECORD` holds them per (jax version, machine), since float
rounding differs between CPUs and XLA versions. On a recorded (jax
version, machine) pair the comparison is exact: every history value and a
digest of the final parameters, bit for bit. Elsewhere it is loose, and
says only that the run is the same computation to within a few percent:
every loss within 5% of a recorded one and every accuracy within 5
points (bfloat16 in fast94 moves its losses by a few percent between XLA
versions); it catches a changed model, optimizer or data order, not a
small change of rounding. Record this machine (after checking that
nothing changed):

  JAX_PLATFORMS=cpu python tests/unchanged_results_test.py
"""

import hashlib
import io
import json
import pathlib
import sys

import jax
import numpy as np
import pytest

if __name__ == '__main__':  # Run as a script: import like pytest does.
  sys.path[:0] = [
      str(pathlib.Path(__file__).parents[1]),
      str(pathlib.Path(__file__).parent),
  ]

from cifar_jax.reporting import records
from cifar_jax import train
from conftest import get_config
from conftest import small_synthetic

RECORD = pathlib.Path(__file__).parent / 'data' / 'unchanged_results.json'


def _simple(config):
  """configs/test.py: dropout, MaxNorm, SGD with decay."""
  return config


def _bn_aug(config):
  """BatchNorm, dropout after pools, shifts, zoom and flips, Adam."""
  config.model.stage_features = (8, 16)
  config.model.second_conv_padding = ('SAME', 'VALID')
  config.model.conv_dropout = (0.0, 0.0)
  config.model.stage_dropout = (0.25, 0.25)
  config.model.batch_norm = True
  config.optimizer.conv_max_norm = 0.0
  config.optimizer.hidden_max_norm = 0.0
  config.optimizer.name = 'adam'
  config.optimizer.learning_rate = 1e-3
  config.augment.width_shift_range = 0.1
  config.augment.height_shift_range = 0.1
  config.augment.zoom_range = 0.1
  config.augment.horizontal_flip = True
  return config


def _fast94(config):
  """configs/fast94.py for 8 steps: whitening, bf16, Lookahead, crops, TTA."""
  del config  # fast94 replaces the test config's model and optimizer.
  fast = small_synthetic(get_config('fast94'), 256, 100, 64, 100)
  fast.num_epochs = 2
  fast.whitening.images = 256
  return fast


CASES = {'simple': _simple, 'bn_aug': _bn_aug, 'fast94': _fast94}


def fingerprint(case: str, workdir: pathlib.Path) -> dict:
  """The history and a digest of the final parameters of one case."""
  state, history = train.train_and_evaluate(
      CASES[case](get_config('test')), str(workdir), out=io.StringIO()
  )
  digest = hashlib.sha256()
  leaves = jax.tree_util.tree_leaves_with_path(
      {'params': state.params, 'batch_stats': state.batch_stats}
  )
  for path, leaf in leaves:
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(np.asarray(leaf).tobytes())
  return {'history': history, 'params_sha256': digest.hexdigest()}


def machine_key() -> str:
  return f'jax {jax.__version__} on {records.machine_description()}'


def _without_seconds(history):
  return [{k: v for k, v in row.items() if k != 'seconds'} for row in history]


@pytest.mark.slow
@pytest.mark.parametrize('case', sorted(CASES))
def test_training_computes_what_it_computed_when_recorded(case, tmp_path):
  record = json.loads(RECORD.read_text())
  got = fingerprint(case, tmp_path)
  if machine_key() in record:
    want = record[machine_key()][case]
    assert _without_seconds(got['history']) == _without_seconds(want['history'])
    assert got['params_sha256'] == want['params_sha256']
    return
  # Another CPU or XLA: loose (see the module's docstring).
  for want in record.values():
    for row, want_row in zip(
        got['history'], want[case]['history'], strict=True
    ):
      for key in ('loss', 'val_loss'):
        assert row[key] == pytest.approx(want_row[key], rel=0.05)
      for key in ('accuracy', 'val_accuracy'):
        assert row[key] == pytest.approx(want_row[key], abs=0.05)


def main(workdir: str) -> None:
  record = json.loads(RECORD.read_text()) if RECORD.exists() else {}
  record[machine_key()] = {
      case: fingerprint(case, pathlib.Path(workdir) / case) for case in CASES
  }
  for fp in record[machine_key()].values():
    for row in fp['history']:
      row['seconds'] = 0.0  # Time is not a result.
  RECORD.parent.mkdir(exist_ok=True)
  RECORD.write_text(json.dumps(record, indent=1, sort_keys=True) + '\n')
  print(f'Recorded {sorted(CASES)} for {machine_key()} in {RECORD}.')


if __name__ == '__main__':
  import tempfile  # pylint: disable=g-import-not-at-top

  with tempfile.TemporaryDirectory() as tmp:
    main(tmp)
