"""Orbax checkpoints of a run: save, find the newest good one, restore.

A thin wrapper over `orbax.checkpoint.CheckpointManager` (the stable V0
API: a move to V1 touches this module and `retention` only), for the run
that writes them and, read-only, for another run's (`reading`).
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
from cifar_jax.runs import orbax_noise
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
    orbax_noise.drop_unretrieved_write_failures()
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
    meta = dict(meta, step=step, fingerprint=fingerprint(state),
                val_accuracy=val_accuracy)  # fmt: skip
    self._scores[step] = val_accuracy  # Before Orbax applies the policy.
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        epoch_metrics=ocp.args.StandardSave(metrics),
        meta=ocp.args.JsonSave(meta),
    )
    self._guard(lambda: self._manager.save(step, args=args, force=True))

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
      raise self._failed(
          f'no space left on the device: it needs about {need / 2**20:.1f} '
          f'MiB, {free / 2**20:.1f} MiB are free'
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
      raise self._failed(cause) from e

  def _failed(self, cause: str) -> CheckpointWriteFailure:
    """The error of a failed write, its unfinished checkpoint removed."""
    if jax.process_index() == 0:
      for name in os.listdir(self.directory):
        if name.endswith(_UNFINISHED):
          shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
    return CheckpointWriteFailure(
        f'Writing a checkpoint to {self.directory} failed ({cause}); the '
        'earlier checkpoints are intact. Free space or fix the directory, '
        'then run the same command to resume.'
    )

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
    found, saved = fingerprint(restored['state']), meta.get('fingerprint')
    if saved is not None and not np.isclose(found, saved, rtol=1e-5):
      return f'its arrays do not match their fingerprint ({found} != {saved})'
    return Restored(
        step, restored['state'], restored.get('epoch_metrics'), meta
    )

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
