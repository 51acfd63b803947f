"""Checkpoints: resume after SIGKILL bit for bit, SIGTERM, damage, mismatch."""

import asyncio
import dataclasses
import errno
import gc
import io
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from cifar_jax.errors import UserError
from cifar_jax.runs import checkpointing
from cifar_jax.runs import reading
from cifar_jax.runs import inference
from cifar_jax.runs import orbax_noise
from cifar_jax.runs import resume
from cifar_jax import train
from cifar_jax.training import experiment
from cifar_jax.training import fast_sgd
from cifar_jax.training import optimizers
from cifar_jax.training import steps
from conftest import get_config
from conftest import REPO

# 4 epochs of 32 steps, a checkpoint every 12 steps (mid-epoch ones too),
# with BatchNorm, dropout and augmentation: everything random or stateful.
RUN = (
    '--config',
    'configs/test.py',
    '--config.num_epochs=4',
    '--config.data.synthetic_train_size=1024',
    '--config.checkpoint_every_steps=12',
    '--config.model.batch_norm=True',
    '--config.augment.horizontal_flip=True',
    '--config.augment.width_shift_range=0.1',
)
ENV = dict(os.environ, JAX_PLATFORMS='cpu')


def _saved_steps(workdir):
  """The steps of a run's finished checkpoints (not unfinished or moved
  aside ones), ascending."""
  names = os.listdir(os.path.join(workdir, 'checkpoints'))
  return sorted(int(p) for p in names if p.isdigit())


def _state_from(config, path):
  """A fresh state of `config`, with `path`'s run's (`init_from`)."""
  exp = experiment.create_experiment(config)
  return resume.state_from_run(exp, exp.start(0).state, path)


def _start(workdir, *extra):
  return subprocess.Popen(
      [
          sys.executable,
          '-m',
          'cifar_jax.main',
          *RUN,
          '--workdir',
          str(workdir),
          *extra,
      ],
      cwd=REPO,
      env=ENV,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
  )


def _run(workdir, *extra):
  p = _start(workdir, *extra)
  out, err = p.communicate(timeout=600)
  return p.returncode, out, err


def _wait_for_checkpoint(workdir, proc, step=1, timeout=300):
  """Waits until a finished checkpoint of `step` or later exists."""
  deadline = time.monotonic() + timeout
  ckpt = workdir / 'checkpoints'
  while time.monotonic() < deadline:
    if ckpt.exists() and any(
        p.name.isdigit() and int(p.name) >= step for p in ckpt.iterdir()
    ):
      return
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    time.sleep(0.05)
  raise TimeoutError('no checkpoint appeared')


def _result(workdir):
  history = json.loads((workdir / 'history.json').read_text())
  for row in history:
    del row['seconds']  # Wall-clock time cannot repeat.
  return history, reading.read_run(str(workdir)).state


def _assert_same(a, b):
  assert a[0] == b[0]  # History: every float equal.
  leaves_a, leaves_b = jax.tree.leaves(a[1]), jax.tree.leaves(b[1])
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)  # Bitwise.


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('uninterrupted')
  code, out, err = _run(workdir)
  assert code == 0, err[-3000:]
  return workdir, _result(workdir)


@pytest.mark.slow
def test_sigkill_at_a_random_moment_then_resume_is_bit_identical(
    tmp_path, uninterrupted
):
  # A seeded moment: a little after one of the checkpoints of the first
  # half of the run (mid-epoch or at an epoch's end), so more than half of
  # the 128 steps are still to run when the kill lands.
  rng = random.Random(2026)
  step, delay = rng.randrange(12, 64, 12), rng.uniform(0.0, 0.2)
  proc = _start(tmp_path)
  _wait_for_checkpoint(tmp_path, proc, step)
  time.sleep(delay)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert proc.returncode == -signal.SIGKILL, 'finished before the kill'
  code, out, err = _run(tmp_path)
  assert code == 0, err[-3000:]
  assert 'Resuming from step' in out, out[-1000:]
  _assert_same(_result(tmp_path), uninterrupted[1])


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, uninterrupted):
  proc = _start(tmp_path)
  _wait_for_checkpoint(tmp_path, proc)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 128 + signal.SIGTERM
  assert 'Traceback' not in err
  stopped = int(err.split('Stopped by SIGTERM at step ')[1].split()[0])
  assert (tmp_path / 'checkpoints' / str(stopped)).is_dir()
  code, out, err = _run(tmp_path)
  assert code == 0, err[-3000:]
  assert f'Resuming from step {stopped} ' in out
  _assert_same(_result(tmp_path), uninterrupted[1])


@pytest.mark.slow
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(
    tmp_path, uninterrupted
):
  code, _, err = _run(tmp_path, '--config.num_epochs=2')
  assert code == 0, err[-3000:]
  steps = sorted(
      int(p.name)
      for p in (tmp_path / 'checkpoints').iterdir()
      if p.name.isdigit()
  )
  assert steps[-1] == 64 and len(steps) >= 2
  # Truncate the largest data file of the newest checkpoint.
  files = [
      os.path.join(d, f)
      for d, _, fs in os.walk(tmp_path / 'checkpoints' / '64' / 'state')
      for f in fs
  ]
  biggest = max(files, key=os.path.getsize)
  with open(biggest, 'r+b') as f:
    f.truncate(os.path.getsize(biggest) // 2)
  code, out, err = _run(tmp_path)  # 4 epochs: goes on from the survivor.
  assert code == 0, err[-3000:]
  assert 'checkpoints/64 is damaged' in out
  assert f'Resuming from step {steps[-2]} ' in out
  assert any(
      p.name.startswith('corrupt-64-')
      for p in (tmp_path / 'checkpoints').iterdir()
  )
  _assert_same(_result(tmp_path), uninterrupted[1])


@pytest.mark.slow
def test_checkpoints_from_another_config_are_refused_by_name(tmp_path):
  code, _, err = _run(tmp_path, '--config.num_epochs=1')
  assert code == 0, err[-3000:]
  code, out, err = _run(
      tmp_path,
      '--config.model.hidden_features=(64,)',
      '--config.optimizer.learning_rate=0.02',
  )
  assert code == 1
  assert 'come from a different config' in err
  assert 'model.hidden_features: (32,) in the checkpoint, (64,) now' in err
  assert 'optimizer.learning_rate: 0.01 in the checkpoint, 0.02 now' in err
  assert 'Traceback' not in err


@pytest.mark.slow
def test_finished_run_rerun_only_says_so(uninterrupted):
  workdir, _ = uninterrupted
  code, out, err = _run(workdir)
  assert code == 0, err[-3000:]
  assert 'already finished: 4/4 epochs' in out
  assert 'Epoch ' not in out


@pytest.mark.slow
def test_retention_keeps_the_newest_and_the_best(uninterrupted):
  workdir, (history, _) = uninterrupted
  steps = sorted(
      int(p.name)
      for p in (workdir / 'checkpoints').iterdir()
      if p.name.isdigit()
  )
  best_epoch = 1 + int(np.argmax([h['val_accuracy'] for h in history]))
  assert steps[-1] == 128 and len(steps) <= 3  # keep_checkpoints = 2 ...
  assert best_epoch * 32 in steps  # ... plus the best epoch's.


@pytest.mark.slow
def test_the_best_checkpoint_survives_resumes_as_in_an_uninterrupted_run(
    tmp_path,
):
  def run(workdir, epochs):
    config = get_config('test')
    config.batch_size, config.steps_per_epoch = 8, 2
    config.num_epochs = epochs
    return train.train_and_evaluate(config, str(workdir), out=io.StringIO())

  _, history = run(tmp_path / 'whole', 5)
  for epochs in (2, 3, 5):  # The same run, resumed twice.
    _, pieces = run(tmp_path / 'pieces', epochs)
  without_time = lambda h: [{**r, 'seconds': 0} for r in h]
  assert without_time(pieces) == without_time(history)
  kept = _saved_steps(str(tmp_path / 'whole'))
  best = inference.select_step(str(tmp_path / 'whole'), 'best')
  assert best not in kept[-2:]  # The case where the best must be kept aside.
  assert _saved_steps(str(tmp_path / 'pieces')) == kept
  assert inference.select_step(str(tmp_path / 'pieces'), 'best') == best


@pytest.mark.slow
def test_init_from_loads_params_of_another_run(tmp_path, uninterrupted):
  workdir, (_, params) = uninterrupted
  config = get_config('test')
  config.data.synthetic_train_size = 1024
  config.model.batch_norm = True
  state = _state_from(config, str(workdir))
  loaded = {'params': state.params, 'batch_stats': state.batch_stats}
  assert jax.tree.leaves(params['batch_stats'])
  for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
    np.testing.assert_array_equal(x, y)
  assert int(state.step) == 0  # Trained afresh: new optimizer, step 0.
  config.model.hidden_features = (16,)
  config.init_from = str(workdir)
  with pytest.raises(UserError, match='do not fit this model'):
    train.train_and_evaluate(config, str(tmp_path / 'c'), out=io.StringIO())


def _adam_state(opt_state) -> optimizers.KerasAdamState:
  is_adam = lambda x: isinstance(x, optimizers.KerasAdamState)
  return next(
      x for x in jax.tree.leaves(opt_state, is_leaf=is_adam) if is_adam(x)
  )


def _adam_config(epochs: int = 1):
  config = get_config('test')
  config.optimizer.name = 'adam'
  config.num_epochs = epochs
  return config


def test_init_from_optimizer_continues_the_other_runs_adam_as_keras_does(
    tmp_path,
):
  # The seed's deep_adam_aug: fit_generator on the trained deep_adam model,
  # not compiled again, so Keras 2.3's Adam went on from its slots and its
  # iteration count.
  trained, _ = train.train_and_evaluate(
      _adam_config(), str(tmp_path / 'a'), out=io.StringIO()
  )
  theirs = _adam_state(trained.opt_state)
  assert int(theirs.count) == 16  # 512 images / 32.
  config = _adam_config()
  config.init_from = str(tmp_path / 'a')
  config.init_from_optimizer = True
  state = _state_from(config, config.init_from)
  assert int(state.step) == 0  # The new run's own epochs and checkpoints.
  for x, y in zip(
      jax.tree.leaves((trained.params, trained.opt_state)),
      jax.tree.leaves((state.params, state.opt_state)),
  ):
    np.testing.assert_array_equal(x, y)
  # Its first update is the 17th, Keras 2.3.1's Adam at t = 18 (see
  # optimizers.scale_by_keras_adam), from the carried slots.
  grads = jax.tree.map(
      lambda p: np.full(p.shape, 0.01, np.float32), state.params
  )
  updates, _ = state.tx.update(grads, state.opt_state, state.params)
  b1, b2, eps = 0.9, 0.999, config.optimizer.epsilon
  lr = config.optimizer.learning_rate
  lr_t = lr * np.sqrt(1 - b2**18) / (1 - b1**18)
  for u, m, v, g in zip(
      jax.tree.leaves(updates),
      jax.tree.leaves(theirs.mu),
      jax.tree.leaves(theirs.nu),
      jax.tree.leaves(grads),
  ):
    m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
    expected = -lr_t * m / (np.sqrt(v) + eps)
    # XLA float32 against NumPy: 1e-4 of the largest (t = 1: 2x off).
    np.testing.assert_allclose(
        u, expected, rtol=0, atol=1e-4 * np.abs(expected).max()
    )
  # Without it: the parameters only, and a new Adam.
  config.init_from_optimizer = False
  fresh = _state_from(config, config.init_from)
  assert int(_adam_state(fresh.opt_state).count) == 0
  new_mu = jax.tree.leaves(_adam_state(fresh.opt_state).mu)
  assert not any(np.any(m) for m in new_mu)


def test_init_from_optimizer_refuses_another_optimizers_state_in_one_line(
    tmp_path,
):
  sgd = get_config('test')
  sgd.num_epochs = 1
  train.train_and_evaluate(sgd, str(tmp_path / 'sgd'), out=io.StringIO())
  config = _adam_config()
  config.init_from = str(tmp_path / 'sgd')
  config.init_from_optimizer = True
  with pytest.raises(UserError, match='init_from_optimizer: the optimizer'):
    train.train_and_evaluate(config, str(tmp_path / 'b'), out=io.StringIO())


def test_init_from_optimizer_refuses_a_decaying_learning_rate_in_one_line():
  # The carried count would drive the decay; the loop logs its own step's.
  config = get_config('test')  # SGD with decay.
  config.init_from_optimizer = True
  with pytest.raises(UserError, match='needs a constant learning rate'):
    _state_from(config, 'elsewhere')
  config.optimizer.decay = 0.0
  with pytest.raises(UserError, match='not a run directory'):
    _state_from(config, 'elsewhere')


def test_a_failed_save_is_a_clear_error_and_keeps_earlier_checkpoints(
    tmp_path, monkeypatch
):
  state = experiment.create_experiment(get_config('test')).start(0).state
  ckpt = checkpointing.Checkpoints(str(tmp_path), keep=2)
  ckpt.save(1, state, steps.Metrics.empty(), {'history': []}, None)
  ckpt.wait()

  def full_disk(*args, **kwargs):
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(ckpt._manager, 'save', full_disk)  # pylint: disable=protected-access
  with pytest.raises(UserError, match='no space left on the device'):
    ckpt.save(2, state, steps.Metrics.empty(), {'history': []}, None)
  monkeypatch.undo()
  ckpt.close()
  again = checkpointing.Checkpoints(str(tmp_path), keep=2)
  assert again.steps() == [1]
  restored = again.restore(state, steps.Metrics.empty())
  assert restored.step == 1
  again.close()


def test_ctrl_c_inside_a_save_reaches_the_user_even_when_closing_fails(
    tmp_path, monkeypatch
):
  # A second Ctrl-C can land while Orbax starts its writer thread; closing
  # the manager then raises RuntimeError ('cannot join thread before it is
  # started'). The user must get their Ctrl-C back.
  def interrupted_save(self, *args, **kwargs):
    raise KeyboardInterrupt

  def broken_close(self):
    raise RuntimeError('cannot join thread before it is started')

  monkeypatch.setattr(checkpointing.Checkpoints, 'save', interrupted_save)
  monkeypatch.setattr(
      checkpointing.ocp.CheckpointManager, 'close', broken_close
  )
  config = get_config('test')
  config.num_epochs = 1
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(config, str(tmp_path), out=io.StringIO())


def test_a_failed_close_is_logged_after_an_error_and_raised_otherwise(
    tmp_path, monkeypatch
):
  ckpt = checkpointing.Checkpoints(str(tmp_path), keep=2)

  def broken_close():
    raise RuntimeError('cannot join thread before it is started')

  monkeypatch.setattr(ckpt._manager, 'close', broken_close)  # pylint: disable=protected-access
  ckpt.close(quietly=True)  # An error is already on its way: only logged.
  with pytest.raises(RuntimeError, match='cannot join'):
    ckpt.close()


def test_asyncios_reports_of_unawaited_write_failures_are_dropped(caplog):
  """A full disk fails all of Orbax's writes; the first is the error line."""

  async def fail(exc):
    raise exc

  logger = logging.getLogger('asyncio')
  dropper = orbax_noise.UnretrievedWriteFailures()
  logger.addFilter(dropper)
  try:
    with caplog.at_level(logging.ERROR, logger='asyncio'):
      for exc in (
          OSError(errno.ENOSPC, 'No space left on device'),
          ValueError('RESOURCE_EXHAUSTED: ... No space left on device'),
          RuntimeError('a bug of our own'),
      ):
        loop = asyncio.new_event_loop()
        task = loop.create_task(fail(exc))
        loop.run_until_complete(asyncio.sleep(0.01))
        del task  # Its exception was never retrieved: asyncio logs it.
        gc.collect()
        loop.close()
  finally:
    logger.removeFilter(dropper)
  reports = [r for r in caplog.records if r.name == 'asyncio']
  assert [str(r.exc_info[1]) for r in reports] == ['a bug of our own']


def test_the_state_keeps_the_layout_earlier_checkpoints_were_written_in():
  # Orbax restores only into the tree a checkpoint was written from: a new
  # field in the state of every run would leave every saved run unreadable.
  # Runs without Lookahead keep exactly this layout; Lookahead's slow copy
  # lives in a subclass (steps.LookaheadTrainState).
  assert [f.name for f in dataclasses.fields(steps.TrainState)] == [
      'step', 'apply_fn', 'params', 'tx', 'opt_state', 'batch_stats'
  ]  # fmt: skip
  config = get_config('test')
  config.model.batch_norm = True
  state = experiment.create_experiment(config).start(0).state
  assert type(state) is steps.TrainState
  assert {
      jax.tree_util.keystr(p).split('[')[0]
      for p, _ in jax.tree_util.tree_leaves_with_path(state)
  } == {'.step', '.params', '.opt_state', '.batch_stats'}
  fast = get_config('fast94')
  fast.data.name = 'synthetic'
  fast.batch_size, fast.whitening.images = 64, 64
  assert isinstance(
      experiment.create_experiment(fast).start(0).state,
      steps.LookaheadTrainState,
  )


def test_checkpoints_of_another_state_layout_are_refused_not_moved_aside(
    tmp_path,
):
  config = get_config('test')
  config.num_epochs = 1
  train.train_and_evaluate(config, str(tmp_path), out=io.StringIO())
  saved = _saved_steps(str(tmp_path))
  state = experiment.create_experiment(config).start(0).state
  # The same model's state with one more field (what another version of
  # the code would ask for): whole checkpoints, of another layout.
  other = jax.jit(
      lambda: steps.LookaheadTrainState.create(
          apply_fn=state.apply_fn,
          params=state.params,
          tx=state.tx,
          batch_stats=state.batch_stats,
          lookahead=fast_sgd.Lookahead(5, 0.5, 10),
      )
  )()
  ckpt = checkpointing.Checkpoints(
      checkpointing.checkpoint_dir(str(tmp_path)), 2
  )
  try:
    with pytest.raises(UserError, match='laid out differently'):
      ckpt.restore(
          resume._abstract(other),  # pylint: disable=protected-access
          resume._abstract(steps.empty_metrics()),  # pylint: disable=protected-access
      )
  finally:
    ckpt.close()
  assert _saved_steps(str(tmp_path)) == saved
  assert not list((tmp_path / 'checkpoints').glob('corrupt-*'))
