"""A run's saved weights, read from outside the run.

Where the checkpoints are, which steps are whole, and the weights of one:
for `init_from`, evaluation and prediction, which need the parameters and
nothing of the training state's layout; and, for `init_from_optimizer`,
the whole state in a layout the caller gives (`checkpointing` is the
run's own reader and writer).
"""

import os
from collections.abc import Callable
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from cifar_jax.errors import DamagedCheckpoint
from cifar_jax.errors import UserError
from cifar_jax.runs import classes

# Orbax's words for a checkpoint whose tree differs from the one asked for:
# not damage (every checkpoint of the run would have it), another layout.
STRUCTURE_MISMATCH = 'tree structures do not match'


def fingerprint(tree: Any) -> float:
  """Sum of squares of every float leaf: cheap to keep, catches garbage."""
  leaves = jax.tree.leaves(tree)
  floats = [x for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)]
  return float(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in floats))


def first_line(e: Exception) -> str:
  """An exception's first line (Orbax and TensorStore write pages)."""
  text = str(e).strip()
  return text.splitlines()[0][:200] if text else type(e).__name__


def checkpoint_dir(workdir: str) -> str:
  """Where a run directory keeps its checkpoints, one `<step>/` each."""
  return os.path.join(workdir, 'checkpoints')


def saved_steps(workdir: str) -> list[int]:
  """The steps of a run's finished checkpoints, ascending (not those
  unfinished, `<step>.orbax-checkpoint-tmp-*`, or moved aside, `corrupt-*`)."""
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    return []
  return sorted(int(p) for p in os.listdir(directory) if p.isdigit())


def _open(path: str) -> tuple[ocp.CheckpointManager, int | None]:
  """A read-only manager of `path` (a run directory or one checkpoint) and
  the step named by a checkpoint path (None: a run directory's)."""
  path = os.path.abspath(path)
  if os.path.isdir(checkpoint_dir(path)):
    path = checkpoint_dir(path)
  directory, step = path, None
  if os.path.isdir(os.path.join(path, 'state')):  # One checkpoint.
    directory, step = os.path.dirname(path), int(os.path.basename(path))
  if not os.path.isdir(directory):
    raise UserError(
        f'init_from: {path} is not a run directory or a checkpoint.'
    )
  handlers = {'state': ocp.StandardCheckpointHandler(),
              'epoch_metrics': ocp.StandardCheckpointHandler(),
              'meta': ocp.JsonCheckpointHandler()}  # fmt: skip
  options = ocp.CheckpointManagerOptions(read_only=True, create=False)
  return ocp.CheckpointManager(directory, item_handlers=handlers,
                               options=options), step  # fmt: skip


def _open_step(
    path: str, step: int | None
) -> tuple[ocp.CheckpointManager, int]:
  """`_open(path)` and the step to read: `step`, else the one `path`
  names, else the newest."""
  manager, named = _open(path)
  if step is None:
    step = named if named is not None else manager.latest_step()
  if step is None:
    manager.close()
    raise UserError(f'init_from: no checkpoint in {manager.directory}.')
  return manager, step


def _restore_state(
    path: str, target: Callable[[Any], Any], step: int | None
) -> Any:
  """The state of checkpoint `step` (default: the newest) of `path`, read
  into `target(its metadata)`."""
  manager, step = _open_step(path, step)
  where = os.path.join(manager.directory, str(step))
  try:
    state = target(manager.item_metadata(step)['state'])
    args = ocp.args.Composite(
        state=ocp.args.StandardRestore(state), meta=ocp.args.JsonRestore()
    )
    items = manager.restore(step, args=args)
  except Exception as e:  # pylint: disable=broad-except
    # The manager stays open: closing it under TensorStore's reads still in
    # flight makes its threads print "Event loop is closed" tracebacks.
    if isinstance(e, UserError) or STRUCTURE_MISMATCH in str(e):
      raise
    raise DamagedCheckpoint(
        f'checkpoint {where} is damaged: it cannot be read ({first_line(e)})'
    ) from e
  manager.close()
  state, saved = items['state'], items['meta'].get('fingerprint')
  if isinstance(state, dict):
    found = fingerprint((state['params'], state.get('batch_stats', {})))
  else:
    found = fingerprint((state.params, state.batch_stats))
  if saved is not None and not np.isclose(found, saved, rtol=1e-5):
    raise DamagedCheckpoint(
        f'checkpoint {where} is damaged: its arrays do not match their '
        f'fingerprint ({found} != {saved})'
    )
  logging.info('init_from: loaded step %d from %s.', step, manager.directory)
  return state


def trained_classes(
    path: str, step: int | None = None
) -> tuple[str, ...] | None:
  """The classes, in label order, that checkpoint `step` (default: the
  newest) of a run directory, or one checkpoint, was trained on (None:
  unknown)."""
  return classes.saved(*_meta_and_run(path, step))


def meta(path: str, step: int | None = None) -> dict[str, Any]:
  """What checkpoint `step` (default: the newest) says of itself: its
  score, history, classes (`checkpointing.Checkpoints` writes it)."""
  return _meta_and_run(path, step)[0]


def _meta_and_run(path: str, step: int | None) -> tuple[dict[str, Any], str]:
  manager, step = _open_step(path, step)
  try:
    found = manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
    )['meta']
  finally:
    manager.close()
  return found, os.path.dirname(manager.directory)


def restore_params(
    path: str,
    sharding: jax.sharding.Sharding | None = None,
    step: int | None = None,
) -> dict[str, Any]:
  """{'params', 'batch_stats'} of checkpoint `step` (default: the newest)
  of a run directory, or of one checkpoint (`<run>/checkpoints/<step>`).

  Placed on `sharding` (default: this process's first device), whatever
  devices wrote them: Orbax refuses to guess a placement on another
  topology.
  """
  device = jax.local_devices()[0]
  sharding = sharding or jax.sharding.make_single_device_sharding(device)
  as_target = lambda saved: jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      saved,
  )
  state = _restore_state(path, as_target, step)
  return {
      'params': state['params'],
      'batch_stats': state.get('batch_stats', {}),
  }


def restore_state(path: str, target: Any) -> Any:
  """The whole training state of a run's newest checkpoint (or of one
  checkpoint), read into `target`'s layout: for `init_from_optimizer`,
  which continues another run's optimizer and so needs its state laid out
  as this run's (the same optimizer over the same parameters).

  Raises:
    UserError: the checkpoint holds a state laid out otherwise.
  """
  try:
    state = _restore_state(path, lambda saved: target, None)
  except Exception as e:  # pylint: disable=broad-except
    if STRUCTURE_MISMATCH not in str(e):
      raise
    raise UserError(
        f'init_from_optimizer: the optimizer state in {path} is not laid '
        "out as this run's (another optimizer, or other parameters); "
        'without init_from_optimizer only the parameters are taken.'
    ) from e
  return state
