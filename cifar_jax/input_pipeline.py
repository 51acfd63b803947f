"""Loads CIFAR-10 (TFDS, an image folder, or synthetic) and orders batches.

CIFAR-10 is small (150 MB as uint8), so each split is decoded once into
uint8 numpy arrays and kept in memory; training draws batches from them by
index. TensorFlow is imported only here, only to read data, and is hidden
from any GPU so it cannot take accelerator memory.

The batch order is a pure function of (seed, step) (`TrainOrder`), so a run
can be resumed at any step and gets the same data it would have seen.
"""

import dataclasses
import os
import socket
import time
import urllib.parse

from absl import logging
import ml_collections
import numpy as np

from cifar_jax.errors import UserError

CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog',
                   'frog', 'horse', 'ship', 'truck')
IMAGE_SHAPE = (32, 32, 3)


@dataclasses.dataclass(frozen=True)
class Dataset:
  """One split in memory: uint8 images (N, 32, 32, 3), int32 labels (N,)."""
  images: np.ndarray
  labels: np.ndarray
  class_names: tuple[str, ...]

  def __len__(self) -> int:
    return len(self.labels)


def load_split(config: ml_collections.ConfigDict, split: str) -> Dataset:
  """Loads `split` of `config.dataset` (TFDS slicing syntax allowed)."""
  start = time.time()
  if config.dataset == 'synthetic':
    ds = synthetic(split, config)
  elif config.dataset == 'image_folder':
    ds = _load_image_folder(config.data_dir, split)
  else:
    ds = _load_tfds(config.dataset, split, config.data_dir)
  logging.info('Loaded %s %r: %d images in %.1fs.', config.dataset, split,
               len(ds), time.time() - start)
  return ds


# ---------------------------------------------------------------- synthetic


def synthetic(split: str, config: ml_collections.ConfigDict) -> Dataset:
  """A small learnable data set: noisy, shifted copies of 10 class patterns.

  The class patterns are fixed (independent of `config.seed`), so train and
  eval share them; the examples of each split are drawn independently.
  """
  base = split.split('[')[0]
  sizes = {'train': config.synthetic_train_size,
           'test': config.synthetic_eval_size}
  if base not in sizes:
    raise UserError(f"The synthetic data set has splits 'train' and 'test', "
                    f'not {split!r}.')
  n = _slice_bounds(split, {base: sizes[base]})
  patterns = np.random.default_rng(1234).uniform(0, 255, (10, 8, 8, 3))
  patterns = patterns.repeat(4, axis=1).repeat(4, axis=2)  # 32x32 blocks.
  rng = np.random.default_rng(0 if base == 'train' else 1)
  labels = rng.integers(0, 10, sizes[base]).astype(np.int32)
  shifts = rng.integers(-2, 3, (sizes[base], 2))
  images = patterns[labels]
  images = np.stack([np.roll(im, tuple(s), axis=(0, 1))
                     for im, s in zip(images, shifts)])
  images = images + rng.normal(0, 48, images.shape)
  images = np.clip(images, 0, 255).astype(np.uint8)
  return Dataset(images[n[0]:n[1]], labels[n[0]:n[1]], CIFAR10_CLASSES)


# ---------------------------------------------------------------- TFDS


def _import_tf():
  """Imports TensorFlow for data loading only, hidden from all GPUs."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')
  return tf


def _load_tfds(name: str, split: str, data_dir: str | None) -> Dataset:
  """A TFDS data set, prepared in `data_dir` or downloaded if possible."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  _import_tf()
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise UserError(f'Unknown dataset {name!r}: use cifar10, image_folder or '
                    'synthetic.') from e
  if not builder.is_prepared():
    _check_can_download(builder)
    logging.info('Downloading and preparing %s in %s.', name,
                 builder.data_dir)
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
        '  --config.dataset=image_folder --config.data_dir=/path/to/root\n'
        '    where root holds <split>/<class>/*.jpg|png, e.g. the unzipped '
        'cifar10-jpeg.zip, or\n'
        '  --config.data_dir=/path/to/tensorflow_datasets that holds a '
        f'prepared {builder.name}/ copied from a machine with internet.'
    ) from e


# ---------------------------------------------------------------- folders


def _load_image_folder(root: str | None, split: str) -> Dataset:
  """`<root>/<split>/<class>/*.jpg|png` through TFDS's ImageFolder.

  Images of any size or mode become 32x32 RGB. When the class folders are
  CIFAR-10's names, labels follow CIFAR-10's order whatever the folder order.
  """
  if not root:
    raise UserError('dataset=image_folder needs --config.data_dir=<root>, '
                    'the folder that holds <split>/<class>/*.jpg.')
  root = os.path.expanduser(root)
  if not os.path.isdir(root):
    raise UserError(f'data_dir {root!r} is not a directory.')
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tf = _import_tf()
  builder = tfds.ImageFolder(root)
  base = split.split('[')[0]
  sizes = {k: v.num_examples for k, v in builder.info.splits.items()}
  if base not in sizes:
    raise UserError(f'No split {base!r} in {root}: it has '
                    f'{sorted(sizes) or "no <split>/<class>/ folders"}.')
  start, stop = _slice_bounds(split, sizes)
  names = tuple(builder.info.features['label'].names)

  def to_rgb32(image, label):
    image = tf.image.resize(image, IMAGE_SHAPE[:2], antialias=True)
    return tf.cast(tf.round(image), tf.uint8), label

  ds = builder.as_dataset(split=base, shuffle_files=False,
                          as_supervised=True)
  ds = ds.skip(start).take(stop - start)
  ds = ds.map(lambda im, y: tf.cond(
      tf.reduce_all(tf.shape(im)[:2] == IMAGE_SHAPE[:2]),
      lambda: (im, y), lambda: to_rgb32(im, y)))
  images, labels = [], []
  for im, y in tfds.as_numpy(ds.batch(4096)):
    images.append(im)
    labels.append(y)
  if not images:
    raise UserError(f'Split {split!r} of {root} holds no images.')
  labels = np.concatenate(labels).astype(np.int32)
  if sorted(names) == sorted(CIFAR10_CLASSES):
    to_cifar = np.array([CIFAR10_CLASSES.index(n) for n in names], np.int32)
    labels, names = to_cifar[labels], CIFAR10_CLASSES
  return Dataset(np.concatenate(images), labels, names)


@dataclasses.dataclass(frozen=True)
class _SplitSize:
  num_examples: int  # What ReadInstruction.to_absolute reads of a split.


def _slice_bounds(split: str, sizes: dict[str, int]) -> tuple[int, int]:
  """[start, stop) of a TFDS split spec such as 'train[:45000]' or 'train'."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    instructions = tfds.core.ReadInstruction.from_spec(split).to_absolute(
        {k: _SplitSize(v) for k, v in sizes.items()})
  except (ValueError, AssertionError, KeyError) as e:
    raise UserError(f'Bad split {split!r}: {e}') from e
  if len(instructions) != 1:
    raise UserError(f'Split {split!r}: only one slice of one split is '
                    'supported here.')
  instruction = instructions[0]
  size = sizes[instruction.splitname]
  return instruction.from_ or 0, size if instruction.to is None else (
      instruction.to)


# ---------------------------------------------------------------- batching


class TrainOrder:
  """Which examples make up training batch `step`: a function of (seed, step).

  The training stream is a sequence of passes over the data, each a fresh
  permutation seeded by (seed, pass), cut into ceil(N / B) batches with the
  last one partial, as Keras' `fit` and `fit_generator` drew them. Epochs are
  windows of `steps_per_epoch` batches over that stream, so an epoch shorter
  than a pass continues where the previous one stopped (as the seed's
  generators did) and a resumed run sees exactly the batches it would have.
  """

  def __init__(self, num_examples: int, batch_size: int, seed: int):
    self.num_examples = num_examples
    self.batch_size = batch_size
    self.seed = seed
    self.batches_per_pass = -(-num_examples // batch_size)
    self._pass, self._perm = -1, None

  def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, mask): `batch_size` indices; mask 0 marks padding."""
    pass_index, j = divmod(step, self.batches_per_pass)
    if pass_index != self._pass:
      rng = np.random.default_rng([self.seed, pass_index])
      self._pass, self._perm = pass_index, rng.permutation(self.num_examples)
    return _pad(self._perm[j * self.batch_size:(j + 1) * self.batch_size],
                self.batch_size)


def eval_batches(num_examples: int, batch_size: int):
  """(indices, mask) covering every example once; the last batch is padded."""
  for start in range(0, num_examples, batch_size):
    yield _pad(np.arange(start, min(start + batch_size, num_examples)),
               batch_size)


def _pad(idx: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
  """Pads indices to `size` (with index 0) and returns (indices, mask)."""
  mask = np.zeros(size, np.float32)
  mask[:len(idx)] = 1
  padded = np.zeros(size, np.int64)
  padded[:len(idx)] = idx
  return padded, mask
