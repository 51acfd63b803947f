"""What people read: the console, the files a run writes, plots, reports.

- `progress`: the Keras-style progress bar and epoch lines;
- `summary`: the Keras-style model summary;
- `records`: what a run records (history.json, curves.png, TensorBoard,
  config.json, dataset_info.json), written atomically; the machine line;
- `plots`: training curves and confusion matrices;
- `seed_notebook` (+ `seed_notebook.json`): the seed notebook's printed
  record, the one source of its numbers;
- `ladder_report`: REPORT.md, the ladder beside the seed;
- `augment_views`: training images beside augmented views of them.

Imports: `models`, `data`, `cpu_info`, `errors`.
"""
