"""On-device augmentation: Keras' ImageDataGenerator and fast-recipe transforms.

Every transform here maps output pixel (i, l) to input pixel coordinates that
depend on i alone (rows) and on l alone (columns): ImageDataGenerator's
shift + zoom (a diagonal affine matrix: no rotation or shear), the horizontal
flip, and pad-and-crop. So a bilinear resampling of an image X is exactly
`R @ X @ C.T`, with R (h x h) and C (w x w) holding each output row's (and
column's) two interpolation weights. Transforms compose by multiplying their
matrices, and the whole batch is resampled by one batched matmul: cheap on
any accelerator, and no gathers.

Keras 2.3 semantics reproduced (keras_preprocessing 1.1.0, which resampled
with `scipy.ndimage.affine_transform(order=1, mode='nearest')`):
- tx (the *height* shift) = U(-r, r) * h, ty (width) = U(-r, r) * w;
- zx (rows), zy (columns) independently U(1 - z, 1 + z); z > 1 zooms out;
- the matrix maps output to input coordinates about the centre
  o = size / 2 + 0.5 (that release's constant; later ones use - 0.5):
  input_row = zx * (row - o) + o + tx, clamped to the image ('nearest');
- the horizontal flip (p = 0.5) comes after the warp.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from cifar_jax import rules

HIGHEST = jax.lax.Precision.HIGHEST  # Exact f32 matmuls on TPU/GPU too.


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """The `augment` section of a config, hashable so jit can close over it."""

  horizontal_flip: bool = False
  # 'random': each image flipped with probability 1/2 at every step;
  # 'alternating' (the fast recipes): a random half in the first pass, then
  # each image flipped in every other pass, so every pass sees both views.
  flip_mode: str = 'random'
  width_shift_range: float = 0.0
  height_shift_range: float = 0.0
  zoom_range: float = 0.0
  crop_padding: int = 0
  crop_padding_mode: str = 'reflect'
  cutout_size: int = 0
  # Per image: x + U(-b, b), then x * U(1 - c, 1 + c) (hiverge's record),
  # on the model's inputs (after normalisation).
  brightness: float = 0.0
  contrast: float = 0.0

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> 'AugmentConfig':
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(config.keys()) - fields
    if unknown:
      raise ValueError(
          f'Unknown augment keys {sorted(unknown)}; known: '
          f'{sorted(fields)}.'
      )
    rules.check(config, rules.AUGMENT, 'augment.')
    return cls(**config.to_dict())

  @property
  def enabled(self) -> bool:
    return any(getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ('flip_mode', 'crop_padding_mode'))  # fmt: skip


def interpolation_matrix(coords: jax.Array, size: int) -> jax.Array:
  """Bilinear weights, (n,) input coordinates -> (n, size); edges clamped.

  Clamping the coordinate to [0, size - 1] before interpolating is exactly
  scipy's mode='nearest' (the border pixel repeated) for order 1.
  """
  coords = jnp.clip(coords, 0.0, size - 1.0)
  lo = jnp.floor(coords)
  frac = (coords - lo)[:, None]
  lo = lo.astype(jnp.int32)
  hi = jnp.minimum(lo + 1, size - 1)
  return (1 - frac) * jax.nn.one_hot(lo, size) + frac * jax.nn.one_hot(hi, size)


def keras_affine_matrices(
    tx: jax.Array,
    ty: jax.Array,
    zx: jax.Array,
    zy: jax.Array,
    height: int,
    width: int,
) -> tuple[jax.Array, jax.Array]:
  """(R (batch, h, h), C (batch, w, w)) of Keras' `apply_affine_transform(x,
  tx=, ty=, zx=, zy=)`: (batch,) shifts in pixels of height and width, and
  zooms of rows and columns."""

  def axis(shift, zoom, size):
    centre = size / 2 + 0.5
    out = jnp.arange(size, dtype=jnp.float32)
    coords = zoom[:, None] * (out - centre) + centre + shift[:, None]
    return jax.vmap(lambda c: interpolation_matrix(c, size))(coords)

  return axis(tx, zx, height), axis(ty, zy, width)


def flip_matrices(flip: jax.Array, width: int) -> jax.Array:
  """(batch, w, w): the identity, or the mirror where `flip` is true."""
  eye = jnp.eye(width)
  return jnp.where(flip[:, None, None], eye[::-1], eye)


def crop_matrices(shift: jax.Array, size: int, mode: str) -> jax.Array:
  """(batch, size, size) 0/1 matrices of pad-and-crop: output i reads input
  i + shift (`shift`: (batch,) in [-padding, padding]), padded by `mode`:
  'reflect' (np.pad's: the edge is not repeated) or 'constant' (zeros)."""
  src = jnp.arange(size)[None, :] + shift[:, None]
  inside = (src >= 0) & (src < size)
  if mode == 'reflect':
    src = jnp.abs(src)
    src = jnp.where(src >= size, 2 * (size - 1) - src, src)
    inside = jnp.ones_like(inside)
  return jax.nn.one_hot(jnp.clip(src, 0, size - 1), size) * inside[..., None]


def cutout_mask(
    key: jax.Array, batch: int, height: int, width: int, size: int
) -> jax.Array:
  """(batch, h, w, 1): zero on a size x size square inside the image.

  The square's top-left corner is uniform over the positions that keep it
  whole, as airbench's `make_random_square_masks`.
  """
  k_y, k_x = jax.random.split(key)
  top = jax.random.randint(k_y, (batch, 1), 0, height - size + 1)
  left = jax.random.randint(k_x, (batch, 1), 0, width - size + 1)
  rows = jnp.arange(height)[None, :] - top
  cols = jnp.arange(width)[None, :] - left
  rows = (rows >= 0) & (rows < size)
  cols = (cols >= 0) & (cols < size)
  hole = rows[:, :, None] & cols[:, None, :]
  return (~hole)[..., None].astype(jnp.float32)


def resample(images: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
  """out[b] = rows[b] @ images[b] @ cols[b].T, per channel."""
  return jnp.einsum('bij,bjkc,blk->bilc', rows, images, cols, precision=HIGHEST)


def sample_keras_params(
    key: jax.Array, batch: int, height: int, width: int, config: AugmentConfig
) -> dict[str, jax.Array]:
  """ImageDataGenerator's random parameters for `batch` images."""
  k_tx, k_ty, k_zoom, k_flip = jax.random.split(key, 4)
  hs, ws = config.height_shift_range, config.width_shift_range
  z = config.zoom_range
  zoom = jax.random.uniform(k_zoom, (2, batch), minval=1 - z, maxval=1 + z)
  return {
      'tx': jax.random.uniform(k_tx, (batch,), minval=-hs, maxval=hs) * height,
      'ty': jax.random.uniform(k_ty, (batch,), minval=-ws, maxval=ws) * width,
      'zx': zoom[0],
      'zy': zoom[1],
      'flip': (jax.random.uniform(k_flip, (batch,)) < 0.5)
      & config.horizontal_flip,
  }


def alternating_flips(
    key: jax.Array, indices: jax.Array, pass_index: jax.Array
) -> jax.Array:
  """Whether to flip each example (by data set index) in pass `pass_index`.

  Each example has a fixed random bit; it is flipped in the passes where
  bit + pass is odd, so consecutive passes show it both ways.
  """
  key = jax.random.split(key)[1]  # Not fold_in(key, step)'s stream.
  bits = jax.vmap(lambda i: jax.random.bernoulli(jax.random.fold_in(key, i)))(
      indices
  )
  return (bits.astype(jnp.int32) + pass_index) % 2 == 1


def _then(first: jax.Array | None, second: jax.Array) -> jax.Array:
  """The matrix applying `first` (if any), then `second`."""
  if first is None:
    return second
  return jnp.matmul(second, first, precision=HIGHEST)


def _resampling_matrices(
    keys: tuple[jax.Array, jax.Array],
    batch: int,
    height: int,
    width: int,
    config: AugmentConfig,
    flips: jax.Array | None,
) -> tuple[jax.Array | None, jax.Array | None]:
  """Row and column matrices of the warp, flip and crop (None: identity)."""
  k_keras, k_crop = keys
  p = sample_keras_params(k_keras, batch, height, width, config)
  rows = cols = None
  if config.width_shift_range or config.height_shift_range or config.zoom_range:
    rows, cols = keras_affine_matrices(
        p['tx'], p['ty'], p['zx'], p['zy'], height, width
    )
  if config.horizontal_flip:
    cols = _then(
        cols, flip_matrices(p['flip'] if flips is None else flips, width)
    )
  if config.crop_padding:
    shifts = jax.random.randint(
        k_crop, (2, batch), -config.crop_padding, config.crop_padding + 1
    )
    rows = _then(
        rows, crop_matrices(shifts[0], height, config.crop_padding_mode)
    )
    cols = _then(
        cols, crop_matrices(shifts[1], width, config.crop_padding_mode)
    )
  return rows, cols


def augment_batch(
    key: jax.Array,
    images: jax.Array,
    config: AugmentConfig,
    flips: jax.Array | None = None,
) -> jax.Array:
  """A (batch, h, w, c) batch augmented image by image, as float32 (or
  float64) in the input's value range: Keras' shift/zoom warp, its flip,
  pad-and-crop, brightness and contrast, then cutout; only the enabled ones
  cost anything. `flips` ((batch,) bool) replaces the random flips
  (`alternating_flips`)."""
  images = images.astype(jnp.promote_types(images.dtype, jnp.float32))
  if not config.enabled:
    return images
  batch, height, width, _ = images.shape
  k_keras, k_crop, k_cutout = jax.random.split(key, 3)
  rows, cols = _resampling_matrices(
      (k_keras, k_crop), batch, height, width, config, flips
  )
  if rows is not None or cols is not None:
    eye = lambda n: jnp.broadcast_to(jnp.eye(n), (batch, n, n))
    images = resample(
        images,
        eye(height) if rows is None else rows,
        eye(width) if cols is None else cols,
    )
  if config.brightness or config.contrast:
    k_shift, k_scale = jax.random.split(jax.random.fold_in(key, 3))
    uniform = lambda k, r: jax.random.uniform(
        k, (batch, 1, 1, 1), minval=-r, maxval=r
    )
    images = (images + uniform(k_shift, config.brightness)) * (
        1 + uniform(k_scale, config.contrast)
    )
  if config.cutout_size:
    images = images * cutout_mask(
        k_cutout, batch, height, width, config.cutout_size
    )
  return images


@dataclasses.dataclass(frozen=True)
class TTA:
  """Test-time augmentation: the `eval_tta*` keys of a config."""

  level: int = 0
  # Level 2's six views: weighted as airbench ('airbench') or equally
  # (hiverge's record: 'uniform').
  weights: str = 'airbench'
  # The share of each batch, least confident first (the plain pass's top
  # softmax probability), that gets level 2's views (1.0 = all).
  share: float = 1.0

  @classmethod
  def from_config(
      cls, config: ml_collections.ConfigDict, level: int | None = None
  ) -> 'TTA':
    """The config's, its level replaced by `level` unless None."""
    level = config.eval_tta if level is None else level
    return cls(level, config.eval_tta_weights, config.eval_tta_share)


def tta_logits(apply: Any, images: jax.Array, tta: TTA) -> jax.Array:
  """Logits with test-time augmentation, as the fast recipes evaluate.

  level 0: the images; 1: the mean with their mirror images; 2: half that,
  plus a quarter each of the same for the images translated by one pixel
  up-left and down-right (reflect padding), or with weights 'uniform' the
  mean of those six views. At level 2 a `share` below 1 augments only that
  share of the batch, the least confident, and keeps the plain logits of
  the rest (hiverge's record).
  """
  if tta.level == 2 and tta.share < 1:
    plain = apply(images)
    confidence = jnp.max(jax.nn.softmax(plain), axis=-1)
    _, unsure = jax.lax.top_k(-confidence, int(len(images) * tta.share))
    whole = dataclasses.replace(tta, share=1.0)
    return plain.at[unsure].set(tta_logits(apply, images[unsure], whole))

  def mirrored(x):
    if tta.level == 0:
      return apply(x)
    return 0.5 * (apply(x) + apply(x[:, :, ::-1]))

  logits = mirrored(images)
  if tta.level >= 2:
    padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode='reflect')
    h, w = images.shape[1:3]
    moved = mirrored(padded[:, :h, :w]) + mirrored(padded[:, 2:, 2:])
    if tta.weights == 'uniform':
      return (logits + moved) / 3
    logits = 0.5 * logits + 0.25 * moved
  return logits
