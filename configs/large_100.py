"""The large rung trained for 100 epochs (decay lr/100).

Run: python -m cifar_jax.main --config configs/large_100.py
"""

from cifar_jax.reporting import seed_notebook
from configs import large

__doc__ += seed_notebook.summary('large_100') + '\n'


def get_config():
  config = large.get_config()
  config.num_epochs = 100
  config.optimizer.decay = 0.01 / 100
  config.seed_rung = 'large_100'
  return config
