"""The 3x3 convolution kernels: where they are used, that they equal XLA's."""

import ctypes
import io
import json
import logging
import pathlib
import shutil

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from cifar_jax.training import checks
from cifar_jax import cpu
from cifar_jax.cpu import conv3x3
from cifar_jax import cpu_info
from cifar_jax.cpu import ffi_build
from cifar_jax.runs import evaluation
from cifar_jax import models
from cifar_jax import train
from conftest import get_config
from conftest import run_main

NHWC = ('NHWC', 'HWIO', 'NHWC')
SAME = ((1, 1), (1, 1))  # A 3x3 window's 'SAME' padding.
HAS_COMPILER = bool(shutil.which(ffi_build.compiler()))
RUNNABLE = conv3x3.available_kernels(cpu_info.flags()) if HAS_COMPILER else ()
needs_compiler = pytest.mark.skipif(not HAS_COMPILER, reason='no C++ compiler')
# Each kernel, skipped where this CPU (or the lack of a compiler) rules it out.
EACH_KERNEL = pytest.mark.parametrize(
    'method',
    [
        pytest.param(
            name,
            marks=pytest.mark.skipif(
                name not in RUNNABLE,
                reason=f'needs a {name} CPU and a C++ compiler',
            ),
        )
        for name in conv3x3.KERNELS
    ],
)


def _grads(conv, x, k, padding, **kwargs):
  """The input and kernel gradients for a fixed output gradient.

  The loss is linear in the output, so both sides get the same output
  gradient and differ only by how they sum.
  """

  def apply(x, k):
    return conv(x, k, (1, 1), padding, dimension_numbers=NHWC, **kwargs)

  shape = jax.eval_shape(apply, x, k).shape
  g = jax.random.normal(jax.random.key(7), shape, x.dtype)
  loss = lambda x, k: jnp.sum(apply(x, k) * g)
  return jax.jit(jax.grad(loss, argnums=(0, 1)))(x, k)


def _called(target: str) -> str:
  """How compiled HLO names a custom call to `target`."""
  return f'custom_call_target="{target}"'


def _operands(seed, n, h, w, c, o, dtype=np.float32):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, h, w, c)).astype(dtype)
  k = rng.standard_normal((3, 3, c, o)).astype(dtype)
  return jnp.asarray(x), jnp.asarray(k)


AVX2 = frozenset('fpu sse2 avx avx2 fma'.split())
AVX512 = AVX2 | {'avx512f', 'avx512bw'}


@pytest.mark.parametrize(
    'flags, max_isa, want',
    [
        (AVX512, None, ('avx512', 'avx2')),
        (AVX2, None, ('avx2',)),
        (AVX2 - {'fma'}, None, ()),  # AVX2 without FMA: no kernel.
        (frozenset({'sse2', 'avx'}), None, ()),
        (AVX512, 'AVX2', ('avx2',)),
        (AVX512, 'AVX', ()),
        (AVX512, 'AVX512_BF16', ('avx512', 'avx2')),
    ],
)
def test_the_kernels_a_cpu_runs_best_first_under_xlas_cap(flags, max_isa, want):
  assert conv3x3.available_kernels(flags, max_isa) == want


def test_the_cap_is_read_from_xla_flags():
  read = lambda flags: conv3x3.xla_max_isa({'XLA_FLAGS': flags})
  assert read('--xla_cpu_max_isa=avx2') == 'AVX2'
  assert read('--a=1 --xla_cpu_max_isa=AVX512 --xla_cpu_max_isa=AVX') == 'AVX'
  assert read('--xla_cpu_max_isa_other=AVX') is None
  assert read('--xla_cpu_max_isa=AVX3') is None  # Not XLA's: XLA refuses it.
  assert conv3x3.xla_max_isa({}) is None


@pytest.mark.parametrize(
    'flags, max_isa, want',
    [
        (AVX512, None, 'avx512'),
        (AVX2, None, 'avx2'),
        (frozenset({'sse2', 'avx'}), None, 'xla'),
        (AVX512, 'AVX2', 'avx2'),
    ],
)
def test_auto_takes_the_best_kernel_on_a_cpu_and_xla_elsewhere(
    monkeypatch, flags, max_isa, want
):
  monkeypatch.setattr(cpu_info, 'flags', lambda: flags)
  if max_isa:
    monkeypatch.setenv('XLA_FLAGS', f'--xla_cpu_max_isa={max_isa}')
  else:
    monkeypatch.delenv('XLA_FLAGS', raising=False)
  assert conv3x3.method_for('auto', 'cpu') == want
  assert conv3x3.method_for('auto', 'gpu') == 'xla'
  assert conv3x3.method_for('auto', 'tpu') == 'xla'
  assert conv3x3.method_for('xla', 'cpu') == 'xla'


def test_a_kernel_this_machine_cannot_run_is_replaced_with_a_warning(
    monkeypatch, caplog
):
  # A run trained with 'avx512' goes on (resumes, evaluates, predicts) on a
  # machine without it, saying what it uses instead.
  monkeypatch.setattr(cpu_info, 'flags', lambda: AVX2)
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  with caplog.at_level(logging.WARNING):
    assert conv3x3.method_for('avx512', 'cpu') == 'avx2'
  assert 'needs a CPU with AVX512F; this run is on a CPU without' in caplog.text
  assert "uses 'avx2'" in caplog.text
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    assert conv3x3.method_for('avx2', 'gpu') == 'xla'
  assert "this run is on gpu, so it uses 'xla'" in caplog.text
  with pytest.raises(ValueError, match="'auto' or one of"):
    conv3x3.method_for('onednn', 'cpu')
  monkeypatch.setattr(cpu_info, 'flags', lambda: AVX512)
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_max_isa=AVX2')
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    assert conv3x3.method_for('avx512', 'cpu') == 'avx2'
  assert 'capped at AVX2 by XLA_FLAGS' in caplog.text
  assert conv3x3.method_for('avx2', 'cpu') == 'avx2'


def test_the_config_check_accepts_exactly_auto_and_the_methods():
  config = get_config('large')
  for value in ('auto', *conv3x3.METHODS):
    config.cpu.conv3x3 = value
    assert not checks.problems(config), value
  config.cpu.conv3x3 = 'avx'
  assert any('cpu.conv3x3' in p for p in checks.problems(config))


def test_the_seam_resolves_the_convolutions_for_the_platform(
    monkeypatch,
):
  monkeypatch.setattr(cpu_info, 'flags', lambda: AVX512)
  monkeypatch.setattr(conv3x3, 'kernels_registered', lambda method: True)
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  config = get_config('large').cpu
  assert cpu.for_platform(config, 'cpu').kernels.conv3x3 == 'avx512'
  assert cpu.for_platform(config, 'gpu').kernels.conv3x3 == 'xla'
  config.conv3x3 = 'xla'
  assert cpu.for_platform(config, 'cpu').kernels.conv3x3 == 'xla'


@EACH_KERNEL
@pytest.mark.parametrize(
    'n, h, w, c, o, padding',
    [
        (4, 10, 11, 5, 16, 'SAME'),
        (3, 7, 8, 3, 32, 'VALID'),  # The first layer's 3 channels.
        (2, 8, 9, 40, 48, ((2, 0), (0, 1))),  # Uneven padding, 48 = 3 x 16.
        (1, 5, 6, 17, 80, 'SAME'),  # 80 = 64 + 16: two column blocks.
        (
            37,
            8,
            8,
            30,
            128,
            'SAME',
        ),  # Several groups of images, the last short.
        (2, 32, 32, 32, 32, 'SAME'),  # A full-size CIFAR layer.
        (3, 6, 7, 16, 16, ((3, 0), (0, 4))),  # Padding > 2: XLA's input grad.
        (2, 9, 9, 32, 64, ((2, 2), (2, 2))),  # The input gradient's own pads.
        (300, 8, 8, 256, 256, 'SAME'),  # Kernel gradients in several rounds.
    ],
)
def test_values_and_gradients_equal_xlas_to_float_rounding(
    n, h, w, c, o, padding, method
):
  x, k = _operands(0, n, h, w, c, o)
  kernel = conv3x3.conv_for(method)
  y, want_y = (
      jax.jit(
          lambda x, k, conv=conv: conv(
              x, k, (1, 1), padding, dimension_numbers=NHWC
          )
      )(x, k)
      for conv in (kernel, lax.conv_general_dilated)
  )
  got = (y, *_grads(kernel, x, k, padding))
  want = (want_y, *_grads(lax.conv_general_dilated, x, k, padding))
  for name, a, b in zip(('y', 'dx', 'dk'), got, want, strict=True):
    scale = float(jnp.max(jnp.abs(b)))
    assert a.shape == b.shape and scale > 0, name
    np.testing.assert_allclose(a, b, rtol=0, atol=2e-6 * scale, err_msg=name)


@EACH_KERNEL
@pytest.mark.parametrize(
    'n, h, w, c, o, pads',
    [
        (3, 7, 9, 32, 48, ((2, 0), (0, 1))),  # Odd output sizes: cut blocks.
        (2, 3, 3, 16, 16, SAME),  # Four blocks, three of them cut.
        (5, 12, 12, 64, 64, SAME),  # Chunks of 64 blocks, the last short.
        (9, 16, 16, 16, 32, SAME),  # Groups of 256 blocks across images.
        (2, 9, 9, 32, 64, ((2, 2), (2, 2))),  # The input gradient's pads.
    ],
)
def test_winograds_sums_equal_the_direct_ones_to_float_rounding(
    n, h, w, c, o, pads, method
):
  x, k = _operands(3, n, h, w, c, o)
  y = conv3x3.forward(x, k, pads, method, winograd=False)
  g = jax.random.normal(jax.random.key(1), y.shape)
  direct = (y, conv3x3.kernel_grad(x, g, pads, method, winograd=False))
  winograd = (
      conv3x3.forward(x, k, pads, method),
      conv3x3.kernel_grad(x, g, pads, method),
  )
  for name, a, b in zip(('y', 'dk'), winograd, direct, strict=True):
    scale = float(jnp.max(jnp.abs(b)))
    assert scale > 0 and not np.array_equal(a, b), name  # Summed otherwise.
    np.testing.assert_allclose(a, b, rtol=0, atol=2e-6 * scale, err_msg=name)


@EACH_KERNEL
def test_channels_that_do_not_fill_vectors_are_summed_directly(method):
  """Winograd's transforms load whole vectors of input channels."""
  x, k = _operands(4, 3, 8, 8, 24, 32)
  pads = SAME
  y = conv3x3.forward(x, k, pads, method, winograd=False)
  np.testing.assert_array_equal(conv3x3.forward(x, k, pads, method), y)
  dk = conv3x3.kernel_grad(x, y, pads, method, winograd=False)
  np.testing.assert_array_equal(conv3x3.kernel_grad(x, y, pads, method), dk)


@EACH_KERNEL
def test_the_kernels_are_in_the_compiled_step_and_deterministic(method):
  x, k = _operands(1, 40, 8, 8, 16, 32)
  conv = conv3x3.conv_for(method)

  def loss(x, k):
    y = conv(x, k, (1, 1), 'SAME', dimension_numbers=NHWC)
    return jnp.sum(jnp.sin(y))

  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  hlo = step.lower(x, k).compile().as_text()
  # The forward pass and the input gradient (the same kernel) and dk.
  assert hlo.count(_called(conv3x3.forward_target(method))) == 2
  assert hlo.count(_called(conv3x3.kernel_grad_target(method))) == 1
  assert ' convolution(' not in hlo  # No XLA convolution left.
  first, second = (jax.tree.map(np.asarray, step(x, k)) for _ in range(2))
  for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second)):
    np.testing.assert_array_equal(a, b)


@EACH_KERNEL
def test_the_first_layers_input_gradient_is_xlas(method):
  """3 input channels: not a multiple of 16, so XLA computes dx."""
  x, k = _operands(5, 2, 8, 8, 3, 16)
  conv = conv3x3.conv_for(method)
  loss = lambda x, k: jnp.sum(
      conv(x, k, (1, 1), 'SAME', dimension_numbers=NHWC)
  )
  hlo = jax.jit(jax.grad(loss)).lower(x, k).compile().as_text()
  assert _called(conv3x3.forward_target(method)) not in hlo  # Only dx.
  assert ' convolution(' in hlo


@pytest.mark.parametrize(
    'shape, dtype, kwargs',
    [
        ((2, 8, 8, 4, 10), np.float32, {}),  # 10 outputs: not a multiple of 16.
        ((2, 8, 8, 4, 16), jnp.bfloat16, {}),
        ((2, 8, 8, 4, 16), np.float32, {'rhs_dilation': (2, 2)}),
        ((2, 8, 8, 4, 16), np.float32, {'feature_group_count': 2}),
    ],
)
def test_other_convolutions_are_xlas_own(shape, dtype, kwargs):
  x, k = _operands(2, *shape, dtype=dtype)
  if 'feature_group_count' in kwargs:
    k = k[:, :, : shape[3] // 2]
  conv = conv3x3.conv_for('avx2')  # Either kernel: none is called.
  loss = lambda x, k: jnp.sum(
      conv(x, k, (1, 1), 'SAME', dimension_numbers=NHWC, **kwargs)
  )
  jaxpr = str(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(x, k))
  assert 'custom_vjp' not in jaxpr and 'ffi' not in jaxpr
  got = _grads(conv, x, k, 'SAME', **kwargs)
  want = _grads(lax.conv_general_dilated, x, k, 'SAME', **kwargs)
  for a, b in zip(got, want):
    np.testing.assert_array_equal(a, b)


def test_a_stride_or_another_window_is_xlas_own():
  x, k = _operands(3, 2, 8, 8, 4, 16)
  conv = conv3x3.conv_for('avx512')  # Either kernel: none is called.
  for kernel, strides in ((k, (2, 2)), (k[:2, :2], (1, 1))):
    loss = lambda k, s=strides: jnp.sum(
        conv(x, k, s, 'SAME', dimension_numbers=NHWC)
    )
    assert 'custom_vjp' not in str(jax.make_jaxpr(jax.grad(loss))(kernel))


@pytest.fixture
def fresh_registration():
  conv3x3.kernels_registered.cache_clear()
  yield
  conv3x3.kernels_registered.cache_clear()


def test_without_a_compiler_it_warns_and_uses_xlas_convolutions(
    monkeypatch, caplog, fresh_registration
):
  del fresh_registration
  monkeypatch.setattr(ffi_build, 'compiler', lambda: 'no-such-c++')
  x, k = _operands(4, 2, 6, 6, 4, 16)
  with caplog.at_level(logging.WARNING):
    got = _grads(conv3x3.conv_for('avx2'), x, k, 'SAME')
  assert "no C++ compiler 'no-such-c++'" in caplog.text
  assert "use XLA's own" in caplog.text
  want = _grads(lax.conv_general_dilated, x, k, 'SAME')
  for a, b in zip(got, want):
    np.testing.assert_array_equal(a, b)


def test_a_kernel_that_does_not_build_is_not_named_as_running(
    monkeypatch, caplog, fresh_registration
):
  del fresh_registration
  monkeypatch.setattr(cpu_info, 'flags', lambda: AVX512)
  monkeypatch.setattr(ffi_build, 'compiler', lambda: 'no-such-c++')
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  with caplog.at_level(logging.WARNING):
    platform = cpu.for_platform(get_config('large').cpu, 'cpu')
  assert 'The avx512 3x3 convolutions are unavailable' in caplog.text
  assert str(platform.kernels).startswith('3x3 convs: xla, ')


def test_a_compiler_that_hangs_is_given_up_on_in_one_line(
    tmp_path, monkeypatch
):
  cxx = tmp_path / 'slow-c++'
  cxx.write_text(
      '#!/bin/sh\n'
      'if [ "$1" = "--version" ]; then echo slow 1.0; exit 0; fi\n'
      'exec sleep 60\n'
  )
  cxx.chmod(0o755)
  source = tmp_path / 'tiny.cc'
  source.write_text('int f();\n')
  monkeypatch.setattr(ffi_build, 'BUILD_TIMEOUT_S', 1)
  with pytest.raises(
      ffi_build.BuildError, match='did not finish building tiny.cc within 1 s'
  ):
    ffi_build.build(source, tmp_path / 'cache', str(cxx))
  assert not list((tmp_path / 'cache').glob('*.so*'))


@needs_compiler
def test_a_failed_compile_says_which_command_and_why(tmp_path):
  source = tmp_path / 'broken.cc'
  source.write_text('int f() { return }\n')
  with pytest.raises(ffi_build.BuildError, match='failed: .*error'):
    ffi_build.build(source, tmp_path / 'cache', 'c++')
  assert not list((tmp_path / 'cache').glob('*.so*'))  # No half-written file.


@needs_compiler
def test_a_library_is_built_once_and_rebuilt_when_its_source_changes(
    tmp_path,
):
  source = tmp_path / 'tiny.cc'
  source.write_text('extern "C" int f() { return 1; }\n')
  cache = tmp_path / 'cache'
  first = ffi_build.build(source, cache, 'c++')
  built_at = first.stat().st_mtime_ns
  assert ffi_build.build(source, cache, 'c++') == first
  assert first.stat().st_mtime_ns == built_at
  source.write_text('extern "C" int f() { return 2; }\n')
  second = ffi_build.build(source, cache, 'c++')
  assert second != first and second.exists()


@needs_compiler
@pytest.mark.parametrize('damage', ['truncated', 'garbage', 'no checksum'])
def test_a_damaged_cached_library_is_compiled_again_not_loaded(
    tmp_path, caplog, damage
):
  source = tmp_path / 'tiny.cc'
  source.write_text('extern "C" int f() { return 7; }\n')
  cache = tmp_path / 'cache'
  library = ffi_build.build(source, cache, 'c++')
  whole = library.read_bytes()
  if damage == 'truncated':  # Still an ELF header: loading it would SIGBUS.
    library.write_bytes(whole[: len(whole) // 2])
  elif damage == 'garbage':
    library.write_bytes(b'not a library' * 100)
  else:
    library.with_name(library.name + '.sha256').unlink()
  with caplog.at_level(logging.WARNING):
    again = ffi_build.build(source, cache, 'c++')
  assert again == library and 'compiling it again' in caplog.text
  assert library.read_bytes() == whole
  assert ctypes.CDLL(str(again)).f() == 7


def test_a_compiler_that_writes_no_utf8_fails_in_one_line(tmp_path):
  cxx = tmp_path / 'fake-c++'
  cxx.write_text(
      '#!/bin/sh\n'
      'if [ "$1" = "--version" ]; then printf "fake \\377\\n"; exit 0; fi\n'
      'printf "x.cc:1: error: \\377\\376 bad\\n" >&2; exit 1\n'
  )
  cxx.chmod(0o755)
  source = tmp_path / 'tiny.cc'
  source.write_text('int f();\n')
  with pytest.raises(ffi_build.BuildError, match='failed: x.cc:1: error'):
    ffi_build.build(source, tmp_path / 'cache', str(cxx))


@needs_compiler
def test_an_unwritable_cache_is_a_build_error(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('')
  with pytest.raises(ffi_build.BuildError, match='cannot write'):
    ffi_build.build(conv3x3.SOURCE, blocker / 'cache', 'c++')


def test_the_cache_follows_xdg_cache_home():
  env = {'XDG_CACHE_HOME': '/tmp/xdg'}
  assert ffi_build.cache_dir(env) == pathlib.Path('/tmp/xdg/cifar_jax')
  assert ffi_build.compiler({'CXX': 'clang++'}) == 'clang++'
  assert ffi_build.compiler({}) == 'c++'


@pytest.mark.slow
@EACH_KERNEL
def test_a_convnet_trains_to_the_same_gradients_with_the_kernel_or_xla(method):
  config = get_config('bn_aug_sgd').model
  config.stage_features = (16, 32)
  config.second_conv_padding = ('SAME', 'VALID')
  config.conv_dropout = config.stage_dropout = (0.0, 0.0)
  config.hidden_features = (32,)
  config.flatten_dropout = config.hidden_dropout = 0.0
  x = jax.random.uniform(jax.random.key(0), (8, 32, 32, 3))
  labels = jnp.arange(8) % 10
  grads = {}
  for name in ('xla', method):
    kernels = cpu.for_platform({'conv3x3': name}, 'cpu').kernels
    model = models.create_model(config, kernels)
    variables = model.init(jax.random.key(1), x)

    def loss(params, model=model, variables=variables):
      logits, _ = model.apply(
          {**variables, 'params': params},
          x,
          train=True,
          mutable=['batch_stats'],
      )
      return jnp.mean(
          -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1)
      )

    grads[name] = jax.jit(jax.grad(loss))(variables['params'])
  flat_xla = jax.tree_util.tree_leaves_with_path(grads['xla'])
  flat_kernel = jax.tree_util.tree_leaves(grads[method])
  for (path, want), got in zip(flat_xla, flat_kernel, strict=True):
    scale = float(jnp.max(jnp.abs(want)))
    np.testing.assert_allclose(
        got, want, rtol=0, atol=1e-5 * scale, err_msg=jax.tree_util.keystr(path)
    )


@pytest.mark.slow
@EACH_KERNEL
def test_a_batch_split_over_two_devices_trains_as_on_one(tmp_path, method):
  """The kernel sees a sharded batch: XLA gives it the whole of x and g."""
  histories = []
  for devices in (1, 2):
    workdir = tmp_path / str(devices)
    r = run_main(
        '--config',
        'configs/test.py',
        '--config.model.stage_features=(16,)',
        '--config.model.conv_dropout=(0.0,)',
        '--config.model.hidden_dropout=0.0',
        f'--config.cpu.conv3x3={method}',
        '--config.data.synthetic_train_size=256',
        '--config.num_epochs=2',
        '--workdir',
        str(workdir),
        devices=devices,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert f'({devices} device(s): cpu; ' in r.stdout
    histories.append(json.loads((workdir / 'history.json').read_text()))
  for got, want in zip(*histories, strict=True):
    for key in ('loss', 'accuracy', 'val_loss', 'val_accuracy'):
      assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key


@pytest.mark.skipif('avx2' not in RUNNABLE, reason='needs an AVX2 CPU')
def test_a_run_moves_to_a_machine_without_its_kernels(
    tmp_path, monkeypatch, capsys
):
  config = get_config('test')
  config.num_epochs = 1
  config.cpu.conv3x3 = 'avx2'
  _, first = train.train_and_evaluate(config, str(tmp_path), out=io.StringIO())
  # Resumed where the kernels are XLA's (another CPU, a GPU): it goes on.
  config.cpu.conv3x3 = 'xla'
  config.num_epochs = 2
  out = io.StringIO()
  _, history = train.train_and_evaluate(config, str(tmp_path), out=out)
  assert history[0] == first[0] and len(history) == 2
  assert '3x3 convs: xla' in out.getvalue()
  # A run saved as 'avx512', evaluated on a CPU with AVX2 only: it says
  # what it uses and gives the accuracy the run logged.
  saved = json.loads((tmp_path / 'config.json').read_text())
  saved['cpu']['conv3x3'] = 'avx512'
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  monkeypatch.setattr(cpu_info, 'flags', lambda: AVX2)
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  result = evaluation.evaluate(str(tmp_path), 'latest')
  assert '3x3 convs: avx2' in capsys.readouterr().out
  assert result['accuracy'] == pytest.approx(
      history[-1]['val_accuracy'], abs=0.011
  )
