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
from cifar_jax.errors import UserError
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
  free = free_memory()
  for n in dispatch_sizes(exp, stops, start):
    compiled = (
        exp.train_steps(n)
        .lower(state, metrics, exp.train, order, 0, exp.keys)
        .compile()
    )
    _check_fits(compiled, free, 'batch_size', exp.config.batch_size)
  batch = next(
      batching.eval_batches(len(exp.eval[1]), exp.config.eval_batch_size)
  )
  compiled = exp.eval_step.lower(
      state, metrics, exp.eval, jax.device_put(batch, exp.shardings.batch)
  ).compile()
  _check_fits(compiled, free, 'eval_batch_size', exp.config.eval_batch_size)
  return time.perf_counter() - begin


def free_memory() -> tuple[int, str] | None:
  """(bytes free for the next allocations, where), per device; None if
  unknown. The run's state and data are already on the device(s)."""
  device = jax.local_devices()[0]
  if device.platform == 'cpu':
    try:
      with open('/proc/meminfo') as f:
        info = dict(line.split(':', 1) for line in f)
      available = int(info['MemAvailable'].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
      return None
    # Every CPU device of the process shares the host's memory.
    return available // jax.local_device_count(), 'this machine'
  stats = device.memory_stats() or {}
  if 'bytes_limit' not in stats:
    return None
  free = stats['bytes_limit'] - stats.get('bytes_in_use', 0)
  return free, f'each {device.device_kind}'


def _check_fits(
    compiled: jax.stages.Compiled,
    free: tuple[int, str] | None,
    key: str,
    value: int,
) -> None:
  """A UserError now, before the first step, if the program cannot fit.

  A step too large for memory otherwise fails when it first runs, as an
  XLA out-of-memory traceback (or, for the host's allocator, an abort).
  """
  try:
    stats = compiled.memory_analysis()
  except (NotImplementedError, RuntimeError):
    return
  if free is None or stats is None:
    return
  # New allocations: temporaries and outputs that reuse no donated input.
  need = (
      stats.temp_size_in_bytes
      + stats.output_size_in_bytes
      - stats.alias_size_in_bytes
  )
  available, where = free
  if need > available:
    raise UserError(
        f'{key}={value} needs about {need / 2**30:.1f} GiB per device for '
        f'one step (the compiled program), but {where} has '
        f'{available / 2**30:.1f} GiB free; lower {key}.'
    )
