"""A whole config's values checked up front, in one line, without JAX.

The sections' rules are `cifar_jax.rules`'; the one key whose values the
seed's record names (`seed_rung`) is checked here. Nothing this imports
loads JAX, so a command refuses a bad config at once, before anything is
loaded or written; `create_experiment` checks again for other callers.
"""

from collections.abc import Sequence

import ml_collections

from cifar_jax.errors import UserError
from cifar_jax.reporting import seed_notebook
from cifar_jax import rules

# Section -> its rules.
SECTIONS: dict[str, dict[str, rules.Rule]] = {
    '': {**rules.LOOP, 'seed_rung': rules.one_of('', *seed_notebook.rungs())},
    'data': rules.DATA,
    'whitening': rules.WHITENING,
    'model': rules.MODEL,
    'optimizer': rules.OPTIMIZER,
    'augment': rules.AUGMENT,
    'cpu': rules.CPU,
}
# Paths checked where they are used (the data, other runs).
FREE_FORM = tuple(f'data.{k}' for k in rules.DATA_FREE_FORM) + ('init_from',)


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
  own = rules.EACH_MODEL.get(model.get('name'), {})
  found += rules.problems(model, own, 'model.')
  return found or rules.model_problems(model)  # Then the model's shapes.


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
  keys += [f'model.{k}' for r in rules.EACH_MODEL.values() for k in r]
  return keys + list(FREE_FORM)
