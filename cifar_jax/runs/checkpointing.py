"""Orbax checkpoints of a run: save, find the newest good one, restore.

A thin wrapper over `orbax.checkpoint.CheckpointManager` (the stable V0
API: a move to V1 touches this module and `retention` only), for the run
that writes them and, read-only, for `init_from`, evaluate and predict.
Each checkpoint holds `state` (the TrainState; the data position is its
step, the order being a function of (seed, step)), `epoch_metrics` (of the
epoch in progress) and `meta` (JSON: the config, class names, history,
seconds spent in the epoch, a fingerprint of the state to detect garbage).
Orbax renames a checkpoint into place when it is complete, so a kill
mid-save never leaves one that looks whole.
"""

import collections
import dataclasses
import glob
import logging as std_logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from cifar_jax.errors import CheckpointWriteFailure
from cifar_jax.errors import DamagedCheckpoint
from cifar_jax.errors import UserError
from cifar_jax.errors import write_failure
from cifar_jax.runs import retention

# The suffix of a checkpoint Orbax has not finished writing.
_UNFINISHED = '.orbax-checkpoint-tmp'
# Orbax's words for a checkpoint whose tree differs from the one asked for:
# not damage (every checkpoint of the run would have it), another layout.
STRUCTURE_MISMATCH = 'tree structures do not match'


def fingerprint(state: Any) -> float:
  """Sum of squares of the float params and statistics: catches garbage."""
  if isinstance(state, dict):  # Read without the TrainState's layout.
    variables = (state['params'], state.get('batch_stats', {}))
  else:
    variables = (state.params, state.batch_stats)
  leaves = jax.tree.leaves(variables)
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


class UnretrievedWriteFailures(std_logging.Filter):
  """Drops asyncio's report of a failed write that no one awaited.

  When a disk fills, every fragment Orbax is writing fails; Orbax raises
  the first, and asyncio later logs each of the others, with its traceback,
  as 'Task exception was never retrieved'. The first is already the run's
  one error line (`CheckpointWriteFailure`), so the rest are dropped; any
  other unretrieved exception is still logged.
  """

  def filter(self, record: std_logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    return not (
        str(record.msg).startswith('Task exception was never retrieved')
        and write_failure(exc) is not None
    )


def _drop_unretrieved_write_failures() -> None:
  logger = std_logging.getLogger('asyncio')
  if not any(isinstance(f, UnretrievedWriteFailures) for f in logger.filters):
    logger.addFilter(UnretrievedWriteFailures())


@dataclasses.dataclass
class Restored:
  step: int
  state: Any
  metrics: Any
  meta: dict[str, Any]


class Checkpoints:
  """The checkpoints of one run directory; `read_only` for another run's."""

  def __init__(
      self,
      directory: str,
      keep: int = 1,
      asynchronous: bool = True,
      read_only: bool = False,
  ):
    self.directory = os.path.abspath(directory)
    self.read_only = read_only
    self._scores: collections.defaultdict[int, float | None] = (
        collections.defaultdict(lambda: None)
    )
    options = ocp.CheckpointManagerOptions(
        preservation_policy=retention.policy(keep, self._scores),
        enable_async_checkpointing=asynchronous,
        create=not read_only,  # Orbax's read_only mode only adds warnings.
    )
    handlers = {'state': ocp.StandardCheckpointHandler(),
                'epoch_metrics': ocp.StandardCheckpointHandler(),
                'meta': ocp.JsonCheckpointHandler()}  # fmt: skip
    _drop_unretrieved_write_failures()
    try:
      self._manager = ocp.CheckpointManager(
          self.directory, options=options, item_handlers=handlers
      )
    except OSError as e:
      raise UserError(
          f'Cannot use checkpoint directory {self.directory}: {e}'
      ) from e
    self._read_scores()

  def _read_scores(self) -> None:
    """Each saved step's val_accuracy, from its meta (None mid-epoch)."""
    self._scores.clear()
    for step in self.steps():
      try:
        self._scores[step] = retention.score(self.read_meta(step))
      except Exception:  # pylint: disable=broad-except
        pass  # Unreadable: restore moves it aside if it is tried.

  def steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(
      self,
      step: int,
      state: Any,
      metrics: Any,
      meta: dict[str, Any],
      val_accuracy: float | None,
  ) -> None:
    """Starts saving (asynchronously); errors surface here or at `wait`.

    A step that is already saved (e.g. a preemption right after an epoch's
    checkpoint) is not saved again.
    """
    if step in self.steps():
      return
    self._check_space(state, metrics)
    meta = dict(
        meta,
        step=step,
        fingerprint=fingerprint(state),
        val_accuracy=val_accuracy,
    )
    self._scores[step] = val_accuracy  # Before Orbax applies the policy.
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        epoch_metrics=ocp.args.StandardSave(metrics),
        meta=ocp.args.JsonSave(meta),
    )
    scores = None if val_accuracy is None else {'val_accuracy': val_accuracy}
    self._guard(
        lambda: self._manager.save(step, args=args, metrics=scores, force=True)
    )

  def _check_space(self, state: Any, metrics: Any) -> None:
    """Refuses a save that cannot fit before Orbax starts writing it.

    A save that runs out of space fails in TensorStore's writer threads,
    and those still in flight when the process exits print tracebacks for
    the event loop Orbax has closed; a save never started leaves none.
    """
    need = sum(x.nbytes for x in jax.tree.leaves((state, metrics)))
    need = int(need * 1.1) + 2**20  # Orbax's metadata and file overheads.
    try:
      free = shutil.disk_usage(self.directory).free
    except OSError:
      return  # Unknown: the write itself will tell.
    if need > free:
      self._remove_unfinished()
      raise CheckpointWriteFailure(
          f'Writing a checkpoint to {self.directory} failed (no space left '
          f'on the device: it needs about {need / 2**20:.1f} MiB, '
          f'{free / 2**20:.1f} MiB are free); the earlier checkpoints are '
          'intact. Free space or fix the directory, then run the same '
          'command to resume.'
      )

  def wait(self) -> None:
    self._guard(self._manager.wait_until_finished)

  def close(self, quietly: bool = False) -> None:
    """Finishes the last save. `quietly`: an error is on its way out, so a
    failure here is logged, never raised in its place (a second Ctrl-C
    inside Orbax's save makes closing fail too, 'cannot join thread before
    it is started', and the user must still see their Ctrl-C)."""
    try:
      self._guard(self._manager.close)
    except Exception as e:  # pylint: disable=broad-exception-caught
      if not quietly:
        raise
      logging.info('Closing the checkpoints after an error: %s', e)

  def _guard(self, fn):
    """Runs a save, wait or close; a failed write becomes one clear error.

    Orbax reports a full disk as OSError or as ValueError
    ('RESOURCE_EXHAUSTED ...'), from the call or from its background
    threads at the next call. The unfinished checkpoint directory is
    removed; finished ones are never touched.
    """
    try:
      return fn()
    except (OSError, ValueError) as e:
      cause = write_failure(e)
      if cause is None:
        raise
      self._remove_unfinished()
      raise CheckpointWriteFailure(
          f'Writing a checkpoint to {self.directory} failed ({cause}); the '
          'earlier checkpoints are intact. Free space or fix the directory, '
          'then run the same command to resume.'
      ) from e

  def _remove_unfinished(self) -> None:
    if jax.process_index() != 0:
      return
    for name in os.listdir(self.directory):
      if name.endswith(_UNFINISHED):
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

  def read_meta(self, step: int) -> dict[str, Any]:
    return self._manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
    )['meta']

  def best(self) -> int | None:
    """The best checkpoint's step (`retention.best_step`)."""
    return retention.best_step({s: self._scores[s] for s in self.steps()})

  def restore(
      self,
      target_state: Any,
      target_metrics: Any = None,
      check_meta: Callable[[dict, str], None] = lambda meta, directory: None,
      step: int | None = None,
  ) -> Restored | None:
    """Checkpoint `step`, else the newest that restores cleanly, or None.

    A damaged checkpoint (unreadable, or arrays that do not match their
    fingerprint) is passed over with a warning for the previous one: moved
    aside (`corrupt-<step>-<time>`, never deleted) unless `read_only`.
    With only damaged ones, it refuses, now and later. The targets (arrays
    or ShapeDtypeStructs; `target_state` may be a function of the saved
    state's metadata) give structure, dtypes and placement;
    `check_meta(meta, directory)` runs before the arrays are read and raises
    UserError for another config's checkpoint (not damage).
    """
    damaged = []
    for s in [step] if step is not None else sorted(self.steps())[::-1]:
      restored = self._restore(s, target_state, target_metrics, check_meta)
      if isinstance(restored, Restored):
        return restored
      path = os.path.join(self.directory, str(s))
      if step is not None:
        raise DamagedCheckpoint(f'checkpoint {path} is damaged: {restored}')
      damaged.append(str(s))
      self._set_aside(s, path, restored)
    if self.read_only and damaged:
      raise DamagedCheckpoint(
          f'Every checkpoint in {self.directory} is damaged (steps '
          f'{", ".join(damaged)}).'
      )
    # Starting again would overwrite the run's history: not without the
    # user's move, however often the same command is run.
    moved = sorted(glob.glob(os.path.join(self.directory, 'corrupt-*')))
    if moved and not self.read_only:
      raise UserError(
          f'Every checkpoint in {self.directory} is damaged; they were moved '
          f'aside, not deleted ({", ".join(map(os.path.basename, moved))}). '
          'To start this run over deliberately, move or delete '
          f'{self.directory}, or use another --workdir.'
      )
    return None

  def _restore(
      self, step: int, target_state: Any, target_metrics: Any, check_meta
  ) -> Restored | str:
    """Checkpoint `step` restored, or why it is damaged."""
    try:
      meta = self.read_meta(step)
    except Exception as e:  # pylint: disable=broad-except
      return f'its metadata is unreadable ({first_line(e)})'
    check_meta(meta, self.directory)
    items = {'state': target_state, 'epoch_metrics': target_metrics}
    try:
      if callable(target_state):
        items['state'] = target_state(
            self._manager.item_metadata(step)['state']
        )
      args = {k: ocp.args.StandardRestore(v) for k, v in items.items()
              if v is not None}  # fmt: skip
      restored = self._manager.restore(step, args=ocp.args.Composite(**args))
    except Exception as e:  # pylint: disable=broad-except
      # The manager stays open: closing it under TensorStore's reads still in
      # flight makes its threads print "Event loop is closed" tracebacks.
      if STRUCTURE_MISMATCH not in str(e):
        return f'it cannot be read ({first_line(e)})'
      if self.read_only:  # Another run's: its caller says what differs.
        raise
      raise UserError(  # Whole, but written by another version.
          f'The checkpoints in {self.directory} hold a training state laid '
          "out differently from this version of cifar_jax's "
          f'({first_line(e)}); they were left as they are. Use the '
          'version that wrote them, or another --workdir.'
      ) from e
      return f'it cannot be read ({first_line(e)})'
    state, saved = restored['state'], meta.get('fingerprint')
    if saved is not None and not np.isclose(
        fingerprint(state), saved, rtol=1e-5
    ):
      return (
          'its arrays do not match their fingerprint '
          f'({fingerprint(state)} != {saved})'
      )
    return Restored(step, state, restored.get('epoch_metrics'), meta)

  def _set_aside(self, step: int, path: str, why: str) -> None:
    """Warns of damaged checkpoint `step`; unless read-only, moves it aside
    (never deleting it)."""
    if self.read_only:
      print(f'warning: checkpoint {path} is damaged: {why}; trying the previous one.',
            file=sys.stderr)  # fmt: skip
      return
    aside = os.path.join(
        self.directory, f'corrupt-{step}-{time.strftime("%Y%m%d-%H%M%S")}'
    )
    logging.warning('Checkpoint %s is damaged: %s. Moving it to %s and '
                    'trying the previous one.', path, why, aside)  # fmt: skip
    if jax.process_index() == 0:  # The directory is shared by all processes.
      print(
          f'warning: checkpoint {path} is damaged ({why}); moved to '
          f'{aside}, trying the previous one.',
          flush=True,
      )
      os.rename(path, aside)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'quarantine {step}')
    self._manager.reload()
    self._scores.pop(step, None)


def read_run(
    path: str,
    target: Any = None,
    step: int | None = None,
    check_meta: Callable[[dict, str], None] = lambda meta, directory: None,
    newest_readable: bool = False,
    sharding: jax.sharding.Sharding | None = None,
) -> Restored:
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
  if os.path.isdir(checkpoint_dir(path)):
    path = checkpoint_dir(path)
  if step is None and os.path.isdir(os.path.join(path, 'state')):
    path, step = os.path.dirname(path), int(os.path.basename(path))
  if not os.path.isdir(path):
    raise UserError(f'{path} is not a run directory or a checkpoint.')
  ckpts = Checkpoints(path, read_only=True)
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
