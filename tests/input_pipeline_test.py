"""Data loading (synthetic, image folder, TFDS offline) and batch order."""

import socket
import sys
import time
import zipfile

import numpy as np
from PIL import Image
import pytest

from cifar_jax.data import image_folder
from cifar_jax.data import input_pipeline
from cifar_jax.errors import UserError
from conftest import get_config
from conftest import write_image_folder


def _config(**overrides):
  """The test config's `data` section, uncached, with `overrides`."""
  config = get_config('test').data
  config.cache_dir = ''
  config.update(overrides)
  return config


def test_synthetic_splits_are_deterministic_uint8_and_sliceable():
  config = _config()
  train = input_pipeline.load_split(config, 'train')
  assert train.images.shape == (512, 32, 32, 3)
  assert train.images.dtype == np.uint8 and train.labels.dtype == np.int32
  assert set(np.unique(train.labels)) == set(range(10))
  again = input_pipeline.load_split(config, 'train')
  np.testing.assert_array_equal(train.images, again.images)
  head = input_pipeline.load_split(config, 'train[:400]')
  tail = input_pipeline.load_split(config, 'train[400:]')
  np.testing.assert_array_equal(
      np.concatenate([head.labels, tail.labels]), train.labels
  )
  test = input_pipeline.load_split(config, 'test')
  assert len(test) == 200 and not np.array_equal(
      test.images[:10], train.images[:10]
  )


def test_synthetic_refuses_unknown_split():
  with pytest.raises(UserError, match='validation'):
    input_pipeline.load_split(_config(), 'validation')


def test_image_folder_maps_cifar_class_names_to_cifar_label_order(tmp_path):
  # 'frog' etc.: folder names are CIFAR-10's, listed alphabetically by TFDS.
  write_image_folder(tmp_path, input_pipeline.CIFAR10_CLASSES, per_class=3)
  config = _config(name='image_folder', dir=str(tmp_path))
  train = input_pipeline.load_split(config, 'train')
  assert train.images.shape == (30, 32, 32, 3)
  assert train.class_names == input_pipeline.CIFAR10_CLASSES
  # Each image's colour says which class folder it came from.
  np.testing.assert_array_equal(train.images[:, 0, 0, 0] // 20, train.labels)


def test_image_folder_converts_any_size_and_mode_and_slices(tmp_path):
  write_image_folder(
      tmp_path, ('cats', 'dogs'), per_class=5, size=(40, 20), mode='L'
  )
  config = _config(name='image_folder', dir=str(tmp_path))
  full = input_pipeline.load_split(config, 'test')
  assert full.images.shape == (10, 32, 32, 3)
  assert full.class_names == ('cats', 'dogs')
  np.testing.assert_array_equal(full.images[:, 5, 5, 0] // 20, full.labels)
  part = input_pipeline.load_split(config, 'test[4:]')
  np.testing.assert_array_equal(part.labels, full.labels[4:])


def test_image_folder_errors_are_clear(tmp_path):
  with pytest.raises(UserError, match='needs --config.data.dir'):
    input_pipeline.load_split(_config(name='image_folder'), 'train')
  with pytest.raises(UserError, match='not a directory'):
    input_pipeline.load_split(
        _config(name='image_folder', dir=str(tmp_path / 'nope')),
        'train',
    )
  write_image_folder(tmp_path, ('a', 'b'), per_class=1)
  with pytest.raises(UserError, match="No split 'validation'"):
    input_pipeline.load_split(
        _config(name='image_folder', dir=str(tmp_path)), 'validation'
    )


def test_image_zip_equals_the_unzipped_folder_and_needs_no_tensorflow(
    tmp_path, monkeypatch
):
  write_image_folder(
      tmp_path / 'top', ('cats', 'dogs', 'owls'), per_class=4, size=(36, 30)
  )
  archive = tmp_path / 'images.zip'
  with zipfile.ZipFile(archive, 'w') as z:  # One top-level folder, as the
    for path in sorted((tmp_path / 'top').rglob('*.png')):  # shared copy.
      z.write(path, path.relative_to(tmp_path))
  # Reading images must not import TensorFlow or TFDS (absent on GPU images).
  monkeypatch.setitem(sys.modules, 'tensorflow', None)
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', None)
  from_zip = input_pipeline.load_split(
      _config(name='image_folder', dir=str(archive)), 'train'
  )
  from_folder = input_pipeline.load_split(
      _config(name='image_folder', dir=str(tmp_path / 'top')), 'train'
  )
  assert from_zip.class_names == ('cats', 'dogs', 'owls')
  np.testing.assert_array_equal(from_zip.images, from_folder.images)
  np.testing.assert_array_equal(from_zip.labels, from_folder.labels)
  np.testing.assert_array_equal(
      from_zip.images[:, 3, 3, 0] // 20, from_zip.labels
  )
  # Shuffled once, not grouped by class, so a slice holds every class.
  assert len(set(from_zip.labels[:6].tolist())) > 1
  assert sorted(from_zip.labels.tolist()) == [0] * 4 + [1] * 4 + [2] * 4


def test_images_in_subfolders_of_a_class_folder_belong_to_that_class(
    tmp_path,
):
  write_image_folder(tmp_path, ('a', 'b'), per_class=3)
  (tmp_path / 'train' / 'b' / 'more' / 'deeper').mkdir(parents=True)
  for i in (1, 2):  # Class b's images 1 and 2, a folder and two down.
    (tmp_path / 'train' / 'b' / f'{i}.png').rename(
        tmp_path / 'train' / 'b' / 'more' / ('deeper/' * (i - 1)) / f'{i}.png'
    )
  data = input_pipeline.load_split(
      _config(name='image_folder', dir=str(tmp_path)), 'train'
  )
  assert data.class_names == ('a', 'b')
  assert sorted(data.labels.tolist()) == [0, 0, 0, 1, 1, 1]
  np.testing.assert_array_equal(data.images[:, 0, 0, 0] // 20, data.labels)


def test_a_zip_as_macos_makes_it_is_read_without_its_metadata(tmp_path):
  """Finder's "Compress": one folder around the splits, and a __MACOSX
  tree of `._<name>` resource forks that are no images."""
  write_image_folder(tmp_path / 'fruit', ('kiwi', 'lime'), per_class=2)
  archive = tmp_path / 'fruit.zip'
  with zipfile.ZipFile(archive, 'w') as z:
    for path in sorted((tmp_path / 'fruit').rglob('*')):
      name = str(path.relative_to(tmp_path))
      z.write(path, name)
      if path.is_file():
        folder, base = name.rsplit('/', 1)
        z.writestr(f'__MACOSX/{folder}/._{base}', b'\x00\x05\x16\x07')
  data = input_pipeline.load_split(
      _config(name='image_folder', dir=str(archive)), 'test'
  )
  assert data.class_names == ('kiwi', 'lime') and len(data) == 4


def test_a_layout_without_the_split_says_what_it_found(tmp_path):
  write_image_folder(tmp_path / 'x' / 'y', ('a',), per_class=1)  # x/y/train
  (tmp_path / 'z').mkdir()
  with pytest.raises(
      UserError,
      match=r"No split 'train' in .*: it has \['y'\] \(the layout read is "
      r'<split>/<class>/<image>, or one folder around it\)',
  ):
    input_pipeline.load_split(
        _config(name='image_folder', dir=str(tmp_path)), 'train'
    )


def test_a_file_that_is_not_a_zip_is_a_clear_error(tmp_path):
  bad = tmp_path / 'data.zip'
  bad.write_bytes(b'not a zip')
  with pytest.raises(UserError, match='not a readable zip'):
    input_pipeline.load_split(
        _config(name='image_folder', dir=str(bad)), 'train'
    )


@pytest.mark.parametrize(
    'spec',
    [
        'train',
        'train[:45000]',
        'train[45000:]',
        'train[-5000:]',
        'train[:-5000]',
        'train[10%:]',
        'train[:33%]',
        'train[-10%:]',
        'train[5:10]',
    ],
)
def test_common_slices_match_tfds_without_importing_it(spec, monkeypatch):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  sizes = {'train': 50000, 'test': 10000}
  (expected,) = tfds.core.ReadInstruction.from_spec(spec).to_absolute(
      {k: input_pipeline._SplitSize(v) for k, v in sizes.items()}
  )
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', None)
  assert input_pipeline._slice_bounds(spec, sizes) == (
      expected.from_ or 0,
      50000 if expected.to is None else expected.to,
  )
  with pytest.raises(UserError, match='has 50000 examples'):
    input_pipeline._slice_bounds('train[:60000]', sizes)


def test_offline_tfds_fails_within_seconds_saying_how_to_train_offline(
    tmp_path, monkeypatch
):
  def no_network(*args, **kwargs):
    raise OSError('Name or service not known')

  monkeypatch.setattr(socket, 'create_connection', no_network)
  start = time.monotonic()
  with pytest.raises(UserError) as e:
    input_pipeline.load_split(
        _config(name='cifar10', dir=str(tmp_path)), 'train'
    )
  assert time.monotonic() - start < 30
  assert 'cannot be downloaded' in str(e.value)
  assert '--config.data.name=image_folder' in str(e.value)


def test_real_jpeg_copy_loads_with_cifar_labels(shared_zip, tmp_path):
  """A few real images per class from the shared copy, via the folder path."""
  with zipfile.ZipFile(shared_zip) as z:
    names = [n for n in z.namelist() if n.endswith('.jpg')]
    picked = []
    for split in ('train', 'test'):
      for cls in input_pipeline.CIFAR10_CLASSES:
        prefix = f'cifar10-jpeg/{split}/{cls}/'
        picked += [n for n in names if n.startswith(prefix)][:4]
    z.extractall(tmp_path, picked)
  config = _config(name='image_folder', dir=str(tmp_path / 'cifar10-jpeg'))
  test = input_pipeline.load_split(config, 'test')
  assert test.images.shape == (40, 32, 32, 3)
  assert np.bincount(test.labels).tolist() == [4] * 10
  assert test.images.std() > 20  # Real photos, not blank decodes.


def test_shared_zip_loads_whole_test_split_as_libjpeg_decodes_it(shared_zip):
  """The real copy, read straight from the zip: 1,000 images per class."""
  config = _config(name='image_folder', dir=str(shared_zip))
  test = input_pipeline.load_split(config, 'test')
  assert test.images.shape == (10000, 32, 32, 3)
  assert test.class_names == input_pipeline.CIFAR10_CLASSES
  assert np.bincount(test.labels).tolist() == [1000] * 10
  # Spot-check one image against a direct Pillow decode of its member.
  with zipfile.ZipFile(shared_zip) as z:
    name = 'cifar10-jpeg/test/frog/0007.jpg'
    direct = np.asarray(Image.open(z.open(name)).convert('RGB'))
  matches = np.flatnonzero((test.images == direct).all(axis=(1, 2, 3)))
  assert len(matches) >= 1
  assert test.labels[matches[0]] == input_pipeline.CIFAR10_CLASSES.index('frog')


def test_decoded_splits_are_cached_and_refreshed_when_files_change(
    tmp_path, monkeypatch
):
  root = tmp_path / 'data'
  write_image_folder(root, ('a', 'b'), per_class=4)
  config = _config(
      name='image_folder',
      dir=str(root),
      cache_dir=str(tmp_path / 'cache'),
  )
  first = input_pipeline.load_split(config, 'train[:6]')
  assert len(list((tmp_path / 'cache').glob('*.npz'))) == 1
  calls = []
  real_loader = input_pipeline._load_image_folder

  def counting_loader(*args, **kwargs):
    calls.append(args)
    return real_loader(*args, **kwargs)

  monkeypatch.setattr(input_pipeline, '_load_image_folder', counting_loader)
  again = input_pipeline.load_split(config, 'train[:6]')
  full = input_pipeline.load_split(config, 'train')  # Same cached split.
  assert not calls
  np.testing.assert_array_equal(again.images, first.images)
  np.testing.assert_array_equal(full.labels[:6], first.labels)
  Image.new('RGB', (32, 32)).save(root / 'train' / 'a' / 'new.png')
  assert len(input_pipeline.load_split(config, 'train')) == 9
  assert len(calls) == 1


def test_unreadable_cache_is_ignored_and_rewritten(tmp_path):
  root = tmp_path / 'data'
  write_image_folder(root, ('a', 'b'), per_class=2)
  config = _config(
      name='image_folder',
      dir=str(root),
      cache_dir=str(tmp_path / 'cache'),
  )
  first = input_pipeline.load_split(config, 'test')
  (cache_file,) = (tmp_path / 'cache').glob('*.npz')
  cache_file.write_bytes(cache_file.read_bytes()[:100])  # Truncated.
  again = input_pipeline.load_split(config, 'test')
  np.testing.assert_array_equal(again.images, first.images)
  with np.load(cache_file) as f:  # Rewritten whole.
    np.testing.assert_array_equal(f['labels'], first.labels)


def test_a_slow_decode_says_how_far_it_is_every_few_seconds(
    tmp_path, monkeypatch, capsys
):
  """Decoding CIFAR-10's zip takes a minute: a line every 5 s with a count
  (here each image 'takes' 3 s, so every second one is counted aloud)."""
  write_image_folder(tmp_path, ('cats', 'dogs'), per_class=3)
  clock = iter(range(0, 1000, 3))
  monkeypatch.setattr(image_folder.time, 'monotonic', lambda: next(clock))
  image_folder.load('train', str(tmp_path), 'train')
  assert capsys.readouterr().out.splitlines() == [
      f"Decoded {n}/6 images of split 'train' in {tmp_path}." for n in (2, 4, 6)
  ]
