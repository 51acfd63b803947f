"""Points the Colab badge and the notebook's clone at pyproject's repository.

The one place to set the GitHub copy the notebook runs from is
`[project.urls] Repository` in pyproject.toml; this writes it into the
README's Colab badge and the notebook's `REPOSITORY` (both twins). With
--check it changes nothing and exits 1 if they differ (tests run that).

  python notebooks/set_repository.py [--check]
"""

import pathlib
import re
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = 'notebooks/walkthrough.ipynb'
# Each file, and the pattern of the text that names the repository.
PLACES = {
    'README.md': r'colab\.research\.google\.com/github/([^)\s]+?)/blob/main/',
    'notebooks/walkthrough.py': r"^REPOSITORY = 'https://github\.com/([^']+)'",
    NOTEBOOK: r"\"REPOSITORY = 'https://github\.com/([^']+)'",
}


def main(check: bool) -> int:
  with open(ROOT / 'pyproject.toml', 'rb') as f:
    url = tomllib.load(f)['project']['urls']['Repository']
  repository = url.removeprefix('https://github.com/').rstrip('/')
  stale = []
  for name, pattern in PLACES.items():
    path = ROOT / name
    text = path.read_text()
    found = re.findall(pattern, text, re.M)
    if not found:
      raise SystemExit(f'{name}: no repository to set ({pattern}).')
    if set(found) != {repository}:
      stale.append(name)
      span = lambda m: m.group(0).replace(m.group(1), repository)
      if not check:
        path.write_text(re.sub(pattern, span, text, flags=re.M))
  if stale:
    verb = 'differ from' if check else 'now follow'
    print(f'{", ".join(stale)} {verb} pyproject.toml: {repository}')
  return 1 if check and stale else 0


if __name__ == '__main__':
  sys.exit(main('--check' in sys.argv[1:]))
