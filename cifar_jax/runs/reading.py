"""Another run's checkpoint, read-only: for `init_from`, evaluate, predict."""

from collections.abc import Callable
import os
from typing import Any

from absl import logging
import jax

from cifar_jax.errors import UserError
from cifar_jax.runs import checkpointing


def read_run(
    path: str,
    target: Any = None,
    step: int | None = None,
    check_meta: Callable[[dict, str], None] = lambda meta, directory: None,
    newest_readable: bool = False,
    sharding: jax.sharding.Sharding | None = None,
) -> checkpointing.Restored:
  """Another run's checkpoint, read-only, for `init_from`, evaluate and
  predict: `step`, else the one `path` names (`<run>/checkpoints/<step>`),
  else the newest (`newest_readable`: the newest that is not damaged, as a
  resume would take).

  Its state is read into `target`'s layout, by default the params and
  statistics as saved ({'params', 'batch_stats'}), on `sharding` (default:
  this process's first device) whatever devices wrote them: Orbax refuses
  to guess a placement on another topology.
  """
  path = os.path.abspath(path)
  if os.path.isdir(checkpointing.checkpoint_dir(path)):
    path = checkpointing.checkpoint_dir(path)
  if step is None and os.path.isdir(os.path.join(path, 'state')):
    path, step = os.path.dirname(path), int(os.path.basename(path))
  if not os.path.isdir(path):
    raise UserError(f'{path} is not a run directory or a checkpoint.')
  ckpts = checkpointing.Checkpoints(path, read_only=True)
  if not ckpts.steps():
    raise UserError(f'No checkpoints in {path}.')
  if step is None and not newest_readable:
    step = max(ckpts.steps())
  device = jax.local_devices()[0]
  sharding = sharding or jax.sharding.make_single_device_sharding(device)
  as_saved = lambda saved: jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      saved,
  )
  restored = ckpts.restore(
      as_saved if target is None else target, None, check_meta, step
  )
  ckpts.close()
  if target is None:
    state = restored.state
    restored.state = {'params': state['params'],
                      'batch_stats': state.get('batch_stats', {})}  # fmt: skip
  logging.info('Read step %d of %s.', restored.step, path)
  return restored
