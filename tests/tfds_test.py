"""The default data path end to end, through TFDS's own cifar10 builder.

A small archive in CIFAR-10's own binary format is served over HTTP on
this machine, TFDS downloads and prepares it (its builder, its files), and
cifar_jax trains on the result; then again from a copy of the prepared
data, offline. (The real host is unreachable from CI: only the archive's
address is changed, to the local server's.)
"""

import functools
import http.server
import io
import json
import shutil
import socket
import tarfile
import threading

import numpy as np
import pytest

from cifar_jax.data import input_pipeline
from cifar_jax import train
from conftest import get_config

pytestmark = pytest.mark.slow
tfds = pytest.importorskip('tensorflow_datasets')
from tensorflow_datasets.image_classification import cifar  # pylint: disable=g-import-not-at-top,g-bad-import-order


def _write_archive(path, per_batch: int) -> dict[str, list]:
  """cifar-10-binary.tar.gz as the real one is laid out, with `per_batch`
  images per batch file; returns each split's (label, image bytes)."""
  rng = np.random.default_rng(0)
  splits = {'train': [], 'test': []}
  with tarfile.open(path, 'w:gz') as tar:

    def add(name, data):
      info = tarfile.TarInfo(f'cifar-10-batches-bin/{name}')
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))

    names = '\n'.join(input_pipeline.CIFAR10_CLASSES) + '\n'
    add('batches.meta.txt', names.encode())
    files = [(f'data_batch_{i}.bin', 'train') for i in range(1, 6)]
    for name, split in files + [('test_batch.bin', 'test')]:
      labels = rng.integers(0, 10, per_batch, dtype=np.uint8)
      planes = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
      records = np.concatenate([labels[:, None], planes.reshape(per_batch, -1)], 1)  # fmt: skip
      add(name, records.tobytes())
      hwc = planes.transpose(0, 2, 3, 1)
      splits[split] += [(int(l), x.tobytes()) for l, x in zip(labels, hwc)]
  return splits


@pytest.fixture
def served(tmp_path):
  """An HTTP server on this machine for the files in `tmp_path/www`."""
  root = tmp_path / 'www'
  root.mkdir()
  handler = functools.partial(
      http.server.SimpleHTTPRequestHandler, directory=str(root)
  )
  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  yield root, f'http://127.0.0.1:{server.server_port}'
  server.shutdown()


def _trained(config, workdir) -> list[dict]:
  config.num_epochs = 1
  return train.train_and_evaluate(config, str(workdir), out=io.StringIO())[1]


def test_tfds_prepares_cifar10_from_its_archive_and_runs_train_on_it(
    tmp_path, served, monkeypatch
):
  www, address = served
  written = _write_archive(www / 'cifar-10-binary.tar.gz', per_batch=16)
  info = cifar.Cifar10._cifar_info.fget  # pylint: disable=protected-access
  monkeypatch.setattr(
      cifar.Cifar10, '_cifar_info',
      property(lambda self: info(self)._replace(
          url=f'{address}/cifar-10-binary.tar.gz')),
  )  # fmt: skip
  # Whether the real host answers: here it never does (its own test).
  monkeypatch.setattr(input_pipeline, '_check_can_download', lambda b: None)
  config = get_config('test')
  config.data.update(name='cifar10', dir=str(tmp_path / 'tfds'), cache_dir='')
  for split, examples in written.items():
    data = input_pipeline.load_split(config.data, split)
    assert sorted(zip(data.labels.tolist(), map(bytes, data.images))) == (
        sorted(examples)
    )
    assert data.class_names == input_pipeline.CIFAR10_CLASSES
  (row,) = _trained(config, tmp_path / 'online')
  prepared = json.loads(
      next((tmp_path / 'tfds').glob('cifar10/*/dataset_info.json')).read_text()
  )
  assert {s['name']: int(s['shardLengths'][0]) for s in prepared['splits']} == {
      'train': 80, 'test': 16
  }  # fmt: skip
  # Offline, from a copy of what TFDS prepared: nothing is downloaded.
  monkeypatch.undo()
  shutil.copytree(tmp_path / 'tfds', tmp_path / 'copy')
  shutil.rmtree(tmp_path / 'tfds')

  def offline(*args, **kwargs):
    raise OSError('Network is unreachable')

  monkeypatch.setattr(socket, 'create_connection', offline)
  config.data.dir = str(tmp_path / 'copy')
  (again,) = _trained(config, tmp_path / 'offline')
  assert again == {**row, 'seconds': again['seconds']}  # The same run.
