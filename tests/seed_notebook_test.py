"""The shipped seed record equals what the notebook printed, gaps and all."""

import os
import pathlib
import re
import tomllib

import pytest

from cifar_jax.reporting import seed_notebook
from conftest import REPO

# The seed notebook's text and its ladder's specs, where present.
SHARED = REPO.parent / 'shared'
NOTEBOOK = pathlib.Path(
    os.environ.get(
        'SEED_NOTEBOOK', SHARED / 'seed' / '000_5aa4ee9aafc89df0.txt'
    )
)
LADDER_MD = SHARED / 'LADDER.md'

# The notebook's cells that printed epoch lines, in its order.
LOGGED_CELLS = (
    'simple',
    'large_100',
    'large_less_dropout',
    'deep_adam',
    'deep_adam_aug',
    'deep_adam_aug_dropout',
    'bn_aug_sgd',
)
_HEADER = re.compile(r'Epoch (\d+)/(\d+)')
_PROGRESS = re.compile(r'\d+/\d+ \[=+\] - (\d+)s [^\n]*?- loss:')
_METRICS = re.compile(
    r'\s*([\d.]+) - accuracy: ([\d.]+) - val_loss: '
    r'([\d.]+) - val_accuracy: ([\d.]+)'
)


def parse_cell(text: str) -> tuple[int, list[dict]]:
  """(epochs in the run, its epoch rows) from one notebook cell's text.

  A progress line right after an `Epoch N/T` header is epoch N; one whose
  header was cut off is the epoch before the next header. Metrics wrapped
  onto the next line count; a line cut after 'loss:' keeps only seconds.
  """
  tokens = sorted(
      [(m.start(), 'header', m) for m in _HEADER.finditer(text)]
      + [(m.start(), 'line', m) for m in _PROGRESS.finditer(text)],
      key=lambda t: t[0],
  )
  rows, total = [], None
  for i, (_, kind, match) in enumerate(tokens):
    if kind == 'header':
      total = int(match.group(2))
      continue
    if i > 0 and tokens[i - 1][1] == 'header':
      epoch = int(tokens[i - 1][2].group(1))
    else:
      epoch = (
          int(next(t[2] for t in tokens[i:] if t[1] == 'header').group(1)) - 1
      )
    metrics = _METRICS.match(text, match.end())
    values = [float(v) for v in metrics.groups()] if metrics else [None] * 4
    rows.append(
        dict(
            zip(seed_notebook.COLUMNS, [epoch, float(match.group(1)), *values])
        )
    )
  return total, rows


def parse_notebook(text: str) -> dict[str, tuple[int, list[dict]]]:
  cells = re.split(r'^In \[\d*\]:', text, flags=re.M)
  logged = [parse_cell(c) for c in cells if _PROGRESS.search(c)]
  assert len(logged) == len(LOGGED_CELLS)
  return dict(zip(LOGGED_CELLS, logged))


@pytest.fixture
def notebook():
  if not NOTEBOOK.exists():
    pytest.skip(f'{NOTEBOOK} not present (the seed notebook).')
  return NOTEBOOK.read_text()


def test_every_printed_epoch_line_is_in_the_record(notebook):
  parsed = parse_notebook(notebook)
  for rung, (total, rows) in parsed.items():
    run = seed_notebook.load(rung)
    assert run.num_epochs == total, rung
    assert list(run.epochs) == rows, rung
  # 'large' printed no epoch line at all.
  assert seed_notebook.load('large').epochs == ()
  # Spot checks a wrong parser would miss: a cut-off line keeps its seconds
  # only, and a line whose header was cut off is the epoch before the next.
  bn = {r['epoch']: r for r in seed_notebook.load('bn_aug_sgd').epochs}
  assert bn[2] == {
      'epoch': 2,
      'seconds': 196.0,
      'loss': None,
      'accuracy': None,
      'val_loss': None,
      'val_accuracy': None,
  }
  assert bn[43]['val_accuracy'] == 0.83
  assert sorted(bn) == [1, 2] + list(range(43, 51))


def test_printed_final_accuracies_are_the_records(notebook):
  printed = [
      float(a)
      for a in re.findall(r'^Accuracy: ([\d.]+)%', notebook, flags=re.M)
  ]
  assert printed == [
      100 * seed_notebook.load(r).final_accuracy
      for r in ('simple', 'large_less_dropout')
  ]


def test_final_accuracies_equal_the_ladder_spec():
  if not LADDER_MD.exists():
    pytest.skip(f'{LADDER_MD} not present.')
  table = {}
  for line in LADDER_MD.read_text().splitlines():
    cells = [c.strip() for c in line.strip('|').split('|')]
    if len(cells) == 9 and cells[0] in seed_notebook.rungs():
      table[cells[0]] = (int(cells[4]), cells[8])
  assert tuple(table) == seed_notebook.rungs()
  for rung, (epochs, seed_acc) in table.items():
    run = seed_notebook.load(rung)
    assert run.num_epochs == epochs
    if run.final_accuracy is None:
      assert seed_acc == run.final_text
    else:
      assert seed_acc == f'{100 * run.final_accuracy:.2f}%'


def test_only_deep_adam_aug_continues_a_trained_rung_as_the_spec_says():
  if not LADDER_MD.exists():
    pytest.skip(f'{LADDER_MD} not present.')
  spec = ' '.join(LADDER_MD.read_text().split())
  continued = {
      rung: parent
      for rung in seed_notebook.rungs()
      for parent in seed_notebook.rungs()
      if f'{rung} in the notebook was not trained from scratch: it continued '
      f'the already trained {parent} model' in spec
  }
  assert continued == {
      r: p
      for r in seed_notebook.rungs()
      if (p := seed_notebook.load(r).continues_from)
  }
  assert continued == {'deep_adam_aug': 'deep_adam'}


def test_the_final_accuracy_is_the_last_printed_epoch_where_it_was_printed():
  for rung in seed_notebook.rungs():
    run = seed_notebook.load(rung)
    if run.epochs and run.epochs[-1]['epoch'] == run.num_epochs:
      assert run.final_accuracy == pytest.approx(
          run.epochs[-1]['val_accuracy'], abs=1e-4
      )


def test_each_rung_config_names_its_seed_rung_and_says_its_numbers():
  for rung in seed_notebook.rungs():
    module = __import__(f'configs.{rung}', fromlist=['get_config'])
    assert module.get_config().seed_rung == rung
    assert seed_notebook.summary(rung) in module.__doc__


def test_the_seed_line_of_a_config_docstring_comes_from_the_record():
  assert seed_notebook.summary('simple') == (
      'Seed notebook (Keras 2.3, laptop CPU): 69.88% test accuracy after 25 '
      'epochs, 134 s per epoch.'
  )
  assert seed_notebook.summary('large') == (
      'Seed notebook (Keras 2.3, laptop CPU): "about 80%" (no log) after 25 '
      'epochs.'
  )


def test_large_is_compared_with_large_100s_first_epochs():
  label, rows = seed_notebook.reference('large', up_to_epoch=3)
  assert 'large_100' in label
  assert [r['epoch'] for r in rows] == [1, 2, 3]
  assert rows == list(seed_notebook.load('large_100').epochs[:3])


def test_the_reference_keeps_only_the_epochs_a_run_reached():
  label, rows = seed_notebook.reference('bn_aug_sgd', up_to_epoch=45)
  assert label == 'seed notebook (Keras 2.3)'
  assert [r['epoch'] for r in rows] == [1, 2, 43, 44, 45]
  assert seed_notebook.reference('', up_to_epoch=5) is None


def _shifted(rung: str, by: float) -> list[dict]:
  """A history equal to the seed's printed epochs, val_accuracy + `by`."""
  return [
      dict(r, val_accuracy=r['val_accuracy'] + by)
      for r in seed_notebook.load(rung).epochs
      if r['val_accuracy'] is not None
  ]


def test_comparison_of_a_run_one_point_above_the_seed():
  history = _shifted('simple', 0.01)
  c = seed_notebook.compare('simple', history)
  assert c.final == pytest.approx(70.88)
  assert c.seed_final == pytest.approx(69.88)
  assert c.gap == pytest.approx(1.0)
  assert c.mean_abs_diff == pytest.approx(1.0)
  assert c.common_epochs == 25
  assert c.within is True
  assert c.best == pytest.approx(70.88) and c.best_epoch == 25


def test_comparison_two_points_below_is_not_within():
  history = _shifted('deep_adam_aug_dropout', -0.02)
  c = seed_notebook.compare('deep_adam_aug_dropout', history)
  assert c.gap == pytest.approx(-2.0)
  assert c.mean_abs_diff == pytest.approx(2.0)
  assert c.common_epochs == 19  # Epochs 82 to 100.
  assert c.within is False


def test_comparison_of_a_short_run_has_no_verdict():
  history = _shifted('simple', 0.0)[:3]
  c = seed_notebook.compare('simple', history)
  assert c.common_epochs == 3 and c.mean_abs_diff == pytest.approx(0.0)
  assert c.gap is None and c.within is None  # 3 of 25 epochs: no final yet.


def test_comparison_only_counts_epochs_both_have():
  # Ours ran epochs 1-3 of bn_aug_sgd: the seed printed metrics for 1 only.
  history = [
      dict(epoch=e, loss=1.0, accuracy=0.5, val_loss=1.0, val_accuracy=0.3822)
      for e in (1, 2, 3)
  ]
  c = seed_notebook.compare('bn_aug_sgd', history)
  assert c.common_epochs == 1
  assert c.mean_abs_diff == pytest.approx(10.0)


def test_the_record_sits_beside_its_module_is_package_data_and_has_each_rung():
  path = pathlib.Path(seed_notebook.__file__).with_name(seed_notebook.FILENAME)
  assert path.exists()
  pyproject = tomllib.loads((REPO / 'pyproject.toml').read_text())
  package_data = pyproject['tool']['setuptools']['package-data']
  assert seed_notebook.FILENAME in package_data['cifar_jax.reporting']
  assert seed_notebook.rungs() == (
      'simple',
      'large',
      'large_100',
      'large_less_dropout',
      'deep_adam',
      'deep_adam_aug',
      'deep_adam_aug_dropout',
      'bn_aug_sgd',
  )
