"""3x3 convolutions on x86 CPUs, as FFI kernels: forward and gradients.

XLA:CPU's 3x3 convolutions ran at about half the speed of oneDNN's and kept
a training step behind Keras' (docs/cpu_performance.md). `conv3x3.cc`
computes a 3x3, stride-1 NHWC convolution in vector registers on XLA's
intra-op threads, and its kernel gradient; the input gradient is the same
convolution of the output gradient with the flipped kernel. Where the input
channels are a multiple of 16 it sums by Winograd's F(2x2, 3x3) (kernel
gradient F(3x3, 2x2)): 16 multiply-adds per 4 outputs instead of 36.

Built per instruction set ('avx512', 'avx2' with FMA) on first use with
`$CXX` (else `c++`) against jaxlib's FFI headers, cached by a hash of
source, compiler, flags and jaxlib (`ffi_build`); `method_for` takes the
best the CPU has under XLA_FLAGS' `--xla_cpu_max_isa`. If the build fails,
a warning says why and XLA's own convolutions are used. Results differ from
XLA's only by float rounding (tests/conv3x3_test.py).
"""

from collections.abc import Mapping, Sequence
import ctypes
import functools
import logging
import os
import pathlib
from typing import NamedTuple

import jax
from jax import lax
import numpy as np

from cifar_jax import cpu_info
from cifar_jax.cpu import ffi_build


class Kernel(NamedTuple):
  """One build of conv3x3.cc, for one instruction set."""

  cpu_flags: tuple[str, ...]  # /proc/cpuinfo flags its tiles need.
  compile_flags: tuple[str, ...]  # Added to the compiler's command line.
  xla_isa: str  # Its instruction set as `--xla_cpu_max_isa` names it.

  @property
  def needs(self) -> str:
    """What its tiles need, for messages: 'AVX2 and FMA'."""
    return ' and '.join(self.cpu_flags).upper()


# Best first.
KERNELS = {
    'avx512': Kernel(('avx512f',), ('-DCIFAR_JAX_AVX512',), 'AVX512'),
    'avx2': Kernel(('avx2', 'fma'), (), 'AVX2'),
}
METHODS = ('xla', *KERNELS)
# The values of XLA's `--xla_cpu_max_isa`, oldest first.
_XLA_ISAS = tuple(
    'SSE4_2 AVX AVX2 AVX512 AVX512_VNNI AVX512_BF16 AMX AMX_FP16'.split()
)
SOURCE = pathlib.Path(__file__).with_name('conv3x3.cc')
_DIMENSIONS = ('NHWC', 'HWIO', 'NHWC')


def forward_target(method: str) -> str:
  """The FFI target name of `method`'s convolution (and input gradient)."""
  return f'cifar_jax_conv3x3_{method}'


def kernel_grad_target(method: str) -> str:
  """The FFI target name of `method`'s kernel gradient."""
  return f'cifar_jax_conv3x3_kernel_grad_{method}'


def xla_max_isa(environ: Mapping[str, str] = os.environ) -> str | None:
  """The `--xla_cpu_max_isa` that XLA_FLAGS sets, if a known one."""
  value = None
  for item in environ.get('XLA_FLAGS', '').split():
    name, _, given = item.lstrip('-').partition('=')
    if name == 'xla_cpu_max_isa':
      value = given.upper()  # The last one wins, as in XLA.
  return value if value in _XLA_ISAS else None


def available_kernels(
    flags: frozenset[str], max_isa: str | None = None
) -> tuple[str, ...]:
  """The kernels a CPU with `flags` runs under the cap `max_isa`, best first."""
  cap = _XLA_ISAS.index(max_isa) if max_isa else len(_XLA_ISAS)
  return tuple(
      name
      for name, kernel in KERNELS.items()
      if flags.issuperset(kernel.cpu_flags)
      and _XLA_ISAS.index(kernel.xla_isa) <= cap
  )


def method_for(setting: str, platform: str) -> str:
  """The 3x3 convolutions of config `cpu.conv3x3` on `platform`.

  'auto' is the best kernel the CPU has ('avx512', else 'avx2'), and 'xla'
  on GPUs and TPUs and CPUs with neither. A kernel this machine cannot run
  is replaced by 'auto's choice, with a warning: the choice changes speed
  and float rounding, not the model, so a run that moves to another
  machine (a preempted job restarted elsewhere) goes on there.
  """
  if setting not in ('auto', *METHODS):
    raise ValueError(
        "cpu.conv3x3 must be 'auto' or one of " f'{METHODS}, not {setting!r}'
    )
  max_isa = xla_max_isa()
  flags = cpu_info.flags() if platform == 'cpu' else frozenset()
  available = available_kernels(flags, max_isa)
  if setting == 'auto':
    return available[0] if available else 'xla'
  if setting != 'xla' and setting not in available:
    kernel = KERNELS[setting]
    if platform != 'cpu':
      where = platform
    elif max_isa and flags.issuperset(kernel.cpu_flags):
      where = f'a CPU capped at {max_isa} by XLA_FLAGS --xla_cpu_max_isa'
    else:
      where = f'a CPU without {kernel.needs}'
    instead = available[0] if available else 'xla'
    logging.warning(
        'cpu.conv3x3=%r needs a CPU with %s; this run is on %s, so it '
        'uses %r (the same model; float rounding differs).',
        *(setting, kernel.needs, where, instead),
    )
    return instead
  return setting


def conv_for(method: str):
  """The `conv_general_dilated` for Flax's `nn.Conv` (None: Flax's default)."""
  if method not in KERNELS:
    return None
  return functools.partial(conv_general_dilated, method=method)


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
    *,
    method: str,
) -> jax.Array:
  """`lax.conv_general_dilated`, computed by the kernel `method` (KERNELS).

  Only where the kernel applies: float32 NHWC/HWIO, a 3x3 window, stride
  1, no dilation or groups, output channels a multiple of 16. Any other
  convolution is `lax.conv_general_dilated` as it is.
  """
  args = (lhs, rhs, window_strides, padding)
  kwargs = dict(
      lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count,
      batch_group_count=batch_group_count,
      precision=precision,
      preferred_element_type=preferred_element_type,
  )
  pads = _supported_padding(*args, **kwargs)
  if pads is None:
    return lax.conv_general_dilated(*args, **kwargs)
  return _conv(lhs, rhs, pads, method)


def _supported_padding(
    lhs, rhs, window_strides, padding, **kwargs
) -> tuple[tuple[int, int], ...] | None:
  """The explicit padding where the kernel applies, else None."""
  if lhs.ndim != 4 or rhs.ndim != 4 or tuple(rhs.shape[:2]) != (3, 3):
    return None
  if lhs.dtype != np.float32 or rhs.dtype != np.float32:
    return None
  if rhs.shape[3] % 16 or tuple(window_strides) != (1, 1):
    return None
  for name in ('lhs_dilation', 'rhs_dilation'):
    if kwargs[name] is not None and tuple(kwargs[name]) != (1, 1):
      return None
  if kwargs['feature_group_count'] != 1 or kwargs['batch_group_count'] != 1:
    return None
  if kwargs['preferred_element_type'] is not None:
    return None
  nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _DIMENSIONS)
  given = kwargs['dimension_numbers']
  if (
      given is not None
      and lax.conv_dimension_numbers(lhs.shape, rhs.shape, given) != nhwc
  ):
    return None
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], (3, 3), (1, 1), padding)
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  return pads if min(min(p) for p in pads) >= 0 else None


def _winograd_applies(channels: int) -> bool:
  """Whether the input channels fill the transforms' whole vectors."""
  return channels % 16 == 0


def _xla_conv(x: jax.Array, k: jax.Array, pads) -> jax.Array:
  return lax.conv_general_dilated(
      x, k, (1, 1), pads, dimension_numbers=_DIMENSIONS
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x: jax.Array, k: jax.Array, pads, method: str) -> jax.Array:
  return forward(x, k, pads, method)


def _conv_fwd(x, k, pads, method):
  return forward(x, k, pads, method), (x, k)


def _conv_bwd(pads, method, residuals, g):
  x, k = residuals
  return (
      input_grad(g, k, pads, x.shape, method),
      kernel_grad(x, g, pads, method),
  )


_conv.defvjp(_conv_fwd, _conv_bwd)


def forward(
    x: jax.Array, k: jax.Array, pads, method: str, winograd: bool = True
) -> jax.Array:
  """The convolution itself: the FFI kernel where it builds, else XLA's.

  By Winograd's algorithm where the input channels allow (a multiple of 16)
  and `winograd`; by the direct sums otherwise.
  """
  if not kernels_registered(method):
    return _xla_conv(x, k, pads)
  (top, bottom), (left, right) = pads
  n, h, w, _ = x.shape
  out = (n, h + top + bottom - 2, w + left + right - 2, k.shape[3])
  shape = jax.ShapeDtypeStruct(out, x.dtype)
  call = jax.ffi.ffi_call(
      forward_target(method), shape, vmap_method='sequential'
  )
  return call(
      x,
      k,
      pad_top=np.int64(top),
      pad_left=np.int64(left),
      winograd=winograd and _winograd_applies(k.shape[2]),
  )


def input_grad(
    g: jax.Array, k: jax.Array, pads, x_shape: tuple[int, ...], method: str
) -> jax.Array:
  """d(conv(x, k)) / dx applied to the output gradient `g`: (N, H, W, C).

  A 3x3 convolution of `g` with the kernel flipped and its channel axes
  swapped, so the forward kernel computes it where it applies.
  """
  flipped_pads = tuple((2 - lo, 2 - hi) for lo, hi in pads)
  if (
      kernels_registered(method)
      and k.shape[2] % 16 == 0
      and min(min(p) for p in flipped_pads) >= 0
  ):
    flipped = jax.numpy.flip(k, (0, 1)).transpose(0, 1, 3, 2)
    return forward(g, flipped, flipped_pads, method)
  zeros = jax.numpy.zeros(x_shape, k.dtype)
  _, vjp = jax.vjp(lambda x: _xla_conv(x, k, pads), zeros)
  return vjp(g)[0]


def kernel_grad(
    x: jax.Array, g: jax.Array, pads, method: str, winograd: bool = True
) -> jax.Array:
  """d(conv(x, k)) / dk applied to the output gradient `g`: (3, 3, C, O).

  The FFI kernel where it builds (by Winograd's algorithm where the input
  channels are a multiple of 16 and `winograd`); XLA's own gradient
  otherwise.
  """
  shape = jax.ShapeDtypeStruct((3, 3, x.shape[3], g.shape[3]), x.dtype)
  if not kernels_registered(method):
    zeros = jax.numpy.zeros(shape.shape, shape.dtype)
    _, grad = jax.vjp(lambda k: _xla_conv(x, k, pads), zeros)
    return grad(g)[0]
  call = jax.ffi.ffi_call(
      kernel_grad_target(method), shape, vmap_method='sequential'
  )
  return call(
      x,
      g,
      pad_top=np.int64(pads[0][0]),
      pad_left=np.int64(pads[1][0]),
      winograd=winograd and _winograd_applies(x.shape[3]),
  )


@functools.cache
def kernels_registered(method: str) -> bool:
  """Builds, loads and registers `method`'s kernels once; False (and a
  warning) if it cannot."""
  kernel = KERNELS[method]
  build = functools.partial(ffi_build.build, SOURCE, ffi_build.cache_dir())
  try:
    library = ctypes.CDLL(
        str(build(ffi_build.compiler(), kernel.compile_flags))
    )
    if not library.CifarJaxCpuSupported():
      raise ffi_build.BuildError(f'this CPU has no {kernel.needs}')
  except (ffi_build.BuildError, OSError) as e:  # OSError: will not load.
    logging.warning(
        'The %s 3x3 convolutions are unavailable (%s); convolutions use '
        "XLA's own, which are slower on this CPU.",
        method,
        e,
    )
    return False
  for target, symbol in (
      (forward_target(method), library.CifarJaxConv3x3),
      (kernel_grad_target(method), library.CifarJaxConv3x3KernelGrad),
  ):
    jax.ffi.register_ffi_target(
        target, jax.ffi.pycapsule(symbol), platform='cpu'
    )
  return True
