"""Evaluates a saved model: accuracy, loss, per class, confusion matrix.

  python -m cifar_jax.evaluate --workdir ckpt/large
      [--checkpoint best|latest|STEP] [--split test] [--data_dir DIR]
      [--tta_level N]

The numbers equal what training logged for that checkpoint (same model,
same split, same test-time augmentation level `eval_tta`). `--tta_level`
evaluates with another level instead (0 none, 1 the mean logits of each
image and its mirror, 2 also one-pixel translations): the one test-time
augmentation, `augment.tta_logits`, that training evaluates with.
"""

from absl import app
from absl import flags

from cifar_jax import cli

_WORKDIR = cli.define_workdir('The run directory to evaluate.')
_CHECKPOINT = cli.define_checkpoint()
_SPLIT = flags.DEFINE_string(
    'split', '', "Split; default the run's eval_split."
)
_DATA_DIR = flags.DEFINE_string(
    'data_dir', '', "Data directory; default the run's."
)
_TTA_LEVEL = flags.DEFINE_integer(
    'tta_level',
    None,
    "Test-time augmentation level instead of the run's "
    'eval_tta: 0 none, 1 mirror, 2 mirror + translations.',
)


def main(argv):
  del argv
  with cli.exit_on_errors():
    from cifar_jax.runs import evaluation  # pylint: disable=g-import-not-at-top  # After --help.

    evaluation.evaluate(
        _WORKDIR.value,
        _CHECKPOINT.value,
        _SPLIT.value,
        _DATA_DIR.value,
        _TTA_LEVEL.value,
    )


if __name__ == '__main__':
  flags.mark_flags_as_required(['workdir'])
  app.run(main, flags_parser=cli.parse_flags)
