"""fast96: the airbench96 recipe (arXiv 2404.00498) in cifar_jax.

fast94 with twice the width (128, 512, 512), three convolutions per block
with a residual connection around the last two (10 convolutions in all),
4-pixel translations, 12-pixel cutout, 40 epochs, and a lower learning rate
(9.0 per 1024 examples). airbench96 reports 96.05% mean accuracy (n=200)
on CIFAR-10 in this form.

Run: python -m cifar_jax.main --config configs/fast96.py
"""

from configs import fast94


def get_config():
  config = fast94.get_config()
  config.num_epochs = 40
  config.model.widths = (128, 512, 512)
  config.model.block_depth = 3
  config.model.residual = True
  config.augment.crop_padding = 4
  config.augment.cutout_size = 12
  config.optimizer.learning_rate = 9.0  # Per 1024 examples.
  return config
