"""Stop at a step boundary when the machine is being taken away.

Cloud schedulers send SIGTERM (and people press Ctrl-C) shortly before
killing a job. Inside a signal handler nothing is safe to do but set a flag;
the training loop checks it between steps, saves a checkpoint and exits.
A second Ctrl-C interrupts at once. Before the loop has started (loading
data, compiling) there is nothing of this start to save: the start stops at
its next safe point (`stop_if_requested`, never inside a compilation, which
cannot be unwound safely) with one line saying so. In a multi-process run the
processes must stop at the same step, so they ask JAX's preemption sync
point instead (after `jax.distributed.initialize`, JAX itself catches
SIGTERM).
"""

import signal
import threading

import jax
from jax.experimental import multihost_utils

from cifar_jax.errors import Preempted

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class PreemptionWatch:
  """A context manager; `requested(step)` says whether to stop now.

  Until `started()` is called, `stop_if_requested()` raises `Preempted`
  for a signal that came.
  """

  def __init__(self):
    self.signum: int | None = None
    self._previous = {}
    self._started = False

  def stop_if_requested(self) -> None:
    """Before the first step: stops the start if a signal came."""
    if self.signum is not None and not self._started:
      raise Preempted(
          f'Stopped by {self.name} before the first training step: '
          'nothing of this start was saved (checkpoints saved before are '
          'intact). Run the same command to start again.',
          128 + self.signum,
      )

  def started(self) -> None:
    """The loop runs: from now on a signal stops it at a step, saved."""
    self.stop_if_requested()
    self._started = True

  def __enter__(self) -> 'PreemptionWatch':
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in _SIGNALS}
    return self

  def __exit__(self, *exc) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)

  def _handle(self, signum, frame) -> None:
    del frame
    if self.signum == signal.SIGINT and signum == signal.SIGINT:
      raise KeyboardInterrupt  # Asked twice: stop without saving.
    self.signum = signum

  def requested(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.signum is not None

  @property
  def name(self) -> str:
    return signal.Signals(self.signum).name if self.signum else 'preemption'
