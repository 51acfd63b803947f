"""The fast recipes' pieces: whitening, schedules, Lookahead, flips, TTA."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cifar_jax.data import augment
from cifar_jax.data import images
from cifar_jax.data import input_pipeline
from cifar_jax.runs import evaluation
from cifar_jax.models import initializers
from cifar_jax import train
from cifar_jax.training import fast_sgd
from cifar_jax.training import optimizers
from conftest import get_config
from conftest import small_synthetic

FAST = ('fast94', 'fast95', 'fast96')


def _correlated_images(n=300, seed=0):
  """Images whose neighbouring pixels and channels are strongly correlated."""
  rng = np.random.default_rng(seed)
  base = rng.normal(size=(n, 17, 17, 1))
  smooth = base.repeat(2, axis=1).repeat(2, axis=2)[:, :32, :32]
  return (
      smooth * np.array([1.0, 0.8, 0.5])
      + 0.1 * rng.normal(size=(n, 32, 32, 3))
      + 0.3
  )


def test_whitening_conv_whitens_the_patches_second_moment():
  images = _correlated_images()
  kernel, bias = initializers.whitening(images, 2, epsilon=1e-8)
  x = initializers.patches(images, 2)
  assert np.abs(np.corrcoef(x, rowvar=False)).max() > 0.5  # Correlated in.
  np.testing.assert_array_equal(bias, 0)  # airbench's bias starts at zero.
  out = x @ kernel.reshape(12, 24)
  # X^T X / n, not the covariance: airbench's inputs are standardised.
  np.testing.assert_allclose(
      out[:, :12].T @ out[:, :12] / len(out), np.eye(12), atol=1e-3
  )
  np.testing.assert_allclose(out[:, 12:], -out[:, :12], atol=1e-5)
  # Largest eigenvalue first: the first filter has the smallest gain.
  gains = np.linalg.norm(kernel.reshape(12, 24)[:, :12], axis=0)
  assert np.all(np.diff(gains) >= 0)


def test_patches_are_the_convolution_windows():
  images = np.random.default_rng(0).normal(size=(2, 5, 6, 3))
  kernel = np.random.default_rng(1).normal(size=(2, 2, 3, 4))
  conv = jax.lax.conv_general_dilated(
      images,
      kernel,
      (1, 1),
      'VALID',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
  )
  np.testing.assert_allclose(
      initializers.patches(images, 2) @ kernel.reshape(12, 4),
      np.asarray(conv).reshape(-1, 4),
      rtol=1e-5,
      atol=1e-5,
  )


@pytest.mark.slow
def test_dirac_init_makes_convolutions_start_as_identity_maps():
  kernel = initializers.dirac_init()(jax.random.key(0), (3, 3, 8, 8))
  x = jax.random.normal(jax.random.key(1), (2, 6, 6, 8))
  y = jax.lax.conv_general_dilated(
      x, kernel, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )
  np.testing.assert_allclose(y, x, atol=1e-6)
  wider = initializers.dirac_init()(jax.random.key(0), (3, 3, 4, 8))
  assert float(jnp.abs(wider[:, :, :, 4:]).sum()) > 0  # The rest random.


def test_triangle_schedule_warms_up_then_decays_linearly():
  schedule = fast_sgd.triangle(100, start=0.2, peak=0.25, end=0.05)
  values = np.array([float(schedule(t)) for t in (0, 10, 25, 50, 100)])
  np.testing.assert_allclose(
      values,
      [0.2, 0.2 + 0.8 * 10 / 25, 1.0, 1.0 - 0.95 * 25 / 75, 0.05],
      rtol=1e-6,
  )


def test_triangle_schedule_peaks_at_the_floor_of_its_fraction():
  # airbench94: 476 steps, peak 0.23 -> int(109.48) = step 109.
  schedule = fast_sgd.triangle(476, start=0.2, peak=0.23, end=0.07)
  assert float(schedule(109)) == pytest.approx(1.0, abs=1e-6)
  assert float(schedule(110)) < 1.0
  assert float(schedule(54.5)) == pytest.approx(0.6, abs=1e-6)


@pytest.mark.parametrize('total', [12, 10])
def test_lookahead_syncs_every_few_steps_and_ends_on_the_slow_weights(total):
  every, max_decay = 5, 0.7
  lookahead = fast_sgd.Lookahead(every, max_decay, total)
  slow = fast = {'w': jnp.array([1.0, -2.0])}
  expected_fast = expected_slow = np.array([1.0, -2.0])
  for t in range(1, total + 1):
    step = np.array([np.sin(t), np.cos(t)], np.float32)
    fast = {'w': fast['w'] - step}
    expected_fast = expected_fast - step
    slow, fast = lookahead.sync(jnp.asarray(t), slow, fast)
    if t % every == 0:
      d = max_decay * (t / total) ** 3
      expected_slow = d * expected_slow + (1 - d) * expected_fast
    if t % every == 0 or t == total:
      # The last step ends on the slow weights, updated only if it is a
      # regular sync step (airbench's final `update(decay=1.0)`).
      expected_fast = expected_slow.copy()
    np.testing.assert_allclose(slow['w'], expected_slow, atol=1e-6)
    np.testing.assert_allclose(fast['w'], expected_fast, atol=1e-6)


def test_fast_sgd_trains_groups_at_their_rates_and_freezes_whitening():
  config = get_config('fast94').optimizer
  params = {
      'whiten': {'kernel': jnp.ones((2, 2, 3, 24)), 'bias': jnp.zeros(24)},
      # Zero weights: the decay adds nothing, so rates compare alone.
      'block1': {
          'conv1': {'kernel': jnp.zeros((3, 3, 24, 4))},
          'bn1': {'bias': jnp.zeros(4)},
      },
  }
  assert fast_sgd.param_groups(params) == {
      'whiten': {'kernel': 'whiten_kernel', 'bias': 'whiten_bias'},
      'block1': {'conv1': {'kernel': 'weight'}, 'bn1': {'bias': 'norm_bias'}},
  }
  config.lookahead_every = 0
  tx = optimizers.create_optimizer(
      config, params, optimizers.RunShape(10, 2, 1024)
  )
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  moved = []
  for _ in range(10):
    updates, state = tx.update(grads, state, params)
    moved.append(jax.tree.map(lambda u: float(jnp.abs(u).max()), updates))
  assert all(m['whiten']['kernel'] == 0 for m in moved)
  # whiten_bias_epochs=3 of 2 steps: the bias moves for 6 steps only.
  assert [m['whiten']['bias'] > 0 for m in moved] == [True] * 6 + [False] * 4
  ratio = (
      moved[0]['block1']['bn1']['bias'] / moved[0]['block1']['conv1']['kernel']
  )
  assert ratio == pytest.approx(config.bias_lr_scale, rel=1e-3)


def torch_sgd_reference(w, summed_grads, lr, weight_decay, momentum, schedule):
  """PyTorch's SGD(nesterov=True, weight_decay) on a summed loss, in NumPy:
  g += wd * w; b = m * b + g; w -= lr_t * (g + m * b)."""
  w, b, out = w.astype(np.float64), None, []
  for t, g in enumerate(summed_grads):
    g = g + weight_decay * w
    b = g if b is None else momentum * b + g
    w = w - lr * schedule[t] * (g + momentum * b)
    out.append(w)
  return out


@pytest.mark.parametrize('group', ['weight', 'norm_bias'])
def test_fast94_mean_loss_rates_equal_the_papers_summed_loss_sgd(group):
  """airbench's hyperparameters are per 1024 examples, for a summed loss:
  lr = 11.5 / K and weight_decay = (0.0153 * B / K) / lr in PyTorch, K =
  1024 * (1 + 1 / (1 - momentum)); biases at 64x lr and wd / 64."""
  config = get_config('fast94')
  opt = config.optimizer
  opt.lookahead_every = 0
  batch, steps = config.batch_size, 8
  kilostep = 1024 * (1 + 1 / (1 - 0.85))
  lr, wd = 11.5 / kilostep, 0.0153 * batch / kilostep
  if group == 'norm_bias':
    lr *= 64
  params = (
      {'head': {'kernel': jnp.zeros((5, 3))}}
      if group == 'weight'
      else {'block1': {'bn1': {'bias': jnp.zeros((5, 3))}}}
  )
  rng = np.random.default_rng(0)
  w0 = rng.normal(size=(5, 3))
  mean_grads = [rng.normal(size=(5, 3)) for _ in range(steps)]
  total = 4 * steps  # Inside the warm-up: the schedule changes every step.
  tx = optimizers.create_optimizer(
      opt, params, optimizers.RunShape(total, 10, batch)
  )
  leaf = lambda tree: jax.tree.leaves(tree)[0]
  tree = lambda x: jax.tree.map(lambda _: jnp.asarray(x, jnp.float32), params)
  p, state, ours = tree(w0), None, []
  state = tx.init(p)
  for g in mean_grads:
    updates, state = tx.update(tree(g), state, p)
    p = optax.apply_updates(p, updates)
    ours.append(np.asarray(leaf(p)))
  schedule = [
      float(fast_sgd.triangle(total, 0.2, 0.23, 0.07)(t)) for t in range(steps)
  ]
  theirs = torch_sgd_reference(
      w0, [batch * g for g in mean_grads], lr, wd / lr, 0.85, schedule
  )
  np.testing.assert_allclose(ours, theirs, rtol=2e-4, atol=1e-5)


def test_alternating_flips_show_every_image_both_ways():
  key, indices = jax.random.key(0), jnp.arange(1000)
  passes = [
      np.asarray(augment.alternating_flips(key, indices, p)) for p in range(4)
  ]
  assert 0.45 < passes[0].mean() < 0.55
  np.testing.assert_array_equal(passes[1], ~passes[0])
  np.testing.assert_array_equal(passes[2], passes[0])
  np.testing.assert_array_equal(passes[3], passes[1])
  # By index, not by position in the batch.
  shuffled = np.asarray(augment.alternating_flips(key, indices[::-1], 0))
  np.testing.assert_array_equal(shuffled, passes[0][::-1])


def test_tta_levels_average_mirrors_and_translations():
  images = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3))
  weights = jax.random.normal(jax.random.key(1), (8 * 8 * 3, 4))
  apply = lambda x: x.reshape(len(x), -1) @ weights  # Linear: sums exact.
  mirror = lambda x: 0.5 * (apply(x) + apply(x[:, :, ::-1]))
  np.testing.assert_allclose(
      augment.tta_logits(apply, images, augment.TTA(0)),
      apply(images),
      rtol=1e-5,
  )
  np.testing.assert_allclose(
      augment.tta_logits(apply, images, augment.TTA(1)),
      mirror(images),
      rtol=1e-5,
  )
  padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode='reflect')
  expected = (
      0.5 * mirror(images)
      + 0.25 * mirror(padded[:, :8, :8])
      + 0.25 * mirror(padded[:, 2:, 2:])
  )
  np.testing.assert_allclose(
      augment.tta_logits(apply, images, augment.TTA(2)), expected, rtol=1e-5,
      atol=1e-5,
  )  # fmt: skip
  # hiverge's: the six views equally.
  uniform = (
      mirror(images) + mirror(padded[:, :8, :8]) + mirror(padded[:, 2:, 2:])
  ) / 3
  np.testing.assert_allclose(
      augment.tta_logits(apply, images, augment.TTA(2, 'uniform')), uniform,
      rtol=1e-5, atol=1e-5,
  )  # fmt: skip


def test_selective_tta_augments_only_the_least_confident_share():
  images = jax.random.uniform(jax.random.key(0), (8, 8, 8, 3))
  weights = jax.random.normal(jax.random.key(1), (8 * 8 * 3, 4))
  apply = lambda x: x.reshape(len(x), -1) @ weights
  plain = np.asarray(apply(images))
  full = np.asarray(augment.tta_logits(apply, images, augment.TTA(2)))
  part = np.asarray(
      augment.tta_logits(apply, images, augment.TTA(2, share=0.25))
  )
  confidence = np.max(jax.nn.softmax(plain), axis=1)
  unsure = np.argsort(confidence)[:2]  # int(8 x 0.25) least confident.
  expected = plain.copy()
  expected[unsure] = full[unsure]
  np.testing.assert_allclose(part, expected, rtol=1e-6, atol=1e-6)
  assert not np.allclose(full, plain)  # The views do change these logits.


@pytest.mark.slow
@pytest.mark.parametrize('name', FAST)
def test_fast_config_trains_on_synthetic_data_and_evaluates_with_tta(
    name, tmp_path
):
  config = small_synthetic(get_config(name), 256, 100, 32, 50)
  config.num_epochs = 2.5  # 8 steps per epoch: 20 steps.
  config.whitening.images = 128
  config.model.widths = tuple(w // 8 for w in config.model.widths)
  state, history = train.train_and_evaluate(
      config, str(tmp_path), out=io.StringIO()
  )
  assert int(state.step) == 20
  assert [h['epoch'] for h in history] == [1, 2, 3]
  assert all(np.isfinite(h['loss']) for h in history)
  assert history[-1]['loss'] < history[0]['loss']
  assert history[-1]['val_accuracy'] > 0.2  # Chance is 0.1.
  exp_kernel, _ = initializers.whitening(
      images.Normalization.from_config(config.data)(
          input_pipeline.load_split(config.data, 'train').images[:128],
          np.float64,
      ),
      2,
      config.whitening.epsilon,
  )
  np.testing.assert_allclose(
      state.params['whiten']['kernel'], exp_kernel, rtol=1e-6
  )  # Set from the data, never trained.
  result = evaluation.evaluate(str(tmp_path), 'latest')  # With the run's TTA.
  assert result['accuracy'] == pytest.approx(
      history[-1]['val_accuracy'], abs=1e-6
  )
