"""Image files and pixels, for training data and for `predict` alike.

One reader, so a file classified by `predict` becomes the same pixels it
would have become as training data, and one mapping of uint8 pixels to the
models' inputs (`Normalization`: the seed's `x / 255.0`, then the fast
recipes' per-channel standardisation).
"""

import dataclasses
import io

import jax.numpy as jnp
import ml_collections
import numpy as np

from cifar_jax import rules

SHAPE = (32, 32, 3)
SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp', '.tif', '.tiff')


def is_image(name: str) -> bool:
  """Whether a file name has the suffix of an image format we read."""
  return name.lower().endswith(SUFFIXES)


def decode(data: bytes) -> np.ndarray:
  """Any image file Pillow reads -> (32, 32, 3) uint8.

  Converted to RGB (alpha dropped, grayscale and palette expanded); 16-bit
  grayscale is scaled to 8 bits (Pillow's own conversion clips it, which
  turns most images white); 32-bit integer and float pixels, whose range
  the file does not say, are refused (ValueError). Other sizes are resized
  with Pillow's bilinear filter (antialiased when shrinking; the aspect
  ratio is not kept, as CIFAR's images are square).
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top

  with Image.open(io.BytesIO(data)) as image:
    if image.mode.startswith('I;16'):
      wide = np.asarray(image).astype(np.uint32)
      image = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8))
    elif image.mode in ('I', 'F'):
      raise ValueError(
          f'{"32-bit integer" if image.mode == "I" else "floating-point"} '
          f'pixels (Pillow mode {image.mode!r}) have no known range; save the '
          'image with 8 or 16 bits per channel'
      )
    image = image.convert('RGB')
    if image.size != SHAPE[:2][::-1]:
      image = image.resize(
          SHAPE[:2][::-1], Image.Resampling.BILINEAR, reducing_gap=None
      )
    return np.asarray(image, np.uint8)


def to_unit_range(pixels, dtype=jnp.float32):
  """uint8 pixels -> `dtype` in [0, 1]; NumPy in, NumPy out (jax likewise)."""
  return pixels.astype(dtype) / 255.0


@dataclasses.dataclass(frozen=True)
class Normalization:
  """uint8 pixels -> model inputs: x / 255, then (x - mean) / std per channel.

  Empty `mean` and `std` leave the [0, 1] scale (the seed's Keras models);
  the fast recipes standardise with CIFAR-10's channel statistics, as
  airbench does before anything else (augmentation included, so cutout's
  zeros are the mean colour). NumPy in, NumPy out (jax likewise).
  """

  mean: tuple[float, ...] = ()
  std: tuple[float, ...] = ()

  def __post_init__(self):
    values = {'mean': self.mean, 'std': self.std}
    rules.check(values, rules.NORMALIZATION, 'data.')
    if len(self.mean) != len(self.std):
      raise ValueError('data.mean and data.std need a value per channel each')

  @classmethod
  def from_config(cls, data: ml_collections.ConfigDict) -> 'Normalization':
    """From a config's `data` section (runs saved before it had the keys
    read as no standardisation)."""
    as_tuple = lambda v: tuple(float(x) for x in (v or ()))
    return cls(as_tuple(data.get('mean')), as_tuple(data.get('std')))

  def __call__(self, pixels, dtype=None):
    """In `dtype`, by default float32 (float64 for float64 inputs)."""
    dtype = dtype or jnp.promote_types(pixels.dtype, jnp.float32)
    x = to_unit_range(pixels, dtype)
    if not self.mean:
      return x
    return (x - np.asarray(self.mean, dtype)) / np.asarray(self.std, dtype)

  def invert(self, x):
    """Model inputs -> [0, 1] pixels, for pictures of what the model sees."""
    if not self.mean:
      return x
    return x * np.asarray(self.std, x.dtype) + np.asarray(self.mean, x.dtype)
