"""Which steps each dispatch runs, and compiling every such program first.

A run trains from its start to its end, stopping where the loop must act
(`stop_steps`: epoch ends, checkpoint steps, the end). Between stops it
dispatches scans of `steps_per_dispatch` train steps, cut short where a
pass over the data ends (a new order) or at the stop (`dispatches`). The
loop follows that plan, and `compile_ahead` compiles each length in it
before the first step, so compile time stays out of the epochs' timings.
"""

from collections.abc import Iterator
import math
import re
import time

import jax

from cifar_jax.data import batching
from cifar_jax.errors import UserError
from cifar_jax.training.experiment import Experiment
from cifar_jax.training.experiment import Run


def stop_steps(
    steps_per_epoch: int,
    total_steps: int,
    every: int,
    lo: int = 0,
    hi: int | None = None,
) -> list[int]:
  """Where the loop stops dispatching in (lo, hi] (default: to the end):
  epoch ends, checkpoint steps, the end. Asked an epoch at a time, so that
  nothing grows with the number of epochs."""
  hi = total_steps if hi is None else min(hi, total_steps)
  found = set()
  for period in (steps_per_epoch, every) if every else (steps_per_epoch,):
    found |= set(range((lo // period + 1) * period, hi + 1, period))
  if lo < total_steps <= hi:
    found.add(total_steps)
  return sorted(found)


def dispatches(
    exp: Experiment, start: int, stop: int
) -> Iterator[tuple[int, int]]:
  """(first step, number of steps) of each dispatch from `start` to `stop`.

  A scan never crosses the end of a pass (a new order) or `stop`.
  """
  step = start
  while step < stop:
    left_in_pass = exp.batches_per_pass - step % exp.batches_per_pass
    n = min(exp.steps_per_dispatch, stop - step, left_in_pass)
    yield step, n
    step += n


# How many steps ahead compile_ahead looks for the lengths a run dispatches
# (a run may last up to 2**31 steps): a length that first appears later
# compiles when first called, as jit does.
LOOK_AHEAD_STEPS = 10**6


def dispatch_sizes(
    exp: Experiment, start: int = 0, every: int = 0
) -> list[int]:
  """Every scan length a run from `start` dispatches (over its next
  LOOK_AHEAD_STEPS steps), stopping at `stop_steps` with checkpoints
  `every` steps."""
  end = min(exp.total_steps, start + LOOK_AHEAD_STEPS)
  sizes, step = set(), start
  for stop in stop_steps(
      exp.steps_per_epoch, exp.total_steps, every, start, end
  ):
    sizes |= {n for _, n in dispatches(exp, step, stop)}
    step = stop
  return sorted(sizes)


def compile_ahead(exp: Experiment, run: Run, every: int = 0) -> float:
  """Compiles every program `run` calls from its step (`dispatch_sizes`);
  returns seconds.

  `lower(...).compile()` with the run's own shapes and shardings: JAX keeps
  the executables, and the run's calls reuse them.
  """
  begin = time.perf_counter()
  # Shapes, not arrays: a batch too large for memory is refused before
  # anything of its size is allocated.
  state, metrics = run.state, run.epoch_metrics
  order = run.order.pass_shapes()
  free = free_memory()
  for n in dispatch_sizes(exp, run.step, every):
    compiled = (
        exp.train_steps(n)
        .lower(state, metrics, exp.train, order, 0, run.keys)
        .compile()
    )
    check_fits(compiled, free, 'batch_size', exp.config.batch_size)
  batch = batching.eval_batch_shapes(
      exp.config.eval_batch_size, exp.shardings.batch
  )
  compiled = exp.eval_step.lower(state, metrics, exp.eval, batch).compile()
  check_fits(compiled, free, 'eval_batch_size', exp.config.eval_batch_size)
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


def check_fits(
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
  # New allocations: temporaries and outputs that reuse no donated input,
  # and on CPUs the convolutions' own workspace, which XLA does not count.
  need = (
      stats.temp_size_in_bytes
      + stats.output_size_in_bytes
      - stats.alias_size_in_bytes
  )
  if jax.local_devices()[0].platform == 'cpu':
    need += convolution_workspace(compiled.as_text())
  available, where = free
  if need > available:
    raise UserError(
        f'{key}={value} needs about {need / 2**30:.1f} GiB per device for '
        f'one step (the compiled program), but {where} has '
        f'{available / 2**30:.1f} GiB free; lower {key} or the size of '
        'the model.'
    )


_DEFINED = re.compile(r'%([\w.-]+) = f32\[([\d,]*)\]')
_CONVOLUTION = re.compile(
    r'= f32\[([\d,]*)\]\S* convolution\(%([\w.-]+), [^)]*\), '
    r'window=\{size=([\dx]+)[^}]*\}, dim_labels=(\w+)_\w+->(\w+)'
)


def convolution_workspace(hlo: str) -> int:
  """Bytes XLA's CPU convolutions allocate outside its buffer plan.

  Each allocates a buffer for its input's patches (every output position
  times the window times the input features, float32), freed when it
  returns; the largest is what a step must find room for. Without it, a
  batch that XLA's own estimate fits aborts the process (`std::bad_alloc`).
  """
  shapes = {
      name: [int(d) for d in dims.split(',') if d]
      for name, dims in _DEFINED.findall(hlo)
  }
  largest = 0
  for out, lhs, window, lhs_labels, out_labels in _CONVOLUTION.findall(hlo):
    if lhs not in shapes:
      continue
    out_dims = [int(d) for d in out.split(',') if d]
    positions = math.prod(out_dims) // out_dims[out_labels.index('f')]
    features = shapes[lhs][lhs_labels.index('f')]
    taps = math.prod(int(d) for d in window.split('x'))
    largest = max(largest, 4 * positions * taps * features)
  return largest
