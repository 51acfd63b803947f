"""Flax linen CNNs for the seed's ladder, built from two parametrised blocks.

Every rung of the seed notebook (../shared/LADDER.md) is one `ConvNet`: a few
`ConvStage`s (conv, [dropout], conv, max-pool, [dropout]) and a dense head.
The rungs differ only in the numbers the config passes in, so there is one
implementation to read and to test, not eight.

Keras 2.3 defaults are reproduced on purpose, because Flax's differ:
glorot-uniform kernels (Flax: lecun-normal), zero biases, 'same'/'valid'
padding set per conv (Flax defaults to 'SAME'), 2x2 pools with stride 2 (Flax
`max_pool` defaults to stride 1), BatchNorm momentum 0.99 / epsilon 1e-3
(Flax: 1e-5) applied after the ReLU, as the seed's `Conv2D(activation='relu')`
followed by `BatchNormalization()` did.
"""

from collections.abc import Sequence
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from cifar_jax import batch_norm
from cifar_jax import conv3x3
from cifar_jax import dropout
from cifar_jax import initializers
from cifar_jax import pooling

_glorot = nn.initializers.glorot_uniform()
Conv3x3 = functools.partial(nn.Conv, kernel_size=(3, 3), kernel_init=_glorot)
Dense = functools.partial(nn.Dense, kernel_init=_glorot)
KerasBatchNorm = functools.partial(
    batch_norm.BatchNorm, momentum=0.99, epsilon=1e-3
)


class MaxPool(nn.Module):
  """Keras `MaxPooling2D((2, 2))`: window 2, stride 2, 'valid' padding."""

  method: str = 'reduce_window'  # pooling.METHODS.

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return pooling.max_pool_2x2(x, self.method)


class Flatten(nn.Module):
  """Keras `Flatten`: (batch, h, w, c) -> (batch, h*w*c) in NHWC order."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return x.reshape((x.shape[0], -1))


class ConvStage(nn.Module):
  """conv - [BN] - [dropout] - conv - [BN] - max-pool - [dropout].

  Attributes:
    features: filters of both 3x3 convolutions.
    second_padding: 'SAME' or 'VALID' for the second conv (the first is SAME).
    inner_dropout: dropout rate between the two convs (0 = no layer).
    outer_dropout: dropout rate after the pool (0 = no layer).
    batch_norm: BatchNorm after each conv's ReLU.
    pooling: a `pooling.METHODS` entry.
    conv3x3: a `conv3x3.METHODS` entry.
    dropout_hash_once: `dropout.Dropout.hash_once` (CPUs).
  """

  features: int
  second_padding: str = 'SAME'
  inner_dropout: float = 0.0
  outer_dropout: float = 0.0
  batch_norm: bool = False
  dtype: Any = jnp.float32
  pooling: str = 'reduce_window'
  conv3x3: str = 'xla'
  dropout_hash_once: bool = False

  @nn.compact
  def __call__(
      self, x: jax.Array, train: bool, mask: jax.Array | None = None
  ) -> jax.Array:
    def conv_bn(x, padding, index):
      x = Conv3x3(
          self.features,
          padding=padding,
          dtype=self.dtype,
          conv_general_dilated=conv3x3.conv_for(self.conv3x3),
          name=f'conv{index}',
      )(x)
      x = nn.relu(x)
      if self.batch_norm:
        # The mask keeps padded examples of a partial batch out of the
        # batch statistics, so they match Keras' smaller last batch.
        x = KerasBatchNorm(
            use_running_average=not train, dtype=self.dtype, name=f'bn{index}'
        )(x, mask=mask)
      return x

    drop = functools.partial(
        dropout.Dropout,
        deterministic=not train,
        hash_once=self.dropout_hash_once,
    )
    x = conv_bn(x, 'SAME', 1)
    if self.inner_dropout:
      x = drop(self.inner_dropout, name='dropout1')(x)
    x = conv_bn(x, self.second_padding, 2)
    x = MaxPool(self.pooling, name='pool')(x)
    if self.outer_dropout:
      x = drop(self.outer_dropout, name='dropout2')(x)
    return x


class ConvNet(nn.Module):
  """The seed's family of CNNs: `ConvStage`s, flatten, dense layers, logits.

  The model returns logits; the softmax of the seed's last layer is folded
  into the loss (what Keras 2.3 itself did for a softmax output layer).

  Attributes:
    stage_features: filters of each stage.
    second_conv_padding: padding of each stage's second conv.
    conv_dropout: each stage's dropout between its convs.
    stage_dropout: each stage's dropout after its pool.
    batch_norm: BatchNorm after every conv.
    hidden_features: widths of the dense ReLU layers.
    flatten_dropout: dropout right after Flatten (0 = no layer).
    hidden_dropout: dropout after every dense ReLU layer (0 = no layer).
    num_classes: width of the output layer.
    pooling: a `pooling.METHODS` entry.
    conv3x3: a `conv3x3.METHODS` entry.
    dropout_hash_once: `dropout.Dropout.hash_once` (CPUs).

  Keras' MaxNorm kernel constraints are the optimizer's
  (`optimizers.max_norm_bounds`): Optax sees only arrays, and they are
  projected after each update, as Keras does.
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
  pooling: str = 'reduce_window'
  conv3x3: str = 'xla'
  dropout_hash_once: bool = False

  def __post_init__(self):
    per_stage = (
        self.second_conv_padding,
        self.conv_dropout,
        self.stage_dropout,
    )
    if any(len(v) != len(self.stage_features) for v in per_stage):
      raise ValueError(
          'model.second_conv_padding, model.conv_dropout and '
          'model.stage_dropout need one entry per stage '
          f'({len(self.stage_features)} stages in model.stage_features), got '
          f'{tuple(self.second_conv_padding)}, {tuple(self.conv_dropout)}, '
          f'{tuple(self.stage_dropout)}'
      )
    for padding in self.second_conv_padding:
      if padding not in ('SAME', 'VALID'):
        raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")
    for name in ('stage_features', 'hidden_features'):
      widths = getattr(self, name)
      if not all(isinstance(w, int) and w > 0 for w in widths):
        raise ValueError(
            f'model.{name} must be positive integers, got ' f'{tuple(widths)}'
        )
    super().__post_init__()

  @nn.compact
  def __call__(
      self, x: jax.Array, train: bool = False, mask: jax.Array | None = None
  ) -> jax.Array:
    """Maps (batch, 32, 32, 3) images in [0, 1] to (batch, classes) logits.

    Args:
      x: float images.
      train: dropout on and BatchNorm on batch statistics.
      mask: (batch,) 1 for real examples, 0 for padding of a partial batch;
        only BatchNorm needs it (everything else is per example).
    """
    x = x.astype(self.dtype)
    if mask is not None:
      mask = mask.reshape((-1, 1, 1, 1)).astype(bool)
    for i, features in enumerate(self.stage_features):
      x = ConvStage(
          features,
          self.second_conv_padding[i],
          self.conv_dropout[i],
          self.stage_dropout[i],
          self.batch_norm,
          dtype=self.dtype,
          pooling=self.pooling,
          conv3x3=self.conv3x3,
          dropout_hash_once=self.dropout_hash_once,
          name=f'stage{i + 1}',
      )(x, train, mask)
    drop = functools.partial(
        dropout.Dropout,
        deterministic=not train,
        hash_once=self.dropout_hash_once,
    )
    x = Flatten(name='flatten')(x)
    if self.flatten_dropout:
      x = drop(self.flatten_dropout, name='flatten_dropout')(x)
    for i, features in enumerate(self.hidden_features):
      x = nn.relu(Dense(features, dtype=self.dtype, name=f'dense{i + 1}')(x))
      if self.hidden_dropout:
        x = drop(self.hidden_dropout, name=f'dense{i + 1}_dropout')(x)
    x = Dense(self.num_classes, dtype=self.dtype, name='logits')(x)
    return x.astype(jnp.float32)


# GELU by name: the exact x * Phi(x) (PyTorch's default) or the tanh
# approximation (Flax's default).
GELUS = {
    'exact': functools.partial(nn.gelu, approximate=False),
    'tanh': functools.partial(nn.gelu, approximate=True),
}


class FastBlock(nn.Module):
  """conv - max-pool - BN - GELU, then (conv - BN - GELU) x (depth - 1).

  The airbench block (depth 2; the 96% recipe uses 3, with a residual
  connection around the convolutions after the first, which lets the
  deeper block train as fast as the shallow one).

  BatchNorm has no learned scale (BN follows a conv, so a scale would only
  duplicate the kernel's norm), a fast momentum, and PyTorch's running
  variance (unbiased), as airbench's.
  """

  features: int
  bn_momentum: float
  bn_epsilon: float
  depth: int = 2
  dtype: Any = jnp.float32
  residual: bool = False
  gelu: str = 'exact'
  pooling: str = 'reduce_window'
  conv3x3: str = 'xla'

  @nn.compact
  def __call__(
      self, x: jax.Array, train: bool, mask: jax.Array | None = None
  ) -> jax.Array:
    gelu = GELUS[self.gelu]
    norm = functools.partial(
        batch_norm.BatchNorm,
        use_running_average=not train,
        use_scale=False,
        momentum=self.bn_momentum,
        epsilon=self.bn_epsilon,
        dtype=self.dtype,
        unbiased_running_var=True,
    )
    conv = functools.partial(
        nn.Conv,
        self.features,
        (3, 3),
        padding='SAME',
        use_bias=False,
        kernel_init=initializers.dirac_init(),
        dtype=self.dtype,
        conv_general_dilated=conv3x3.conv_for(self.conv3x3),
    )
    x = conv(name='conv1')(x)
    x = pooling.max_pool_2x2(x, self.pooling)
    x = shortcut = gelu(norm(name='bn1')(x, mask=mask))
    for i in range(2, self.depth + 1):
      x = gelu(norm(name=f'bn{i}')(conv(name=f'conv{i}')(x), mask=mask))
    return x + shortcut if self.residual and self.depth > 1 else x


class FastNet(nn.Module):
  """The airbench family (arXiv 2404.00498): whitening conv, 3 blocks, linear.

  The first layer is a 2x2 convolution (no padding) whose filters are set
  from the training data, not learned from scratch: the eigenvectors of the
  2x2-patch covariance, scaled to whiten, and their negatives
  (`initializers.whitening`). Then `FastBlock`s, a max over the remaining
  positions, and a bias-free linear layer whose output is scaled down.

  Attributes:
    widths: features of each FastBlock.
    block_depth: convolutions per FastBlock.
    residual: add each block's first activation to its output.
    whiten_patch: side of the whitening convolution's patches.
    bn_momentum, bn_epsilon: BatchNorm (Flax's convention: running = m *
      running + (1 - m) * batch; PyTorch's momentum is 1 - m).
    logit_scale: multiplies the logits (airbench: 1/9).
    gelu: a `GELUS` entry: 'exact' (PyTorch's `nn.GELU()`, airbench's) or
      'tanh' (Flax's default approximation).
    num_classes: outputs.
    pooling: a `pooling.METHODS` entry.
    conv3x3: a `conv3x3.METHODS` entry (the 3x3 convs).
  """

  widths: Sequence[int] = (64, 256, 256)
  block_depth: int = 2
  residual: bool = False
  whiten_patch: int = 2
  bn_momentum: float = 0.6
  bn_epsilon: float = 1e-12
  logit_scale: float = 1 / 9
  gelu: str = 'exact'
  num_classes: int = 10
  dtype: Any = jnp.float32
  pooling: str = 'reduce_window'
  conv3x3: str = 'xla'

  def __post_init__(self):
    if self.gelu not in GELUS:
      raise ValueError(
          f'model.gelu must be one of {tuple(GELUS)}, not {self.gelu!r}'
      )
    super().__post_init__()

  @property
  def whiten_features(self) -> int:
    return 2 * 3 * self.whiten_patch**2

  @nn.compact
  def __call__(
      self, x: jax.Array, train: bool = False, mask: jax.Array | None = None
  ) -> jax.Array:
    """(batch, 32, 32, 3) normalised images -> (batch, classes) logits."""
    x = x.astype(self.dtype)
    if mask is not None:
      mask = mask.reshape((-1, 1, 1, 1)).astype(bool)
    x = nn.Conv(
        self.whiten_features,
        (self.whiten_patch,) * 2,
        padding='VALID',
        dtype=self.dtype,
        name='whiten',
    )(x)
    x = GELUS[self.gelu](x)
    for i, width in enumerate(self.widths):
      x = FastBlock(
          width,
          self.bn_momentum,
          self.bn_epsilon,
          self.block_depth,
          self.dtype,
          self.residual,
          self.gelu,
          self.pooling,
          self.conv3x3,
          name=f'block{i + 1}',
      )(x, train, mask)
    x = jnp.max(x, axis=(1, 2))
    x = nn.Dense(
        self.num_classes,
        use_bias=False,
        kernel_init=nn.initializers.variance_scaling(
            1 / 3, 'fan_in', 'uniform'
        ),
        dtype=self.dtype,
        name='head',
    )(x)
    return (x * self.logit_scale).astype(jnp.float32)


COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def create_model(
    model_config: ml_collections.ConfigDict, platform: str | None = None
) -> nn.Module:
  """Builds the model named by `model_config.name` from its other fields.

  `compute_dtype` is the dtype of activations and of the convolutions and
  matmuls; parameters, BatchNorm statistics and logits stay float32.
  `pooling` and `conv3x3` 'auto' are resolved for `platform`
  (default: JAX's default backend), here, where the model is built, and
  ConvNet's dropout masks are hashed once on CPUs (neither changes what
  the model computes beyond float rounding).
  """
  kwargs = dict(model_config)
  name = kwargs.pop('name')
  compute_dtype = kwargs.pop('compute_dtype', 'float32')
  if compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(
        f'model.compute_dtype must be one of {tuple(COMPUTE_DTYPES)}, '
        f'not {compute_dtype!r}'
    )
  platform = platform or jax.default_backend()
  kwargs['pooling'] = pooling.method_for(
      kwargs.pop('pooling', 'auto'), platform
  )
  kwargs['conv3x3'] = conv3x3.method_for(
      kwargs.pop('conv3x3', 'auto'), platform
  )
  model_cls = {'ConvNet': ConvNet, 'FastNet': FastNet}.get(name)
  if model_cls is None:
    raise ValueError(
        f'Unknown model.name {name!r}; models.py defines '
        "'ConvNet' and 'FastNet'."
    )
  if model_cls is ConvNet:  # FastNet has no dropout.
    kwargs['dropout_hash_once'] = platform == 'cpu'

  return model_cls(dtype=COMPUTE_DTYPES[compute_dtype], **kwargs)


def implementation(model: nn.Module) -> str:
  """How this machine computes `model`: '3x3 convs: avx512, pooling: ...'."""
  return f'3x3 convs: {model.conv3x3}, pooling: {model.pooling}'
