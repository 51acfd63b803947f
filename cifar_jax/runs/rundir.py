"""A run's directory: made usable, and held by one run at a time.

Two runs writing to one directory leave the second one's checkpoints,
config and history over the first one's, and both exit 0. So a run holds
an exclusive lock on `<workdir>/.lock` while it runs; a second run is
refused, naming the holder. The lock is the kernel's (`fcntl.flock`): it
goes with the process, so a run killed with SIGKILL never blocks the next
one. In a multi-process run only process 0 takes it: one lock per run.
"""

import contextlib
import fcntl
import json
import os
import socket
from collections.abc import Iterator

from absl import logging

from cifar_jax.errors import UserError

LOCK_FILE = '.lock'


def prepare(workdir: str) -> str:
  """Creates `workdir` if needed; its absolute path, or one clear error."""
  path = os.path.abspath(os.path.expanduser(workdir))
  if os.path.exists(path) and not os.path.isdir(path):
    raise UserError(
        f'--workdir {workdir} is a file, not a directory; name '
        'a directory for the run.'
    )
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise UserError(
        f'Cannot create the run directory {path}: {e.strerror or e}.'
    ) from e
  if not os.access(path, os.W_OK) or _read_only_mount(path):
    raise UserError(
        f'Cannot write to the run directory {path} (read-only '
        'file system or no permission); use another --workdir.'
    )
  return path


def _read_only_mount(path: str) -> bool:
  """Whether `path` lies on a read-only mount (root ignores permissions)."""
  try:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
  except OSError:
    return False


@contextlib.contextmanager
def hold(workdir: str, take: bool = True) -> Iterator[None]:
  """Holds `workdir` for this run; UserError if another run holds it.

  `take=False` (processes other than 0 of a multi-process run) does
  nothing: process 0 holds the directory for all of them.
  """
  if not take:
    yield
    return
  path = os.path.join(workdir, LOCK_FILE)
  try:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise UserError(f'Cannot create {path}: {e.strerror or e}.') from e
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise UserError(
          f'{workdir} is in use by another run ({_holder(fd)}); '
          'wait for it to end, or use another --workdir.'
      ) from None
    except OSError as e:  # A file system without locks (some FUSE mounts).
      logging.warning('Cannot lock %s (%s): nothing stops a second run '
                      'from using this directory at once.', path,
                      e)  # fmt: skip
    holder = json.dumps({'host': socket.gethostname(), 'pid': os.getpid()})
    os.ftruncate(fd, 0)
    os.pwrite(fd, holder.encode(), 0)
    yield
  finally:
    os.close(fd)  # Releases the lock.


def _holder(fd: int) -> str:
  try:
    info = json.loads(os.pread(fd, 4096, 0) or b'{}')
    return f'pid {info["pid"]} on host {info["host"]}'
  except (ValueError, KeyError, OSError):
    return 'holder unknown'
