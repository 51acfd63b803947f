"""The large rung trained for 100 epochs (decay lr/100). Seed: 82.48%.

Run: python -m cifar_jax.main --config configs/large_100.py
"""

from configs import large


def get_config():
  config = large.get_config()
  config.num_epochs = 100
  config.optimizer.decay = 0.01 / 100
  return config
