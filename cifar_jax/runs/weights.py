"""A run's saved weights, read from outside the run.

Where the checkpoints are, which steps are whole, and the weights of one:
for `init_from`, evaluation and prediction, which need the parameters and
nothing of the training state's layout (`checkpointing` is the run's own
reader and writer).
"""

import os
from typing import Any

from absl import logging
import jax
import orbax.checkpoint as ocp

from cifar_jax.errors import UserError


def checkpoint_dir(workdir: str) -> str:
  """Where a run directory keeps its checkpoints, one `<step>/` each."""
  return os.path.join(workdir, 'checkpoints')


def saved_steps(workdir: str) -> list[int]:
  """The steps of a run's finished checkpoints, ascending.

  Unfinished (`<step>.orbax-checkpoint-tmp-*`) and damaged ones moved aside
  (`corrupt-*`) are not steps.
  """
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    return []
  return sorted(int(p) for p in os.listdir(directory) if p.isdigit())


def restore_params(
    path: str,
    sharding: jax.sharding.Sharding | None = None,
    step: int | None = None,
) -> dict[str, Any]:
  """{'params', 'batch_stats'} of a run directory's checkpoint `step`
  (default: the newest), or of one checkpoint directory
  (`<run>/checkpoints/<step>`).

  For `init_from`, evaluation and prediction. The arrays are placed on
  `sharding` (default: this process's first device), whatever devices wrote
  them: Orbax refuses to guess a placement on another topology.
  """
  path = os.path.abspath(path)
  if os.path.isdir(checkpoint_dir(path)):
    path = checkpoint_dir(path)
  if os.path.isdir(os.path.join(path, 'state')):  # One checkpoint.
    directory, step = os.path.dirname(path), int(os.path.basename(path))
  else:
    directory = path
  if not os.path.isdir(directory):
    raise UserError(
        f'init_from: {path} is not a run directory or a ' 'checkpoint.'
    )
  manager = ocp.CheckpointManager(
      directory,
      item_handlers={
          'state': ocp.StandardCheckpointHandler(),
          'epoch_metrics': ocp.StandardCheckpointHandler(),
          'meta': ocp.JsonCheckpointHandler(),
      },
      options=ocp.CheckpointManagerOptions(read_only=True, create=False),
  )
  sharding = sharding or jax.sharding.SingleDeviceSharding(
      jax.local_devices()[0]
  )
  try:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise UserError(f'init_from: no checkpoint in {directory}.')
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
        manager.item_metadata(step)['state'],
    )
    state = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
    )['state']
  finally:
    manager.close()
  logging.info(
      'init_from: loaded parameters of step %d from %s.', step, directory
  )
  return {
      'params': state['params'],
      'batch_stats': state.get('batch_stats', {}),
  }
