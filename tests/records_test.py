"""What a run records of the code it was trained with (code.json)."""

import json
import subprocess

import pytest

from cifar_jax.reporting import records
from conftest import REPO


def _git(*args, cwd=REPO):
  return subprocess.run(
      ['git', '-C', str(cwd), *args], capture_output=True, text=True, check=True
  ).stdout.strip()


def test_code_version_is_this_checkouts_commit_and_state():
  if not (REPO / '.git').exists():
    pytest.skip('Not a git checkout (e.g. an unpacked source archive).')
  version = records.code_version()
  assert version['commit'] == _git('rev-parse', 'HEAD')
  changed = _git('status', '--porcelain', '--untracked-files=no')
  assert version['dirty'] == bool(changed)


def test_code_version_names_no_commit_below_the_top_of_a_work_tree(tmp_path):
  # A wheel installed in site-packages inside another project's repository
  # must not take that repository's commit as its own.
  _git('init', '-q', cwd=tmp_path)
  (tmp_path / 'site-packages').mkdir()
  version = records.code_version(str(tmp_path / 'site-packages'))
  assert version['commit'] is None and version['dirty'] is None


def test_record_code_adds_an_entry_only_when_the_code_changes(
    tmp_path, monkeypatch
):
  versions = iter(
      [
          {'commit': 'a' * 40, 'dirty': False, 'jax': '0.10.2'},
          {'commit': 'a' * 40, 'dirty': False, 'jax': '0.10.2'},
          {'commit': 'c' * 40, 'dirty': True, 'jax': '0.12.0'},
      ]
  )
  monkeypatch.setattr(records, 'code_version', lambda: next(versions))
  for step in (0, 40, 80):  # A run started, then resumed twice.
    records.record_code(str(tmp_path), step)
  entries = json.loads((tmp_path / records.CODE).read_text())
  assert [(e['from_step'], e['commit'][0]) for e in entries] == [
      (0, 'a'),
      (80, 'c'),
  ]
  assert records.commits_text(entries) == 'aaaaaaa, ccccccc+dirty'


def test_commits_text_of_a_run_without_code_json_is_unknown(tmp_path):
  assert records.read_code(str(tmp_path)) == []
  assert records.commits_text([]) == '–'
  assert records.commits_text([{'commit': None, 'dirty': None}]) == '–'
