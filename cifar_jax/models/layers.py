"""How a model's 3x3 convolutions, 2x2 max-pools and dropout compute.

The models call these three through a `Layers`: Flax's own unless a
platform hands in faster implementations of the same computations
(`cifar_jax.cpu.for_platform`). The model is the same either way, up to
float rounding.
"""

import dataclasses
from typing import Any, Callable, Protocol

import flax.linen as nn
import jax


class Layers(Protocol):
  """What the models ask of their layers' implementations."""

  @property
  def conv(self) -> Callable[..., jax.Array] | None:
    """`nn.Conv`'s `conv_general_dilated` for 3x3 convs (None: Flax's)."""

  def max_pool(self, x: jax.Array) -> jax.Array:
    """Keras' `MaxPooling2D((2, 2))`: window 2, stride 2, 'valid'."""

  @property
  def Dropout(self) -> Any:  # pylint: disable=invalid-name
    """The dropout layer class, used as `nn.Dropout`."""


@dataclasses.dataclass(frozen=True)
class FlaxLayers:
  """Flax's own: `nn.Conv` as it is, `nn.max_pool`, `nn.Dropout`."""

  conv = None
  Dropout = nn.Dropout  # pylint: disable=invalid-name

  def max_pool(self, x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")

  def __str__(self) -> str:
    return "Flax's own layers"
