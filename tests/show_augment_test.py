"""The augmentation picture: a real PNG grid of originals and their views."""

import os
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
import pytest

from cifar_jax.data import augment
from cifar_jax.data import images as images_lib
from cifar_jax.errors import UserError
from cifar_jax.reporting import augment_views
from conftest import get_config
from conftest import REPO


def test_views_are_augmented_copies_in_unit_range():
  images = np.random.default_rng(0).integers(
      0, 256, (3, 32, 32, 3), dtype=np.uint8
  )
  aug = augment.AugmentConfig(horizontal_flip=True, zoom_range=0.2)
  views = augment_views.augmented_views(images, aug, jax.random.key(0), 4)
  assert views.shape == (4, 3, 32, 32, 3)
  assert views.min() >= 0 and views.max() <= 1
  assert not np.allclose(views[0], views[1])  # Each view its own draw.


def test_normalization_inverts_to_the_unit_range_pixels():
  pixels = np.random.default_rng(1).integers(0, 256, (2, 4, 4, 3), np.uint8)
  norm = images_lib.Normalization((0.5, 0.4, 0.3), (0.25, 0.2, 0.1))
  np.testing.assert_allclose(
      norm.invert(norm(pixels, np.float64)),
      images_lib.to_unit_range(pixels, np.float64),
      atol=1e-12,
  )


def test_views_show_cutout_as_the_mean_colour_of_normalised_inputs():
  # Training cuts out normalised inputs, so the hole is the mean colour, not
  # black; the picture must show what the model sees.
  images = np.full((1, 32, 32, 3), 200, np.uint8)
  mean = (0.5, 0.25, 0.75)
  norm = images_lib.Normalization(mean, (0.2, 0.2, 0.2))
  aug = augment.AugmentConfig(cutout_size=8)
  views = augment_views.augmented_views(images, aug, jax.random.key(0), 2, norm)
  hole = np.all(np.abs(views - 200 / 255) > 1e-4, axis=-1)
  assert hole.sum(axis=(2, 3)).tolist() == [[64], [64]]
  np.testing.assert_allclose(views[hole], np.tile(mean, (128, 1)), atol=1e-5)


def test_render_writes_a_grid_png_of_the_requested_size(tmp_path):
  config = get_config('test')
  config.augment.zoom_range = 0.2
  config.augment.horizontal_flip = True
  out = tmp_path / 'grid.png'
  augment_views.render(config, str(out), num_images=3, num_views=4)
  image = Image.open(out)
  # figsize 1.3 in per cell at 100 dpi: 5 columns x 3 rows.
  assert image.size == (650, 390)
  pixels = np.asarray(image.convert('RGB'))
  assert pixels.std() > 10  # Not a blank canvas.


@pytest.mark.slow
@pytest.mark.parametrize('name', ['a.png', 'a'])
def test_cli_writes_the_png_and_names_it(tmp_path, name):
  out = tmp_path / name
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
  path = tmp_path / 'a.png'
  assert Image.open(path).format == 'PNG'
  assert r.stdout.strip() == f'Wrote {path}'


def test_out_in_a_missing_folder_is_one_line_before_drawing():
  with pytest.raises(UserError, match='the folder /no/such does not exist'):
    augment_views.png_path('/no/such/a.png')
