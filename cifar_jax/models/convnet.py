"""The seed's Keras CNNs: `ConvNet`, a stack of `ConvStage`s and a dense head.

Every rung of the seed notebook is one `ConvNet`: a few `ConvStage`s (conv,
[dropout], conv, max-pool, [dropout]) and a dense head. The rungs differ
only in the numbers the config passes in, so there is one implementation to
read and to test, not eight.

Keras 2.3 defaults are reproduced on purpose, because Flax's differ:
glorot-uniform kernels (Flax: lecun-normal), zero biases, 'same'/'valid'
padding set per conv (Flax defaults to 'SAME'), 2x2 pools with stride 2 (Flax
`max_pool` defaults to stride 1), BatchNorm momentum 0.99 / epsilon 1e-3
(Flax: 1e-5) applied after the ReLU, as the seed's `Conv2D(activation='relu')`
followed by `BatchNormalization()` did, its running variance rescaled as
Keras 2.3 on TensorFlow 1 rescaled it (`batch_norm.BatchNorm`). Every rung
is checked step for step against Keras 2.3.1 itself (tests/keras23_test.py).
"""

from collections.abc import Sequence
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cifar_jax.models import batch_norm
from cifar_jax.models.layers import FlaxLayers
from cifar_jax.models.layers import Layers
from cifar_jax import rules

_glorot = nn.initializers.glorot_uniform()
Conv3x3 = functools.partial(nn.Conv, kernel_size=(3, 3), kernel_init=_glorot)
Dense = functools.partial(nn.Dense, kernel_init=_glorot)
KerasBatchNorm = functools.partial(
    batch_norm.BatchNorm,
    momentum=0.99,
    epsilon=1e-3,
    running_var_rescale='keras2',
)


class MaxPool(nn.Module):
  """Keras `MaxPooling2D((2, 2))`: window 2, stride 2, 'valid' padding."""

  layers: Layers = FlaxLayers()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return self.layers.max_pool(x)


class Flatten(nn.Module):
  """Keras `Flatten`: (batch, h, w, c) -> (batch, h*w*c) in NHWC order."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return x.reshape((x.shape[0], -1))


class ConvStage(nn.Module):
  """conv - [BN] - [dropout] - conv - [BN] - max-pool - [dropout]: two 3x3
  convs of `features` filters (the second's padding `second_padding`),
  dropout between them and after the pool (0: no layer)."""

  features: int
  second_padding: str = 'SAME'
  inner_dropout: float = 0.0
  outer_dropout: float = 0.0
  batch_norm: bool = False
  dtype: Any = jnp.float32
  layers: Layers = FlaxLayers()

  @nn.compact
  def __call__(
      self, x: jax.Array, train: bool, mask: jax.Array | None = None
  ) -> jax.Array:
    def conv_bn(x, padding, index):
      x = Conv3x3(self.features, padding=padding, dtype=self.dtype,
                  conv_general_dilated=self.layers.conv,
                  name=f'conv{index}')(x)  # fmt: skip
      x = nn.relu(x)
      if self.batch_norm:
        # The mask keeps padded examples of a partial batch out of the
        # batch statistics, so they match Keras' smaller last batch.
        x = KerasBatchNorm(
            use_running_average=not train, dtype=self.dtype, name=f'bn{index}'
        )(x, mask=mask)
      return x

    drop = functools.partial(self.layers.Dropout, deterministic=not train)
    x = conv_bn(x, 'SAME', 1)
    if self.inner_dropout:
      x = drop(self.inner_dropout, name='dropout1')(x)
    x = conv_bn(x, self.second_padding, 2)
    x = MaxPool(self.layers, name='pool')(x)
    if self.outer_dropout:
      x = drop(self.outer_dropout, name='dropout2')(x)
    return x


class ConvNet(nn.Module):
  """The seed's family of CNNs: `ConvStage`s, flatten, dense layers, logits
  (the attributes are the `model` keys of configs/default.py).

  It returns logits: the seed's softmax is folded into the loss, as Keras
  2.3 did for a softmax output. Keras' MaxNorm constraints are the
  optimizer's (`optimizers.max_norm_bounds`): projected after each update,
  as Keras does. `layers`: how the machine computes the 3x3 convs,
  max-pools and dropout (`layers.Layers`; Flax's own by default).
  """

  stage_features: Sequence[int]
  second_conv_padding: Sequence[str]
  conv_dropout: Sequence[float]
  stage_dropout: Sequence[float]
  batch_norm: bool
  hidden_features: Sequence[int]
  flatten_dropout: float
  hidden_dropout: float
  num_classes: int = 10
  dtype: Any = jnp.float32
  layers: Layers = FlaxLayers()

  def __post_init__(self):
    values = {k: getattr(self, k) for k in rules.CONVNET}
    found = rules.model_problems({'name': 'ConvNet', **values})
    if found:
      raise ValueError('; '.join(found))
    super().__post_init__()

  @nn.compact
  def __call__(
      self, x: jax.Array, train: bool = False, mask: jax.Array | None = None
  ) -> jax.Array:
    """(batch, classes) logits of (batch, 32, 32, 3) float images; `mask`
    ((batch,) 1 for real examples, 0 for a partial batch's padding) keeps
    the padding out of BatchNorm's statistics."""
    x = x.astype(self.dtype)
    if mask is not None:
      mask = mask.reshape((-1, 1, 1, 1)).astype(bool)
    for i, features in enumerate(self.stage_features):
      x = ConvStage(features, self.second_conv_padding[i],
                    self.conv_dropout[i], self.stage_dropout[i],
                    self.batch_norm, dtype=self.dtype, layers=self.layers,
                    name=f'stage{i + 1}')(x, train, mask)  # fmt: skip
    drop = functools.partial(self.layers.Dropout, deterministic=not train)
    x = Flatten(name='flatten')(x)
    if self.flatten_dropout:
      x = drop(self.flatten_dropout, name='flatten_dropout')(x)
    for i, features in enumerate(self.hidden_features):
      x = nn.relu(Dense(features, dtype=self.dtype, name=f'dense{i + 1}')(x))
      if self.hidden_dropout:
        x = drop(self.hidden_dropout, name=f'dense{i + 1}_dropout')(x)
    x = Dense(self.num_classes, dtype=self.dtype, name='logits')(x)
    return x.astype(jnp.promote_types(self.dtype, jnp.float32))
