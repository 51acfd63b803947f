"""The data path: files to arrays to batches to augmented model inputs.

- `images`: one decoder of image files, one mapping of pixels to inputs;
- `image_folder`: `<root>/<split>/<class>/*.png` folders and zips;
- `input_pipeline`: a split in memory (TFDS, an image folder, synthetic),
  cached once decoded; `synthetic_examples`: the synthetic data set;
- `batching`: which examples make up each batch, a function of the step;
- `augment`: on-device augmentation (Keras' ImageDataGenerator, the fast
  recipes' flips, crops and cutout) and test-time augmentation;
- `tensorflow_cpu`: TensorFlow imported off the GPUs (for TFDS and clu).

Imports: `errors` and `rules` only.
"""
