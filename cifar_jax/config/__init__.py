"""Configs as the code reads them: checked once, old ones upgraded.

- `checks`: every key's rule, collected from the modules that use the
  values (each rule is defined once, beside its code), checked in one line;
- `loading`: `configs/<name>.py` imported, with --config.key=value
  overrides;
- `renames`: keys that moved or were added, and old saved configs
  upgraded to today's keys.

The configs themselves are files: `configs/<name>.py` in the repository.
Imports: `training`, `reporting`, `models`, `data`, `cpu`, `errors`, `rules`.
"""
