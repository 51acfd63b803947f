"""Original training images beside augmented views of them, as a picture.

Numbers in tests prove the transform equals Keras'; this picture lets a
person see that the augmentation looks right (nothing upside down, borders
filled by repeating the edge, zooms centred). The command is
`cifar_jax.show_augment`.
"""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cifar_jax.data import augment
from cifar_jax.data import images as images_lib
from cifar_jax.data import input_pipeline
from cifar_jax.errors import UserError
from cifar_jax.reporting import plots


def augmented_views(
    images: np.ndarray,
    aug: augment.AugmentConfig,
    key: jax.Array,
    num_views: int,
    normalization: images_lib.Normalization = images_lib.Normalization(),
) -> np.ndarray:
  """(views, n, h, w, c) float images in [0, 1], one key per view.

  Augments the normalised inputs as training does (so cutout's zeros are the
  mean colour under the fast recipes), then maps them back for display.
  """
  x = normalization(jnp.asarray(images))
  keys = [jax.random.fold_in(key, v) for v in range(num_views)]
  views = [normalization.invert(augment.augment_batch(k, x, aug)) for k in keys]
  return np.clip(np.stack(views), 0, 1)


def figure(
    config: ml_collections.ConfigDict, num_images: int, num_views: int
) -> plots.Figure:
  """The grid: a row per training image, the original first, then its views."""
  aug = augment.AugmentConfig.from_config(config.augment)
  data = input_pipeline.load_split(config.data, config.data.train_split)
  rng = np.random.default_rng(config.seed)
  pick = rng.choice(len(data), num_images, replace=False)
  images = data.images[pick]
  normalization = images_lib.Normalization.from_config(config.data)
  key = jax.random.key(config.seed)
  views = augmented_views(images, aug, key, num_views, normalization)
  fig = plots.Figure(figsize=(1.3 * (num_views + 1), 1.3 * num_images))
  axes = fig.subplots(num_images, num_views + 1, squeeze=False)
  for i in range(num_images):
    original = images_lib.to_unit_range(images[i], np.float64)
    row = [original] + [views[v, i] for v in range(num_views)]
    for j, image in enumerate(row):
      ax = axes[i, j]
      ax.imshow(image, interpolation='nearest')
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        ax.set_title('original' if j == 0 else f'view {j}', fontsize=9)
    axes[i, 0].set_ylabel(data.class_names[data.labels[pick[i]]], fontsize=9)
  settings = {k: v for k, v in config.augment.items() if v}
  if not config.augment.crop_padding:
    settings.pop('crop_padding_mode')
  fig.suptitle(f'augment: {settings or "none (all transforms off)"}',
               fontsize=9)  # fmt: skip
  fig.tight_layout()
  return fig


def render(
    config: ml_collections.ConfigDict, out: str, num_images: int, num_views: int
) -> None:
  """Writes `figure` as a PNG."""
  figure(config, num_images, num_views).savefig(out, dpi=100)


def png_path(out: str) -> str:
  """Where `--out` writes: `out`, with `.png` added as Matplotlib adds it
  to a name without a suffix; refused before the slow part if its folder
  is missing."""
  path = out if os.path.splitext(out)[1] else out + '.png'
  folder = os.path.dirname(path) or '.'
  if not os.path.isdir(folder):
    raise UserError(f'--out {out}: the folder {folder} does not exist.')
  return path
