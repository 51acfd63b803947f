"""Config keys that moved or were added, and old run directories upgraded.

Runs saved before a move store their config (in checkpoints and
config.json) under the old keys, and runs saved before a key was added
lack it; `upgrade` maps such a config to today's keys, with the value
that computes what the run computed, so those runs resume, evaluate and
report as before. Old keys on the command line get one line naming the
new key.
"""

import copy
from typing import Any

# Old key -> new key (dotted paths).
RENAMED = {
    'dataset': 'data.name',
    'data_dir': 'data.dir',
    'cache_dir': 'data.cache_dir',
    'train_split': 'data.train_split',
    'eval_split': 'data.eval_split',
    'synthetic_train_size': 'data.synthetic_train_size',
    'synthetic_eval_size': 'data.synthetic_eval_size',
    'compute_dtype': 'model.compute_dtype',
    'model.conv_max_norm': 'optimizer.conv_max_norm',
    'model.hidden_max_norm': 'optimizer.hidden_max_norm',
    'model.conv_kernel_grad': 'cpu.conv3x3',
    'model.conv3x3': 'cpu.conv3x3',
    'model.pooling': 'cpu.pooling',
}
# Keys an old config lacks, with the value that computes what it computed:
# the pooling was chosen by the platform and FastNet had no MaxNorm. The
# 3x3 convolutions' method changes results only by float rounding, so an
# old run resumes with today's default. Every pass ended with a partial
# batch, last in its pass, and inputs were pixels / 255. init_from took
# only the parameters.
ADDED = {
    'cpu.pooling': 'auto',
    'cpu.conv3x3': 'auto',
    'optimizer.conv_max_norm': 0.0,
    'optimizer.hidden_max_norm': 0.0,
    'drop_remainder': False,
    'data.mean': [],
    'data.std': [],
    'init_from_optimizer': False,
    'shuffle_batch_order': False,
    'eval_tta_weights': 'airbench',
    'eval_tta_share': 1.0,
    'whitening.decomposition': 'eigh',
    'augment.brightness': 0.0,
    'augment.contrast': 0.0,
    'optimizer.muon_momentum': 0.6,
    'optimizer.bias_learning_rate': 0.053,
    'optimizer.head_learning_rate': 0.67,
    'optimizer.muon_weight_decay': 0.0,
    'optimizer.ns_coefficients': [3.4445, -4.7750, 2.0315],
    'optimizer.ns_steps': 3,
    'optimizer.ns_epsilon': 1e-7,
    'optimizer.ns_magnitude': [],
    'optimizer.normalize_every': 1,
    'optimizer.normalize_every_growth': 0.0,
    'optimizer.normalize_epsilon': 0.0,
}


# The same for keys of one model only. FastNet computed Flax's tanh GELU.
ADDED_FOR_MODEL = {
    'FastNet': {
        'model.gelu': 'tanh',
        'model.activation': 'gelu',
        'model.head_init': 'uniform',
    }
}


def _added(config: dict) -> dict[str, Any]:
  model = config.get('model', {}).get('name')
  return {**ADDED, **ADDED_FOR_MODEL.get(model, {})}


def _pop(tree: dict, path: str) -> tuple[bool, Any]:
  *parents, leaf = path.split('.')
  for key in parents:
    tree = tree.get(key)
    if not isinstance(tree, dict):
      return False, None
  if leaf not in tree:
    return False, None
  return True, tree.pop(leaf)


def _set(tree: dict, path: str, value: Any, overwrite: bool = True) -> None:
  *parents, leaf = path.split('.')
  for key in parents:
    tree = tree.setdefault(key, {})
  if overwrite or leaf not in tree:
    tree[leaf] = value


def is_old(config: dict) -> bool:
  """Whether `config` (a nested dict) has a moved key or lacks an added one."""
  return any(_pop(copy.deepcopy(config), old)[0] for old in RENAMED) or any(
      not _pop(copy.deepcopy(config), new)[0] for new in _added(config)
  )


def upgrade(config: dict) -> dict:
  """A copy of a saved config (nested dicts) with today's keys."""
  if not is_old(config):
    return config
  config = copy.deepcopy(config)
  for old, new in RENAMED.items():
    found, value = _pop(config, old)
    if found:
      _set(config, new, value)
  for key, value in _added(config).items():
    _set(config, key, value, overwrite=False)
  return config


def renamed_flag(argv: list[str]) -> str | None:
  """One line for the first `--config.<old key>` in argv, or None."""
  for arg in argv:
    key = arg.removeprefix('--config.').split('=', 1)[0]
    if arg.startswith('--config.') and key in RENAMED:
      return (
          f'--config.{key} is now --config.{RENAMED[key]} (config keys '
          'moved into sections; README, "Config keys").'
      )
  return None
