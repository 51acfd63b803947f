"""The models: plain Flax linen networks, built by name from a config.

- `convnet`: the seed notebook's Keras CNNs (`ConvNet`), every rung of the
  ladder;
- `fastnet`: the airbench recipes' network (`FastNet`);
- `batch_norm`, `initializers`: their BatchNorm and data-dependent inits.

`create_model` builds the one a config names. How the machine computes a
model's layers (the CPU kernels) is not the model's business: it gets one
`cpu.kernels.Kernels`, chosen here for the platform. Imports: `cpu` (the
seam only) and `rules`.
"""

import jax
import jax.numpy as jnp
import ml_collections

from cifar_jax.cpu import kernels as kernels_lib
from cifar_jax.models import convnet
from cifar_jax.models.convnet import ConvNet
from cifar_jax.models import fastnet
from cifar_jax.models.fastnet import FastNet
from cifar_jax import rules

COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
MODELS = {'ConvNet': ConvNet, 'FastNet': FastNet}
# The `model` keys of every model, and each model's own.
RULES = {
    'name': rules.one_of(*MODELS),
    'num_classes': rules.integer(2),
    'compute_dtype': rules.one_of(*COMPUTE_DTYPES),
    **kernels_lib.RULES,
}
MODEL_RULES = {'ConvNet': convnet.RULES, 'FastNet': fastnet.RULES}


def create_model(
    model_config: ml_collections.ConfigDict, platform: str | None = None
) -> ConvNet | FastNet:
  """Builds the model named by `model_config.name` from its other fields.

  `compute_dtype` is the dtype of activations and of the convolutions and
  matmuls; parameters, BatchNorm statistics and logits stay float32. The
  layers' implementations are chosen for `platform` (default: JAX's
  default backend), here, where the model is built
  (`cpu.kernels.for_platform`).
  """
  kwargs = {
      k: v for k, v in model_config.items() if k not in kernels_lib.CONFIG_KEYS
  }
  rules.check(model_config, RULES, 'model.')
  model_cls = MODELS[kwargs.pop('name')]
  compute_dtype = kwargs.pop('compute_dtype', 'float32')
  return model_cls(
      dtype=COMPUTE_DTYPES[compute_dtype],
      kernels=kernels_lib.for_platform(
          model_config, platform or jax.default_backend()
      ),
      **kwargs,
  )
