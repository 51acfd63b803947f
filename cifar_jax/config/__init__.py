"""Configs as the code reads them: loaded, and old ones upgraded.

- `loading`: `configs/<name>.py` imported, with --config.key=value
  overrides;
- `renames`: keys that moved or were added, and old saved configs
  upgraded to today's keys.

The configs themselves are files: `configs/<name>.py` in the repository.
Imports: `errors`.
"""
