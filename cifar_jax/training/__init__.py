"""What a training step is made of, and the run's compiled programs.

- `steps`: the train state, the jitted train and eval steps;
- `optimizers`: Keras 2.3's SGD, Adam and MaxNorm as Optax chains, and
  the one place a config's optimizer is built;
- `fast_sgd`: the fast recipes' SGD, schedule and Lookahead;
- `experiment`: a run's fixed parts (model, data on the device(s),
  compiled programs) and a seed's `Run` of it;
- `checks`: a whole config checked against `rules` in one line, before
  JAX loads;
- `plan`: which steps each dispatch runs, and compiling them ahead of time;
- `mesh`: the device mesh and shardings of data parallelism.

The epoch loop that drives them is `cifar_jax.train`. Imports: `data`,
`models`, `reporting`, `cpu`, `errors`, `rules`.
"""
