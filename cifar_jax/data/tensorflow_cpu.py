"""TensorFlow for the two things it does here, off the accelerators.

TFDS reads data sets with it and clu writes TensorBoard summaries with it;
neither needs a GPU, and a TensorFlow that saw one would reserve its memory
beside JAX's.
"""

from typing import Any


def import_tensorflow() -> Any:
  """Imports TensorFlow with every GPU hidden from it."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  tf.config.set_visible_devices([], 'GPU')
  return tf
