"""Experiment configs: `configs/<name>.py`, each with `get_config()`."""
