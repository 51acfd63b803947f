"""Image folders and zips: `<root>/<split>/<class>/*.jpg|png`, via Pillow.

No TensorFlow is needed (GPU images rarely have it). The shared CIFAR-10
JPEG copy is such a zip, with one top-level folder around the splits.
"""

from collections.abc import Callable
import concurrent.futures
import os
import time
import zipfile
import zlib

import numpy as np

from cifar_jax.data import images as images_lib
from cifar_jax.errors import UserError

# Shuffles an image folder's sorted files once, so its order is fixed.
FOLDER_ORDER_SEED = 0


def check_root(root: str | None) -> None:
  """A folder or a readable zip, or a UserError naming the problem."""
  if not root:
    raise UserError(
        'data.name=image_folder needs --config.data.dir=<root>, '
        'the folder (or .zip) that holds <split>/<class>/*.jpg.'
    )
  if root.lower().endswith('.zip'):
    if not zipfile.is_zipfile(root):
      raise UserError(f'data.dir {root!r} is not a readable zip archive.')
  elif not os.path.isdir(root):
    raise UserError(f'data.dir {root!r} is not a directory.')


def files_under(root: str, folders: bool = False) -> list[str]:
  """Every file under the folder `root`: relative, '/'-separated, sorted;
  with `folders`, every folder too, as 'a/b/' (as a zip lists them).

  Symlinked folders are followed (a class folder may be a link). A link
  that leads back into its own ancestors, a file link that leads nowhere,
  a folder that cannot be listed and a file that is not a regular file (a
  FIFO would block the reader forever) are refused in one line naming
  them, never skipped.
  """

  def unlistable(e: OSError):
    raise UserError(f'Cannot list the folder {e.filename}: {e.strerror}.')

  found = []
  ancestors = {root: frozenset()}
  for dirpath, dirs, files in os.walk(
      root, onerror=unlistable, followlinks=True
  ):
    real = os.path.realpath(dirpath)
    if real in ancestors[dirpath]:
      raise UserError(
          f'{dirpath} is a symlink back into its own parent folders '
          f'({real}); remove the link.'
      )
    dirs.sort()
    if folders and dirpath != root:
      found.append(os.path.relpath(dirpath, root).replace(os.sep, '/') + '/')
    for d in dirs:
      ancestors[os.path.join(dirpath, d)] = ancestors[dirpath] | {real}
    for name in sorted(files):
      path = os.path.join(dirpath, name)
      if not os.path.exists(path):  # A dangling link, or a loop of links.
        raise UserError(
            f'{path} is a symlink to nothing that can be read '
            f'({os.path.realpath(path)}); remove or fix the link.'
        )
      if not os.path.isfile(path):
        raise UserError(
            f'{path} is not a regular file (a FIFO, socket or device); '
            'remove it.'
        )
      found.append(os.path.relpath(path, root).replace(os.sep, '/'))
  return found


def _is_archiver_metadata(name: str) -> bool:
  """macOS's archiver adds `__MACOSX/` and `._<file>` entries (resource
  forks), which look like images by name and are not."""
  parts = name.rstrip('/').split('/')
  return parts[0] == '__MACOSX' or parts[-1].startswith('._')


def _image_files(root: str, train_split: str) -> tuple[
    dict[str, list[tuple[str, str]]],
    dict[str, set[str]],
    Callable[[str], bytes],
]:
  """{split: [(member path, class) of its images]}, {split: {its class
  folders}} and a reader of one member.

  `root` is a folder or a zip of `<split>/<class>/.../<image>`; images in
  subfolders of a class folder belong to it. One top-level folder around
  the splits (`cifar10-jpeg/train/...`, as the shared copy has, and as
  zipping a folder makes) is looked through. The class folders include
  those without images.
  """
  if root.lower().endswith('.zip'):
    try:
      archive = zipfile.ZipFile(root)
    except (OSError, zipfile.BadZipFile) as e:
      raise UserError(f'Cannot read the zip {root}: {e}') from e
    names = archive.namelist()
    read = archive.read
  else:
    names = files_under(root, folders=True)

    def read(name):
      with open(os.path.join(root, name), 'rb') as f:
        return f.read()

  parts = {
      n: n.rstrip('/').split('/') for n in names if not _is_archiver_metadata(n)
  }
  tops = {p[0] for p in parts.values() if len(p) > 1}
  if len(tops) == 1 and train_split not in tops:  # <top>/<split>/...
    parts = {n: p[1:] for n, p in parts.items() if len(p) > 1}
  splits, folders = {}, {}
  for name, p in parts.items():
    if len(p) >= 3 and images_lib.is_image(name):
      splits.setdefault(p[0], []).append((name, p[1]))
    if len(p) >= 2 and (len(p) > 2 or name.endswith('/')):
      folders.setdefault(p[0], set()).add(p[1])
  return splits, folders, read


def load(
    split: str,
    root: str | None,
    train_split: str,
    known_order: tuple[str, ...] = (),
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
  """(uint8 images, int32 labels, class names in label order) of
  `<root>/<split>/<class>/*.jpg|png`, root a folder or a .zip of one.

  Images of any size or mode become 32x32 RGB. The classes are the class
  folders of `train_split`, for every split, so a class missing from the
  test split shifts no label (in `known_order` when they are its names);
  a split with a class the training split lacks is refused. The order is
  the sorted paths under a fixed shuffle (FOLDER_ORDER_SEED): slices are
  stable and not grouped by class.
  """
  check_root(root)
  splits, folders, read = _image_files(root, train_split)
  for name in {split, train_split}:
    if name not in splits:
      raise UserError(
          f'No split {name!r} in {root}: it has '
          f'{sorted(splits) or "no <split>/<class>/<image> folders"} (the '
          'layout read is <split>/<class>/<image>, or one folder around '
          'it).'
      )
  names = tuple(sorted({c for _, c in splits[train_split]}))
  empty = sorted(folders[train_split] - set(names))
  if empty:
    raise UserError(
        f'Class folders {empty} of split {train_split!r} in {root} hold no '
        f'images ({", ".join(images_lib.SUFFIXES)}); add images or remove '
        'the folders.'
    )
  if sorted(names) == sorted(known_order):
    names = tuple(known_order)
  files = sorted(splits[split])
  unknown = sorted({c for _, c in files} - set(names))
  if unknown:
    raise UserError(
        f'Split {split!r} of {root} has class folders '
        f'{unknown} that the training split {train_split!r} '
        f'lacks; its classes are {list(names)}.'
    )
  order = np.random.default_rng(FOLDER_ORDER_SEED).permutation(len(files))
  files = [files[i] for i in order]
  labels = np.array([names.index(c) for _, c in files], np.int32)
  files = [f for f, _ in files]

  def decode(name):
    try:
      return images_lib.decode(read(name))
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
      raise UserError(f'Cannot read {name} in {root}: {e}') from e

  # Pillow decodes without holding the GIL: threads use every core.
  if not files:
    return np.empty((0,) + images_lib.SHAPE, np.uint8), labels, names
  threads = min(32, os.cpu_count() or 1)
  decoded, said = [], time.monotonic()
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    for image in pool.map(decode, files):  # A minute for CIFAR-10: say so.
      decoded.append(image)
      if time.monotonic() - said > 5 or len(decoded) == len(files) > 10_000:
        print(f'Decoded {len(decoded):,}/{len(files):,} images of split '
              f'{split!r} in {root}.', flush=True)  # fmt: skip
        said = time.monotonic()
  return np.stack(decoded), labels, names
