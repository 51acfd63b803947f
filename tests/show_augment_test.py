"""The augmentation picture: a real PNG grid of originals and their views."""

import os
import subprocess
import sys

import jax
import numpy as np
from PIL import Image

from cifar_jax import augment
from cifar_jax import show_augment
from conftest import get_config
from conftest import REPO


def test_views_are_augmented_copies_in_unit_range():
  images = np.random.default_rng(0).integers(
      0, 256, (3, 32, 32, 3), dtype=np.uint8
  )
  aug = augment.AugmentConfig(horizontal_flip=True, zoom_range=0.2)
  views = show_augment.augmented_views(images, aug, jax.random.key(0), 4)
  assert views.shape == (4, 3, 32, 32, 3)
  assert views.min() >= 0 and views.max() <= 1
  assert not np.allclose(views[0], views[1])  # Each view its own draw.


def test_render_writes_a_grid_png_of_the_requested_size(tmp_path):
  config = get_config('test')
  config.augment.zoom_range = 0.2
  config.augment.horizontal_flip = True
  out = tmp_path / 'grid.png'
  show_augment.render(config, str(out), num_images=3, num_views=4)
  image = Image.open(out)
  # figsize 1.3 in per cell at 100 dpi: 5 columns x 3 rows.
  assert image.size == (650, 390)
  pixels = np.asarray(image.convert('RGB'))
  assert pixels.std() > 10  # Not a blank canvas.


def test_cli_writes_the_png(tmp_path):
  out = tmp_path / 'a.png'
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  r = subprocess.run(
      [
          sys.executable,
          '-m',
          'cifar_jax.show_augment',
          '--config',
          'configs/bn_aug_sgd.py',
          '--config.data.name=synthetic',
          '--num_images=2',
          '--num_views=2',
          f'--out={out}',
      ],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert r.returncode == 0, r.stderr[-2000:]
  assert Image.open(out).format == 'PNG'
