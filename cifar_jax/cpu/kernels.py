"""The one seam between a run and the machine: `for_platform`.

The models are plain Flax. Three of their layers have faster
implementations on x86 CPUs in this folder: the 3x3 convolutions
(`conv3x3`: AVX-512 / AVX2 kernels), the 2x2 max-pool (`pooling`: a cheaper
gradient) and dropout's random bits (`dropout`: hashed once). A `Kernels`
names the implementation of each (the models' `layers`). `for_platform`
chooses them once, from the config's `cpu` section and the platform, with
the compiler options (`xla_cpu`) and how many train steps a dispatch runs
by default: one `Platform`. Off the CPU everything is XLA's and Flax's own.
None of the choices changes the model, only speed and float rounding.
"""

from collections.abc import Mapping
import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax

from cifar_jax.cpu import conv3x3
from cifar_jax.cpu import dropout
from cifar_jax.cpu import pooling
from cifar_jax.cpu import xla_cpu


@dataclasses.dataclass(frozen=True)
class Kernels:
  """How a model's 3x3 convolutions, 2x2 max-pools and dropout compute:
  `conv3x3.METHODS` ('xla': `nn.Conv` as it is), `pooling.METHODS`
  ('reduce_window': `nn.max_pool`), dropout's masks hashed once (the same
  bits as `nn.Dropout`'s; False: `nn.Dropout` itself)."""

  conv3x3: str = 'xla'
  pooling: str = 'reduce_window'
  dropout_hash_once: bool = False

  @property
  def conv(self) -> Callable[..., jax.Array] | None:
    """`nn.Conv`'s `conv_general_dilated` for 3x3 convs (None: Flax's)."""
    return conv3x3.conv_for(self.conv3x3)

  def max_pool(self, x: jax.Array) -> jax.Array:
    """Keras' `MaxPooling2D((2, 2))`: window 2, stride 2, 'valid'."""
    return pooling.max_pool_2x2(x, self.pooling)

  @property
  def Dropout(self) -> Any:  # pylint: disable=invalid-name
    """The dropout layer class, used as `nn.Dropout`."""
    if not self.dropout_hash_once:
      return nn.Dropout
    return functools.partial(dropout.Dropout, hash_once=True)

  def __str__(self) -> str:
    return f'3x3 convs: {self.conv3x3}, pooling: {self.pooling}'


@dataclasses.dataclass(frozen=True)
class Platform:
  """How a run computes on JAX's platform `name`, chosen once
  (`for_platform`): the models' layers, and the compiler options of every
  program the run compiles."""

  name: str
  kernels: Kernels
  compiler_options: Mapping[str, str]

  def steps_per_dispatch(self, configured: int, steps_per_epoch: int) -> int:
    """`configured`, with 0 = a whole epoch on GPU/TPU and 1 on CPU.

    On XLA:CPU a scan of train steps ran 14-27x slower per step than
    dispatching them one by one (benchmarks/dispatch.py), so CPUs keep
    single steps.
    """
    if configured:
      return configured
    return 1 if self.name == 'cpu' else steps_per_epoch


def for_platform(
    cpu_config: Mapping[str, str], platform: str | None = None
) -> Platform:
  """The fastest implementations `platform` has (default: JAX's default
  backend), as `cpu_config` (the config's `cpu` section) asks.

  'auto' (the default) is resolved here; a kernel this machine cannot run
  (`conv3x3.method_for`), or that does not build or load here, is
  replaced, with a warning: the Kernels name what computes.
  """
  platform = platform or jax.default_backend()
  conv = conv3x3.method_for(cpu_config.get('conv3x3', 'auto'), platform)
  if conv in conv3x3.KERNELS and not conv3x3.kernels_registered(conv):
    conv = 'xla'  # It did not build or load (warned): say what runs.
  kernels = Kernels(
      conv3x3=conv,
      pooling=pooling.method_for(cpu_config.get('pooling', 'auto'), platform),
      dropout_hash_once=platform == 'cpu',
  )
  return Platform(platform, kernels, xla_cpu.compiler_options(platform))
