"""Deeper stages with a 'valid' second conv, no dropout, Adam.

C(48,s) C(48,v) P C(96,s) C(96,v) P C(192,s) C(192,v) P F FC(512) FC(256)
Out; Adam (Keras defaults), batch 128, 100 epochs. 1,172,410 parameters.
Run: python -m cifar_jax.main --config configs/deep_adam.py
"""

from cifar_jax.reporting import seed_notebook
from configs import default

__doc__ += seed_notebook.summary('deep_adam') + '\n'


def get_config():
  config = default.get_config()
  config.batch_size = 128
  config.num_epochs = 100
  config.model.stage_features = (48, 96, 192)
  config.model.second_conv_padding = ('VALID', 'VALID', 'VALID')
  config.model.conv_dropout = (0.0, 0.0, 0.0)
  config.model.stage_dropout = (0.0, 0.0, 0.0)
  config.model.hidden_features = (512, 256)
  config.model.hidden_dropout = 0.0
  config.optimizer.conv_max_norm = 0.0
  config.optimizer.hidden_max_norm = 0.0
  config.optimizer.name = 'adam'
  config.optimizer.learning_rate = 0.001
  config.seed_rung = 'deep_adam'
  return config
