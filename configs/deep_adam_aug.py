"""deep_adam with zoom 0.2 and horizontal flips, 200 epochs of 390 steps.

The seed did not start from scratch: it continued the trained deep_adam
model (100 epochs) for 200 more epochs with augmentation, calling
fit_generator on it without compiling it again, so Adam went on with its
moments and update count (`init_from_optimizer`).
As the seed did, after training deep_adam:
Run: python -m cifar_jax.main --config configs/deep_adam_aug.py \
       --config.init_from=ckpt/deep_adam
"""

from cifar_jax.reporting import seed_notebook
from configs import deep_adam

__doc__ += seed_notebook.summary('deep_adam_aug') + '\n'


def get_config():
  config = deep_adam.get_config()
  config.num_epochs = 200
  config.steps_per_epoch = 390
  config.shuffle_batch_order = True  # fit_generator's.
  config.augment.zoom_range = 0.2
  config.augment.horizontal_flip = True
  config.init_from_optimizer = True
  config.seed_rung = 'deep_adam_aug'
  return config
