"""Draws original training images beside augmented views of them.

  python -m cifar_jax.show_augment --config configs/deep_adam_aug.py
      [--config.data.name=image_folder --config.data.dir=DIR] [--out F.png]

The picture: `reporting.augment_views`.
"""

from absl import app
from absl import flags

from cifar_jax import cli
from cifar_jax.errors import UserError
from cifar_jax.errors import write_failure
from cifar_jax.training import checks

_CONFIG = cli.define_config()
_OUT = flags.DEFINE_string('out', 'augment.png', 'PNG file to write.')
_IMAGES = flags.DEFINE_integer('num_images', 8, 'Rows: training images.')
_VIEWS = flags.DEFINE_integer('num_views', 6, 'Augmented views per image.')


def main(argv):
  del argv
  with cli.exit_on_errors():
    checks.check(_CONFIG.value)  # Before JAX loads.
    from cifar_jax.reporting import augment_views  # pylint: disable=g-import-not-at-top  # After --help.

    path = augment_views.png_path(_OUT.value)
    try:
      augment_views.render(_CONFIG.value, path, _IMAGES.value, _VIEWS.value)
    except ValueError as e:  # A bad augment section.
      raise UserError(f'Bad config: {e}') from e
    except OSError as e:
      reason = write_failure(e) or e.strerror or str(e)
      raise UserError(f'Cannot write {path}: {reason}.') from e
  print(f'Wrote {path}')


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=cli.parse_flags)
