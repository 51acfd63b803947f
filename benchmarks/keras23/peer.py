"""The seed's own Keras 2.3.1, beside cifar_jax: whole runs, or step by step.

Runs in the peer's Python 3.7 venv (`benchmarks/keras23/make_venv.sh`),
on the rung's notebook cell as written (`seed_cells.py`), with the data
that cifar_jax's own reader made (`keras23_side_by_side.py` and the tests
write it as an .npz of uint8 images and integer labels):

  python peer.py train --rung R --data data.npz --workdir W [--epochs N]
      The cell's own fit call. After each epoch: history.json (cifar_jax's
      format) and the model's and optimizer's variables (state.npz), so
      the same command resumes an interrupted run at its next epoch (the
      generators' position is not saved: a resumed run differs from an
      uninterrupted one by its order). A rung that continues another
      (deep_adam_aug) starts from that run's state.npz (--init).

  python peer.py loop --rung R --data data.npz --out out.json [--epochs N]
      The cell's own fit call for N epochs: the size of every batch it
      trained on and the optimizer's update count after each epoch.

  python peer.py steps --rung R --batches in.npz --out out.npz
      The cell's compiled model trained with `train_on_batch` on the given
      batches (the update `fit` makes), the augmented ones drawn through
      the cell's own ImageDataGenerator as its `flow` draws them; writes the
      initial variables, and after every step the loss, the variables
      (BatchNorm's moving statistics included), the augmented images and
      their random parameters. --floatx float64 and --no_dropout make it
      comparable step for step.
"""

import argparse
import json
import os
import random
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# TensorFlow 1.15 as the seed ran it: graphs, not eager execution. A
# TensorFlow 2 imported by whatever started this process sets
# TF2_BEHAVIOR=1 in its environment, which would switch 1.15 to eager.
os.environ['TF2_BEHAVIOR'] = '0'
# oneDNN's OpenMP threads sleep after 1 ms instead of 200 ms of spinning:
# 324 against 400 ms per deep_adam_aug_dropout step on 2 cores.
os.environ.setdefault('KMP_BLOCKTIME', '1')

import numpy as np  # pylint: disable=g-import-not-at-top

HISTORY_KEYS = ('loss', 'accuracy', 'val_loss', 'val_accuracy')


def _arrays(images, labels, floatx):
  """As the notebook's first cell: float pixels / 255 and one-hot labels."""
  from keras.utils import np_utils  # pylint: disable=g-import-not-at-top

  x = images.astype(floatx) / 255.0
  return x, np_utils.to_categorical(labels, 10)


def _cell(rung, x_train, y_train, x_test, y_test, no_dropout=False):
  """The rung's cell; deep_adam_aug's on a fresh deep_adam model."""
  import seed_cells  # pylint: disable=g-import-not-at-top

  if no_dropout:
    seed_cells.Dropout = lambda rate, **kw: seed_cells.Dropout_(0.0, **kw)
  data = (x_train, y_train, x_test, y_test)
  parent = seed_cells.CONTINUES.get(rung)
  if parent:
    model = getattr(seed_cells, parent)(*data).model
    return getattr(seed_cells, rung)(*data, model=model)
  return getattr(seed_cells, rung)(*data)


def _seed(seed):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  random.seed(seed)
  np.random.seed(seed)
  tf.compat.v1.set_random_seed(seed)


def _variables(model):
  return [np.asarray(w) for w in model.get_weights()]


def _optimizer_variables(model):
  model._make_train_function()  # pylint: disable=protected-access
  return [np.asarray(w) for w in model.optimizer.get_weights()]


def _save_state(path, model):
  weights, opt = _variables(model), _optimizer_variables(model)
  arrays = {'w%d' % i: w for i, w in enumerate(weights)}
  arrays.update({'o%d' % i: w for i, w in enumerate(opt)})
  tmp = path + '.tmp.npz'
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def _load_state(path, model, optimizer=True):
  with np.load(path) as f:
    model.set_weights([f['w%d' % i] for i in range(len(model.get_weights()))])
    if optimizer:
      _optimizer_variables(model)
      n = len(model.optimizer.weights)
      model.optimizer.set_weights([f['o%d' % i] for i in range(n)])


def _write_json(path, value):
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(value, f, indent=1)
  os.replace(tmp, path)


def train(args):
  import keras  # pylint: disable=g-import-not-at-top

  os.makedirs(args.workdir, exist_ok=True)
  history_path = os.path.join(args.workdir, 'history.json')
  state_path = os.path.join(args.workdir, 'state.npz')
  history = []
  if os.path.exists(history_path):
    with open(history_path) as f:
      history = json.load(f)
  with np.load(args.data) as f:
    x_train, y_train = _arrays(f['train_images'], f['train_labels'], 'float32')
    x_test, y_test = _arrays(f['test_images'], f['test_labels'], 'float32')
  _seed(args.seed + len(history))
  cell = _cell(args.rung, x_train, y_train, x_test, y_test)
  if history:
    _load_state(state_path, cell.model)
    print('Resuming the Keras 2.3.1 run at epoch %d.' % (len(history) + 1))
  elif args.init:
    _load_state(args.init, cell.model)
    print('Keras 2.3.1 starts from %s.' % args.init)
  sys.stdout.flush()

  class SaveEachEpoch(keras.callbacks.Callback):
    """Records the epoch, then saves the state and the history."""

    def on_epoch_begin(self, epoch, logs=None):
      self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
      row = {k: float(v) for k, v in (logs or {}).items() if k in HISTORY_KEYS}
      row['seconds'] = time.perf_counter() - self.start
      history.append(dict(epoch=epoch + 1, **row))
      _save_state(state_path, self.model)  # The state, then its history:
      _write_json(history_path, history)  # a crash re-runs one epoch.
      if args.epochs and epoch + 1 >= args.epochs:
        self.model.stop_training = True

  if args.epochs and len(history) >= args.epochs:
    return
  cell.fit(callbacks=[SaveEachEpoch()], initial_epoch=len(history), verbose=2)


def loop(args):
  """The cell's own fit call for a few epochs: each batch's size and the
  optimizer's update count at each epoch's end, as JSON."""
  import keras  # pylint: disable=g-import-not-at-top

  _seed(args.seed)
  with np.load(args.data) as f:
    x_train, y_train = _arrays(f['train_images'], f['train_labels'], 'float32')
    x_test, y_test = _arrays(f['test_images'], f['test_labels'], 'float32')
  cell = _cell(args.rung, x_train, y_train, x_test, y_test)
  record = {'sizes': [], 'iterations': []}

  class Record(keras.callbacks.Callback):

    def on_batch_end(self, batch, logs=None):
      record['sizes'].append(int(logs['size']))

    def on_epoch_end(self, epoch, logs=None):
      iterations = self.model.optimizer.iterations
      record['iterations'].append(int(keras.backend.get_value(iterations)))
      if epoch + 1 >= args.epochs:
        self.model.stop_training = True

  cell.fit(callbacks=[Record()], verbose=0)
  _write_json(args.out, record)


def _augmented(datagen, x):
  """One image as the cell's `flow` draws it, and its random parameters."""
  params = datagen.get_random_transform(x.shape)
  x = datagen.apply_transform(x.astype(x.dtype), params)
  x = datagen.standardize(x)
  keys = ('tx', 'ty', 'zx', 'zy', 'flip_horizontal')
  return x, [float(params[k]) for k in keys]


def _float64_batch_norm():
  """TensorFlow 1.15's fused batch norm, which Keras 2.3 calls on 4-D
  inputs, has no float64 kernel: in float64, the same outputs from float64
  ops. Training: x normalised with the batch's plain variance, the batch
  mean, and the variance times n / (n - 1), as the fused kernel returns it
  (Keras rescales that once more; the float32 comparison in
  tests/keras23_test.py runs the real kernel). Inference: x normalised with
  the given statistics, which Keras has cast to float32 first. And
  `BatchNormalization` casts its sample size to float32 whatever floatx:
  to float64 here."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from keras import backend as K  # pylint: disable=g-import-not-at-top
  from keras.backend import tensorflow_backend  # pylint: disable=g-import-not-at-top
  from keras.layers import normalization  # pylint: disable=g-import-not-at-top

  def training(x, gamma, beta, reduction_axes, epsilon=1e-3):
    mean, var = tf.nn.moments(x, reduction_axes)
    normed = tf.nn.batch_normalization(x, mean, var, beta, gamma, epsilon)
    n = tf.cast(tf.reduce_prod(tf.gather(tf.shape(x), reduction_axes)), x.dtype)
    return normed, mean, var * n / (n - 1)

  def inference(x, scale, offset, mean, variance, epsilon, **unused):
    cast = lambda t: tf.cast(t, x.dtype)
    y = tf.nn.batch_normalization(
        x, cast(mean), cast(variance), cast(offset), cast(scale), epsilon
    )
    return y, None, None

  # pylint: disable=protected-access
  tensorflow_backend._fused_normalize_batch_in_training = training
  tf.compat.v1.nn.fused_batch_norm = inference

  class Float64Backend:
    """`BatchNormalization`'s backend, whose one cast to 'float32' (of the
    sample size in its n / (n - 1 - epsilon)) goes to float64."""

    def __getattr__(self, name):
      return getattr(K, name)

    def cast(self, x, dtype):
      return K.cast(x, K.floatx() if dtype == 'float32' else dtype)

  normalization.K = Float64Backend()


def steps(args):
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  # One op at a time: Keras 2.3's optimizers read their update counter with
  # no control dependency on its increment, and TensorFlow's threads order
  # the two differently from step to step; one thread reads it after the
  # increment at every step (as most steps of a whole run do).
  config = tf.compat.v1.ConfigProto(inter_op_parallelism_threads=1)
  keras.backend.set_session(tf.compat.v1.Session(config=config))
  keras.backend.set_floatx(args.floatx)
  if args.floatx == 'float64':
    _float64_batch_norm()
  _seed(args.seed)
  with np.load(args.batches) as f:
    images, labels, sizes = f['images'], f['labels'], f['sizes']
    augmented = f['augment']
  x, y = _arrays(images, labels, args.floatx)
  cell = _cell(args.rung, x[0], y[0], x[0], y[0], args.no_dropout)
  model = cell.model
  out = {'init_%d' % i: w for i, w in enumerate(_variables(model))}
  losses, params, inputs = [], [], []
  for k in range(len(sizes)):
    batch_x, batch_y = x[k, : sizes[k]], y[k, : sizes[k]]
    if augmented[k]:
      drawn = [_augmented(cell.datagen, image) for image in batch_x]
      batch_x = np.stack([image for image, _ in drawn])
      params.append([p for _, p in drawn])
    inputs.append(batch_x)
    loss, _ = model.train_on_batch(batch_x, batch_y)
    losses.append(loss)
    for i, w in enumerate(_variables(model)):
      out['step%d_%d' % (k, i)] = w
  out['loss'] = np.array(losses)
  for k, batch_x in enumerate(inputs):
    out['inputs_%d' % k] = batch_x
  for k, p in enumerate(params):  # The k-th augmented step's, (batch, 5).
    out['params_%d' % k] = np.array(p)
  out['optimizer_iterations'] = np.asarray(
      keras.backend.get_value(model.optimizer.iterations)
  )
  np.savez(args.out, **out)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  sub = parser.add_subparsers(dest='mode')
  sub.required = True
  t = sub.add_parser('train')
  t.add_argument('--rung', required=True)
  t.add_argument('--data', required=True)
  t.add_argument('--workdir', required=True)
  t.add_argument('--epochs', type=int, default=0, help='Stop after this epoch.')
  t.add_argument('--init', help='state.npz of the run this rung continues.')
  t.add_argument('--seed', type=int, default=0)
  l = sub.add_parser('loop')
  l.add_argument('--rung', required=True)
  l.add_argument('--data', required=True)
  l.add_argument('--out', required=True)
  l.add_argument('--epochs', type=int, default=2)
  l.add_argument('--seed', type=int, default=0)
  s = sub.add_parser('steps')
  s.add_argument('--rung', required=True)
  s.add_argument('--batches', required=True)
  s.add_argument('--out', required=True)
  s.add_argument('--floatx', default='float32')
  s.add_argument('--no_dropout', action='store_true')
  s.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import seed_cells  # pylint: disable=g-import-not-at-top

  if args.rung not in seed_cells.RUNGS:
    parser.error('unknown rung %r; one of %s' % (args.rung, seed_cells.RUNGS))
  seed_cells.Dropout_ = seed_cells.Dropout
  {'train': train, 'loop': loop, 'steps': steps}[args.mode](args)


if __name__ == '__main__':
  main()
