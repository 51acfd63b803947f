"""Classifying image files with a trained run: the top classes of each.

Any image Pillow reads works, read as the image folders of training are
(`images.decode`): RGB, resized to 32x32. Folders are searched for images.
A file that cannot be read, or a folder without images, gets a one-line
error and the others are still classified. The command is
`cifar_jax.predict`.
"""

import os
import sys

import numpy as np
from PIL import UnidentifiedImageError

from cifar_jax.data import image_folder
from cifar_jax.data import images
from cifar_jax.runs import inference


def to_input(path: str) -> np.ndarray:
  """(32, 32, 3) uint8 of any image file Pillow reads, as training does."""
  with open(path, 'rb') as f:
    return images.decode(f.read())


def expand(paths: list[str], err=sys.stderr) -> tuple[list[str], int]:
  """Files as given; folders replaced by the images in them (recursively,
  as image folders are read: `image_folder.files_under`). Also the number
  of folders without images, each reported on `err`."""
  files, empty = [], 0
  for path in paths:
    if os.path.isdir(path):
      names = image_folder.files_under(path)
      found = [os.path.join(path, n) for n in names if images.is_image(n)]
      if not found:
        suffixes = ', '.join(images.SUFFIXES)
        print(f'error: {path}: no images in it ({suffixes})', file=err)
        empty += 1
      files += found
    else:
      files.append(path)
  return files, empty


def predict(
    workdir: str,
    paths: list[str],
    checkpoint: str = 'latest',
    top: int = 3,
    out=sys.stdout,
    err=sys.stderr,
) -> int:
  """Prints the top classes of each image; returns the number of failures."""
  run = inference.load_run(workdir, checkpoint)
  files, pixels = [], []
  found, failures = expand(paths, err)
  for path in found:
    try:
      pixels.append(to_input(path))
      files.append(path)
    except (OSError, UnidentifiedImageError, ValueError) as e:
      print(f'error: {path}: cannot read it as an image ({e})', file=err)
      failures += 1
  if pixels:
    probs = inference.probabilities(run, np.stack(pixels))
    for path, p in zip(files, probs):
      best = np.argsort(-p)[:top]
      guesses = ', '.join(
          f'{run.class_names[i]} {100 * p[i]:.1f}%' for i in best
      )
      print(f'{path}: {guesses}', file=out)
  return failures
