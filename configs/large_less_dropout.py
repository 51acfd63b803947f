"""The large rung with dropout only inside the first stage.

C(32) D(.2) C(32) P C(64) C(64) P C(128) C(128) P
F FC(1024)+mn D(.2) FC(512)+mn D(.2) Out; batch 64, 25 epochs.
Run: python -m cifar_jax.main --config configs/large_less_dropout.py
"""

from cifar_jax.reporting import seed_notebook
from configs import large

__doc__ += seed_notebook.summary('large_less_dropout') + '\n'


def get_config():
  config = large.get_config()
  config.model.conv_dropout = (0.2, 0.0, 0.0)
  config.model.flatten_dropout = 0.0
  config.seed_rung = 'large_less_dropout'
  return config
