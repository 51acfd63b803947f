"""The error types a user reads, and how a failed write is recognised.

`cli.exit_on_errors` prints them as one clear message, without a traceback.
"""

import errno
import os

# Why a write failed, by OSError's errno or by its text (`os.strerror`),
# which other libraries (Orbax, TensorFlow) wrap in their own errors.
_WRITE_ERRNOS = {
    errno.ENOSPC: 'no space left on the device',
    errno.EDQUOT: 'disk quota exceeded',
    errno.EROFS: 'read-only file system',
    errno.EACCES: 'permission denied',
    errno.EPERM: 'permission denied',
}


class UserError(Exception):
  """A problem with the user's input, explained in the message."""


class DamagedCheckpoint(UserError):
  """A checkpoint that cannot be read, or whose arrays are not the ones
  saved (their fingerprint differs)."""


class CheckpointWriteFailure(UserError):
  """A checkpoint could not be written (full disk, read-only directory)."""


class NonFiniteLossError(RuntimeError):
  """Training diverged: the loss became NaN or infinite."""


class Preempted(Exception):
  """The run saved a checkpoint and stopped because it was asked to."""

  def __init__(self, message: str, exit_code: int):
    super().__init__(message)
    self.exit_code = exit_code


def write_failure(e: BaseException | None) -> str | None:
  """Why a write failed ('no space left on the device'), or None when `e`
  and its causes are not a failed write."""
  while e is not None:
    if isinstance(e, OSError) and e.errno in _WRITE_ERRNOS:
      return _WRITE_ERRNOS[e.errno]
    for number, cause in _WRITE_ERRNOS.items():
      if os.strerror(number) in str(e):
        return cause
    e = e.__cause__ or e.__context__
  return None
