"""Image files and pixels, for training data and for `predict` alike.

One reader, so a file classified by `predict` becomes the same pixels it
would have become as training data, and one scaling of uint8 pixels to the
models' [0, 1] inputs (the seed's `x / 255.0`).
"""

import io

import jax.numpy as jnp
import numpy as np

SHAPE = (32, 32, 3)
SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp', '.tif', '.tiff')


def is_image(name: str) -> bool:
  """Whether a file name has the suffix of an image format we read."""
  return name.lower().endswith(SUFFIXES)


def decode(data: bytes) -> np.ndarray:
  """Any image file Pillow reads -> (32, 32, 3) uint8.

  Converted to RGB (alpha dropped, grayscale and palette expanded); other
  sizes are resized with Pillow's bilinear filter (antialiased when
  shrinking; the aspect ratio is not kept, as CIFAR's images are square).
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top

  with Image.open(io.BytesIO(data)) as image:
    image = image.convert('RGB')
    if image.size != SHAPE[:2][::-1]:
      image = image.resize(
          SHAPE[:2][::-1], Image.Resampling.BILINEAR, reducing_gap=None
      )
    return np.asarray(image, np.uint8)


def to_unit_range(pixels, dtype=jnp.float32):
  """uint8 pixels -> `dtype` in [0, 1]; NumPy in, NumPy out (jax likewise)."""
  return pixels.astype(dtype) / 255.0
