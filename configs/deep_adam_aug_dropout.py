"""deep_adam_aug with dropout after every stage and dense layer.

C(48,s) C(48,v) P D(.25) C(96,s) C(96,v) P D(.25) C(192,s) C(192,v) P D(.25)
F FC(512) D(.5) FC(256) D(.5) Out; Adam, batch 128, 100 epochs of 390 steps.
Run: python -m cifar_jax.main --config configs/deep_adam_aug_dropout.py
"""

from cifar_jax.reporting import seed_notebook
from configs import deep_adam_aug

__doc__ += seed_notebook.summary('deep_adam_aug_dropout') + '\n'


def get_config():
  config = deep_adam_aug.get_config()
  config.num_epochs = 100
  config.model.stage_dropout = (0.25, 0.25, 0.25)
  config.model.hidden_dropout = 0.5
  config.init_from_optimizer = False  # A new model: the seed built it anew.
  config.seed_rung = 'deep_adam_aug_dropout'
  return config
