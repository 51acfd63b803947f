"""The error type for mistakes a user can fix (bad config, missing data).

`main` prints these as one clear message, without a traceback.
"""


class UserError(Exception):
  """A problem with the user's input, explained in the message."""


class NonFiniteLossError(RuntimeError):
  """Training diverged: the loss became NaN or infinite."""
