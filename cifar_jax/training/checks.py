"""A whole config's values checked up front, in one line.

Each key's rule is defined beside the code that reads it (a module's
`RULES`, in the vocabulary of `cifar_jax.rules`; the loop's own are here);
this collects them, so every key of configs/default.py and of each model
has one rule, and `check` reports every value that breaks one before
anything is loaded or written.
"""

from collections.abc import Sequence

import ml_collections

from cifar_jax import cpu
from cifar_jax.data import augment
from cifar_jax.data import input_pipeline
from cifar_jax.errors import UserError
from cifar_jax import models
from cifar_jax.reporting import records
from cifar_jax import rules
from cifar_jax.training import optimizers

# The loop's keys: the top of a config (cifar_jax.train, `experiment`).
LOOP_RULES = {
    'batch_size': rules.integer(1, 2**31 - 1),  # Batch indices are int32.
    'eval_batch_size': rules.integer(1, 2**31 - 1),
    'num_epochs': rules.POSITIVE,
    'drop_remainder': rules.BOOL,
    'shuffle_batch_order': rules.BOOL,
    'steps_per_epoch': rules.integer(0),
    'steps_per_dispatch': rules.integer(0),
    'seed': rules.integer(0, 2**32 - 1),
    'label_smoothing': rules.FRACTION,
    'eval_tta': rules.integer(0, 2),
    'checkpoint_every_steps': rules.integer(0),
    'keep_checkpoints': rules.integer(1),
    'init_from_optimizer': rules.BOOL,
}
# Section -> its rules, from the modules that read it.
SECTIONS: dict[str, dict[str, rules.Rule]] = {
    '': {**LOOP_RULES, **records.RULES},
    'data': input_pipeline.RULES,
    'whitening': {'images': rules.integer(0), 'epsilon': rules.POSITIVE},
    'model': models.RULES,
    'optimizer': optimizers.RULES,
    'augment': augment.RULES,
    'cpu': cpu.RULES,
}
# Paths checked where they are used (the data, other runs).
FREE_FORM = tuple(f'data.{k}' for k in input_pipeline.FREE_FORM) + (
    'init_from',
)


def _section(
    config: ml_collections.ConfigDict, name: str
) -> ml_collections.ConfigDict:
  if not name:
    return config
  value = config.get(name)
  return value if isinstance(value, ml_collections.ConfigDict) else {}


def problems(config: ml_collections.ConfigDict) -> list[str]:
  """'key=value must be ...' for every value that breaks its rule."""
  found = []
  for name, section_rules in SECTIONS.items():
    prefix = f'{name}.' if name else ''
    found += rules.problems(_section(config, name), section_rules, prefix)
  model = _section(config, 'model')
  model_rules = models.MODEL_RULES.get(model.get('name'), {})
  found += rules.problems(model, model_rules, 'model.')
  if not found and model.get('name') in models.SHAPE_PROBLEMS:
    found += models.SHAPE_PROBLEMS[model.get('name')](model)
  return found


def check(config: ml_collections.ConfigDict) -> None:
  """Raises UserError naming every bad value of `config`."""
  found = problems(config)
  if found:
    raise UserError('bad config: ' + '; '.join(found) + '.')


def ruled_keys() -> Sequence[str]:
  """Every key with a rule, and the free-form ones that need none."""
  keys = [
      f'{name}.{key}' if name else key
      for name, section_rules in SECTIONS.items()
      for key in section_rules
  ]
  keys += [f'model.{k}' for r in models.MODEL_RULES.values() for k in r]
  return keys + list(FREE_FORM)
