"""Ahead-of-time compilation of every program a run will call.

A run dispatches scans of `steps_per_dispatch` train steps, cut short where
a pass ends (a new order) or where the loop stops (epoch ends, checkpoints);
each length is its own program. Compiling them all before the first step
keeps compile time out of the epochs' timings.
"""

import time

import jax

from cifar_jax import batching
from cifar_jax import steps
from cifar_jax.experiment import Experiment


def dispatch_size(exp: Experiment, step: int, stop: int) -> int:
  """Train steps in the dispatch at `step`, with the loop stopping at `stop`."""
  _, position = exp.order.locate(step)
  return min(
      exp.steps_per_dispatch, stop - step, exp.order.batches_per_pass - position
  )


def dispatch_sizes(
    exp: Experiment, stops: list[int], start: int = 0
) -> list[int]:
  """Every scan length a run from `start` through `stops` dispatches.

  `stops` are the steps where the loop calls `train.run_steps` anew; the
  last is the end of the run.
  """
  sizes, step = set(), start
  for stop in sorted(stops):
    while step < stop:
      n = dispatch_size(exp, step, stop)
      sizes.add(n)
      step += n
  return sorted(sizes)


def compile_ahead(exp: Experiment, stops: list[int], start: int = 0) -> float:
  """Compiles every program a run calls (`dispatch_sizes`); returns seconds.

  `lower(...).compile()` with the run's own shapes and shardings: JAX keeps
  the executables, and the run's calls reuse them.
  """
  begin = time.perf_counter()
  state, metrics = exp.state, steps.empty_metrics(exp.replicated)
  order = exp.order.pass_order(0)
  for n in dispatch_sizes(exp, stops, start):
    exp.train_steps(n).lower(
        state, metrics, exp.train, order, 0, exp.keys
    ).compile()
  batch = next(
      batching.eval_batches(len(exp.eval[1]), exp.config.eval_batch_size)
  )
  exp.eval_step.lower(
      state, metrics, exp.eval, jax.device_put(batch, exp.shardings.batch)
  ).compile()
  return time.perf_counter() - begin
