"""A C++ source compiled, once per machine, into a cached shared library.

For XLA FFI kernels (`conv3x3.cc`): built with the machine's C++ compiler
against the installed jaxlib's FFI headers, and cached under
`$XDG_CACHE_HOME/cifar_jax` (default `~/.cache/cifar_jax`) by a hash of the
source, the compiler, the flags and jaxlib. Each library has its SHA-256
beside it (`<name>.so.sha256`, written after the library is complete): a
cached library is loaded only if it matches, and compiled again if not,
since loading a damaged one can crash the process (a truncated library
maps past its end: SIGBUS).
"""

from collections.abc import Mapping, Sequence
import hashlib
import logging
import os
import pathlib
import shutil
import subprocess
import tempfile

import jax
import jaxlib

_FLAGS = ('-O3', '-std=c++17', '-shared', '-fPIC', '-w')
# A compiler that hangs (a licence server, a wedged wrapper) must not hang
# every run: the kernels build in about 15 s on 2 cores, and XLA's
# convolutions do the same job without them.
VERSION_TIMEOUT_S = 30
BUILD_TIMEOUT_S = 300


class BuildError(Exception):
  """The library could not be compiled or loaded here; the message says why."""


def compiler(environ: Mapping[str, str] = os.environ) -> str:
  return environ.get('CXX') or 'c++'


def cache_dir(environ: Mapping[str, str] = os.environ) -> pathlib.Path:
  base = environ.get('XDG_CACHE_HOME') or pathlib.Path.home() / '.cache'
  return pathlib.Path(base) / 'cifar_jax'


def build(
    source: pathlib.Path,
    directory: pathlib.Path,
    cxx: str,
    extra_flags: Sequence[str] = (),
) -> pathlib.Path:
  """The shared library of `source`, compiled into `directory` if not there.

  Named by a hash of the source, the compiler's version, the flags and
  jaxlib's version, so a changed input never loads a stale library; written
  under a temporary name and renamed, so concurrent runs never load half of
  one; returned from the cache only when it matches its checksum (a damaged
  one is compiled again, with a warning).
  """
  if shutil.which(cxx) is None:
    raise BuildError(f'no C++ compiler {cxx!r} (set $CXX)')
  try:
    version = _run([cxx, '--version'], VERSION_TIMEOUT_S, check=True).stdout
  except subprocess.TimeoutExpired as e:
    raise BuildError(
        f'{cxx} --version did not finish within {VERSION_TIMEOUT_S} s'
    ) from e
  except (OSError, subprocess.CalledProcessError) as e:
    raise BuildError(f'{cxx} --version failed: {e}') from e
  key = hashlib.sha256()
  flags = (*_FLAGS, *extra_flags)
  for part in (source.read_bytes(), version, flags, jaxlib.__version__):
    key.update(repr(part).encode())
  target = directory / f'{source.stem}-{key.hexdigest()[:16]}.so'
  checksum = target.with_name(target.name + '.sha256')
  if _intact(target, checksum):
    return target
  if target.exists():
    logging.warning('The cached %s does not match its checksum (damaged, or '
                    'written by an older version); compiling it again.',
                    target)  # fmt: skip
  try:
    directory.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=directory, suffix='.so.partial')
    os.close(fd)
  except OSError as e:
    raise BuildError(f'cannot write to {directory}: {e}') from e
  include = f'-I{jax.ffi.include_dir()}'
  command = [cxx, *flags, include, '-o', partial, str(source)]
  logging.info('Compiling %s (once per machine and jaxlib).', source.name)
  try:
    try:
      result = _run(command, timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
      raise BuildError(
          f'{cxx} did not finish building {source.name} within '
          f'{BUILD_TIMEOUT_S} s'
      ) from e
    if result.returncode != 0:
      lines = (result.stderr or result.stdout).strip().splitlines()
      messages = [line for line in lines if 'error' in line] or lines
      first = messages[0].strip() if messages else 'no output'
      raise BuildError(f'{" ".join(command)} failed: {first}')
    digest = _sha256(pathlib.Path(partial))
    os.replace(partial, target)
    # The checksum last: a library without one is never trusted.
    checksum_partial = checksum.with_name(f'{checksum.name}.{os.getpid()}')
    checksum_partial.write_text(digest)
    os.replace(checksum_partial, checksum)
  except OSError as e:
    raise BuildError(f'{cxx} could not run: {e}') from e
  finally:
    pathlib.Path(partial).unlink(missing_ok=True)
  return target


def _run(command: Sequence[str], timeout: float, check: bool = False):
  """A command's output as text; bytes that are not UTF-8 are replaced."""
  return subprocess.run(command, capture_output=True, text=True,
                        errors='replace', check=check,
                        timeout=timeout)  # fmt: skip


def _sha256(path: pathlib.Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def _intact(library: pathlib.Path, checksum: pathlib.Path) -> bool:
  """Whether `library` exists and matches the checksum written beside it."""
  try:
    return _sha256(library) == checksum.read_text().strip()
  except OSError:
    return False
