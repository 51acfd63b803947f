"""BatchNorm after every conv, dropout, shifts and flips, SGD.

C(32,s) BN C(32,s) BN P D(.25) C(64,s) BN C(64,v) BN P D(.25) C(128,s) BN
C(128,v) BN P D(.25) F FC(512) D(.5) FC(256) D(.5) Out; SGD lr 0.01,
momentum 0.9, decay 0.01/50; batch 64, 50 epochs of 781 steps; width and
height shift 0.1, horizontal flip. 685,354 parameters (896 non-trainable).
Run: python -m cifar_jax.main --config configs/bn_aug_sgd.py
"""

from cifar_jax.reporting import seed_notebook
from configs import default

__doc__ += seed_notebook.summary('bn_aug_sgd') + '\n'


def get_config():
  config = default.get_config()
  config.batch_size = 64
  config.num_epochs = 50
  config.steps_per_epoch = 781
  config.shuffle_batch_order = True  # fit_generator's.
  config.model.stage_features = (32, 64, 128)
  config.model.second_conv_padding = ('SAME', 'VALID', 'VALID')
  config.model.conv_dropout = (0.0, 0.0, 0.0)
  config.model.stage_dropout = (0.25, 0.25, 0.25)
  config.model.batch_norm = True
  config.model.hidden_features = (512, 256)
  config.model.hidden_dropout = 0.5
  config.optimizer.conv_max_norm = 0.0
  config.optimizer.hidden_max_norm = 0.0
  config.optimizer.decay = 0.01 / 50
  config.augment.width_shift_range = 0.1
  config.augment.height_shift_range = 0.1
  config.augment.horizontal_flip = True
  config.seed_rung = 'bn_aug_sgd'
  return config
