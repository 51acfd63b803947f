"""The README's Results table says what the runs in docs/results hold."""

import os

from cifar_jax import rungs
from cifar_jax.reporting import ladder_report
from cifar_jax.reporting import seed_notebook

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, 'docs', 'results')


def _published_rows() -> list[dict]:
  names = [
      n
      for n in seed_notebook.rungs()
      if os.path.exists(os.path.join(RESULTS, n, 'history.json'))
  ]
  return rungs.saved_rows(names, RESULTS)


def _readme_table() -> list[str]:
  with open(os.path.join(ROOT, 'README.md')) as f:
    lines = f.read().splitlines()
  start = lines.index('## Results')
  header = next(
      i for i in range(start, len(lines)) if lines[i].startswith('| rung |')
  )
  end = header
  while end < len(lines) and lines[end].startswith('|'):
    end += 1
  return lines[header:end]


def test_the_readmes_results_table_is_built_from_docs_results():
  rows = _published_rows()
  # Every published run names the commit it was trained with.
  assert rows and all(r['commit'] != '–' for r in rows)
  assert _readme_table() == ladder_report.readme_table(rows)


def test_docs_results_report_covers_every_published_run():
  with open(os.path.join(RESULTS, 'REPORT.md')) as f:
    report = f.read()
  for r in _published_rows():
    # Its row in the table (final and best as the README has them) and
    # its section with the curves.
    c = r['compare']
    assert f'| {r["rung"]} | ' in report
    assert f'| {c.final:.2f}% | {c.best:.2f}% (epoch {c.best_epoch}) |' in (
        report
    )
    assert f'![{r["rung"]}]({r["rung"]}/curves.png)' in report
