"""Run directories: checkpoints, resuming, preemption, locks, processes.

- `checkpointing`: Orbax checkpoints (save, the newest good one);
- `reading`: another run's checkpoint, read-only (init_from, evaluate);
- `retention`: which checkpoints are kept (the newest few and the best);
- `orbax_noise`: what Orbax's threads print after a failed write, dropped;
- `classes`: a run's class names, checked against the data it meets;
- `resume`: where a run starts (its checkpoint, another run's weights, 0);
- `preemption`: stopping at a step when SIGTERM or Ctrl-C arrives;
- `rundir`: the workdir's lock, so two runs never share one;
- `distributed`: joining several processes (`jax.distributed`);
- `inference`: a trained run loaded back, for evaluate and predict;
- `evaluation`: a run's accuracy, loss, per class and confusion matrix;
- `prediction`: the top classes of image files.

Imports: `training`, `config`, `reporting`, `models`, `data`, `cpu`,
`errors`.
"""
