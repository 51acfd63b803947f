"""Training and evaluation: the epoch loop of a run.

`train_and_evaluate` builds the experiment (`experiment`), finds where to
start (`resume`), and runs one flat loop: steps until the next stop (an
epoch's end, a checkpoint, or a preemption), then at epoch ends an
evaluation, a history row, a checkpoint and a Keras-style epoch line.
"""

from collections.abc import Callable
import io
import sys
import time
from typing import NamedTuple

from absl import logging
import jax
import ml_collections
import numpy as np

from cifar_jax.data import batching
from cifar_jax.data import images as images_lib
from cifar_jax.errors import NonFiniteLossError
from cifar_jax.errors import Preempted
from cifar_jax.reporting import progress
from cifar_jax.reporting import records
from cifar_jax.reporting import summary
from cifar_jax.runs import checkpointing
from cifar_jax.runs import preemption
from cifar_jax.runs import resume
from cifar_jax.runs import rundir
from cifar_jax.training.experiment import create_experiment
from cifar_jax.training.experiment import Experiment
from cifar_jax.training.experiment import Run
from cifar_jax.training import checks
from cifar_jax.training import plan
from cifar_jax.training import steps


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, out=sys.stdout
) -> tuple[steps.TrainState, list[dict[str, float]]]:
  """Trains `config` in `workdir`, evaluating after every epoch; returns
  the final state and the history (a dict per epoch: epoch, loss,
  accuracy, val_loss, val_accuracy, seconds).

  Resumes from the newest good checkpoint in `<workdir>/checkpoints`; a
  finished run only says so. `out` gets the Keras-style progress (process
  0's only). Raises UserError (a problem the user can fix),
  NonFiniteLossError (divergence) or Preempted (SIGTERM/SIGINT, after a
  checkpoint).
  """
  # Refused before the workdir is made; `create_experiment` checks again,
  # for the callers that build an experiment without the loop.
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
        checkpointing.checkpoint_dir(workdir), config.keep_checkpoints
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
  if ckpt.steps():  # Seconds for a large state: not a silent wait.
    print(f'Restoring the newest checkpoint in {ckpt.directory}...',
          file=out, flush=True)  # fmt: skip
  run, resumed = resume.start(exp, ckpt, resume.config_json(exp.config))
  epochs, per_epoch = f'{exp.config.num_epochs:g}', exp.steps_per_epoch
  if run.step >= exp.total_steps:
    print(f'Run in {workdir} already finished: {len(run.history)}/{epochs} '
          'epochs; nothing to do.', file=out)  # fmt: skip
    return run.state, run.history
  if resumed:
    print(f'Resuming from step {run.step} (epoch {run.step // per_epoch + 1}/'
          f'{epochs}, batch {run.step % per_epoch}/{per_epoch}) of checkpoint '
          f'{ckpt.directory}/{run.step}.', file=out, flush=True)  # fmt: skip
    logging.info('Resuming from step %d.', run.step)
  reporter = records.Reporter(workdir, exp.config, exp.total_steps)
  try:
    _loop(exp, ckpt, reporter, run, out, watch)
  finally:
    reporter.close()
  return run.state, run.history


def _loop(
    exp: Experiment,
    ckpt: checkpointing.Checkpoints,
    reporter: records.Reporter,
    run: Run,
    out,
    watch: preemption.PreemptionWatch,
) -> None:
  """Trains `run` from its step to the end, checkpointing and reporting."""
  config, per_epoch = exp.config, exp.steps_per_epoch
  _start_reports(exp, run, reporter, out)
  print('Compiling the steps ahead of time...', file=out, flush=True)
  seconds = plan.compile_ahead(exp, run, config.checkpoint_every_steps)
  watch.started()  # Stops here if a signal came while compiling.
  print(f'Compiled ahead of time in {seconds:.1f}s.', file=out, flush=True)
  hooks = Hooks(watch.requested, reporter.progress)
  while run.step < exp.total_steps:
    first = run.step // per_epoch * per_epoch
    end = min(first + per_epoch, exp.total_steps)
    bar = progress.ProgressBar(end - first, out=out)
    started = time.monotonic() - run.epoch_seconds
    for stop in plan.stop_steps(
        per_epoch, exp.total_steps, config.checkpoint_every_steps, run.step, end
    ):
      run_steps(exp, run, stop, bar, hooks)  # fmt: skip
      run.epoch_seconds = time.monotonic() - started
      if run.step < stop:  # Asked to stop: save where we are, then exit.
        bar.close()
        _save(ckpt, exp, run)
        ckpt.wait()
        raise Preempted(
            f'Stopped by {watch.name} at step {run.step} (epoch '
            f'{first // per_epoch + 1}/{config.num_epochs:g}); saved '
            f'checkpoint {ckpt.directory}/{run.step}. Run the same command '
            'to resume.',
            128 + (watch.signum or 15),
        )
      if stop < end:
        _save(ckpt, exp, run)
    bar.close()
    train_seconds = time.monotonic() - started
    row = {
        'epoch': -(-run.step // per_epoch),  # A cut-short last epoch counts.
        **steps.computed(run.epoch_metrics),
        **{f'val_{k}': v for k, v in evaluate(exp, run.state).items()},
        'seconds': time.monotonic() - started,
    }
    run.history.append(row)
    run.epoch_metrics = steps.empty_metrics(exp.replicated)
    run.epoch_seconds = 0.0
    reporter.epoch(run.step, run.history, float(exp.learning_rate(run.step)),
                   train_seconds, end - first,
                   (end - first) * config.batch_size)  # fmt: skip
    _save(ckpt, exp, run, row['val_accuracy'])
    metrics = {
        k: row[k] for k in ('loss', 'accuracy', 'val_loss', 'val_accuracy')
    }
    print(progress.epoch_line(row['epoch'], config.num_epochs, row['seconds'],
                              metrics), file=out, flush=True)  # fmt: skip
  if run.history:
    accuracy = run.history[-1]['val_accuracy']
    print(f'Accuracy: {accuracy * 100:.2f}%', file=out, flush=True)


def _save(
    ckpt: checkpointing.Checkpoints,
    exp: Experiment,
    run: Run,
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


def _start_reports(
    exp: Experiment, run: Run, reporter: records.Reporter, out
) -> None:
  """Starts the records; prints the model summary and the data sizes."""
  num_train, num_eval = len(exp.train[1]), len(exp.eval[1])
  reporter.start(exp.config, exp.class_names, num_train, num_eval,
                 exp.steps_per_epoch, run.step)  # fmt: skip
  variables = {'params': run.state.params, 'batch_stats': run.state.batch_stats}
  print(summary.keras_summary(exp.model, variables, images_lib.SHAPE), file=out)
  print(
      f'Train on {num_train} samples, validate on {num_eval} samples '
      f'({jax.device_count()} device(s): {jax.devices()[0].platform}; '
      f'{exp.model.layers})',
      file=out,
  )


class Hooks(NamedTuple):
  """What `run_steps` asks before each dispatch (whether to stop: a
  preemption stops at a step boundary) and tells after it (the step
  reached: throughput reporting)."""

  should_stop: Callable[[int], bool] = lambda step: False
  after_step: Callable[[int], None] = lambda step: None


def run_steps(
    exp: Experiment,
    run: Run,
    stop: int,
    bar: progress.ProgressBar | None = None,
    hooks: Hooks = Hooks(),
) -> None:
  """Trains `run` in place from its step up to `stop` (within one epoch).

  The host only dispatches steps (`exp.steps_per_dispatch` at a time); it
  reads the metrics (a device sync) only when `bar` is due, to draw it, and
  at `stop`, to check that the loss is finite.
  """
  epoch_start = run.step // exp.steps_per_epoch * exp.steps_per_epoch
  for first, n in plan.dispatches(exp, run.step, stop):
    if hooks.should_stop(first):
      break
    pass_index, position = run.order.locate(first)
    run.state, run.epoch_metrics = exp.train_steps(n)(
        run.state, run.epoch_metrics, exp.train,
        run.order.pass_order(pass_index), position, run.keys,
    )  # fmt: skip
    run.step = first + n
    if bar is not None and not bar.marked:  # The ETA starts after this step.
      jax.block_until_ready(run.state)  # Once per bar, not per dispatch.
      bar.mark(run.step - epoch_start)
    hooks.after_step(run.step)
    due = bar is not None and bar.due()
    if due or run.step == stop:
      values = steps.computed(run.epoch_metrics)
      if not np.isfinite(values['loss']):
        raise NonFiniteLossError(
            f'The training loss became {values["loss"]} by step {run.step}; '
            'the run stops here. Try a lower optimizer.learning_rate.'
        )
      if due:  # Not at every checkpoint: a line per save would flood logs.
        bar.update(run.step - epoch_start, values)


def evaluate(exp: Experiment, state: steps.TrainState) -> dict[str, float]:
  """Loss and accuracy of `state` over every eval example exactly once."""
  sharding = exp.shardings.batch
  m = steps.empty_metrics(exp.replicated)
  for batch in batching.eval_batches(
      len(exp.eval[1]), exp.config.eval_batch_size
  ):
    m = exp.eval_step(state, m, exp.eval, jax.device_put(batch, sharding))
  return steps.computed(m)


def timed_run(exp: Experiment, seed: int, out=None) -> tuple[float, float]:
  """(test accuracy, seconds) of one full run of `exp` with `seed`.

  The speed-record protocol's run (benchmarks/speedrun.py): the clock
  covers the training steps and the final evaluation, not the
  initialisation or compilation (compile ahead first); nothing is saved.
  `out` gets a progress bar over the run's steps (default: none).
  """
  run = exp.start(seed)
  jax.block_until_ready((run.state, run.epoch_metrics))  # Not timed.
  start = time.perf_counter()
  bar = progress.ProgressBar(exp.total_steps, out=out) if out else None
  run_steps(exp, run, exp.total_steps, bar)
  result = evaluate(exp, run.state)
  return result['accuracy'], time.perf_counter() - start
