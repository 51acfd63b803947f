"""What a run writes for people: TensorBoard summaries, history, curves.

TensorBoard goes through `clu.metric_writers` (train and eval loss and
accuracy per epoch, learning rate, steps and images per second, and the
hyperparameters); `clu.periodic_actions.ReportProgress` adds throughput
during epochs. `history.json` and `curves.png` are rewritten after every
epoch; a ladder rung's (`config.seed_rung`) draws the seed notebook's
printed curves beside ours. Only process 0 writes; the others only log.
"""

import json
import os
import platform
from typing import Any

from absl import logging
import jax
import ml_collections

from cifar_jax import input_pipeline
from cifar_jax import plots
from cifar_jax import seed_notebook


def flatten(d: dict, prefix: str = '') -> dict[str, Any]:
  """{'a.b': v} from {'a': {'b': v}}; lists become tuples."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = tuple(v) if isinstance(v, list) else v
  return out


def machine_description() -> str:
  """The accelerator, or the CPU model and core count, for reports."""
  device = jax.devices()[0]
  if device.platform != 'cpu':
    return f'{jax.device_count()} x {device.device_kind}'
  model = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      model = next(l.split(':', 1)[1].strip() for l in f
                   if l.startswith('model name'))
  except (OSError, StopIteration):
    pass
  return f'{model}, {os.cpu_count()} CPU cores'


def write_json(path: str, value: Any) -> None:
  """Writes atomically, so a crash never leaves a truncated file."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(value, f, indent=2)
  os.replace(tmp, path)


class _LogWriter:
  """clu's MetricWriter interface, to the log only: where TensorFlow (which
  clu's TensorBoard writer needs) is not installed, as on many GPU images."""

  def write_hparams(self, hparams: dict[str, Any]) -> None:
    logging.info('Hyperparameters: %s', hparams)

  def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
    logging.info('[%d] %s', step, ', '.join(
        f'{k}={v:.6g}' for k, v in scalars.items()))

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


class Reporter:
  """Writes a run's summaries; `progress(step)` after every train step."""

  def __init__(self, workdir: str, config: ml_collections.ConfigDict,
               total_steps: int):
    self.workdir = workdir
    self.is_writer = jax.process_index() == 0
    self.title = os.path.basename(os.path.normpath(workdir))
    self.seed_rung = config.seed_rung
    try:
      # clu's writers import TensorFlow: keep it off the GPUs first.
      input_pipeline.import_tensorflow()
      from clu import metric_writers  # pylint: disable=g-import-not-at-top
      from clu import periodic_actions  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      logging.warning('No TensorBoard summaries (%s); history.json and '
                      'curves.png are written as usual.', e)
      self.writer = _LogWriter()
      self.progress = lambda step: None
      return
    self.writer = metric_writers.create_default_writer(
        workdir, just_logging=not self.is_writer, asynchronous=True)
    hparams = flatten(json.loads(config.to_json_best_effort()))
    self.writer.write_hparams({k: v if isinstance(v, (bool, int, float, str))
                               else str(v) for k, v in hparams.items()})
    self.progress = periodic_actions.ReportProgress(
        num_train_steps=total_steps, writer=self.writer, every_secs=60)

  def epoch(self, step: int, history: list[dict[str, float]],
            learning_rate: float, train_seconds: float, num_steps: int,
            num_images: int) -> None:
    """Records the epoch that `history[-1]` describes, ending at `step`.

    Args:
      step: the global step at the end of the epoch.
      history: all epochs so far.
      learning_rate: the optimizer's learning rate at `step`.
      train_seconds: time spent training (not evaluating) in the epoch.
      num_steps, num_images: steps and images trained in that time.
    """
    row = history[-1]
    self.writer.write_scalars(step, {
        'train_loss': row['loss'], 'train_accuracy': row['accuracy'],
        'eval_loss': row['val_loss'], 'eval_accuracy': row['val_accuracy'],
        'learning_rate': learning_rate,
        'steps_per_second': num_steps / train_seconds,
        'images_per_second': num_images / train_seconds,
    })
    self.writer.flush()
    if self.is_writer:
      write_json(os.path.join(self.workdir, 'history.json'), history)
      plots.curves(history, os.path.join(self.workdir, 'curves.png'),
                   self.title, seed_notebook.reference(
                       self.seed_rung, up_to_epoch=history[-1]['epoch']))

  def close(self) -> None:
    self.writer.close()
