"""cifar_jax: the seed's CIFAR-10 ladder and modern recipes in JAX/Flax.

The folders, from the bottom layer up; a module imports only from layers
below its own (tests/layers_test.py checks it):

1. `errors`: the exceptions users see as one line; `rules`: every config
   key's rule (free of JAX, so a bad config is refused at once);
   `cpu_info`: what /proc/cpuinfo says of the CPU.
2. `data/` (files to augmented batches), `cpu/` (the CPU speed-ups,
   behind the one seam `cpu.for_platform`, which the models never import)
   and `config/` (configs loaded from configs/, old ones upgraded).
3. `models/`: the networks, plain Flax.
4. `reporting/`: console, run records, plots, the seed's record.
5. `training/`: train state, steps, optimizers, compiled programs, the
   whole config's check.
6. `runs/`: checkpoints, resuming, preemption, locks, trained runs, their
   evaluation and predictions.
7. `train`: the epoch loop, `train.train_and_evaluate(config, workdir)`;
   `cli`: the commands' flags and their one-line errors;
   `rung_processes`: ladder rungs trained side by side as processes.
8. `rungs`: the seed's ladder trained and reported.
9. The commands: `main`, `evaluate`, `predict`, `ladder`, `show_augment`
  (`python -m cifar_jax.<command>`): their flags and a `main` that calls
   the library; the tests and the notebook import none of them.
"""
