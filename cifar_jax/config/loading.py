"""Configs from the repository's configs/ folder, with overrides.

What `--config configs/<name>.py --config.a.b=value` gives a command, for
the commands, notebooks, scripts and the ladder alike.
"""

from collections.abc import Mapping
import importlib
import os
import sys
import types
from typing import Any

import ml_collections

from cifar_jax.errors import UserError


def config_module(name: str) -> types.ModuleType:
  """`configs/<name>.py` of the repository, imported as `configs.<name>`.

  The configs are files in the repository, not part of the installed
  package: the commands find them from the repository's root.
  """
  if os.path.isdir('configs') and os.getcwd() not in sys.path:
    sys.path.insert(0, os.getcwd())  # `python benchmarks/x.py` from the root.
  try:
    return importlib.import_module(f'configs.{name}')
  except ModuleNotFoundError as e:
    if e.name not in ('configs', f'configs.{name}'):
      raise
    where = 'no configs/ folder here' if e.name == 'configs' else 'no such file'
    raise UserError(
        f'configs/{name}.py: {where}; the configs are files in the '
        "repository: run from the repository's root."
    ) from e


def load_config(
    name: str, overrides: Mapping[str, Any] | None = None
) -> ml_collections.ConfigDict:
  """`configs/<name>.py`'s config with `overrides` ({'a.b': value}) set.

  What `--config configs/<name>.py --config.a.b=value` gives a command, for
  notebooks and scripts; unknown keys are refused (`apply_overrides`).
  """
  config = config_module(name).get_config()
  apply_overrides(config, overrides or {})
  return config


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: Mapping[str, Any]
) -> None:
  """Sets each dotted key of `overrides` in `config`; unknown keys refused."""
  for key, value in overrides.items():
    *parents, leaf = key.split('.')
    node = config
    for name in parents:
      node = node.get(name)
      if not isinstance(node, ml_collections.ConfigDict):
        break
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
      raise UserError(f'--config.{key}: this config has no key {key!r}.')
    node[leaf] = value
