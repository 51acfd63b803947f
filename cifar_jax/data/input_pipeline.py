"""Loads CIFAR-10 (TFDS, an image folder, or synthetic) into memory.

CIFAR-10 is small (150 MB as uint8): each split is decoded once into uint8
arrays, kept in memory and cached on disk (`data.cache_dir`), so the next
start does not decode 60,000 JPEGs again. TensorFlow is imported only for
TFDS data sets (`tensorflow_cpu`, hidden from any GPU).
"""

from collections.abc import Callable
import dataclasses
import functools
import hashlib
import json
import os
import re
import socket
import time
import urllib.parse
import zipfile

from absl import logging
import ml_collections
import numpy as np

from cifar_jax.data import image_folder
from cifar_jax.data import synthetic_examples
from cifar_jax.data import tensorflow_cpu
from cifar_jax.errors import UserError

CIFAR10_CLASSES = tuple(
    'airplane automobile bird cat deer dog frog horse ship truck'.split()
)
# Part of the cache key: bump when decoding or ordering changes.
CACHE_FORMAT = 3


@dataclasses.dataclass(frozen=True)
class Dataset:
  """One split in memory: uint8 images (N, 32, 32, 3), int32 labels (N,)."""

  images: np.ndarray
  labels: np.ndarray
  class_names: tuple[str, ...]

  def __len__(self) -> int:
    return len(self.labels)


def load_split(config: ml_collections.ConfigDict, split: str) -> Dataset:
  """`split` of the `data` section's data set, TFDS slicing included
  ('train[:45000]'): cut from the whole base split (decoded once, cached:
  `_cached`) in its stored order, as TFDS slices it."""
  start = time.time()
  base = split.split('[')[0]
  if config.name == 'synthetic':
    full = synthetic(base, config)
  elif config.name == 'image_folder':
    train_base = config.train_split.split('[')[0]
    full = _cached(
        config,
        base,
        functools.partial(_load_image_folder, train_split=train_base),
    )
  else:
    full = _cached(
        config, base, functools.partial(_load_tfds, name=config.name)
    )
  lo, hi = _slice_bounds(split, {base: len(full)})
  ds = Dataset(full.images[lo:hi], full.labels[lo:hi], full.class_names)
  logging.info('Loaded %s %r: %d images in %.1fs.', config.name, split,
               len(ds), time.time() - start)  # fmt: skip
  return ds


def _cached(
    config: ml_collections.ConfigDict,
    split: str,
    load: Callable[[str, str | None], Dataset],
) -> Dataset:
  """`load(split, data_dir)`, through a .npz cache in `config.cache_dir`,
  keyed by the data set, data_dir, the training split (whose folders name
  the classes) and every file's path, size and mtime: a folder changed in
  any way is decoded again. An unusable cache only costs the speed-up."""
  data_dir = (
      os.path.abspath(os.path.expanduser(config.dir)) if config.dir else None
  )
  if not config.cache_dir:
    return load(split, data_dir)
  path = _cache_path(config, split, data_dir)
  if os.path.exists(path):
    try:
      with np.load(path) as f:
        return Dataset(
            f['images'], f['labels'], tuple(str(n) for n in f['class_names'])
        )
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
      logging.warning('Ignoring unreadable cache %s: %s', path, e)
  ds = load(split, data_dir)
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f'{path}.{os.getpid()}.tmp'
    with open(tmp, 'wb') as f:
      names = np.array(ds.class_names)
      np.savez(f, images=ds.images, labels=ds.labels, class_names=names)
    os.replace(tmp, path)  # Atomic: a crash never leaves half a cache.
    logging.info('Cached decoded %s %r in %s.', config.name, split, path)
  except OSError as e:
    logging.warning('Could not cache decoded data in %s: %s', path, e)
  return ds


def _cache_path(
    config: ml_collections.ConfigDict, split: str, data_dir: str | None
) -> str:
  """The .npz file for `split`, named by a hash of everything it depends on."""
  if config.name == 'image_folder':
    image_folder.check_root(data_dir)
    train_split = config.train_split.split('[')[0]
    watched = (
        [data_dir]
        if os.path.isfile(data_dir)
        else [os.path.join(data_dir, s) for s in sorted({split, train_split})]
    )
  else:
    train_split = None
    watched = data_dir or os.environ.get(
        'TFDS_DATA_DIR', os.path.expanduser('~/tensorflow_datasets')
    )
    watched = [os.path.join(watched, config.name)]
  fingerprints = [_fingerprint(w) for w in watched]
  key = json.dumps([CACHE_FORMAT, config.name, data_dir, split, train_split,
                    fingerprints])  # fmt: skip
  digest = hashlib.sha256(key.encode()).hexdigest()[:16]
  name = f'{config.name}-{split}-{digest}.npz'
  return os.path.join(os.path.expanduser(config.cache_dir), name)


def _load_image_folder(
    split: str, root: str | None, train_split: str
) -> Dataset:
  return Dataset(*image_folder.load(split, root, train_split, CIFAR10_CLASSES))


def _fingerprint(root: str) -> str:
  """A digest of every file under `root` (relative path, size, mtime), or
  of `root` itself when it is a file; '' when it is absent."""
  digest = hashlib.sha256()
  if os.path.isfile(root):
    st = os.stat(root)
    digest.update(f'{st.st_size} {st.st_mtime_ns}'.encode())
    return digest.hexdigest()
  if not os.path.isdir(root):
    return ''
  for name in image_folder.files_under(root):
    st = os.stat(os.path.join(root, name))
    digest.update(f'{name}\0{st.st_size} {st.st_mtime_ns}\n'.encode())
  return digest.hexdigest()


# ---------------------------------------------------------------- synthetic


def synthetic(split: str, config: ml_collections.ConfigDict) -> Dataset:
  """The synthetic data set's split (`synthetic_examples`), of the size
  its config key says."""
  keys = {'train': 'synthetic_train_size', 'test': 'synthetic_eval_size'}
  if split not in keys:
    raise UserError(
        f"The synthetic data set has splits 'train' and 'test', "
        f'not {split!r}.'
    )
  size = config[keys[split]]
  try:
    images, labels = synthetic_examples.make(
        size, seed=0 if split == 'train' else 1
    )
  except MemoryError as e:
    raise UserError(
        f'data.{keys[split]}={size} does not fit in memory ({e}); lower it.'
    ) from e
  return Dataset(images, labels, CIFAR10_CLASSES)


# ---------------------------------------------------------------- TFDS


def _load_tfds(split: str, data_dir: str | None, name: str) -> Dataset:
  """A TFDS data set, prepared in `data_dir` or downloaded if possible."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  tensorflow_cpu.import_tensorflow()
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise UserError(
        f'Unknown data.name {name!r}: use cifar10, image_folder or '
        'synthetic.'
    ) from e
  if not builder.is_prepared():
    _check_can_download(builder)
    logging.info('Downloading and preparing %s in %s.', name, builder.data_dir)
    builder.download_and_prepare()
  try:
    ds = builder.as_dataset(split=split, batch_size=-1, as_supervised=True)
  except (ValueError, AssertionError) as e:
    raise UserError(f'Cannot read split {split!r} of {name}: {e}') from e
  images, labels = tfds.as_numpy(ds)
  names = tuple(builder.info.features['label'].names)
  return Dataset(images, labels.astype(np.int32), names)


def _check_can_download(builder, timeout: float = 5.0) -> None:
  """Fails within seconds when the download host is unreachable.

  Without this, TFDS retries for minutes before giving up offline.
  """
  urls = list(builder.url_infos or {})
  host = urllib.parse.urlparse(urls[0]).hostname if urls else None
  if host is None:
    return
  try:
    socket.create_connection((host, 443), timeout=timeout).close()
  except OSError as e:
    raise UserError(
        f'{builder.name} is not prepared in {builder.data_dir} and cannot be '
        f'downloaded ({host}: {e}).\n'
        'To train offline, point cifar_jax at a local copy:\n'
        '  --config.data.name=image_folder --config.data.dir=/path/to/root\n'
        '    where root holds <split>/<class>/*.jpg|png, e.g. the unzipped '
        'cifar10-jpeg.zip, or\n'
        '  --config.data.dir=/path/to/tensorflow_datasets that holds a '
        f'prepared {builder.name}/ copied from a machine with internet.'
    ) from e


# ---------------------------------------------------------------- slicing


@dataclasses.dataclass(frozen=True)
class _SplitSize:
  num_examples: int  # What ReadInstruction.to_absolute reads of a split.


def _simple_slice(split: str, sizes: dict[str, int]) -> tuple[int, int] | None:
  """'train', 'train[:45000]', 'train[-5000:]' or 'train[10%:]' without
  TFDS (None for any other spec, which TFDS then reads)."""
  match = re.fullmatch(r'(\w+)(?:\[(-?\d*)(%?):(-?\d*)(%?)\])?', split)
  if not match or match.group(1) not in sizes:
    return None
  name, lo, lo_pct, hi, hi_pct = match.groups()
  size = sizes[name]
  if lo_pct != hi_pct and lo and hi:
    return None  # Mixed units: leave it to TFDS.

  def bound(text, percent, default):
    if not text:
      return default
    value = int(text)
    if abs(value) > (100 if percent else size):
      raise UserError(f'Bad split {split!r}: {name} has {size} examples.')
    if percent:
      value = round(value * size / 100)  # TFDS's 'closest' rounding.
    return value + size if value < 0 else value

  return bound(lo, lo_pct, 0), bound(hi, hi_pct, size)


def _slice_bounds(split: str, sizes: dict[str, int]) -> tuple[int, int]:
  """[start, stop) of a TFDS split spec such as 'train[:45000]' or 'train'."""
  simple = _simple_slice(split, sizes)
  if simple is not None:
    return simple  # Needs no TFDS (not installed on many GPU images).
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  try:
    instructions = tfds.core.ReadInstruction.from_spec(split).to_absolute(
        {k: _SplitSize(v) for k, v in sizes.items()}
    )
  except (ValueError, AssertionError, KeyError) as e:
    raise UserError(f'Bad split {split!r}: {e}') from e
  if len(instructions) != 1:
    raise UserError(f'Split {split!r}: only one slice of one split works.')
  instruction = instructions[0]
  size = sizes[instruction.splitname]
  return instruction.from_ or 0, size if instruction.to is None else (
      instruction.to
  )
