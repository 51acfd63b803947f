"""The error type for mistakes a user can fix (bad config, missing data).

`main` prints these as one clear message, without a traceback.
"""


class UserError(Exception):
  """A problem with the user's input, explained in the message."""


class NonFiniteLossError(RuntimeError):
  """Training diverged: the loss became NaN or infinite."""


class Preempted(Exception):
  """The run saved a checkpoint and stopped because it was asked to."""

  def __init__(self, message: str, exit_code: int):
    super().__init__(message)
    self.exit_code = exit_code
