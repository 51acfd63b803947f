"""Shared test helpers: configs by name, and the shared real data if present."""

import importlib
import os
import pathlib
import subprocess
import sys

import pytest

from cifar_jax import seed_notebook

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_ZIP = REPO.parent / 'shared' / 'data' / 'cifar10-jpeg.zip'
RUNGS = seed_notebook.rungs()


def get_config(name):
  return importlib.import_module(f'configs.{name}').get_config()


@pytest.fixture
def shared_zip():
  if not SHARED_ZIP.exists():
    pytest.skip(f'{SHARED_ZIP} not present (real CIFAR-10 JPEG copy).')
  return SHARED_ZIP


def start_main(*args, devices=1, **popen_kwargs):
  """`python -m cifar_jax.main *args` on `devices` fake CPU devices."""
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  return subprocess.Popen(
      [sys.executable, '-m', 'cifar_jax.main', *map(str, args)], cwd=REPO,
      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      **popen_kwargs)


def run_main(*args, devices=1, timeout=300):
  """Runs `start_main` to the end: a CompletedProcess."""
  proc = start_main(*args, devices=devices)
  try:
    out, err = proc.communicate(timeout=timeout)
  finally:
    proc.kill()
  return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
