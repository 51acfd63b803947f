"""The seed's baseline: C(32)+mn D(.2) C(32)+mn P F FC(512)+mn D(.5), SGD.

Run: python -m cifar_jax.main --config configs/simple.py
"""

from cifar_jax.reporting import seed_notebook
from configs import default

__doc__ += seed_notebook.summary('simple') + '\n'


def get_config():
  config = default.get_config()
  config.seed_rung = 'simple'
  return config
