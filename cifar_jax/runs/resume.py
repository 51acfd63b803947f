"""Where a run starts: its newest good checkpoint, another run's params, or 0.

A run resumes only checkpoints made by the same computation: every config
key must match except `RESUMABLE_CHANGES`, which do not change what the
saved steps computed. `init_from` starts a new run from another run's
parameters and BatchNorm statistics, with a fresh optimizer, or with that
run's optimizer state too (`init_from_optimizer`).
"""

import json
from typing import Any

import jax
import ml_collections
import numpy as np

from cifar_jax.config import renames
from cifar_jax.errors import UserError
from cifar_jax.reporting import records
from cifar_jax.runs import checkpointing
from cifar_jax.runs import reading
from cifar_jax.runs import classes
from cifar_jax.training.experiment import Experiment
from cifar_jax.training.experiment import Run
from cifar_jax.training import optimizers
from cifar_jax.training import steps

# Config keys that may change when a run resumes: they do not change what
# the checkpointed steps computed.
RESUMABLE_CHANGES = (
    'num_epochs',
    'data.dir',
    'data.cache_dir',
    'eval_batch_size',
    'data.eval_split',
    'eval_tta',
    'checkpoint_every_steps',
    'keep_checkpoints',
    'init_from',
    'init_from_optimizer',
    'steps_per_dispatch',
    'seed_rung',
)
# Sections that never constrain a resume: `cpu` says how the machine
# computes the model, not which model, and a run moves between machines.
RESUMABLE_SECTIONS = ('cpu',)


def config_differences(saved: dict, current: dict) -> list[str]:
  """'key: saved -> current' for every key that must not change on resume."""
  saved, current = records.flatten(saved), records.flatten(current)
  return [
      f'{k}: {saved.get(k, "<absent>")!r} in the checkpoint, '
      f'{current.get(k, "<absent>")!r} now'
      for k in sorted(set(saved) | set(current))
      if k not in RESUMABLE_CHANGES
      and k.split('.')[0] not in RESUMABLE_SECTIONS
      and saved.get(k) != current.get(k)
  ]


def start(
    exp: Experiment, ckpt: checkpointing.Checkpoints, config_dict: dict
) -> tuple[Run, bool]:
  """The run from the newest good checkpoint of this config, or a fresh one
  of `config.seed`; and whether it resumed.

  Raises:
    UserError: the checkpoints come from another config, or were trained
      on other classes.
  """

  def check_meta(meta, directory):
    classes.check(
        classes.saved(meta, directory),
        exp.class_names,
        f'The checkpoints in {ckpt.directory} were',
    )
    diffs = config_differences(renames.upgrade(meta['config']), config_dict)
    if diffs:
      raise UserError(
          f'The checkpoints in {ckpt.directory} come from a different '
          'config:\n  '
          + '\n  '.join(diffs)
          + '\nUse another --workdir, or the config they were made with.'
      )

  run = exp.start(exp.config.seed)
  restored = ckpt.restore(
      _abstract(run.state), _abstract(run.epoch_metrics), check_meta
  )
  if restored:
    run.state, run.epoch_metrics, run.step = (
        restored.state, restored.metrics, restored.step
    )  # fmt: skip
    run.history = list(restored.meta['history'])
    run.epoch_seconds = restored.meta['epoch_seconds']
    return run, True
  if exp.config.init_from_optimizer and not exp.config.init_from:
    # A run that continues another's optimizer but starts from scratch
    # would be compared with the seed's continued curve as if it had not.
    raise UserError(
        'init_from_optimizer continues another run, but init_from is empty: '
        'pass --config.init_from=<that run> (deep_adam_aug: a run of '
        'deep_adam, as the seed did), or --config.init_from_optimizer=false '
        'to start from scratch.'
    )
  if exp.config.init_from:
    run.state = state_from_run(exp, run.state, exp.config.init_from)
  return run, False


def config_json(config: ml_collections.ConfigDict) -> dict:
  """The config as saved in checkpoints and config.json."""
  return json.loads(config.to_json_best_effort())


def _abstract(tree: Any) -> Any:
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      tree,
  )


def state_from_run(
    exp: Experiment, state: steps.TrainState, path: str
) -> steps.TrainState:
  """`state` (an initial one) with another run's params and BN statistics,
  and its optimizer state too when `init_from_optimizer`.

  The step starts at 0 either way: the run's epochs, data order and
  checkpoints are its own. (A Keras model fit again without compile()
  keeps its optimizer's slots and count, as the seed's deep_adam_aug did;
  the learning rate must then be constant, or it would follow the carried
  count while the loop logs its own.) Raises UserError if it cannot be.
  """
  if exp.config.init_from_optimizer and not (
      optimizers.has_constant_learning_rate(exp.config.optimizer)
  ):
    raise UserError(
        'init_from_optimizer needs a constant learning rate (adam, or sgd '
        f'with decay 0), not optimizer.name={exp.config.optimizer.name!r}'
        ' with its schedule; set init_from_optimizer=false to take only '
        'the parameters.'
    )

  def check_meta(meta, directory):
    saved = classes.saved(meta, directory)
    classes.check(saved, exp.class_names, f'init_from={path} was')

  if exp.config.init_from_optimizer:
    try:
      theirs = reading.read_run(path, _abstract(state), None, check_meta)
    except Exception as e:  # pylint: disable=broad-except
      if checkpointing.STRUCTURE_MISMATCH not in str(e):
        raise
      raise UserError(
          f'init_from_optimizer: the optimizer state in {path} is not laid '
          "out as this run's (another optimizer, or other parameters); "
          'without init_from_optimizer only the parameters are taken.'
      ) from e
    return state.with_variables(
        theirs.state.params, theirs.state.batch_stats
    ).replace(opt_state=theirs.state.opt_state)
  loaded = reading.read_run(
      path, check_meta=check_meta, sharding=exp.replicated
  ).state
  ours = {'params': state.params, 'batch_stats': state.batch_stats}
  theirs_shapes = jax.tree.map(np.shape, loaded)
  ours_shapes = jax.tree.map(np.shape, ours)
  if theirs_shapes != ours_shapes:
    raise UserError(
        f'init_from={path}: its parameters do not fit this '
        f'model.\n  checkpoint: {theirs_shapes}\n  model: '
        f'{ours_shapes}'
    )
  loaded = jax.tree.map(lambda new, old: new.astype(old.dtype), loaded, ours)
  return state.with_variables(loaded['params'], loaded['batch_stats'])
