"""Orbax's and TensorStore's known noise after a failed write, silenced.

When a checkpoint write fails (a full disk, a second Ctrl-C), the failure
is reported as one line (`checkpointing.Checkpoints`); the background
threads still in flight then print more: each failed fragment, and each
operation completed for an event loop Orbax has closed. These say nothing
the line has not said; any other exception is still reported.
"""

import logging

from cifar_jax.errors import write_failure


class UnretrievedWriteFailures(logging.Filter):
  """Drops asyncio's report of a failed write that no one awaited.

  When a disk fills, every fragment Orbax is writing fails; Orbax raises
  the first, and asyncio later logs each of the others, with its traceback,
  as 'Task exception was never retrieved'. The first is already the run's
  one error line (`CheckpointWriteFailure`), so the rest are dropped; any
  other unretrieved exception is still logged.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    return not (
        str(record.msg).startswith('Task exception was never retrieved')
        and write_failure(exc) is not None
    )


def drop_unretrieved_write_failures() -> None:
  logger = logging.getLogger('asyncio')
  if not any(isinstance(f, UnretrievedWriteFailures) for f in logger.filters):
    logger.addFilter(UnretrievedWriteFailures())


def without_late_tensorstore_callbacks(excepthook, unraisablehook):
  """The two hooks, silent for one known TensorStore defect: after a read
  or write fails (a damaged checkpoint, a full disk), its threads still
  complete the other operations in flight for the asyncio loop Orbax has
  closed, and print each `RuntimeError: Event loop is closed` (through
  one hook or the other). The failure itself is reported as one line;
  these say nothing more."""

  def late(kind, value) -> bool:
    return kind is RuntimeError and str(value) == 'Event loop is closed'

  def quiet_exception(kind, value, tb):
    if not late(kind, value):
      excepthook(kind, value, tb)

  def quiet_unraisable(unraisable):
    if not late(unraisable.exc_type, unraisable.exc_value):
      unraisablehook(unraisable)

  return quiet_exception, quiet_unraisable
