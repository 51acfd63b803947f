"""Shared test helpers: configs by name, and the shared real data if present."""

import importlib
import os
import pathlib

import pytest

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_ZIP = REPO.parent / 'shared' / 'data' / 'cifar10-jpeg.zip'
RUNGS = ('simple', 'large', 'large_100', 'large_less_dropout', 'deep_adam',
         'deep_adam_aug', 'deep_adam_aug_dropout', 'bn_aug_sgd')


def get_config(name):
  return importlib.import_module(f'configs.{name}').get_config()


@pytest.fixture
def shared_zip():
  if not SHARED_ZIP.exists():
    pytest.skip(f'{SHARED_ZIP} not present (real CIFAR-10 JPEG copy).')
  return SHARED_ZIP
