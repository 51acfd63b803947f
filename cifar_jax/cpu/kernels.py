"""The one seam between the models and the machine: how layers compute.

The models are plain Flax. Three of their layers have faster
implementations on x86 CPUs in this folder: the 3x3 convolutions
(`conv3x3`: AVX-512 / AVX2 kernels), the 2x2 max-pool (`pooling`: a cheaper
gradient) and dropout's random bits (`dropout`: hashed once). A `Kernels`
names the implementation of each; `for_platform` chooses them once, from
the config's `model` section and the platform, and the model gets that one
object. Its defaults are XLA's own: Flax's standard layers. None of the
choices changes the model, only speed and float rounding.
"""

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import ml_collections

from cifar_jax.cpu import conv3x3
from cifar_jax.cpu import dropout
from cifar_jax.cpu import pooling
from cifar_jax import rules

# The `model` config keys that choose implementations, not the model.
RULES = {
    'conv3x3': rules.one_of('auto', *conv3x3.METHODS),
    'pooling': rules.one_of('auto', *pooling.METHODS),
}
CONFIG_KEYS = tuple(RULES)


@dataclasses.dataclass(frozen=True)
class Kernels:
  """How a model's 3x3 convolutions, 2x2 max-pools and dropout compute.

  Attributes:
    conv3x3: a `conv3x3.METHODS` entry ('xla': Flax's `nn.Conv` as it is).
    pooling: a `pooling.METHODS` entry ('reduce_window': `nn.max_pool`).
    dropout_hash_once: dropout's masks hashed once (XLA:CPU), the same bits
      as `nn.Dropout`'s; False: `nn.Dropout` itself.
  """

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


def for_platform(
    model_config: ml_collections.ConfigDict, platform: str
) -> Kernels:
  """The fastest implementations `platform` has, as `model_config` asks.

  'auto' (the default) is resolved here; a kernel this machine cannot run
  (`conv3x3.method_for`), or that does not build or load here, is
  replaced, with a warning: the Kernels name what computes.
  """
  conv = conv3x3.method_for(model_config.get('conv3x3', 'auto'), platform)
  if conv in conv3x3.KERNELS and not conv3x3.kernels_registered(conv):
    conv = 'xla'  # It did not build or load (warned): say what runs.
  return Kernels(
      conv3x3=conv,
      pooling=pooling.method_for(model_config.get('pooling', 'auto'), platform),
      dropout_hash_once=platform == 'cpu',
  )
