"""What `pip install .` installs: cifar_jax with its data files, no configs."""

import subprocess
import sys
import zipfile

import pytest

from conftest import REPO


@pytest.mark.slow
def test_the_wheel_holds_cifar_jax_and_its_data_but_no_configs(tmp_path):
  subprocess.run(
      [sys.executable, '-m', 'pip', 'wheel', '--no-deps',
       '-q', '-w', str(tmp_path), str(REPO)],
      check=True, capture_output=True, timeout=600,
  )  # fmt: skip
  (wheel,) = tmp_path.glob('cifar_jax-*.whl')
  names = zipfile.ZipFile(wheel).namelist()
  tops = {n.split('/')[0] for n in names if not n.split('/')[0].endswith(
      ('.dist-info', '.data'))}  # fmt: skip
  assert tops == {'cifar_jax'}  # No generic top-level `configs` package.
  assert 'cifar_jax/cpu/conv3x3.cc' in names
  assert 'cifar_jax/reporting/seed_notebook.json' in names
  for folder in ('data', 'cpu', 'models', 'reporting', 'training', 'config',
                 'runs'):  # fmt: skip
    assert f'cifar_jax/{folder}/__init__.py' in names
