"""The README and docs/ name files and `cifar_jax` names that exist."""

import importlib
import pathlib
import re

import pytest

from cifar_jax.runs import resume

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = [ROOT / 'README.md', *sorted((ROOT / 'docs').rglob('*.md'))]
# A repository path: a top folder, then a file or folder (no wildcards).
PATH = re.compile(
    r'(?<![\w/.-])((?:cifar_jax|configs|tests|benchmarks|docs|notebooks|'
    r'\.ci)/[\w./-]*\w)'
)
NAME = re.compile(r'(?<![\w./])(cifar_jax(?:\.\w+)+)')
# Importing a command defines its flags: they are files, not attributes.
COMMANDS = ('main', 'evaluate', 'predict', 'ladder', 'show_augment')


def _exists(dotted: str) -> bool:
  """Whether `cifar_jax.a.b` is a module, or an attribute of one."""
  parts = dotted.split('.')
  if parts[1] in COMMANDS:
    return len(parts) == 2 and (ROOT / 'cifar_jax' / f'{parts[1]}.py').exists()
  for i in range(len(parts), 1, -1):
    try:
      found = importlib.import_module('.'.join(parts[:i]))
    except ImportError:
      continue
    for attribute in parts[i:]:
      if not hasattr(found, attribute):
        return False
      found = getattr(found, attribute)
    return True
  return False


@pytest.mark.parametrize('doc', DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_path_and_dotted_name_a_doc_gives_exists(doc):
  text = doc.read_text()
  missing = [p for p in PATH.findall(text) if not (ROOT / p).exists()]
  missing += [n for n in NAME.findall(text) if not _exists(n)]
  assert not missing, missing


def test_the_check_finds_a_missing_path_and_a_missing_name():
  assert PATH.findall('see `cifar_jax/nope.py`.') == ['cifar_jax/nope.py']
  assert not (ROOT / 'cifar_jax/nope.py').exists()
  assert not _exists('cifar_jax.runs.nope')
  assert not _exists('cifar_jax.cpu.for_platform.nope')
  assert _exists('cifar_jax.cpu.for_platform') and _exists('cifar_jax.ladder')


def test_the_checkpoint_docs_name_every_key_a_resume_may_change():
  text = (ROOT / 'docs' / 'checkpoints.md').read_text()
  for key in resume.RESUMABLE_CHANGES:
    assert f'`{key}`' in text, key
  for section in resume.RESUMABLE_SECTIONS:
    assert f'`{section}` section' in text, section
