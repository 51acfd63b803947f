"""benchmarks/speedrun.py: the protocol's bookkeeping, on a tiny config."""

import json
import os
import subprocess
import sys

import pytest

from benchmarks import speedrun
from conftest import REPO


def test_one_sided_p_value_is_small_only_when_the_mean_clears_the_target():
  above = [0.941, 0.943, 0.942, 0.944, 0.942]
  assert speedrun.one_sided_p(above, 0.94) < 0.01
  assert speedrun.one_sided_p(above, 0.945) > 0.99
  assert speedrun.one_sided_p([0.95, 0.95], 0.94) == 0.0


@pytest.mark.slow
def test_speedrun_reports_every_seed_and_their_statistics(tmp_path):
  out = tmp_path / 'result.json'
  r = subprocess.run(
      [
          sys.executable,
          'benchmarks/speedrun.py',
          '--config',
          'configs/test.py',
          '--runs',
          '2',
          '--config.num_epochs=1',
          '--config.eval_tta=1',
          '--target',
          '0.2',
          '--json',
          str(out),
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
      env=dict(os.environ, JAX_PLATFORMS='cpu'),
  )
  assert r.returncode == 0, r.stderr[-3000:]
  result = json.loads(out.read_text())
  assert result['runs'] == 2 and len(set(result['accuracies'])) > 1  # Seeds.
  assert result['accuracy_mean'] == pytest.approx(sum(result['accuracies']) / 2)
  assert min(result['seconds']) == result['seconds_min'] > 0
  assert 'TTA level 1' in r.stdout
  assert result['compile_seconds'] > 0 and result['warmup_seconds'] > 0
  assert f'compilation (ahead of time): {result["compile_seconds"]:.2f} s' in (
      r.stdout
  )
  assert f'{100 * result["accuracy_mean"]:.2f}%' in r.stdout
