"""Shared pieces of the command-line tools (main, show_augment, ...)."""

import ast
import contextlib
import glob
import logging as std_logging
import os
import re
import signal
import sys
import textwrap
import threading
from typing import Any, Callable

from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from cifar_jax.config import loading
from cifar_jax.config import renames
from cifar_jax.errors import CheckpointWriteFailure
from cifar_jax.errors import DamagedCheckpoint
from cifar_jax.errors import NonFiniteLossError
from cifar_jax.errors import Preempted
from cifar_jax.errors import UserError
from cifar_jax.runs import orbax_noise


def define_config() -> flags.FlagHolder:
  """--config: a config file and its --config.key=value overrides."""
  return config_flags.DEFINE_config_file(
      'config', None, 'Path to a config file, e.g. configs/simple.py.',
      lock_config=True)  # fmt: skip


def _add_repository_of(path: str) -> None:
  """Lets a config file at `<repo>/configs/x.py` import `configs.default`
  from whatever directory the command runs in."""
  folder = os.path.dirname(os.path.abspath(path))
  if os.path.basename(folder) == 'configs':
    root = os.path.dirname(folder)
    if root not in sys.path:
      sys.path.insert(0, root)


def define_config_overrides() -> flags.FlagHolder:
  """--config.key=value overrides of configs/default.py's keys, no file.

  For tools that build several configs (the ladder's rungs, a benchmark's)
  and apply the same overrides to each (`apply_overrides`).
  """
  try:
    default = loading.config_module('default').get_config()
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  # config_dict flags read their overrides from sys.argv here, at definition,
  # so an unknown key fails now rather than in parse_flags.
  problem = renames.renamed_flag(sys.argv[1:])
  if problem:
    print(f'error: {problem}', file=sys.stderr)
    sys.exit(2)
  try:
    return config_flags.DEFINE_config_dict(
        'config', default, 'Overrides for every config: --config.key=value.',
        lock_config=True)  # fmt: skip
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    print(f'error: {_config_error_line(e, None)}', file=sys.stderr)
    sys.exit(2)


def override_values() -> dict[str, Any]:
  """The --config.key=value overrides given, typed: {'a.b': value}."""
  return dict(config_flags.get_override_values(flags.FLAGS['config']))


def define_workdir(help_text: str) -> flags.FlagHolder:
  """--workdir: the run directory."""
  return flags.DEFINE_string('workdir', None, help_text)


def define_checkpoint() -> flags.FlagHolder:
  """--checkpoint: which checkpoint of --workdir a tool reads."""
  holder = flags.DEFINE_string(
      'checkpoint', 'latest', "Which checkpoint of --workdir: 'best' (by "
      "val_accuracy), 'latest' or a step.")  # fmt: skip
  flags.register_validator(
      'checkpoint', lambda v: v in ('best', 'latest') or v.isdigit(),
      "must be 'best', 'latest' or a step")  # fmt: skip
  return holder


def default_workdir(config_path: str) -> str:
  """ckpt/<name> for configs/<name>.py (':arg' suffixes are dropped)."""
  name = os.path.splitext(os.path.basename(config_path.split(':')[0]))[0]
  return os.path.join('ckpt', name)


def _not_from(part: str) -> Callable[[std_logging.LogRecord], bool]:
  """A log filter: drops the records of files whose path contains `part`."""
  return lambda record: part not in record.pathname


def _config_path(argv: list[str]) -> str | None:
  """The file of `--config path[:arg]` in argv, if one is given."""
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      value = arg.split('=', 1)[1]
    elif arg == '--config' and i + 1 < len(argv):
      value = argv[i + 1]
    else:
      continue
    return value.split(':')[0]
  return None


def _check_config_file(path: str) -> str | None:
  """Why the config file cannot be used (one line), or None."""
  try:
    with open(path) as f:
      source = f.read()
  except OSError as e:
    names = ', '.join(_configs())
    return (
        f'cannot read config file {path}: {e.strerror or e} (the configs '
        f'in {_configs_dir()}: {names})'
    )
  try:
    compile(source, path, 'exec')
  except SyntaxError as e:
    text = (e.text or '').strip()
    return f'config file {path}, line {e.lineno}: {e.msg}: {text}'
  return None


def _config_error_line(e: Exception, path: str | None) -> str:
  """One line for what ml_collections raised about a config or override."""
  cause = e.args[0] if e.args else e
  if isinstance(cause, KeyError) and cause.args:  # Wrapped by ConfigDict.
    cause = cause.args[0]
  message = str(cause).replace('\n', ' ')
  unknown = re.fullmatch(r"'(\w+)'(?: Did you mean \"(\w+)\".*)?", message)
  if unknown:
    key, guess = unknown.groups()
    maybe = f"; did you mean '{guess}'?" if guess else '.'
    return f"bad --config override: this config has no key '{key}'{maybe}"
  if "has no attribute 'get_config'" in message:
    return f'config file {path} defines no get_config().'
  if 'get_config()' in message:
    return f'{message}.'
  return f'bad --config override: {message}'


# absl's help flags: absl's --help exits 1 and lists only the flags the
# main module defines itself, not those defined here (--config, --workdir).
_HELP = ('--help', '-help', '-h', '-?', '--helpshort')
# The offline data options, for every command that takes a config.
_OFFLINE = """Data without internet (a folder or .zip of <split>/<class>/<image>):
  --config.data.name=image_folder --config.data.dir=cifar10-jpeg.zip
  (decoded once, cached in --config.data.cache_dir, default ~/.cache)"""


def help_text(doc: str) -> str:
  """A command's help: its docstring's summary and usage, its own flags,
  for commands with a config the configs there are and the offline data
  options, then the rest of its docstring."""
  own = [
      f for module, found in flags.FLAGS.flags_by_module_dict().items()
      if module.startswith('cifar_jax') or module == sys.argv[0]
      for f in found
  ]  # fmt: skip
  paragraphs = doc.strip().split('\n\n')
  lines = ['\n\n'.join(paragraphs[:2]), '', 'Flags:']
  for f in sorted(own, key=lambda f: f.name != 'config'):
    value = f.default
    value = ','.join(value) if isinstance(value, list) else value
    shown = isinstance(value, (str, int, float)) and value != ''
    default = f' (default: {value!r})' if shown else ''
    lines += textwrap.wrap(f'--{f.name}: {f.help}{default}', 76,
                           initial_indent='  ', subsequent_indent='    ')  # fmt: skip
  if 'config' in flags.FLAGS:
    lines += ['', f'Configs (--config configs/<name>.py; in {_configs_dir()}):']
    for name, path in _configs().items():
      with open(path) as f:
        summary = (ast.get_docstring(ast.parse(f.read())) or '').split('\n')[0]
      lines.append(f'  {name:22s}{summary}')
    lines += ['', _OFFLINE]
  lines += [''] + ['\n\n'.join(paragraphs[2:])] * (len(paragraphs) > 2)
  return '\n'.join(lines + ['', "All flags, absl's too: --helpfull."])


def _configs() -> dict[str, str]:
  """Each config's name and file (configs/<name>.py)."""
  found = sorted(glob.glob(os.path.join(_configs_dir(), '[!_]*.py')))
  return {os.path.splitext(os.path.basename(p))[0]: p for p in found}


def _configs_dir() -> str:
  """configs/ here, else the one of the checkout this package runs from."""
  if os.path.isdir('configs'):
    return 'configs'
  return os.path.join(os.path.dirname(os.path.dirname(__file__)), 'configs')


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, with a bad config file or override as one clear line.

  ml_collections raises AttributeError/ValueError/TypeError for an unknown
  key or a value of the wrong type, and OSError or whatever the file raises
  for a config file that does not load; absl would show them as tracebacks.
  --help prints `help_text` and exits 0.
  """
  if any(arg in _HELP for arg in argv[1:]):
    print(help_text(sys.modules['__main__'].__doc__ or ''))
    sys.exit(0)
  path = _config_path(argv[1:])
  problem = renames.renamed_flag(argv[1:]) or (
      path and _check_config_file(path)
  )
  override = next((a for a in argv[1:] if a.startswith('--config.')), None)
  needs_file = 'config' in flags.FLAGS and flags.FLAGS['config'].default is None
  if override and needs_file and not path and not problem:
    problem = (
        f"{override} overrides a config file's key: name the file too, "
        f'--config configs/<name>.py ({", ".join(_configs())}).'
    )
  if path and not problem:
    _add_repository_of(path)
  if problem:
    print(f'error: {problem}', file=sys.stderr)
    sys.exit(2)
  sys.excepthook, sys.unraisablehook = (
      orbax_noise.without_late_tensorstore_callbacks(
          sys.excepthook, sys.unraisablehook
      )
  )
  # config_flags' own warning (get_config() returned None) would come with
  # absl's logging-before-flag-parsing notice; the error line says it.
  quiet = _not_from(f'{os.sep}config_flags.py')
  logging.get_absl_logger().addFilter(quiet)
  try:
    argv = flags.FLAGS(argv)
    if 'config' in flags.FLAGS and flags.FLAGS['config'].present:
      config = flags.FLAGS['config'].value  # Loads the file now.
      if not isinstance(config, ml_collections.ConfigDict):
        raise TypeError(
            f'get_config() in {path} returned '
            f'{type(config).__name__}, not a ConfigDict'
        )
    if not flags.FLAGS['verbosity'].present:
      # Orbax and TFDS log every file at INFO; progress is printed anyway.
      flags.FLAGS.verbosity = -1  # absl WARNING.
      # Orbax logs its background threads' failures with tracebacks (a
      # full disk: hundreds of lines); checkpointing.Checkpoints raises
      # each as one error, so they are dropped (--verbosity=0 keeps them).
      logging.get_absl_handler().addFilter(_not_from(f'{os.sep}orbax{os.sep}'))
    return argv
  except flags.Error as e:
    print(f'error: {_flag_error_line(e, path)}', file=sys.stderr)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    print(f'error: {_config_error_line(e, path)}', file=sys.stderr)
  except Exception as e:  # pylint: disable=broad-except
    # The config file itself failed (an import or an error in get_config).
    cause = e.__cause__ or e
    line = f'cannot load config file {path}: {type(cause).__name__}: {cause}'
    print(f'error: {line}'.replace('\n', ' '), file=sys.stderr)
  finally:
    logging.get_absl_logger().removeFilter(quiet)
  sys.exit(2)


def _flag_error_line(e: flags.Error, path: str | None) -> str:
  """One line for absl's flag error; a config file's failure, which
  config_flags reports as its traceback's text, as its last line."""
  message = str(e.__context__ or e)
  if 'Error whilst parsing config file' in message:
    *_, raised = message.strip().splitlines()
    where = re.findall(rf'File "{re.escape(path or "")}", line (\d+)', message)
    at = f', line {where[-1]}' if where else ''
    return f'cannot load config file {path}{at}: {raised.strip()}'
  if '--config must have a value other than None' in str(e):
    return f'get_config() in {path} returned None, not a ConfigDict.'
  return f'{e} (--help lists the flags).'


@contextlib.contextmanager
def exit_on_errors():
  """Turns the errors a user should read into a message and an exit code.

  UserError (bad input) and NonFiniteLossError (divergence) exit with 1,
  Preempted with 128 + the signal, a Ctrl-C that stops at once (a second
  one in training, any in the other commands) with 130; no traceback for
  any of them.
  """
  try:
    yield
  except (UserError, NonFiniteLossError) as e:
    print(f'error: {e}', file=sys.stderr)
    if isinstance(e, (CheckpointWriteFailure, DamagedCheckpoint)):
      _exit_now(1)  # Before TensorStore's threads print their tracebacks.
    sys.exit(1)
  except Preempted as e:
    _ignore_more_interrupts()
    print(str(e), file=sys.stderr)
    sys.exit(e.exit_code)
  except KeyboardInterrupt:  # No checkpoint of this moment.
    _ignore_more_interrupts()
    print(
        'Interrupted by Ctrl-C: stopped at once, without saving; the '
        'checkpoints saved before are intact. Run the same command to '
        'resume from the newest.',
        file=sys.stderr,
    )
    _exit_now(130)


def _exit_now(code: int) -> None:
  """Ends the process without Python's shutdown, after a cut-short save.

  TensorStore's threads still finish the writes of the save that was cut
  short (a full disk, a second Ctrl-C) for an event loop Orbax has closed,
  and during the interpreter's shutdown they print tracebacks. Nothing is
  left to save or close: the finished checkpoints are on disk, and the
  unfinished one is ignored by the next run.
  """
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


def _ignore_more_interrupts() -> None:
  """Further Ctrl-Cs while the process exits would only print tracebacks
  from JAX's and Orbax's exit handlers (SIGTERM and SIGKILL still work)."""
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, signal.SIG_IGN)
