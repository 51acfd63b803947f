"""Training and evaluation: the epoch loop of a run.

`train_and_evaluate` builds the experiment (`experiment`), finds where to
start (`resume`), and runs one flat loop: steps until the next stop (an
epoch's end, a checkpoint, or a preemption), then at epoch ends an
evaluation, a history row, a checkpoint and a Keras-style epoch line.
"""

import io
import sys
import time

from absl import logging
import jax
import ml_collections
import numpy as np

from cifar_jax.config import checks
from cifar_jax.data import batching
from cifar_jax.data import images as images_lib
from cifar_jax.errors import NonFiniteLossError
from cifar_jax.errors import Preempted
from cifar_jax.reporting import progress
from cifar_jax.reporting import records
from cifar_jax.reporting import summary
from cifar_jax.runs import checkpointing
from cifar_jax.runs import weights
from cifar_jax.runs import preemption
from cifar_jax.runs import resume
from cifar_jax.runs import rundir
from cifar_jax.training import experiment as experiment_lib
from cifar_jax.training.experiment import create_experiment
from cifar_jax.training.experiment import Experiment
from cifar_jax.training import plan
from cifar_jax.training import steps


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, out=sys.stdout
) -> tuple[steps.TrainState, list[dict[str, float]]]:
  """Trains `config` in `workdir`, evaluating after every epoch.

  Resumes automatically from the newest good checkpoint in
  `<workdir>/checkpoints`; a finished run only says so.

  Args:
    config: a config as in configs/default.py.
    workdir: the run directory; gets config.json, history.json and
      checkpoints/.
    out: where the Keras-style progress goes (process 0's only).

  Returns:
    The final state and the history: one dict per epoch (epoch, loss,
    accuracy, val_loss, val_accuracy, seconds).

  Raises:
    UserError: a config, data or disk problem the user can fix.
    NonFiniteLossError: training diverged.
    Preempted: SIGTERM/SIGINT arrived; a checkpoint was saved first.
  """
  checks.check(config)
  workdir = rundir.prepare(workdir)
  if jax.process_index() > 0:  # One progress report per run, not per host.
    out = io.StringIO()
  with (
      preemption.PreemptionWatch() as watch,
      rundir.hold(workdir, take=jax.process_index() == 0),
  ):
    exp = create_experiment(config)
    watch.stop_if_requested()
    ckpt = checkpointing.Checkpoints(
        weights.checkpoint_dir(workdir), config.keep_checkpoints
    )
    try:
      result = _resume_and_train(exp, ckpt, workdir, out, watch)
    except BaseException:
      ckpt.close(quietly=True)
      raise
    ckpt.close()  # Waits for the last asynchronous save.
    return result


def _resume_and_train(
    exp: Experiment,
    ckpt: checkpointing.Checkpoints,
    workdir: str,
    out,
    watch: preemption.PreemptionWatch,
) -> tuple[steps.TrainState, list[dict[str, float]]]:
  """Nothing is written to `workdir` (summaries, config.json) before the
  checkpoints there are known to belong to this config."""
  config, spe = exp.config, exp.steps_per_epoch
  epochs = progress.epochs_text(config.num_epochs)
  run, resumed = resume.start(exp, ckpt, resume.config_json(config))
  if run.step >= exp.total_steps:
    print(
        f'Run in {workdir} already finished: {len(run.history)}/'
        f'{epochs} epochs; nothing to do.',
        file=out,
    )
    return run.state, run.history
  if resumed:
    print(
        f'Resuming from step {run.step} (epoch {run.step // spe + 1}/'
        f'{epochs}, batch {run.step % spe}/{spe}) of checkpoint '
        f'{ckpt.directory}/{run.step}.',
        file=out,
        flush=True,
    )
    logging.info('Resuming from step %d.', run.step)
  reporter = records.Reporter(workdir, config, exp.total_steps)
  try:
    _loop(exp, ckpt, reporter, run, out, watch)
  finally:
    reporter.close()
  return run.state, run.history


def _loop(
    exp: Experiment,
    ckpt: checkpointing.Checkpoints,
    reporter: records.Reporter,
    run: resume.Progress,
    out,
    watch: preemption.PreemptionWatch,
) -> None:
  """Trains `run` from its step to the end, checkpointing and records."""
  config, spe, total_steps = exp.config, exp.steps_per_epoch, exp.total_steps
  _print_start(exp, run, reporter, out)
  every = config.checkpoint_every_steps
  seconds = plan.compile_ahead(exp, run.step, every)
  watch.started()  # Stops here if a signal came while compiling.
  print(f'Compiled ahead of time in {seconds:.1f}s.', file=out, flush=True)
  save = lambda val_accuracy=None: _save(ckpt, exp, run, val_accuracy)
  while run.step < total_steps:
    epoch = run.step // spe
    epoch_end = min((epoch + 1) * spe, total_steps)
    bar = progress.ProgressBar(
        epoch_end - epoch * spe, out=out, initial=run.step - epoch * spe
    )
    started = time.monotonic() - run.epoch_seconds
    for stop in plan.stop_steps(spe, total_steps, every, run.step, epoch_end):
      run.state, run.epoch_metrics, run.step = run_steps(
          exp, run.state, run.epoch_metrics, run.step, stop, bar,
          watch.requested, reporter.progress,
      )  # fmt: skip
      run.epoch_seconds = time.monotonic() - started
      if run.step < stop:  # Asked to stop: save where we are, then exit.
        bar.close()
        save()
        ckpt.wait()
        raise Preempted(
            f'Stopped by {watch.name} at step {run.step} (epoch '
            f'{epoch + 1}/{progress.epochs_text(config.num_epochs)}); '
            f'saved checkpoint '
            f'{ckpt.directory}/{run.step}. Run the same command to resume.',
            128 + (watch.signum or 15),
        )
      if stop < epoch_end:
        save()
    bar.close()
    _end_epoch(exp, run, reporter, started, epoch_end - epoch * spe)
    save(run.history[-1]['val_accuracy'])
    print(_epoch_line(run.history[-1], config.num_epochs), file=out, flush=True)
  if run.history:
    accuracy = run.history[-1]['val_accuracy']
    print(f'Accuracy: {accuracy * 100:.2f}%', file=out, flush=True)


def _end_epoch(
    exp: Experiment,
    run: resume.Progress,
    reporter: records.Reporter,
    started: float,
    epoch_steps: int,
) -> None:
  """Evaluates, appends the epoch's history row, reports, resets metrics.

  `epoch_steps` is the epoch's length (the last one may be cut short).
  """
  config, spe = exp.config, exp.steps_per_epoch
  train_seconds = time.monotonic() - started
  evaluation = evaluate(
      exp.eval_step,
      run.state,
      exp.eval,
      config.eval_batch_size,
      exp.shardings.batch,
  )
  run.history.append(
      {
          'epoch': -(-run.step // spe),  # A cut-short last epoch counts.
          **steps.computed(run.epoch_metrics),
          **{f'val_{k}': v for k, v in evaluation.items()},
          'seconds': time.monotonic() - started,
      }
  )
  run.epoch_metrics = steps.empty_metrics(exp.replicated)
  run.epoch_seconds = 0.0
  reporter.epoch(
      run.step,
      run.history,
      float(exp.learning_rate(run.step)),
      train_seconds,
      epoch_steps,
      epoch_steps * config.batch_size,
  )


def _save(
    ckpt: checkpointing.Checkpoints,
    exp: Experiment,
    run: resume.Progress,
    val_accuracy: float | None = None,
) -> None:
  """Checkpoints `run`; history is copied (the JSON is written later)."""
  ckpt.save(
      run.step,
      run.state,
      run.epoch_metrics,
      {
          'config': resume.config_json(exp.config),
          'class_names': list(exp.class_names),
          'history': [dict(r) for r in run.history],
          'epoch_seconds': run.epoch_seconds,
      },
      val_accuracy,
  )


def _print_start(
    exp: Experiment,
    run: resume.Progress,
    reporter: records.Reporter,
    out,
) -> None:
  """Starts the reports; prints the model summary and the data sizes."""
  num_train, num_eval = len(exp.train[1]), len(exp.eval[1])
  reporter.start(
      exp.config,
      exp.class_names,
      num_train,
      num_eval,
      exp.steps_per_epoch,
      run.step,
  )
  state = run.state
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  print(summary.keras_summary(exp.model, variables, images_lib.SHAPE), file=out)
  print(
      f'Train on {num_train} samples, validate on {num_eval} samples '
      f'({jax.device_count()} device(s): {jax.devices()[0].platform}; '
      f'{exp.model.layers})',
      file=out,
  )


def _epoch_line(row: dict[str, float], num_epochs: float) -> str:
  keys = ('loss', 'accuracy', 'val_loss', 'val_accuracy')
  return progress.epoch_line(
      row['epoch'], num_epochs, row['seconds'], {k: row[k] for k in keys}
  )


def run_steps(
    exp: Experiment,
    state: steps.TrainState,
    epoch_metrics: steps.Metrics,
    step: int,
    stop: int,
    bar: progress.ProgressBar,
    should_stop=lambda step: False,
    after_step=lambda step: None,
) -> tuple[steps.TrainState, steps.Metrics, int]:
  """Runs training steps [step, stop), drawing `bar` (steps since epoch start).

  The host only dispatches steps (`exp.steps_per_dispatch` at a time); it
  reads the metrics (a device sync) only when the bar is due and at `stop`
  (to check them), and draws the bar only when it is due.
  `should_stop(step)` is asked before each step, so a preemption stops at a
  step boundary; `after_step(step)` runs after each (throughput reporting).

  Returns:
    The state, the epoch's metrics so far, and the step reached.
  """
  # [step, stop) lies in one epoch; the bar counts from its first step,
  # whatever checkpoints stopped the loop in between.
  epoch_start = step // exp.steps_per_epoch * exp.steps_per_epoch
  for first, n in plan.dispatches(exp, step, stop):
    if should_stop(first):
      break
    pass_index, position = exp.order.locate(first)
    state, epoch_metrics = exp.train_steps(n)(
        state,
        epoch_metrics,
        exp.train,
        exp.order.pass_order(pass_index),
        position,
        exp.keys,
    )
    step = first + n
    after_step(step)
    due = bar.due()
    if due or step == stop:
      values = steps.computed(epoch_metrics)
      _check_finite(values, step)
      if due:  # Not at every checkpoint: a line per save would flood logs.
        bar.update(step - epoch_start, values)
  return state, epoch_metrics, step


def evaluate(
    eval_step,
    state: steps.TrainState,
    data: tuple[jax.Array, jax.Array],
    batch_size: int,
    batch_sharding: jax.sharding.Sharding,
) -> dict[str, float]:
  """Loss and accuracy over every example of `data` exactly once."""
  if isinstance(batch_sharding, jax.sharding.NamedSharding):
    metrics_sharding = jax.sharding.NamedSharding(
        batch_sharding.mesh, jax.sharding.PartitionSpec()
    )
  else:
    metrics_sharding = batch_sharding
  m = steps.empty_metrics(metrics_sharding)
  for batch in batching.eval_batches(len(data[1]), batch_size):
    m = eval_step(state, m, data, jax.device_put(batch, batch_sharding))
  return steps.computed(m)


def _check_finite(values: dict[str, float], step: int) -> None:
  if not np.isfinite(values['loss']):
    raise NonFiniteLossError(
        f'The training loss became {values["loss"]} by step {step}; the run '
        'stops here. Try a lower optimizer.learning_rate.'
    )


def timed_run(exp: Experiment, seed: int, out=None) -> tuple[float, float]:
  """(test accuracy, seconds) of one full run of `exp` with `seed`.

  The speed-record protocol's run (benchmarks/speedrun.py): the clock
  covers the training steps and the final evaluation, not the
  initialisation or compilation (compile ahead first); nothing is saved.

  `out` gets a progress bar over the run's steps (default: none; drawing
  it reads the loss, a device sync, at most every half second).
  """
  run = experiment_lib.with_seed(exp, seed)
  metrics = steps.empty_metrics(run.replicated)
  jax.block_until_ready((run.state, metrics))  # Initialisation: not timed.
  total = run.total_steps
  start = time.perf_counter()
  state, _, _ = run_steps(
      run,
      run.state,
      metrics,
      0,
      total,
      progress.ProgressBar(total, out=out or io.StringIO()),
  )
  result = evaluate(
      run.eval_step,
      state,
      run.eval,
      run.config.eval_batch_size,
      run.shardings.batch,
  )
  return result['accuracy'], time.perf_counter() - start
