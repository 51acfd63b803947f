"""notebooks/walkthrough.ipynb: stored clean, its twin in step, and it runs."""

import os
import re
import runpy

import pytest

from conftest import REPO
from conftest import SHARED_ZIP

nbformat = pytest.importorskip('nbformat')
jupytext = pytest.importorskip('jupytext')

NOTEBOOK = REPO / 'notebooks' / 'walkthrough.ipynb'
TWIN = NOTEBOOK.with_suffix('.py')


def _cells(notebook):
  return [(c.cell_type, c.source.strip()) for c in notebook.cells]


def test_the_notebook_is_stored_without_outputs():
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  for cell in notebook.cells:
    if cell.cell_type == 'code':
      assert cell.outputs == [] and cell.execution_count is None, cell.source


def test_the_notebook_and_its_text_twin_hold_the_same_cells():
  assert _cells(nbformat.read(NOTEBOOK, as_version=4)) == _cells(
      jupytext.read(TWIN)
  )


def _with_parameters(notebook, **values):
  """The notebook with its `parameters` cell's assignments replaced."""
  (cell,) = [
      c for c in notebook.cells if 'parameters' in c.metadata.get('tags', [])
  ]
  for name, value in values.items():
    cell.source, n = re.subn(
        rf'^{name} = .*$', f'{name} = {value!r}', cell.source, flags=re.M
    )
    assert n == 1, name
  return notebook


def _outputs(notebook, mime):
  return [
      o
      for c in notebook.cells
      for o in c.get('outputs', [])
      if mime in o.get('data', {})
  ]


def _text(notebook) -> str:
  return ''.join(
      o.get('text', '') + o.get('data', {}).get('text/markdown', '')
      for c in notebook.cells
      for o in c.get('outputs', [])
  )


@pytest.mark.slow
def test_the_notebook_runs_top_to_bottom_at_tiny_size(tmp_path):
  nbclient = pytest.importorskip('nbclient')
  data = str(SHARED_ZIP) if SHARED_ZIP.exists() else ''
  notebook = _with_parameters(
      nbformat.read(NOTEBOOK, as_version=4),
      TINY=True,
      DATA=data,
      WORKDIR=str(tmp_path / 'runs'),
  )
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  client = nbclient.NotebookClient(
      notebook,
      timeout=900,
      kernel_name='python3',
      resources={'metadata': {'path': str(REPO)}},
  )
  with pytest.MonkeyPatch.context() as patch:
    for key, value in env.items():
      patch.setenv(key, value)
    client.execute()  # Raises CellExecutionError on any failing cell.
  text = _text(notebook)
  # Nothing in red: no warning on stderr from any cell (Orbax, absl, JAX).
  red = [o['text'] for c in notebook.cells for o in c.get('outputs', [])
         if o.get('name') == 'stderr']  # fmt: skip
  assert not red, red
  if data:
    assert 'train: 50,000 images, test: 10,000 images' in text
  assert 'Accuracy:' in text  # evaluate's report.
  assert 'Resuming from step 8 (epoch 3/3' in text  # The resumed run.
  assert 'fast94: skipped on a CPU' in text
  # The ladder's summary table, one row per rung, each saying that 2 steps
  # per epoch are not the seed's protocol.
  report = _outputs(notebook, 'text/markdown')[-1]['data']['text/markdown']
  for rung in ('simple', 'deep_adam_aug', 'bn_aug_sgd'):
    assert f"| {rung} (not the seed's protocol: 2 steps per epoch, " in report
  # Pictures: the image grid, the curves, the confusion matrix, the
  # predictions and the augmentation grid.
  assert len(_outputs(notebook, 'image/png')) == 5


def test_the_colab_badge_and_the_notebooks_clone_follow_pyproject(capsys):
  script = runpy.run_path(str(REPO / 'notebooks' / 'set_repository.py'))
  assert script['main'](check=True) == 0, capsys.readouterr().out
