"""Augmentation equals Keras' ImageDataGenerator (via SciPy), statistically."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import ndimage

from cifar_jax.data import augment


def keras_apply_affine_reference(x, tx, ty, zx, zy):
  """keras_preprocessing 1.1.0 `apply_affine_transform` (Keras 2.3's), for
  shift + zoom, channels last: the matrix, its centring, and scipy per channel.
  """
  shift = np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]])
  zoom = np.array([[zx, 0, 0], [0, zy, 0], [0, 0, 1]])
  matrix = shift @ zoom
  h, w = x.shape[:2]
  o_x, o_y = h / 2 + 0.5, w / 2 + 0.5
  offset = np.array([[1, 0, o_x], [0, 1, o_y], [0, 0, 1]])
  reset = np.array([[1, 0, -o_x], [0, 1, -o_y], [0, 0, 1]])
  matrix = offset @ matrix @ reset
  channels = [
      ndimage.affine_transform(
          x[..., c], matrix[:2, :2], matrix[:2, 2], order=1, mode='nearest'
      )
      for c in range(x.shape[-1])
  ]
  return np.stack(channels, axis=-1)


def _images(n, seed=0, size=32):
  rng = np.random.default_rng(seed)
  return rng.uniform(0, 1, (n, size, size, 3)).astype(np.float32)


PARAMS = [  # tx (height shift, px), ty (width), zx, zy
    (0.0, 0.0, 1.0, 1.0),
    (3.2, 0.0, 1.0, 1.0),
    (0.0, -2.7, 1.0, 1.0),
    (0.0, 0.0, 0.83, 1.17),
    (0.0, 0.0, 1.2, 0.8),
    (-3.1, 1.4, 1.13, 0.91),
    (2.5, 3.2, 0.8, 1.2),
]


@pytest.mark.parametrize('tx,ty,zx,zy', PARAMS)
def test_affine_matches_scipy_affine_transform_within_one_level(tx, ty, zx, zy):
  x = _images(1, seed=int(100 * abs(tx + ty + zx)))
  rows, cols = augment.keras_affine_matrices(
      *(jnp.array([v], jnp.float32) for v in (tx, ty, zx, zy)), 32, 32
  )
  ours = np.asarray(augment.resample(jnp.asarray(x), rows, cols))[0]
  ref = keras_apply_affine_reference(x[0].astype(np.float64), tx, ty, zx, zy)
  assert np.abs(ours - ref).max() <= 1 / 255
  if (tx, ty, zx, zy) != (0.0, 0.0, 1.0, 1.0):
    assert np.abs(ref - x[0]).max() > 0.1  # The transform did something.


def test_non_square_images_match_too():
  x = _images(1, seed=5)[:, :24, :]  # 24 x 32
  rows, cols = augment.keras_affine_matrices(
      jnp.array([1.7]),
      jnp.array([-2.2]),
      jnp.array([0.9]),
      jnp.array([1.15]),
      24,
      32,
  )
  ours = np.asarray(augment.resample(jnp.asarray(x), rows, cols))[0]
  ref = keras_apply_affine_reference(
      x[0].astype(np.float64), 1.7, -2.2, 0.9, 1.15
  )
  assert np.abs(ours - ref).max() <= 1 / 255


def test_full_batch_with_flip_matches_scipy_then_flip():
  config = augment.AugmentConfig(
      horizontal_flip=True,
      zoom_range=0.2,
      width_shift_range=0.1,
      height_shift_range=0.1,
  )
  x = _images(16, seed=1)
  key = jax.random.key(7)
  ours = np.asarray(augment.augment_batch(key, jnp.asarray(x), config))
  p = jax.tree.map(
      np.asarray,
      augment.sample_keras_params(key_for_keras(key), 16, 32, 32, config),
  )
  assert 0 < p['flip'].sum() < 16
  for i in range(16):
    ref = keras_apply_affine_reference(
        x[i].astype(np.float64), p['tx'][i], p['ty'][i], p['zx'][i], p['zy'][i]
    )
    if p['flip'][i]:
      ref = ref[:, ::-1]  # Keras flips after the warp.
    assert np.abs(ours[i] - ref).max() <= 1 / 255


def key_for_keras(key):
  """The key augment_batch hands to sample_keras_params."""
  return jax.random.split(key, 3)[0]


def test_sampled_parameters_have_keras_ranges_and_frequencies():
  config = augment.AugmentConfig(
      horizontal_flip=True,
      zoom_range=0.2,
      width_shift_range=0.1,
      height_shift_range=0.05,
  )
  n = 20000
  p = jax.tree.map(
      np.asarray,
      augment.sample_keras_params(jax.random.key(0), n, 32, 40, config),
  )
  # Shifts: uniform on [-r, r] * size; zoom: uniform on [0.8, 1.2].
  for name, lo, hi in (
      ('tx', -0.05 * 32, 0.05 * 32),
      ('ty', -0.1 * 40, 0.1 * 40),
      ('zx', 0.8, 1.2),
      ('zy', 0.8, 1.2),
  ):
    v = p[name]
    assert v.min() >= lo and v.max() <= hi
    assert v.min() < lo + 0.01 * (hi - lo) and v.max() > hi - 0.01 * (hi - lo)
    np.testing.assert_allclose(v.mean(), (lo + hi) / 2, atol=0.01 * (hi - lo))
    np.testing.assert_allclose(v.std(), (hi - lo) / np.sqrt(12), rtol=0.02)
  # zx and zy are drawn independently.
  assert abs(np.corrcoef(p['zx'], p['zy'])[0, 1]) < 0.03
  # Flip with p = 0.5: within 4 standard deviations of n / 2.
  assert abs(p['flip'].sum() - n / 2) < 4 * np.sqrt(n / 4)


def test_disabled_transforms_sample_identity():
  config = augment.AugmentConfig(zoom_range=0.2)
  p = augment.sample_keras_params(jax.random.key(0), 100, 32, 32, config)
  assert not np.any(p['flip']) and not np.any(p['tx']) and not np.any(p['ty'])
  x = jnp.asarray(_images(4))
  np.testing.assert_array_equal(
      augment.augment_batch(jax.random.key(0), x, augment.AugmentConfig()), x
  )


def test_flip_is_identity_or_mirror():
  config = augment.AugmentConfig(horizontal_flip=True)
  x = _images(32, seed=2)
  out = np.asarray(
      augment.augment_batch(jax.random.key(3), jnp.asarray(x), config)
  )
  flipped = 0
  for a, b in zip(out, x):
    if np.allclose(a, b[:, ::-1], atol=1e-6):
      flipped += 1
    else:
      np.testing.assert_allclose(a, b, atol=1e-6)
  assert 0 < flipped < 32


@pytest.mark.parametrize('mode', ['reflect', 'constant'])
def test_crop_with_padding_equals_numpy_pad_then_crop(mode):
  config = augment.AugmentConfig(crop_padding=4, crop_padding_mode=mode)
  x = _images(16, seed=3)
  key = jax.random.key(4)
  out = np.asarray(augment.augment_batch(key, jnp.asarray(x), config))
  shifts = np.asarray(
      jax.random.randint(jax.random.split(key, 3)[1], (2, 16), -4, 5)
  )
  padded = np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)), mode=mode)
  assert len({tuple(s) for s in shifts.T}) > 5
  for i, (dy, dx) in enumerate(shifts.T):
    ref = padded[i, 4 + dy : 4 + dy + 32, 4 + dx : 4 + dx + 32]
    np.testing.assert_allclose(out[i], ref, atol=1e-6)


def test_cutout_zeroes_one_whole_square_anywhere_inside_each_image():
  config = augment.AugmentConfig(cutout_size=8)
  x = _images(256, seed=4) + 0.5  # No zeros to begin with.
  out = np.asarray(
      augment.augment_batch(jax.random.key(5), jnp.asarray(x), config)
  )
  zeros = (out == 0).all(-1)
  corners = []
  for z in zeros:
    rows, cols = np.nonzero(z)
    # One whole 8x8 square, as airbench's (never clipped by the border).
    assert len(rows) == 64 and np.ptp(rows) == 7 and np.ptp(cols) == 7
    corners.append((rows.min(), cols.min()))
  corners = np.array(corners)
  # Top-left corners uniform over 0..24: both ends are reached.
  assert corners.min() == 0 and corners.max() == 32 - 8
  np.testing.assert_array_equal(out[~zeros], x[~zeros])


@pytest.mark.slow
def test_same_key_same_batch_and_jit_equals_eager():
  config = augment.AugmentConfig(
      horizontal_flip=True,
      zoom_range=0.2,
      width_shift_range=0.1,
      crop_padding=2,
      cutout_size=4,
  )
  x = jnp.asarray(_images(8, seed=6))
  key = jax.random.key(9)
  eager = augment.augment_batch(key, x, config)
  np.testing.assert_array_equal(eager, augment.augment_batch(key, x, config))
  jitted = jax.jit(augment.augment_batch, static_argnums=2)(key, x, config)
  np.testing.assert_allclose(jitted, eager, atol=1e-5)  # Fusion reorders.
  other = augment.augment_batch(jax.random.key(10), x, config)
  assert not np.allclose(other, eager)


def test_config_rejects_unknown_keys_and_modes():
  with pytest.raises(ValueError, match='zoom'):
    augment.AugmentConfig.from_config(ml_collections.ConfigDict({'zoom': 0.2}))
  with pytest.raises(ValueError, match='crop_padding_mode'):
    augment.AugmentConfig.from_config(
        ml_collections.ConfigDict({'crop_padding_mode': 'wrap'})
    )


def test_uint8_batches_give_the_float_result_in_0_255():
  config = augment.AugmentConfig(
      horizontal_flip=True, zoom_range=0.2, width_shift_range=0.1
  )
  x = np.random.default_rng(8).integers(0, 256, (4, 32, 32, 3), np.uint8)
  key = jax.random.key(11)
  from_uint8 = augment.augment_batch(key, jnp.asarray(x), config)
  from_float = augment.augment_batch(
      key, jnp.asarray(x, jnp.float32) / 255, config
  )
  assert from_uint8.dtype == jnp.float32
  np.testing.assert_allclose(from_uint8 / 255, from_float, atol=1e-5)
