"""The ladder: rungs in order, resumable, and a report with all of them."""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from cifar_jax.errors import UserError
from cifar_jax.reporting import seed_notebook
from cifar_jax import rungs
from conftest import REPO

SMALL = {
    'data.name': 'synthetic',
    'data.synthetic_train_size': 256,
    'data.synthetic_eval_size': 100,
    'steps_per_epoch': 2,
}


@pytest.mark.slow
def test_two_rungs_run_and_the_report_holds_both(tmp_path):
  root = tmp_path / 'ladder'
  out = io.StringIO()
  rows = rungs.run_ladder(
      ['deep_adam', 'deep_adam_aug'], 0.02, SMALL, str(root), 'test', out=out
  )
  assert [r['rung'] for r in rows] == ['deep_adam', 'deep_adam_aug']
  assert [r['epochs'] for r in rows] == [2, 4]  # 0.02 x 100 and x 200.
  report = (root / 'REPORT.md').read_text()
  for name, seed in (('deep_adam', '78.07%'), ('deep_adam_aug', '83.24%')):
    line = next(l for l in report.splitlines() if l.startswith(f'| {name} '))
    assert seed in line and '1,172,410' in line
    assert (root / name / 'curves.png').exists()
    assert f'({name}/curves.png)' in report
  assert 'Data: synthetic' in report
  # Synthetic data in 2-step epochs is not the seed's protocol: nothing of
  # these runs is set beside the seed's (no gap, |diff|, verdict or table).
  line = next(l for l in report.splitlines() if l.startswith('| deep_adam '))
  assert "(not the seed's protocol: 2 steps per epoch, synthetic data)" in line
  assert '| – | – | – |' in line
  assert "Not set beside the seed's epochs: deep_adam (not" in report
  # deep_adam_aug continued deep_adam's parameters, as in the seed.
  config = (root / 'deep_adam_aug' / 'config.json').read_text()
  assert str(root / 'deep_adam') in config
  # Run again: both rungs are finished and only reported.
  again = io.StringIO()
  rungs.run_ladder(
      ['deep_adam', 'deep_adam_aug'], 0.02, SMALL, str(root), 'test', out=again
  )
  assert again.getvalue().count('already finished') == 2
  # deep_adam_aug alone continues the finished deep_adam run in the root.
  (root / 'deep_adam_aug' / 'config.json').unlink()
  for step in (root / 'deep_adam_aug' / 'checkpoints').iterdir():
    shutil.rmtree(step)
  alone = io.StringIO()
  (row,) = rungs.run_ladder(
      ['deep_adam_aug'], 0.02, SMALL, str(root), 'test', out=alone
  )
  assert row['epochs'] == 4 and 'already finished' not in alone.getvalue()
  config = json.loads((root / 'deep_adam_aug' / 'config.json').read_text())
  assert config['init_from'] == str(root / 'deep_adam')


@pytest.mark.slow
def test_parallel_rungs_run_in_processes_and_deep_adam_aug_waits(tmp_path):
  root = tmp_path / 'ladder'
  out = io.StringIO()
  rows = rungs.run_ladder(
      ['deep_adam', 'deep_adam_aug', 'simple'],
      0.02,
      SMALL,
      str(root),
      'test',
      out=out,
      parallel=2,
  )
  assert [r['rung'] for r in rows] == ['deep_adam', 'deep_adam_aug', 'simple']
  assert [r['epochs'] for r in rows] == [2, 4, 1]
  log = out.getvalue().splitlines()
  # Two at once: simple starts beside deep_adam; deep_adam_aug only after
  # deep_adam has finished, from its parameters.
  assert log.index('=== simple: 1 epochs, started') < next(
      i for i, l in enumerate(log) if l.startswith('=== deep_adam finished')
  )
  assert next(
      i for i, l in enumerate(log) if l.startswith('=== deep_adam finished')
  ) < log.index('=== deep_adam_aug: 4 epochs, started')
  config = json.loads((root / 'deep_adam_aug' / 'config.json').read_text())
  assert config['init_from'] == str(root / 'deep_adam')
  assert 'Epoch 4/4' in (root / 'deep_adam_aug' / 'log.txt').read_text()
  report = (root / 'REPORT.md').read_text()
  assert 'Wall-clock time of the command' in report
  assert all(f'| {name} ' in report for name in ('deep_adam', 'simple'))


@pytest.mark.slow
def test_a_failing_rung_fails_the_ladder_and_skips_its_dependent(tmp_path):
  out = io.StringIO()
  with pytest.raises(UserError, match='Rungs failed'):
    rungs.run_ladder(
        ['deep_adam', 'deep_adam_aug'],
        0.02,
        {**SMALL, 'optimizer.learning_rate': 1e9},
        str(tmp_path),
        'test',
        out=out,
        parallel=2,
    )
  assert '=== deep_adam failed' in out.getvalue()
  assert '=== deep_adam_aug skipped: deep_adam failed' in out.getvalue()


def test_overrides_apply_to_every_rung_and_unknown_keys_are_refused():
  overrides = {
      'num_epochs': 3,
      'data.dir': '/data',
      'model.hidden_features': (64, 32),
  }
  for name in ('simple', 'bn_aug_sgd'):
    config = rungs.rung_config(name, 1.0, overrides)
    assert config.num_epochs == 3 and config.data.dir == '/data'
    assert config.model.hidden_features == (64, 32)
  with pytest.raises(UserError, match="no key 'num_epoch'"):
    rungs.rung_config('simple', 1.0, {'num_epoch': 3})
  with pytest.raises(UserError, match="no key 'model.nope.x'"):
    rungs.rung_config('simple', 1.0, {'model.nope.x': 3})


@pytest.mark.slow
def test_the_ladders_overrides_are_typed_by_the_flag_parser_and_bad_ones_refused_in_one_line():
  base = [sys.executable, '-m', 'cifar_jax.ladder', '--configs', 'huge']
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  bad_type = subprocess.run(
      base + ['--config.num_epochs=many'], cwd=REPO, env=env,
      capture_output=True, text=True, timeout=120,
  )  # fmt: skip
  assert bad_type.returncode == 2
  assert bad_type.stderr.startswith('error: flag --config.num_epochs=many')
  typed = subprocess.run(
      base + ['--config.num_epochs=3'], cwd=REPO, env=env,
      capture_output=True, text=True, timeout=120,
  )  # fmt: skip
  assert typed.returncode == 1 and 'Traceback' not in typed.stderr
  assert typed.stderr.strip().startswith("error: Unknown rungs ['huge']")
  for override, line in [
      (
          '--config.bogus=1',
          "error: bad --config override: this config has no key 'bogus'.",
      ),
      ('--config.dataset=x', 'error: --config.dataset is now --config.data'),
  ]:
    refused = subprocess.run(
        base + [override], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode == 2 and 'Traceback' not in refused.stderr
    assert refused.stderr.startswith(line)


def test_unknown_rungs_are_refused(tmp_path):
  with pytest.raises(UserError, match='Unknown rungs'):
    rungs.run_ladder(['simple', 'huge'], 1.0, {}, str(tmp_path), 'test')


@pytest.mark.slow
def test_sigterm_to_a_parallel_ladder_checkpoints_its_rungs_and_resumes(
    tmp_path,
):
  root = tmp_path / 'ladder'
  args = [
      sys.executable,
      '-m',
      'cifar_jax.ladder',
      '--configs',
      'simple,bn_aug_sgd',
      '--parallel',
      '2',
      '--epochs_scale',
      '0.2',
      '--root',
      str(root),
  ] + [f'--config.{k}={v}' for k, v in SMALL.items()]
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  proc = subprocess.Popen(
      args,
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
  )
  deadline = time.monotonic() + 240
  while not list(root.glob('*/checkpoints/[0-9]*')):
    assert proc.poll() is None and time.monotonic() < deadline
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
  assert 'Run the same command to resume' in err and 'Traceback' not in err
  # A rung mid-run saved a checkpoint; one still starting (loading data,
  # compiling) stopped before its first step, with nothing to save.
  stopped = [
      name
      for name in ('simple', 'bn_aug_sgd')
      if 'Stopped by SIGTERM at step' in (root / name / 'log.txt').read_text()
  ]
  assert stopped  # At least one rung was mid-run and saved a checkpoint.
  again = subprocess.run(
      args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300
  )
  assert again.returncode == 0, again.stderr[-2000:]
  for name in stopped:
    assert 'Resuming from step' in (root / name / 'log.txt').read_text()
  history = json.loads((root / 'simple' / 'history.json').read_text())
  assert [h['epoch'] for h in history] == list(range(1, 6))


def _rows(accuracies):
  return [
      {
          'epoch': e + 1,
          'loss': 1.0,
          'accuracy': 0.5,
          'val_loss': 1.0,
          'val_accuracy': a,
          'seconds': 10.0 + e,
      }
      for e, a in enumerate(accuracies)
  ]


def test_report_only_reports_runs_brought_into_the_root_without_training(
    tmp_path,
):
  root = tmp_path / 'ladder'
  for name, commit, dirty in (
      ('simple', 'a' * 40, False),
      ('large', 'b' * 40, True),
      ('deep_adam_aug', 'c' * 40, False),
  ):
    os.makedirs(root / name)
    (root / name / 'history.json').write_text(
        json.dumps(_rows([0.6, 0.7, 0.695]))
    )
    entry = {'from_step': 0, 'commit': commit, 'dirty': dirty}
    if name == 'large':
      entry |= {'machine': 'Some CPU, 4 CPU cores (AVX2)', 'jax': '0.12.0'}
    (root / name / 'code.json').write_text(json.dumps([entry]))
  # The seed's own cell in Keras 2.3.1, 3 epochs, beside simple.
  os.makedirs(root / 'simple_keras23')
  (root / 'simple_keras23' / 'history.json').write_text(
      json.dumps(_rows([0.5, 0.55, 0.6]))
  )
  out = io.StringIO()
  rows = rungs.run_ladder(
      ['simple', 'large', 'deep_adam_aug'],
      1.0,
      {'data.name': 'image_folder'},
      str(root),
      'test',
      out=out,
      report_only=True,
  )
  assert [r['epochs'] for r in rows] == [3, 3, 3]
  report = (root / 'REPORT.md').read_text()
  # The seed's protocol (image_folder; the rungs' own epochs): simple's 3
  # epochs set beside the seed's, one by one, and their mean |difference|.
  seed = seed_notebook.accuracy_by_epoch(seed_notebook.load('simple').epochs)
  diffs = []
  for epoch, ours in ((1, 60.0), (2, 70.0), (3, 69.5)):
    theirs = 100 * seed[epoch]
    diffs.append(abs(ours - theirs))
    assert (
        f'| {epoch} | {ours:.2f}% | {theirs:.2f}% | {ours - theirs:+.2f} |'
        in (report)
    )
  # deep_adam_aug's epochs 1-3: the seed printed only its last 17.
  assert 'No epoch of this run is among those' in report
  simple = next(l for l in report.splitlines() if l.startswith('| simple '))
  # 3 of the seed's 25 epochs: a final and a best, no gap yet.
  assert '| 69.50% | 70.00% (epoch 2) |' in simple
  # The last 10 epochs' mean ± sd (here all 3), and Keras 2.3.1's.
  assert '| 66.50 ± 5.63 | 60.00%; 55.00 ± 5.00 (3 epochs) |' in simple
  assert f'| – | {sum(diffs) / 3:.2f} (3) | – |' in simple  # No gap yet.
  assert simple.endswith('| 0.6 min | aaaaaaa |')  # 33 s in all.
  large = next(l for l in report.splitlines() if l.startswith('| large '))
  assert large.endswith('| bbbbbbb+dirty |')
  assert 'Wall-clock' not in report  # Nothing ran.
  # Where the runs trained, as they recorded it, not where this ran.
  assert '- Machine: Some CPU, 4 CPU cores (AVX2); JAX 0.12.0\n' in report
  assert not (root / 'simple' / 'checkpoints').exists()
  assert 'already finished' not in out.getvalue()
  # The README's form of the table, printed: fastest epoch 10 s, no gap.
  printed = out.getvalue().splitlines()
  assert printed[0].startswith('| rung | seed final | ours final | best |')
  assert printed[2].startswith(
      '| simple | 69.88% | 69.50% | 70.00% | 66.50 ± 5.63 | 60.00%; 55.00 '
      '± 5.00 (3 epochs) | – | '
  )
  assert printed[3].startswith('| large | "about 80%" (no log) | 69.50% |')
  assert ' ± 5.63 | – | ' in printed[3]  # No Keras 2.3.1 run of large.
  assert printed[2].endswith(' | 3 | 10.0 | aaaaaaa |')
  # The same rows as the shared reader gives, without writing a report.
  (root / 'REPORT.md').unlink()
  saved = rungs.saved_rows(['simple', 'large'], str(root))
  assert [(r['rung'], r['commit'], r['compare']) for r in saved] == [
      (r['rung'], r['commit'], r['compare']) for r in rows[:2]
  ]
  assert not (root / 'REPORT.md').exists()
  # Runs off the seed's protocol are reported alone: no gap, no |diff|.
  rungs.run_ladder(['simple'], 1.0, {'data.name': 'synthetic'}, str(root),
                   'test', out=io.StringIO(), report_only=True)  # fmt: skip
  report = (root / 'REPORT.md').read_text()
  assert (
      "| simple (not the seed's protocol: synthetic data) | 69.88% | 69.50% "
      '| 70.00% (epoch 2) | 66.50 ± 5.63 | 60.00%; 55.00 ± 5.00 (3 epochs) '
      '| – | – | – |'
  ) in report
  assert "Not set beside the seed's epochs: simple (not the seed's" in report


def test_a_rung_that_continues_an_unfinished_or_missing_run_is_refused(
    tmp_path,
):
  # deep_adam_aug alone needs a finished deep_adam in the root; from a
  # partial one it would be drawn beside the seed as if it had continued
  # the whole of it.
  def refused():
    with pytest.raises(UserError) as e:
      rungs.run_ladder(['deep_adam_aug'], 0.02, SMALL, str(tmp_path), 'test')
    return str(e.value)

  assert refused() == (
      f'deep_adam_aug continues deep_adam, as the seed did, and '
      f'{tmp_path / "deep_adam" / "history.json"} has 0 of its 2 epochs: '
      'add deep_adam to --configs.'
  )
  os.makedirs(tmp_path / 'deep_adam')
  (tmp_path / 'deep_adam' / 'history.json').write_text(json.dumps(_rows([0.5])))
  assert 'has 1 of its 2 epochs' in refused()
  assert not (tmp_path / 'deep_adam_aug').exists()


def test_report_only_reports_the_runs_it_finds_and_names_the_others(
    tmp_path,
):
  os.makedirs(tmp_path / 'large')  # Started, no epoch finished.
  os.makedirs(tmp_path / 'simple')
  (tmp_path / 'simple' / 'history.json').write_text(json.dumps(_rows([0.6])))
  out = io.StringIO()
  rows = rungs.run_ladder(
      ['simple', 'large', 'deep_adam'],
      1.0,
      {},
      str(tmp_path),
      'test',
      out=out,
      report_only=True,
  )
  assert [r['rung'] for r in rows] == ['simple']
  assert (
      f'Not in the report (no epochs in {tmp_path}/<rung>/history.json): '
      'large, deep_adam\n'
  ) in out.getvalue()
  assert '| large ' not in (tmp_path / 'REPORT.md').read_text()
  with pytest.raises(UserError, match='No runs of large, deep_adam in '):
    rungs.run_ladder(
        ['large', 'deep_adam'], 1.0, {}, str(tmp_path), 'test', report_only=True
    )
