"""Training images per second on the CPU: cifar_jax against Keras 3 (TF).

    pip install -e '.[bench]'
    JAX_PLATFORMS=cpu python benchmarks/cpu_vs_keras.py \
        [--rungs simple,large,bn_aug_sgd] [--steps 200] [--repeats 3] \
        [--json out.json] [--isa_cap AVX2] \
        [--config.model.compute_dtype=bfloat16 ...]

For each rung, on synthetic data (`--steps` batches of the rung's batch size,
uniform random pixels and labels), each side in a process of its own (so
neither's thread pools slow the other), in the same run:
- cifar_jax: the experiment `main` builds (`experiment.create_experiment`) and its
  loop (`train.run_steps`): the jitted, donated train step with the rung's
  dropout, MaxNorm, BatchNorm, augmentation and Keras-SGD chain;
- Keras 3 on TensorFlow: the same layers, initialisers, SGD with momentum and
  inverse-time decay, and the rung's augmentation as Keras layers
  (RandomTranslation, RandomFlip), trained with `model.fit` as the seed did.
Each side first runs one untimed pass (compilation, tracing), then
`--repeats` timed passes, the two sides' passes alternating so that both
see the same machine load; the median pass gives images per second. The ratio
is cifar_jax / Keras, > 1 = cifar_jax is faster. `--config.*` overrides apply
to every rung's cifar_jax config (e.g. to compare compute dtypes).

`--isa_cap AVX2` measures an AVX2 CPU's case on an AVX-512 one: both sides
are kept to AVX2 by their libraries' own switches, XLA's code generation
(`--xla_cpu_max_isa`, which cifar_jax's kernels also obey) and oneDNN
(`ONEDNN_MAX_CPU_ISA`: TensorFlow's kernels, and the matrix products behind
XLA:CPU's convolutions). It stands in for an AVX2 machine; caches, clocks
and any library without such a switch stay this machine's.
"""

import importlib.util
import io
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('KERAS_BACKEND', 'tensorflow')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
import ml_collections
import numpy as np

import keras_peer  # Beside this script.
from cifar_jax import cli
from cifar_jax.config import loading
from cifar_jax import cpu
from cifar_jax.errors import UserError
from cifar_jax.reporting import progress
from cifar_jax.reporting import records
from cifar_jax import train
from cifar_jax.training import experiment
from cifar_jax.training import plan
from cifar_jax.training import steps

RUNGS = flags.DEFINE_list(
    'rungs', ['simple', 'large', 'bn_aug_sgd'], 'Rungs to compare.'
)
STEPS = flags.DEFINE_integer(
    'steps', 200, 'Batches per timed pass.', lower_bound=1
)
REPEATS = flags.DEFINE_integer(
    'repeats', 3, 'Timed passes per side.', lower_bound=1
)
SKIP_KERAS = flags.DEFINE_bool(
    'skip_keras', False, 'Only cifar_jax (no Keras needed).'
)
JSON = flags.DEFINE_string('json', None, 'Also write the results here.')
# `--isa_cap` values, as XLA's --xla_cpu_max_isa names them: oneDNN's name.
_ISA_CAPS = {'AVX2': 'AVX2'}
ISA_CAP = flags.DEFINE_enum(
    'isa_cap',
    None,
    list(_ISA_CAPS),
    "Keep both sides to this instruction set (XLA's and oneDNN's switches).",
)
WORKER = flags.DEFINE_enum(
    'worker', None, ['cifar_jax', 'keras'], 'Internal: run one side.'
)
OVERRIDES = cli.define_config_overrides()


def rung_config(
    name: str, num_steps: int, overrides: dict[str, object]
) -> ml_collections.ConfigDict:
  """The rung's config on `num_steps` batches of synthetic data."""
  config = loading.config_module(name).get_config()
  config.data.name = 'synthetic'
  config.data.synthetic_train_size = num_steps * config.batch_size
  config.data.synthetic_eval_size = config.eval_batch_size
  config.steps_per_epoch = 0
  loading.apply_overrides(config, overrides)
  return config


def cifar_jax_pass(config: ml_collections.ConfigDict) -> Callable[[], float]:
  """A function that trains one pass over the data, as `main`; its seconds."""
  exp = experiment.create_experiment(config)
  per_pass = exp.steps_per_epoch
  run = exp.start(config.seed)
  plan.compile_ahead(exp, run)

  def one_pass():
    run.epoch_metrics = steps.empty_metrics(exp.replicated)
    bar = progress.ProgressBar(per_pass, out=io.StringIO())
    jax.block_until_ready((run.state, run.epoch_metrics))
    start = time.perf_counter()
    train.run_steps(exp, run, run.step + per_pass, bar)
    jax.block_until_ready((run.state, run.epoch_metrics))
    return time.perf_counter() - start

  return one_pass


def keras_pass(config: ml_collections.ConfigDict) -> Callable[[], float]:
  """A function that trains one Keras `fit` epoch on the same amount of data."""
  import keras  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  n = config.data.synthetic_train_size
  images = rng.random((n, 32, 32, 3), dtype=np.float32)
  labels = rng.integers(0, config.model.num_classes, n)
  model = keras_peer.keras_model(config)
  seconds = []

  class EpochTime(keras.callbacks.Callback):

    def on_epoch_begin(self, epoch, logs=None):
      self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
      seconds.append(time.perf_counter() - self.start)

  def one_pass():
    model.fit(
        images,
        labels,
        batch_size=config.batch_size,
        epochs=1,
        shuffle=True,
        verbose=0,
        callbacks=[EpochTime()],
    )
    return seconds[-1]

  return one_pass


def worker(
    side: str, rung: str, num_steps: int, overrides: dict[str, object]
) -> None:
  """One side in its own process: builds, warms up, then times on request.

  Protocol on stdin/stdout: prints `ready <json>` after the warm-up pass;
  each `pass` line read runs one timed pass and prints `seconds <float>`.
  """
  config = rung_config(rung, num_steps, overrides)
  if side == 'keras':
    import keras  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    about = f'Keras {keras.__version__} / TensorFlow {tf.__version__}'
    one_pass = keras_pass(config)
  else:
    platform = cpu.for_platform(config.cpu)
    about = f'JAX {jax.__version__} on {platform.name} ({platform.kernels})'
    one_pass = cifar_jax_pass(config)
  one_pass()  # Compiles (JAX) or traces (Keras), and warms up.
  print(
      'ready',
      json.dumps(dict(about=about, batch_size=config.batch_size)),
      flush=True,
  )
  for line in sys.stdin:
    if line.strip() != 'pass':
      break
    print('seconds', one_pass(), flush=True)


class _Worker:
  """A `worker` subprocess and its pipes."""

  def __init__(self, side, rung, num_steps, overrides, env):
    self.proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            '--worker',
            side,
            '--rungs',
            rung,
            '--steps',
            str(num_steps),
            *[f'--config.{k}={v}' for k, v in overrides.items()],
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    line = self._read()
    if not line.startswith('ready '):
      raise SystemExit(f'the {side} worker failed to start ({line!r})')
    self.info = json.loads(line.split(' ', 1)[1])

  def _read(self) -> str:
    line = self.proc.stdout.readline()
    while line and not line.startswith(('ready ', 'seconds ')):
      line = self.proc.stdout.readline()  # Skips libraries' chatter.
    return line.strip()

  def time_pass(self) -> float:
    self.proc.stdin.write('pass\n')
    self.proc.stdin.flush()
    line = self._read()
    if not line.startswith('seconds '):
      raise SystemExit(f'a worker died ({line!r})')
    return float(line.split()[1])

  def close(self):
    self.proc.stdin.close()
    self.proc.wait(timeout=60)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  overrides = cli.override_values()
  if WORKER.value:
    return worker(WORKER.value, RUNGS.value[0], STEPS.value, overrides)
  with cli.exit_on_errors():  # Bad rungs or overrides: one line, here.
    for name in RUNGS.value:
      try:
        rung_config(name, STEPS.value, overrides)
      except ModuleNotFoundError as e:
        raise UserError(f'Unknown rung {name!r}.') from e
  sides = ['cifar_jax']
  if not SKIP_KERAS.value:
    if importlib.util.find_spec('keras') is None or (
        importlib.util.find_spec('tensorflow') is None
    ):
      raise SystemExit(
          'Keras 3 and TensorFlow are needed: pip install -e '
          "'.[bench]' (or pass --skip_keras)."
      )
    sides.append('keras')
  machine, env = records.machine_description(), dict(os.environ)
  if ISA_CAP.value:
    env['XLA_FLAGS'] = (
        f'{env.get("XLA_FLAGS", "")} --xla_cpu_max_isa={ISA_CAP.value}'
    ).strip()
    env['ONEDNN_MAX_CPU_ISA'] = _ISA_CAPS[ISA_CAP.value]
    machine += f', both sides capped at {ISA_CAP.value}'
  print(
      f'{machine}; {STEPS.value} batches per pass, median of '
      f'{REPEATS.value} passes after one warm-up, each side in its own '
      f'process; overrides {overrides or "none"}',
      flush=True,
  )
  results, about = [], {}
  for name in RUNGS.value:
    workers = {}
    try:
      for side in sides:  # One at a time: warm-ups do not overlap.
        workers[side] = _Worker(side, name, STEPS.value, overrides, env)
        about[side] = workers[side].info['about']
      seconds = {side: [] for side in sides}
      for _ in range(REPEATS.value):  # Interleaved: both see the same load.
        for side in sides:
          time.sleep(1)  # Lets the other side's thread pools go idle.
          seconds[side].append(workers[side].time_pass())
    finally:
      for w in workers.values():
        w.close()
    batch_size = workers['cifar_jax'].info['batch_size']
    images = STEPS.value * batch_size
    rates = {side: images / statistics.median(s) for side, s in seconds.items()}
    row = dict(
        rung=name,
        batch_size=batch_size,
        seconds=seconds,
        cifar_jax_images_per_s=rates['cifar_jax'],
    )
    line = (
        f'{name:>11} (batch {batch_size:>3}): cifar_jax '
        f'{rates["cifar_jax"]:5.0f} img/s'
    )
    if 'keras' in rates:
      ratio = rates['cifar_jax'] / rates['keras']
      row.update(keras_images_per_s=rates['keras'], ratio=ratio)
      line += (
          f', Keras {rates["keras"]:5.0f} img/s, cifar_jax / Keras = '
          f'{ratio:.2f}'
      )
    print(line, flush=True)
    results.append(row)
  print('; '.join(about.values()))
  if JSON.value:
    with open(JSON.value, 'w') as f:
      json.dump(
          dict(
              machine=machine,
              versions=about,
              steps=STEPS.value,
              repeats=REPEATS.value,
              isa_cap=ISA_CAP.value,
              overrides=overrides,
              results=results,
          ),
          f,
          indent=1,
      )


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
