"""Classifies your own images with a trained run: top-3 classes each.

  python -m cifar_jax.predict --workdir ckpt/large [--checkpoint best]
      cat.jpg photos/ ...

Any image Pillow reads works: it is converted to RGB (alpha dropped,
grayscale and palette images expanded) and resized to 32x32 with Pillow's
bilinear filter (antialiased when shrinking; the aspect ratio is not kept,
as the training images were square). Folders are searched for images. A file
that cannot be read, or a folder without images, gets a one-line error and
the others are still classified; the exit code is then 1.
"""

import sys

from absl import app
from absl import flags

from cifar_jax import cli

_WORKDIR = cli.define_workdir('The run directory whose model classifies.')
_CHECKPOINT = cli.define_checkpoint()


def main(argv):
  if len(argv) < 2:
    raise app.UsageError('Name at least one image file or folder.')
  with cli.exit_on_errors():
    from cifar_jax.runs import prediction  # pylint: disable=g-import-not-at-top  # After --help.

    failures = prediction.predict(_WORKDIR.value, argv[1:], _CHECKPOINT.value)
  sys.exit(1 if failures else 0)


if __name__ == '__main__':
  flags.mark_flags_as_required(['workdir'])
  app.run(main, flags_parser=cli.parse_flags)
