"""Training: it learns, partial batches match Keras, evaluation is exact."""

import dataclasses
import functools
import io
import json
import os
import re
import subprocess
import sys
import tracemalloc

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cifar_jax.data import augment
from cifar_jax.data import input_pipeline
from cifar_jax.errors import NonFiniteLossError
from cifar_jax.errors import UserError
from cifar_jax.runs import evaluation
from cifar_jax import models
from cifar_jax.reporting import progress
from cifar_jax import train
from cifar_jax.training import experiment
from cifar_jax.training import plan
from cifar_jax.training import steps
from conftest import get_config
from conftest import REPO


def test_training_on_synthetic_data_lowers_loss_and_beats_chance(tmp_path):
  config = get_config('test')
  config.num_epochs = 3
  out = io.StringIO()
  _, history = train.train_and_evaluate(config, str(tmp_path), out=out)
  assert [h['epoch'] for h in history] == [1, 2, 3]
  assert history[-1]['loss'] < 0.7 * history[0]['loss']
  assert history[-1]['val_accuracy'] > 0.6  # Chance is 0.1.
  on_disk = json.loads((tmp_path / 'history.json').read_text())
  assert on_disk == history
  assert json.loads((tmp_path / 'config.json').read_text())['seed'] == 0


def test_same_seed_gives_the_same_history_and_another_seed_does_not(tmp_path):
  config = get_config('test')
  config.num_epochs = 1

  def run(seed, name):
    config.seed = seed
    _, h = train.train_and_evaluate(
        config, str(tmp_path / name), out=io.StringIO()
    )
    return [(r['loss'], r['val_loss']) for r in h]

  assert run(0, 'a') == run(0, 'b')
  assert run(0, 'c') != run(1, 'd')


def _one_step(config, images, labels, mask):
  model = models.create_model(config.model)
  state = steps.create_train_state(model, config.optimizer, jax.random.key(0))
  n = len(labels)
  batch = (jnp.arange(n), jnp.asarray(mask, jnp.float32))
  options = steps.StepOptions(batch_size=n, batches_per_pass=1)
  step = jax.jit(functools.partial(steps.train_step, options=options))
  return step(
      state,
      steps.Metrics.empty(),
      (jnp.asarray(images), jnp.asarray(labels)),
      batch,
      steps.Keys(jax.random.key(1), jax.random.key(2)),
  )


def _float_dtypes(tree):
  return {
      x.dtype
      for x in jax.tree.leaves(tree)
      if jnp.issubdtype(x.dtype, jnp.floating)
  }


@pytest.mark.slow
def test_bfloat16_compute_keeps_params_optimizer_and_statistics_float32():
  """Mixed precision: bf16 convolutions and matmuls, float32 everything kept.

  The update is close to float32's (bf16 has 8 bits of mantissa) but not
  equal, which shows the bf16 path really ran.
  """
  config = get_config('test')
  config.model.batch_norm = True
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, 16).astype(np.int32)
  results = {}
  for dtype in ('float32', 'bfloat16'):
    config.model.compute_dtype = dtype
    state, m = _one_step(config, images, labels, np.ones(16))
    assert _float_dtypes(
        (state.params, state.opt_state, state.batch_stats)
    ) == {np.dtype(np.float32)}
    results[dtype] = (state, float(m.compute()['loss']))
  (s32, loss32), (s16, loss16) = results['float32'], results['bfloat16']
  assert loss16 == pytest.approx(loss32, rel=2e-2) and loss16 != loss32
  for a, b in zip(
      jax.tree.leaves(s32.batch_stats), jax.tree.leaves(s16.batch_stats)
  ):
    np.testing.assert_allclose(a, b, rtol=5e-2, atol=5e-3)

  config.model.compute_dtype = 'bfloat16'
  model = models.create_model(config.model)
  hlo = (
      jax.jit(lambda v, x: model.apply(v, x))
      .lower(
          {'params': s16.params, 'batch_stats': s16.batch_stats},
          jnp.zeros((2, 32, 32, 3)),
      )
      .as_text()
  )
  convolutions = [l for l in hlo.splitlines() if 'convolution' in l]
  assert convolutions and all('bf16' in l for l in convolutions)


def test_unknown_compute_dtype_is_refused_by_name():
  config = get_config('test').model
  config.compute_dtype = 'float16'
  with pytest.raises(ValueError, match="'float32', 'bfloat16'"):
    models.create_model(config)


@pytest.mark.slow
def test_padded_partial_batch_equals_keras_smaller_last_batch():
  """Padding + mask gives the update Keras makes on its last, smaller batch.

  Uses the BatchNorm rung without dropout, so statistics must ignore the
  padded examples too.
  """
  config = get_config('bn_aug_sgd')
  config.model.stage_dropout = (0.0, 0.0, 0.0)
  config.model.hidden_dropout = 0.0
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, 8).astype(np.int32)
  small, m_small = _one_step(config, images[:5], labels[:5], np.ones(5))
  padded_images = images.copy()
  padded_images[5:] = 255  # Garbage that must not matter.
  mask = np.array([1, 1, 1, 1, 1, 0, 0, 0], np.float32)
  padded, m_padded = _one_step(config, padded_images, labels, mask)
  for a, b in zip(
      jax.tree.leaves((small.params, small.batch_stats)),
      jax.tree.leaves((padded.params, padded.batch_stats)),
  ):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(
      m_small.compute()['loss'], m_padded.compute()['loss'], rtol=1e-6
  )
  assert int(m_padded.accuracy.count) == 5


@pytest.mark.slow
def test_evaluation_is_exact_whatever_the_batch_size():
  config = get_config('test')
  config.data.eval_split = 'test[:103]'
  exp = experiment.create_experiment(config)
  state = exp.start(0).state
  results = []
  for bs in (103, 10, 64):
    config.eval_batch_size = bs
    results.append(
        train.evaluate(dataclasses.replace(exp, config=config), state)
    )
  images, labels = exp.eval
  logits = exp.model.apply(
      {'params': state.params}, images.astype(jnp.float32) / 255
  )
  expected = float(np.mean(np.argmax(logits, -1) == labels))
  for r in results:
    np.testing.assert_allclose(r['accuracy'], expected, rtol=1e-6)
    np.testing.assert_allclose(r['loss'], results[0]['loss'], rtol=1e-5)


def test_non_finite_loss_stops_the_run_with_a_clear_error(tmp_path):
  config = get_config('test')
  config.optimizer.learning_rate = 1e30
  with pytest.raises(NonFiniteLossError, match='learning_rate'):
    train.train_and_evaluate(config, str(tmp_path), out=io.StringIO())


def test_steps_per_epoch_runs_exactly_that_many_batches(tmp_path):
  config = get_config('test')
  config.num_epochs = 2
  config.steps_per_epoch = 5
  state, history = train.train_and_evaluate(
      config, str(tmp_path), out=io.StringIO()
  )
  assert int(state.step) == 10 and len(history) == 2


@pytest.mark.parametrize('due', [True, False])
def test_the_bar_counts_from_the_epochs_start_and_not_at_each_checkpoint(
    tmp_path, monkeypatch, due
):
  """Checkpoints every 3 steps stop the loop mid-epoch: the bar goes on
  counting the epoch's steps, and draws only when due (never per save)."""
  monkeypatch.setattr(progress.ProgressBar, 'due', lambda self: due)
  config = get_config('test')
  config.update(num_epochs=2, steps_per_epoch=8, checkpoint_every_steps=3)
  out = io.StringIO()
  train.train_and_evaluate(config, str(tmp_path), out=out)
  drawn = [l.split(' [')[0] for l in out.getvalue().splitlines() if ' [' in l]
  # A log draws no full bar (the epoch line follows); each epoch 1 to 7.
  assert drawn == [f'{k}/8' for k in range(1, 8)] * 2 if due else not drawn


def test_nothing_is_planned_per_epoch_up_front_and_the_step_count_is_bounded():
  """A hundred million epochs plan as fast as one: the loop asks for one
  epoch's stops at a time. A billion overflow the int32 step counter and
  are refused in one line before anything is built."""
  config = get_config('test')  # 16 steps per epoch.
  config.num_epochs = 1e8
  exp = experiment.create_experiment(config)
  assert exp.total_steps == 16 * 10**8
  assert plan.stop_steps(16, exp.total_steps, 0, 32, 48) == [48]
  assert plan.stop_steps(16, exp.total_steps, 5, 32, 48) == [35, 40, 45, 48]
  assert plan.stop_steps(16, 40, 0, 32, 48) == [40]  # The end, cut short.
  assert plan.dispatch_sizes(exp, 10**9) == [1]
  config.num_epochs = 1e9
  with pytest.raises(UserError, match=r'is 1.6e\+10 steps; the step '):
    experiment.create_experiment(config)
  config.num_epochs = 1e308  # Times 16 steps is more than a float holds.
  with pytest.raises(UserError, match=r'is inf steps; the step '):
    experiment.create_experiment(config)


def test_epochs_of_less_than_one_step_are_refused_not_called_finished():
  config = get_config('test')  # 16 steps per epoch.
  config.num_epochs = 1e-9
  with pytest.raises(UserError, match=r'is 1.6e-08 steps; a run trains at '):
    experiment.create_experiment(config)
  config.num_epochs = 1 / 16  # One step exactly.
  assert experiment.create_experiment(config).total_steps == 1


def test_every_seed_the_rule_accepts_draws_its_own_keys():
  """Seeds past 2**31 - 1 overflowed jit's int32; below it, a seed's keys
  are those of `jax.random.key(seed)` as before."""
  exp = experiment.create_experiment(get_config('test'))
  keys = {}
  for seed in (0, 2**31 - 1, 2**31, 2**32 - 1):
    dropout = exp.start(seed).keys.dropout
    keys[seed] = np.asarray(jax.random.key_data(dropout))
  assert len({k.tobytes() for k in keys.values()}) == 4
  want = jax.random.split(jax.random.key(2**31 - 1), 4)[1]
  np.testing.assert_array_equal(keys[2**31 - 1], jax.random.key_data(want))


def test_a_fractional_last_epoch_is_cut_short_evaluated_and_ranked(tmp_path):
  config = get_config('test')  # 512 examples of batch 32: 16 steps/epoch.
  config.num_epochs = 1.5
  out = io.StringIO()
  state, history = train.train_and_evaluate(config, str(tmp_path), out=out)
  assert int(state.step) == 24  # ceil(1.5 x 16), as airbench counts.
  assert [h['epoch'] for h in history] == [1, 2]
  assert 'Epoch 2/1.5' in out.getvalue()
  # The cut-short epoch's end is an epoch end for --checkpoint best.
  best = max(range(2), key=lambda i: history[i]['val_accuracy'])
  assert evaluation.evaluate(str(tmp_path), 'best')['accuracy'] == (
      pytest.approx(history[best]['val_accuracy'], abs=1e-6)
  )
  # And the run counts as finished.
  again = io.StringIO()
  train.train_and_evaluate(config, str(tmp_path), out=again)
  assert 'already finished: 2/1.5 epochs' in again.getvalue()


def test_drop_remainder_trains_whole_batches_only(tmp_path):
  config = get_config('test')
  config.data.synthetic_train_size = 500  # 15 whole batches of 32.
  config.num_epochs = 2
  config.drop_remainder = True
  state, history = train.train_and_evaluate(
      config, str(tmp_path), out=io.StringIO()
  )
  assert int(state.step) == 30 and len(history) == 2


@pytest.mark.slow
def test_augmentation_runs_inside_the_step_reproducibly():
  config = get_config('test')
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, 8).astype(np.int32)
  model = models.create_model(config.model)
  state = steps.create_train_state(model, config.optimizer, jax.random.key(0))
  batch = (jnp.arange(8), jnp.ones(8))

  def step(aug):
    new_state, _ = steps.train_step(
        state,
        steps.Metrics.empty(),
        (jnp.asarray(images), jnp.asarray(labels)),
        batch,
        steps.Keys(jax.random.key(1), jax.random.key(2)),
        steps.StepOptions(batch_size=8, batches_per_pass=1, augmentation=aug),
    )
    return new_state.params['dense1']['kernel']

  plain = step(augment.AugmentConfig())
  aug = augment.AugmentConfig(horizontal_flip=True, zoom_range=0.2)
  np.testing.assert_array_equal(step(aug), step(aug))
  assert not np.allclose(step(aug), plain)


def test_training_with_seed_augmentation_still_learns(tmp_path):
  config = get_config('test')
  config.num_epochs = 4  # Flips make the synthetic patterns slower to learn.
  config.augment.width_shift_range = 0.1
  config.augment.height_shift_range = 0.1
  config.augment.horizontal_flip = True
  _, history = train.train_and_evaluate(
      config, str(tmp_path), out=io.StringIO()
  )
  assert history[-1]['loss'] < 0.7 * history[0]['loss']
  assert history[-1]['val_accuracy'] > 0.6


@pytest.mark.slow
def test_tensorflow_stays_off_the_training_path():
  """TF reads data sets and writes summaries, but the training path (data on
  the device, compiled steps) never needs it."""
  code = (
      'import io, sys\n'
      'from configs import test\n'
      'from cifar_jax import train\n'
      'from cifar_jax.reporting import progress\n'
      'from cifar_jax.training import experiment\n'
      'c = test.get_config(); c.augment.horizontal_flip = True\n'
      'exp = experiment.create_experiment(c)\n'
      'bar = progress.ProgressBar(20, out=io.StringIO())\n'
      'train.run_steps(exp, exp.start(0), 20, bar)\n'
      'print("tensorflow" in sys.modules)\n'
  )
  r = subprocess.run(
      [sys.executable, '-c', code],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
  )
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.strip().splitlines()[-1] == 'False'


def test_validation_split_carved_from_train(tmp_path):
  config = get_config('test')
  config.num_epochs = 1
  config.data.train_split = 'train[:400]'
  config.data.eval_split = 'train[400:]'
  out = io.StringIO()
  _, history = train.train_and_evaluate(config, str(tmp_path), out=out)
  assert 'Train on 400 samples, validate on 112 samples' in out.getvalue()
  # The two parts are the training set, split without overlap.
  whole = input_pipeline.load_split(config.data, 'train')
  parts = [
      input_pipeline.load_split(config.data, s)
      for s in (config.data.train_split, config.data.eval_split)
  ]
  np.testing.assert_array_equal(
      np.concatenate([p.images for p in parts]), whole.images
  )
  np.testing.assert_array_equal(
      np.concatenate([p.labels for p in parts]), whole.labels
  )
  # val_accuracy is the trained model's accuracy on the held-out 112.
  result = evaluation.evaluate(str(tmp_path), 'latest')
  assert result['confusion'].sum() == 112
  assert history[0]['val_accuracy'] == pytest.approx(
      result['accuracy'], abs=1e-6
  )


@pytest.mark.slow
@pytest.mark.parametrize(
    'batch_norm, flip_mode', [(True, 'random'), (False, 'alternating')]
)
def test_steps_scanned_in_one_dispatch_equal_steps_dispatched_one_by_one(
    batch_norm, flip_mode
):
  """5 steps as one lax.scan = 5 single steps, in the second pass.

  Equal to rounding (XLA fuses a scanned step differently); compared after
  5 steps, before training can amplify it (see benchmarks/device_count.py).
  Dropout is on; BN, and alternating flips (which need the pass inside the
  scan), are each on in one case: together on this synthetic data they
  amplify the rounding about a hundredfold per step (1e-7 after two steps,
  4e-4 after five).
  """
  results = {}
  for k in (1, 5):
    config = get_config('test')
    config.steps_per_dispatch = k
    config.model.batch_norm = batch_norm
    config.augment.horizontal_flip = True
    config.augment.flip_mode = flip_mode
    config.augment.crop_padding = 2
    exp = experiment.create_experiment(config)
    assert exp.steps_per_dispatch == k
    run = exp.start(0)
    run.step = exp.batches_per_pass + 3  # Pass 1, batches 3 to 7.
    run.state = run.state.replace(step=jnp.asarray(run.step, jnp.int32))
    train.run_steps(exp, run, run.step + 5)
    results[k] = run.state, run.epoch_metrics, run.step
  (s1, m1, step1), (s5, m5, step5) = results[1], results[5]
  assert step1 == step5 == exp.batches_per_pass + 8
  assert int(s1.step) == int(s5.step) == step1
  for a, b in zip(
      jax.tree.leaves((s1.params, s1.batch_stats)),
      jax.tree.leaves((s5.params, s5.batch_stats)),
  ):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(
      m1.compute()['loss'], m5.compute()['loss'], rtol=1e-5
  )


def test_steps_per_dispatch_auto_is_one_step_on_cpu():
  config = get_config('test')
  assert config.steps_per_dispatch == 0
  assert experiment.create_experiment(config).steps_per_dispatch == 1


def test_runs_with_other_seeds_reuse_the_programs_compiled_ahead(caplog):
  """speedrun.py times many seeds: none of them may compile again."""
  config = get_config('test')
  config.num_epochs = 1
  config.steps_per_dispatch = 4
  exp = experiment.create_experiment(config)
  total = exp.steps_per_epoch
  assert plan.dispatch_sizes(exp) == [4]
  # 16 steps per epoch, stopping for checkpoints every 6: 4, 2, 4, 2, 4.
  assert plan.dispatch_sizes(exp, 0, every=6) == [2, 4]
  first = exp.start(0)  # Builds the initial state's program.
  with jax.log_compiles(True), caplog.at_level('WARNING'):
    assert plan.compile_ahead(exp, first) > 0
    ahead = [r.getMessage() for r in caplog.records]
    caplog.clear()
    finals = []
    for seed in (1, 2):
      run = exp.start(seed)
      train.run_steps(exp, run, total)
      train.evaluate(exp, run.state)
      finals.append(jax.tree.leaves(run.state.params)[0])
    during = [r.getMessage() for r in caplog.records]
  for name in ('jit(train_steps)', 'jit(eval_step)'):
    assert any(name in m for m in ahead)
    assert not any(name in m for m in during), during
  assert not any('jit(init)' in m for m in during)  # Built once too.
  assert not np.allclose(finals[0], finals[1])  # The seeds did differ.


def test_a_run_compiles_its_steps_and_data_order_only_ahead(
    tmp_path, monkeypatch, caplog
):
  """`plan.compile_ahead` lowers shapes, not arrays (a refused batch is
  never allocated), and still leaves the run nothing of its own to
  compile: the epochs' timings hold no compile time."""
  ahead = plan.compile_ahead

  def then_log_compiles(*args, **kwargs):
    seconds = ahead(*args, **kwargs)
    jax.config.update('jax_log_compiles', True)
    return seconds

  monkeypatch.setattr(plan, 'compile_ahead', then_log_compiles)
  config = get_config('test')
  config.num_epochs = 2

  def canary(x):  # New here, so compiled and logged whatever ran before.
    return x * 3

  try:
    with caplog.at_level('WARNING'):
      train.train_and_evaluate(config, str(tmp_path), out=io.StringIO())
      jax.jit(canary)(1.0)
  finally:
    jax.config.update('jax_log_compiles', False)
  compiled = set(re.findall(r'Compiling jit\((\w+)\)', caplog.text))
  assert 'canary' in compiled, 'nothing logged: the check would be vacuous'
  assert not {'train_steps', 'eval_step', '_pass_order'} & compiled


def test_a_batch_is_checked_against_memory_before_it_is_allocated(
    monkeypatch,
):
  """The eval batch's indices were padded to `eval_batch_size` on the host
  (1.6 GB here) only to be refused after compiling."""
  monkeypatch.setattr(plan, 'free_memory', lambda: (2**30, 'this machine'))
  config = get_config('test')
  config.eval_batch_size = 10**8
  exp = experiment.create_experiment(config)
  run = exp.start(0)
  tracemalloc.start()
  try:
    with pytest.raises(UserError, match='eval_batch_size=100000000 needs'):
      plan.compile_ahead(exp, run)
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert peak < 50 * 2**20, peak


def test_restoring_and_compiling_are_said_before_they_start(tmp_path):
  config = get_config('test')
  config.update(num_epochs=1, steps_per_epoch=4)
  train.train_and_evaluate(config, str(tmp_path), out=io.StringIO())
  config.num_epochs = 2
  out = io.StringIO()
  train.train_and_evaluate(config, str(tmp_path), out=out)
  lines = out.getvalue().splitlines()
  said = [
      lines.index(
          f'Restoring the newest checkpoint in {tmp_path}/checkpoints...'
      ),
      next(i for i, l in enumerate(lines) if l.startswith('Resuming from')),
      lines.index('Compiling the steps ahead of time...'),
      next(i for i, l in enumerate(lines) if l.startswith('Compiled ahead')),
  ]
  assert said == sorted(said)
