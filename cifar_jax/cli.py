"""Shared pieces of the command-line tools (main, show_augment, ...)."""

import contextlib
import os
import sys

from absl import flags
from ml_collections import config_flags

from cifar_jax.errors import NonFiniteLossError
from cifar_jax.errors import Preempted
from cifar_jax.errors import UserError

# Flags the tools share, defined once here (absl refuses a second definition).
CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file, e.g. configs/simple.py.',
    lock_config=True)
WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Run directory (for training: default '
    'ckpt/<config file name>).')
CHECKPOINT = flags.DEFINE_string(
    'checkpoint', 'latest', "Which checkpoint of --workdir: 'best' (by "
    "val_accuracy), 'latest' or a step.")


def default_workdir(config_path: str) -> str:
  """ckpt/<name> for configs/<name>.py (':arg' suffixes are dropped)."""
  name = os.path.splitext(os.path.basename(config_path.split(':')[0]))[0]
  return os.path.join('ckpt', name)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, with bad `--config.*` overrides as one clear line.

  ml_collections raises AttributeError/ValueError/TypeError for an unknown key
  or a value of the wrong type; absl would show them as a traceback.
  """
  try:
    argv = flags.FLAGS(argv)
    if not flags.FLAGS['verbosity'].present:
      # Orbax and TFDS log every file at INFO; progress is printed anyway.
      flags.FLAGS.verbosity = -1  # absl WARNING.
    return argv
  except flags.Error as e:
    print(f'error: {e}\nPass --help for usage.', file=sys.stderr)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    cause = e.args[0] if e.args else e
    if isinstance(cause, KeyError) and cause.args:  # Wrapped by ConfigDict.
      cause = cause.args[0]
    message = str(cause).replace('\n', ' ')
    print(f'error: bad --config override: {message}', file=sys.stderr)
  sys.exit(2)


@contextlib.contextmanager
def exit_on_errors():
  """Turns the errors a user should read into a message and an exit code.

  UserError (bad input) and NonFiniteLossError (divergence) exit with 1,
  Preempted with 128 + the signal; no traceback for any of them.
  """
  try:
    yield
  except (UserError, NonFiniteLossError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  except Preempted as e:
    print(str(e), file=sys.stderr)
    sys.exit(e.exit_code)
