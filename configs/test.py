"""A tiny CPU-sized config for tests and smoke runs on synthetic data.

Run: python -m cifar_jax.main --config configs/test.py
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.name = 'synthetic'
  config.data.synthetic_train_size = 512
  config.data.synthetic_eval_size = 200
  config.batch_size = 32
  config.eval_batch_size = 64
  config.num_epochs = 2
  config.model.stage_features = (8,)
  config.model.hidden_features = (32,)
  config.model.conv_dropout = (0.1,)
  config.model.hidden_dropout = 0.1
  config.optimizer.decay = 0.01 / 2
  return config
