"""Stop at a step boundary when the machine is being taken away.

Cloud schedulers send SIGTERM (and people press Ctrl-C) shortly before
killing a job. Inside a signal handler nothing is safe to do but set a flag;
the training loop checks it between steps, saves a checkpoint and exits.
A second Ctrl-C interrupts at once. In a multi-process run the processes
must stop at the same step, so they ask JAX's preemption sync point instead
(after `jax.distributed.initialize`, JAX itself catches SIGTERM).
"""

import signal
import threading

import jax
from jax.experimental import multihost_utils

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class PreemptionWatch:
  """A context manager; `requested(step)` says whether to stop now."""

  def __init__(self):
    self.signum: int | None = None
    self._previous = {}

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
