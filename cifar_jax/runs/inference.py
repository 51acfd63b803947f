"""Loading a trained run and computing its predictions (evaluate, predict).

A run directory holds what is needed: `config.json` (to rebuild the model)
and `checkpoints/` (the weights, the class names they were trained on and
each one's score, by which `--checkpoint best` is chosen).
"""

import dataclasses
import functools
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from cifar_jax.config import renames
from cifar_jax import cpu
from cifar_jax.data import augment
from cifar_jax.data import images as images_lib
from cifar_jax.data import input_pipeline
from cifar_jax.errors import UserError
from cifar_jax import models
from cifar_jax.runs import checkpointing
from cifar_jax.runs import reading
from cifar_jax.runs import classes
from cifar_jax.training import steps


@dataclasses.dataclass
class TrainedRun:
  config: ml_collections.ConfigDict
  model: Any
  variables: dict[str, Any]
  step: int
  class_names: tuple[str, ...]
  tta_level: int | None = None  # None: the run's `eval_tta`.
  compiler_options: dict[str, str] = dataclasses.field(default_factory=dict)

  @property
  def tta(self) -> augment.TTA:
    """The test-time augmentation its logits use."""
    return augment.TTA.from_config(self.config, self.tta_level)

  def __post_init__(self):
    # Compiled once per run: the loop's evaluation path (`steps.logits`).
    normalization = images_lib.Normalization.from_config(self.config.data)
    logits = functools.partial(
        steps.logits,
        self.model.apply,
        normalization=normalization,
        tta=self.tta,
    )
    self.apply = jax.jit(logits, compiler_options=self.compiler_options)


def _read_json(workdir: str, name: str) -> Any:
  path = os.path.join(workdir, name)
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError as e:
    raise UserError(
        f'{workdir} is not a trained run directory (no {name}); '
        'train one with python -m cifar_jax.main.'
    ) from e


def select_step(workdir: str, which: str) -> int | None:
  """The checkpoint step for 'best' (by val_accuracy) or 'STEP'; None for
  'latest' (the newest that is not damaged, as a resume would take)."""
  ckpts = checkpointing.Checkpoints(
      checkpointing.checkpoint_dir(workdir), read_only=True
  )
  steps, best = sorted(ckpts.steps()), ckpts.best()
  ckpts.close()
  if not steps:
    raise UserError(f'No checkpoints in {ckpts.directory}.')
  if which == 'latest':
    return None
  if which == 'best':
    if best is None:
      raise UserError(
          f'No end-of-epoch checkpoint in {ckpts.directory} to rank.'
      )
    return best
  if which.isdigit() and int(which) in steps:
    return int(which)
  raise UserError(
      f"--checkpoint must be 'best', 'latest' or one of the "
      f'saved steps {steps}, not {which!r}.'
  )


def load_run(
    workdir: str, checkpoint: str = 'latest', tta_level: int | None = None
) -> TrainedRun:
  """The model and variables of `workdir`'s checkpoint `checkpoint`.

  Its logits use test-time augmentation `tta_level` (augment.tta_logits),
  by default the level the run evaluated with, so they match its log.
  """
  config = ml_collections.ConfigDict(
      renames.upgrade(_read_json(workdir, 'config.json'))
  )
  platform = cpu.for_platform(config.cpu)
  model = models.create_model(config.model, platform.kernels)
  step = select_step(workdir, checkpoint)
  restored = reading.read_run(workdir, step=step, newest_readable=True)
  variables = restored.state
  if not variables['batch_stats']:
    variables = {'params': variables['params']}
  names = classes.saved(restored.meta, checkpointing.checkpoint_dir(workdir))
  names = names or input_pipeline.CIFAR10_CLASSES
  options = dict(platform.compiler_options)
  return TrainedRun(
      config, model, variables, restored.step, names, tta_level, options
  )


def logits(
    run: TrainedRun, images: np.ndarray, batch_size: int = 500
) -> np.ndarray:
  """(N, classes) logits of uint8 (N, 32, 32, 3) images, in inference mode.

  Only the data set's classes: a model with more outputs than its data had
  classes (model.num_classes) never trained the others, and they are
  ranked as they were in training's evaluation (`steps.eval_step`): not.
  """
  out = []
  for start in range(0, len(images), batch_size):
    batch = images[start : start + batch_size]
    padded = np.zeros((batch_size,) + batch.shape[1:], batch.dtype)
    padded[: len(batch)] = batch  # One compiled shape for every batch.
    batch_logits = np.asarray(run.apply(run.variables, padded))
    out.append(batch_logits[: len(batch), : len(run.class_names)])
  return np.concatenate(out) if out else np.zeros((0, len(run.class_names)))


def probabilities(
    run: TrainedRun, images: np.ndarray, batch_size: int = 500
) -> np.ndarray:
  """(N, classes) softmax of `logits`: the model's belief in each class."""
  z = logits(run, images, batch_size).astype(np.float64)
  z = np.exp(z - z.max(-1, keepdims=True))
  return z / z.sum(-1, keepdims=True)
