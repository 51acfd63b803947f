"""Three VGG-style stages with dropout, two max-norm dense layers, SGD.

[C(32) D(.2) C(32) P] [C(64) D(.2) C(64) P] [C(128) D(.2) C(128) P]
F D(.2) FC(1024)+mn D(.2) FC(512)+mn D(.2) Out; batch 64, 25 epochs.
2,915,114 parameters.
Run: python -m cifar_jax.main --config configs/large.py
"""

from cifar_jax.reporting import seed_notebook
from configs import default

__doc__ += seed_notebook.summary('large') + '\n'


def get_config():
  config = default.get_config()
  config.batch_size = 64
  config.model.stage_features = (32, 64, 128)
  config.model.second_conv_padding = ('SAME', 'SAME', 'SAME')
  config.model.conv_dropout = (0.2, 0.2, 0.2)
  config.model.stage_dropout = (0.0, 0.0, 0.0)
  config.optimizer.conv_max_norm = 0.0
  config.model.hidden_features = (1024, 512)
  config.model.flatten_dropout = 0.2
  config.model.hidden_dropout = 0.2
  config.seed_rung = 'large'
  return config
