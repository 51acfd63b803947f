"""fast96: a deeper, wider airbench-family recipe, toward airbench96.

Three convolutions per block (128, 512, 512), 40 epochs, 4-pixel
translations and 12-pixel cutout on top of the fast94 recipe. The accuracy
on a GPU over several seeds is still to be measured here.

Run: python -m cifar_jax.main --config configs/fast96.py
"""

from configs import fast94


def get_config():
  config = fast94.get_config()
  config.num_epochs = 40
  config.model.widths = (128, 512, 512)
  config.model.block_depth = 3
  config.augment.crop_padding = 4
  config.augment.cutout_size = 12
  return config
