"""What a training step is made of, and the run's compiled programs.

- `steps`: the train state, the jitted train and eval steps;
- `optimizers`: Keras 2.3's SGD, Adam and MaxNorm, the fast recipes' SGD
  and Lookahead, as Optax chains;
- `experiment`: a run's fixed parts (model, data on the device(s),
  compiled programs) and a seed's initial state;
- `plan`: which steps each dispatch runs, and compiling them ahead of time;
- `mesh`: the device mesh and shardings of data parallelism.

The epoch loop that drives them is `cifar_jax.train`. Imports: `data`,
`models`, `cpu`, `errors`, `rules`.
"""
