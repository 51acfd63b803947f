"""The airbench family (arXiv 2404.00498): `FastNet` and its `FastBlock`s.

A whitening convolution set from the data, blocks of conv - max-pool -
BatchNorm - GELU, a global max and a scaled linear head: the networks of
the fast recipes (configs/fast94.py, fast95.py, fast96.py).
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
from cifar_jax.models import initializers
from cifar_jax import rules

# GELU by name: the exact x * Phi(x) (PyTorch's default) or the tanh
# approximation (Flax's default).
GELUS = {
    'exact': functools.partial(nn.gelu, approximate=False),
    'tanh': functools.partial(nn.gelu, approximate=True),
}


def unit_std(base: nn.initializers.Initializer) -> nn.initializers.Initializer:
  """`base`, divided by its sample standard deviation (the Muon recipes'
  head: PyTorch's `w *= 1 / w.std()`, whose std is the unbiased one)."""

  def init(key, shape, dtype=jnp.float32):
    w = base(key, shape, dtype)
    return w / jnp.std(w, ddof=1)

  return init


# The head's initial kernel by name: PyTorch's Linear default, or that
# over its standard deviation.
_LINEAR = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')
HEAD_INITS = {'uniform': _LINEAR, 'unit_std': unit_std(_LINEAR)}
# The blocks' activation by name ('gelu': the `gelu` key's).
ACTIVATIONS = {'gelu': None, 'silu': nn.silu}


class FastBlock(nn.Module):
  """conv - max-pool - BN - GELU, then (conv - BN - GELU) x (depth - 1).

  The airbench block (depth 2; the 96% recipe uses 3, with a residual
  connection around the convolutions after the first, which lets the
  deeper block train as fast as the shallow one).

  `activation` 'silu' puts SiLU in GELU's place (hiverge's record).
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
  activation: str = 'gelu'
  layers: Layers = FlaxLayers()

  @nn.compact
  def __call__(
      self, x: jax.Array, train: bool, mask: jax.Array | None = None
  ) -> jax.Array:
    gelu = ACTIVATIONS[self.activation] or GELUS[self.gelu]
    norm = functools.partial(
        batch_norm.BatchNorm, use_running_average=not train, use_scale=False,
        momentum=self.bn_momentum, epsilon=self.bn_epsilon, dtype=self.dtype,
        running_var_rescale='bessel')  # fmt: skip
    conv = functools.partial(
        nn.Conv, self.features, (3, 3), padding='SAME', use_bias=False,
        kernel_init=initializers.dirac_init(), dtype=self.dtype,
        conv_general_dilated=self.layers.conv)  # fmt: skip
    x = conv(name='conv1')(x)
    x = self.layers.max_pool(x)
    x = shortcut = gelu(norm(name='bn1')(x, mask=mask))
    for i in range(2, self.depth + 1):
      x = gelu(norm(name=f'bn{i}')(conv(name=f'conv{i}')(x), mask=mask))
    return x + shortcut if self.residual and self.depth > 1 else x


class FastNet(nn.Module):
  """The airbench family (arXiv 2404.00498): whitening conv, 3 blocks, linear.

  The first layer is a `whiten_patch`-square convolution (no padding)
  whose filters are set from the training data, not learned from scratch
  (`initializers.whitening`). Then `FastBlock`s, a max over the remaining
  positions, and a bias-free linear layer scaled by `logit_scale`. The
  attributes are the `model` keys of configs/fast94.py; `bn_momentum` is
  Flax's (PyTorch's is 1 - m); `activation` is the blocks' (the one after
  the whitening stays GELU); `head_init` 'unit_std' rescales the head's
  initial kernel to standard deviation 1; `layers` as in `ConvNet`.
  """

  widths: Sequence[int] = (64, 256, 256)
  block_depth: int = 2
  residual: bool = False
  whiten_patch: int = 2
  bn_momentum: float = 0.6
  bn_epsilon: float = 1e-12
  logit_scale: float = 1 / 9
  gelu: str = 'exact'
  activation: str = 'gelu'
  head_init: str = 'uniform'
  num_classes: int = 10
  dtype: Any = jnp.float32
  layers: Layers = FlaxLayers()

  def __post_init__(self):
    values = {k: getattr(self, k) for k in rules.FASTNET}
    found = rules.model_problems({'name': 'FastNet', **values})
    if found:
      raise ValueError('; '.join(found))
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
    x = nn.Conv(self.whiten_features, (self.whiten_patch,) * 2,
                padding='VALID', dtype=self.dtype,
                name='whiten')(x)  # fmt: skip
    x = GELUS[self.gelu](x)
    for i, width in enumerate(self.widths):
      block = FastBlock(width, self.bn_momentum, self.bn_epsilon,
                        self.block_depth, self.dtype, self.residual,
                        self.gelu, self.activation, self.layers,
                        name=f'block{i + 1}')  # fmt: skip
      x = block(x, train, mask)
    x = jnp.max(x, axis=(1, 2))
    init = HEAD_INITS[self.head_init]
    x = nn.Dense(self.num_classes, use_bias=False, kernel_init=init,
                 dtype=self.dtype, name='head')(x)  # fmt: skip
    return (x * self.logit_scale).astype(jnp.promote_types(self.dtype, 'f4'))
