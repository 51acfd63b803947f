"""Orbax checkpoints of a run: save, find the newest good one, restore.

A thin wrapper over `orbax.checkpoint.CheckpointManager` (the stable V0
API: a move to V1 touches this module, `retention` and `weights` only).
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
import time
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from cifar_jax.errors import CheckpointWriteFailure
from cifar_jax.errors import UserError
from cifar_jax.errors import write_failure
from cifar_jax.runs import retention
from cifar_jax.runs import weights

_ITEMS = ('state', 'epoch_metrics', 'meta')  # Orbax reserves 'metrics'.
# The suffix of a checkpoint Orbax has not finished writing.
_UNFINISHED = '.orbax-checkpoint-tmp'


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
  """The checkpoints of one run directory."""

  def __init__(self, directory: str, keep: int, asynchronous: bool = True):
    self.directory = os.path.abspath(directory)
    self._scores: collections.defaultdict[int, float | None] = (
        collections.defaultdict(lambda: None)
    )
    options = ocp.CheckpointManagerOptions(
        preservation_policy=retention.policy(keep, self._scores),
        enable_async_checkpointing=asynchronous,
        create=True,
    )
    _drop_unretrieved_write_failures()
    try:
      self._manager = ocp.CheckpointManager(
          self.directory, options=options, item_names=_ITEMS
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
        pass  # Unreadable: restore_latest moves it aside if it is tried.

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
        fingerprint=weights.fingerprint((state.params, state.batch_stats)),
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

  def restore_latest(
      self, target_state: Any, target_metrics: Any, check_meta
  ) -> Restored | None:
    """The newest checkpoint that restores cleanly, or None.

    A checkpoint that cannot be read, or does not match its fingerprint,
    is moved aside (`corrupt-<step>-<time>`, never deleted) with a warning
    and the previous one tried; with only damaged ones, it refuses, now and
    later. The targets (arrays or ShapeDtypeStructs) give structure, dtypes
    and placement; `check_meta(meta)` runs before the arrays are read and
    raises UserError for another config's checkpoint (not damage).
    """
    for step in sorted(self.steps(), reverse=True):
      restored = self._restore(step, target_state, target_metrics, check_meta)
      if isinstance(restored, Restored):
        return restored
      self._quarantine(step, restored)
    # Starting again would overwrite the run's history: not without the
    # user's move, however often the same command is run.
    moved = sorted(glob.glob(os.path.join(self.directory, 'corrupt-*')))
    if moved:
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
      return f'its metadata is unreadable ({weights.first_line(e)})'
    check_meta(meta)
    try:
      items = self._manager.restore(
          step,
          args=ocp.args.Composite(
              state=ocp.args.StandardRestore(target_state),
              epoch_metrics=ocp.args.StandardRestore(target_metrics),
          ),
      )
    except Exception as e:  # pylint: disable=broad-except
      if weights.STRUCTURE_MISMATCH in str(e):  # Whole, but of another layout.
        raise UserError(
            f'The checkpoints in {self.directory} hold a training state laid '
            "out differently from this version of cifar_jax's "
            f'({weights.first_line(e)}); they were left as they are. Use the '
            'version that wrote them, or another --workdir.'
        ) from e
      return f'it cannot be read ({weights.first_line(e)})'
    state = items['state']
    found = weights.fingerprint((state.params, state.batch_stats))
    if not np.isclose(found, meta['fingerprint'], rtol=1e-5):
      return (
          'its arrays do not match their fingerprint '
          f'({found} != {meta["fingerprint"]})'
      )
    return Restored(step, state, items['epoch_metrics'], meta)

  def _quarantine(self, step: int, why: str) -> None:
    """Moves checkpoint `step` aside; never deletes it."""
    path = os.path.join(self.directory, str(step))
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
