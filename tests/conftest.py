"""Shared test helpers: configs by name, and the shared real data if present."""

import importlib
import os
import pathlib
import subprocess
import sys

import jax
import pytest

from cifar_jax.reporting import seed_notebook

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

REPO = pathlib.Path(__file__).resolve().parents[1]
# A JPEG copy of CIFAR-10 as an image-folder zip, for the tests that need
# real images (skipped without one).
SHARED_ZIP = pathlib.Path(
    os.environ.get(
        'CIFAR10_JPEG_ZIP',
        REPO.parent / 'shared' / 'data' / 'cifar10-jpeg.zip',
    )
)
RUNGS = seed_notebook.rungs()


@pytest.fixture(scope='session', autouse=True)
def compilation_cache(tmp_path_factory):
  """One XLA compilation cache for the session, its subprocesses included.

  The suite compiles the same small programs many times over (every
  `cifar_jax.main` subprocess of configs/test.py); compiling each once
  makes it about a third faster. The cache starts empty in every session.
  """
  path = str(tmp_path_factory.mktemp('xla_cache'))
  settings = {
      'jax_compilation_cache_dir': path,
      'jax_persistent_cache_min_compile_time_secs': 0,
      'jax_persistent_cache_min_entry_size_bytes': 0,
  }
  for name, value in settings.items():
    jax.config.update(name, value)
    os.environ[name.upper()] = str(value)
  yield
  for name in settings:
    os.environ.pop(name.upper(), None)


def write_image_folder(
    root,
    classes,
    per_class,
    size=(32, 32),
    mode='RGB',
    splits=('train', 'test'),
):
  """Images whose colour encodes their class, in <root>/<split>/<class>/."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  for split in splits:
    for c, name in enumerate(classes):
      os.makedirs(root / split / name)
      for i in range(per_class):
        value = 20 * c + i
        image = Image.new(
            mode, size, (value,) * len(mode) if mode != 'L' else value
        )
        image.save(root / split / name / f'{i}.png')


# The keys of every history.json row, ours and the Keras side-by-side's.
HISTORY_KEYS = {
    'epoch', 'loss', 'accuracy', 'val_loss', 'val_accuracy', 'seconds'
}  # fmt: skip


def get_config(name):
  return importlib.import_module(f'configs.{name}').get_config()


def small_synthetic(config, train_size, eval_size, batch_size, eval_batch_size):
  """`config` on the synthetic data set, at a size a test can afford."""
  config.data.name = 'synthetic'
  config.data.synthetic_train_size = train_size
  config.data.synthetic_eval_size = eval_size
  config.batch_size = batch_size
  config.eval_batch_size = eval_batch_size
  return config


@pytest.fixture
def shared_zip():
  if not SHARED_ZIP.exists():
    pytest.skip(f'{SHARED_ZIP} not present (real CIFAR-10 JPEG copy).')
  return SHARED_ZIP


def start_main(*args, devices=1, **popen_kwargs):
  """`python -m cifar_jax.main *args` on `devices` fake CPU devices."""
  env = dict(
      os.environ,
      JAX_PLATFORMS='cpu',
      XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
  )
  return subprocess.Popen(
      [sys.executable, '-m', 'cifar_jax.main', *map(str, args)],
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      **popen_kwargs,
  )


def run_main(*args, devices=1, timeout=300):
  """Runs `start_main` to the end: a CompletedProcess."""
  proc = start_main(*args, devices=devices)
  try:
    out, err = proc.communicate(timeout=timeout)
  finally:
    proc.kill()
  return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
