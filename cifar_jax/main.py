"""Command line: `python -m cifar_jax.main --config configs/simple.py`.

Kept short on purpose: it parses flags, picks the run directory and calls
`train.train_and_evaluate(config, workdir)`. Any config key can be overridden,
e.g. `--config.num_epochs=3`; an unknown key is refused by the flag parser.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from cifar_jax import train
from cifar_jax.errors import NonFiniteLossError
from cifar_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file, e.g. configs/simple.py.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Run directory; default ckpt/<config file name>.')


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
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f'error: {e}\nPass --help for usage.', file=sys.stderr)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    cause = e.args[0] if e.args else e
    if isinstance(cause, KeyError) and cause.args:  # Wrapped by ConfigDict.
      cause = cause.args[0]
    message = str(cause).replace('\n', ' ')
    print(f'error: bad --config override: {message}', file=sys.stderr)
  sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config_path = config_flags.get_config_filename(flags.FLAGS['config'])
  workdir = _WORKDIR.value or default_workdir(config_path)
  logging.info('JAX process %d/%d, devices: %s', jax.process_index(),
               jax.process_count(), jax.devices())
  logging.info('Config %s, overrides %s, workdir %s', config_path,
               config_flags.get_override_values(flags.FLAGS['config']),
               workdir)
  try:
    train.train_and_evaluate(_CONFIG.value, workdir)
  except (UserError, NonFiniteLossError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=parse_flags)
