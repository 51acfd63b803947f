"""What people look at: TensorBoard, curves.png, evaluate, predict."""

import io
import json
import os
import sys

import numpy as np
from PIL import Image
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from cifar_jax.config import loading
from cifar_jax.data import input_pipeline
from cifar_jax.runs import evaluation
from cifar_jax.runs import prediction
from cifar_jax.reporting import plots
from cifar_jax.reporting import records
from cifar_jax.reporting import seed_notebook
from cifar_jax.runs import inference
from cifar_jax import train
from conftest import get_config
from conftest import write_image_folder


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A 3-epoch synthetic run: checkpoints at 16, 32, 48; keep 2 + best."""
  workdir = tmp_path_factory.mktemp('run')
  config = get_config('test')
  config.num_epochs = 3
  _, history = train.train_and_evaluate(config, str(workdir), out=io.StringIO())
  return workdir, history


def test_tensorboard_events_hold_the_expected_tags(trained):
  workdir, history = trained
  assert list(workdir.glob('events.out.tfevents.*'))
  events = event_accumulator.EventAccumulator(str(workdir))
  events.Reload()
  tags = set(events.Tags()['tensors'])
  for tag in (
      'train_loss',
      'train_accuracy',
      'eval_loss',
      'eval_accuracy',
      'learning_rate',
      'steps_per_second',
      'images_per_second',
  ):
    assert tag in tags
  eval_acc = events.Tensors('eval_accuracy')
  assert [e.step for e in eval_acc] == [16, 32, 48]
  np.testing.assert_allclose(
      [float(tensor_util.make_ndarray(e.tensor_proto)) for e in eval_acc],
      [h['val_accuracy'] for h in history],
      rtol=1e-6,
  )
  lr = events.Tensors('learning_rate')[-1]
  # SGD with decay 0.01 / 2 per update, after 48 updates: the rate of the
  # 49th, which Keras 2.3.1 divides by 1 + decay * 49.
  np.testing.assert_allclose(
      float(tensor_util.make_ndarray(lr.tensor_proto)),
      0.01 / (1 + 0.005 * 49),
      rtol=1e-6,
  )


def test_without_tensorflow_a_run_still_writes_history_and_curves(
    tmp_path, monkeypatch
):
  """GPU images often lack TensorFlow: TensorBoard is skipped, not fatal."""
  monkeypatch.setitem(sys.modules, 'tensorflow', None)
  config = get_config('test')
  config.num_epochs = 1
  _, history = train.train_and_evaluate(
      config, str(tmp_path), out=io.StringIO()
  )
  assert not list(tmp_path.glob('events.out.tfevents.*'))
  with open(tmp_path / 'history.json') as f:
    assert json.load(f) == history
  assert (tmp_path / 'curves.png').stat().st_size > 0


def test_curves_png_is_the_seeds_two_panels(trained):
  workdir, _ = trained
  image = Image.open(workdir / 'curves.png')
  assert image.format == 'PNG' and image.size == (1200, 500)
  pixels = np.asarray(image.convert('RGB')).astype(int)
  # Both panels have the two coloured lines (matplotlib's blue and orange).
  for half in (pixels[:, :600], pixels[:, 600:]):
    blue = (abs(half - (31, 119, 180)).sum(-1) < 30).sum()
    orange = (abs(half - (255, 127, 14)).sum(-1) < 30).sum()
    assert blue > 100 and orange > 100


def _history(val_accuracies):
  return [
      dict(epoch=i + 1, loss=1.0, accuracy=0.5, val_loss=1.1, val_accuracy=v)
      for i, v in enumerate(val_accuracies)
  ]


def test_curves_draw_the_seeds_dashed_beside_ours_with_its_gaps():
  # deep_adam's record has epoch 9 cut off after "loss:": a gap, not a 0.
  reference = seed_notebook.reference('deep_adam', up_to_epoch=10)
  fig = plots.curves_figure(_history([0.5] * 10), 'deep_adam', reference)
  acc_axis = fig.axes[0]
  lines = {l.get_label(): l for l in acc_axis.get_lines()}
  seed_test = lines['test, seed notebook (Keras 2.3)']
  assert seed_test.get_linestyle() == '--'
  assert lines['test'].get_linestyle() == '-'
  assert seed_test.get_color() == lines['test'].get_color()
  np.testing.assert_array_equal(seed_test.get_xdata(), list(range(1, 10)))
  y = np.asarray(seed_test.get_ydata(), float)
  assert y[0] == 0.5604 and y[7] == 0.7744 and np.isnan(y[8])
  legend = [t.get_text() for t in fig.legends[0].get_texts()]
  assert 'training, seed notebook (Keras 2.3)' in legend


def test_the_seeds_curve_breaks_over_the_epochs_it_did_not_print():
  # large_100's record: epochs 1-20 and 82-100 only.
  reference = seed_notebook.reference('large_100', up_to_epoch=100)
  fig = plots.curves_figure(_history([0.5] * 100), 'large_100', reference)
  for axis in fig.axes:
    for line in axis.get_lines():
      if 'seed notebook' not in line.get_label():
        continue
      x = np.asarray(line.get_xdata(), float)
      y = np.asarray(line.get_ydata(), float)
      between = (x > 20) & (x < 82)
      # A NaN there, and no value: no segment joins epoch 20 to epoch 82.
      assert between.any() and np.isnan(y[between]).all()
      assert np.isfinite(y[(x == 20) | (x == 82)]).all()


def test_curves_draw_another_run_dotted_beside_the_seeds_dashed():
  reference = seed_notebook.reference('deep_adam', up_to_epoch=3)
  keras_rows = _history([0.3, 0.4, 0.45])
  fig = plots.curves_figure(
      _history([0.5] * 3), 'deep_adam', reference, [('Keras 3', keras_rows)]
  )
  lines = {l.get_label(): l for l in fig.axes[0].get_lines()}
  assert lines['test, Keras 3'].get_linestyle() == ':'
  assert lines['test, seed notebook (Keras 2.3)'].get_linestyle() == '--'
  np.testing.assert_array_equal(
      lines['test, Keras 3'].get_ydata(), [0.3, 0.4, 0.45]
  )


def test_a_rung_run_passes_the_seeds_curve_for_the_epochs_it_ran(
    tmp_path, monkeypatch
):
  drawn, draw = [], plots.curves

  def recording(*args):
    drawn.append(args)
    draw(*args)

  monkeypatch.setattr(plots, 'curves', recording)
  write_image_folder(tmp_path / 'data', input_pipeline.CIFAR10_CLASSES, 2)
  config = get_config('test')
  config.update(num_epochs=2, seed_rung='large')
  config.data.update(name='image_folder', dir=str(tmp_path / 'data'))
  train.train_and_evaluate(config, str(tmp_path / 'run'), out=io.StringIO())
  assert len(drawn) == 2  # After each epoch.
  label, rows = drawn[-1][3]
  assert label == 'large_100 in the seed notebook (Keras 2.3)'
  assert [r['val_accuracy'] for r in rows] == [0.4277, 0.5156]
  assert drawn[0][3][1] == rows[:1]
  assert drawn[-1][2] == "run (2 of the seed's 25 epochs)"


@pytest.mark.parametrize(
    'overrides, why',
    [
        ({}, 'synthetic data'),
        ({'data.name': 'image_folder', 'steps_per_epoch': 2}, '2 steps per epoch'),
        ({'data.name': 'image_folder', 'data.eval_split': 'test[:10]'}, 'evaluated on test[:10]'),
    ],
)  # fmt: skip
def test_a_run_off_the_seeds_protocol_says_so_and_is_drawn_alone(
    tmp_path, monkeypatch, overrides, why
):
  drawn, draw = [], plots.curves
  monkeypatch.setattr(plots, 'curves', lambda *a: drawn.append(a) or draw(*a))
  write_image_folder(tmp_path / 'data', input_pipeline.CIFAR10_CLASSES, 2)
  config = get_config('test')
  config.update(num_epochs=1, seed_rung='simple')
  config.data.dir = str(tmp_path / 'data')
  loading.apply_overrides(config, overrides)
  train.train_and_evaluate(config, str(tmp_path / 'run'), out=io.StringIO())
  ((_, _, title, reference),) = drawn
  assert title == f"run (not the seed's protocol: {why})"
  assert reference is None


def test_a_run_of_no_rung_draws_no_seed_curve(trained):
  workdir, history = trained
  fig = plots.curves_figure(
      history,
      'run',
      seed_notebook.reference(get_config('test').seed_rung, up_to_epoch=3),
  )
  assert len(fig.axes[0].get_lines()) == 2


def test_evaluate_reproduces_the_logged_accuracy(trained, capsys):
  workdir, history = trained
  result = evaluation.evaluate(str(workdir), 'latest')
  assert result['accuracy'] == pytest.approx(
      history[-1]['val_accuracy'], abs=1e-6
  )
  assert result['loss'] == pytest.approx(history[-1]['val_loss'], rel=1e-4)
  out = capsys.readouterr().out
  assert f'Accuracy: {100 * history[-1]["val_accuracy"]:.2f}%' in out
  assert result['confusion'].sum() == 200
  assert len(out.split('Per class:')[1].strip().splitlines()) == 11
  assert Image.open(workdir / 'confusion_matrix.png').format == 'PNG'


def test_a_run_records_the_code_it_was_trained_with(trained):
  workdir, _ = trained
  (entry,) = json.loads((workdir / records.CODE).read_text())
  assert entry == {'from_step': 0, **records.code_version()}


def test_probabilities_are_the_softmax_of_the_logits(trained):
  workdir, _ = trained
  run = inference.load_run(str(workdir))
  images = input_pipeline.load_split(run.config.data, 'test').images[:5]
  logits = inference.logits(run, images).astype(np.float64)
  p = inference.probabilities(run, images)
  np.testing.assert_allclose(p.sum(-1), 1, rtol=1e-12)
  expected = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  np.testing.assert_allclose(p, expected, rtol=1e-6)


def test_evaluate_tta_level_1_averages_the_logits_of_each_mirror(trained):
  workdir, _ = trained
  result = evaluation.evaluate(str(workdir), 'latest', tta_level=1)
  run = inference.load_run(str(workdir), 'latest', tta_level=0)
  data = input_pipeline.load_split(run.config.data, run.config.data.eval_split)
  logits = sum(
      inference.logits(run, x) for x in (data.images, data.images[:, :, ::-1])
  )
  mirrored = np.mean(np.argmax(logits, -1) == data.labels)
  assert result['accuracy'] == pytest.approx(mirrored, abs=1e-9)
  loss = _cross_entropy(logits / 2, data.labels)
  assert result['loss'] == pytest.approx(loss, rel=1e-5)
  # The mirror changes the loss, so the check above tells the levels apart.
  plain = _cross_entropy(inference.logits(run, data.images), data.labels)
  assert abs(plain - loss) > 1e-4


def _cross_entropy(logits, labels):
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  return -np.mean(log_probs[np.arange(len(labels)), labels])


def test_evaluate_best_and_step_pick_those_checkpoints(trained):
  workdir, history = trained
  kept = sorted(
      int(p.name)
      for p in (workdir / 'checkpoints').iterdir()
      if p.name.isdigit()
  )
  best_acc = max(history[s // 16 - 1]['val_accuracy'] for s in kept)
  assert evaluation.evaluate(str(workdir), 'best')['accuracy'] == (
      pytest.approx(best_acc, abs=1e-6)
  )
  step = kept[0]
  assert evaluation.evaluate(str(workdir), str(step))['accuracy'] == (
      pytest.approx(history[step // 16 - 1]['val_accuracy'], abs=1e-6)
  )
  with pytest.raises(Exception, match="'best', 'latest' or one of"):
    evaluation.evaluate(str(workdir), '7')


def _colour_folder(root, per_class=40):
  colours = {
      'blue': (30, 60, 220),
      'green': (40, 200, 60),
      'red': (220, 40, 40),
  }
  rng = np.random.default_rng(0)
  for split in ('train', 'test'):
    for name, rgb in colours.items():
      os.makedirs(root / split / name)
      for i in range(per_class):
        noise = rng.normal(0, 25, (32, 32, 3))
        pixels = np.clip(np.array(rgb) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / split / name / f'{i}.png')
  return colours


@pytest.mark.slow
def test_predict_gives_the_trained_class_for_any_image_and_skips_bad_files(
    tmp_path,
):
  colours = _colour_folder(tmp_path / 'data')
  config = get_config('test')
  config.data.update(
      {'name': 'image_folder', 'dir': str(tmp_path / 'data'), 'cache_dir': ''}
  )
  config.update(
      {
          'num_epochs': 4,
          'eval_batch_size': 40,
          'batch_size': 16,
      }
  )
  config.model.num_classes = 3
  workdir = tmp_path / 'run'
  _, history = train.train_and_evaluate(config, str(workdir), out=io.StringIO())
  assert history[-1]['val_accuracy'] == 1.0
  images = tmp_path / 'mine'
  os.makedirs(images / 'more')
  # Other sizes and modes than the training images.
  Image.new('RGBA', (64, 48), colours['red'] + (128,)).save(images / 'a.png')
  Image.new('RGB', (100, 100), colours['green']).save(images / 'b.jpg')
  Image.new('RGB', (20, 40), colours['blue']).convert('P').save(
      images / 'more' / 'c.gif'
  )
  (images / 'broken.png').write_bytes(b'not an image at all')
  out, err = io.StringIO(), io.StringIO()
  failures = prediction.predict(
      str(workdir),
      [
          str(images / 'a.png'),
          str(images / 'broken.png'),
          str(images / 'b.jpg'),
          str(images / 'more'),
      ],
      out=out,
      err=err,
  )
  assert failures == 1
  assert err.getvalue().count('\n') == 1
  assert 'broken.png: cannot read it as an image' in err.getvalue()
  lines = dict(line.split(': ', 1) for line in out.getvalue().splitlines())
  expected = {'a.png': 'red', 'b.jpg': 'green', 'c.gif': 'blue'}
  assert len(lines) == 3
  for path, classes in lines.items():
    top = classes.split(', ')
    assert len(top) == 3
    assert top[0].split()[0] == expected[os.path.basename(path)]
    assert sum(float(t.split()[1].rstrip('%')) for t in top) <= 100.1
  info = json.loads((workdir / 'dataset_info.json').read_text())
  assert info['class_names'] == ['blue', 'green', 'red']
