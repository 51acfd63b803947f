"""The models: plain Flax linen networks, built by name from a config.

- `convnet`: the seed notebook's Keras CNNs (`ConvNet`), every rung of the
  ladder;
- `fastnet`: the airbench recipes' network (`FastNet`);
- `batch_norm`, `initializers`: their BatchNorm and data-dependent inits;
- `layers`: how their 3x3 convs, max-pools and dropout compute (Flax's own,
  unless the caller hands in a platform's: `cifar_jax.cpu.for_platform`).

`create_model` builds the one a config names. Imports: `rules`.
"""

import jax.numpy as jnp
import ml_collections

from cifar_jax.models.convnet import ConvNet
from cifar_jax.models.fastnet import FastNet
from cifar_jax.models.layers import FlaxLayers
from cifar_jax.models.layers import Layers
from cifar_jax import rules

COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
MODELS = {'ConvNet': ConvNet, 'FastNet': FastNet}


def create_model(
    model_config: ml_collections.ConfigDict, layers: Layers = FlaxLayers()
) -> ConvNet | FastNet:
  """Builds the model named by `model_config.name` from its other fields.

  `compute_dtype` is the dtype of activations and of the convolutions and
  matmuls; parameters, BatchNorm statistics and logits stay float32.
  `layers`: how the machine computes them (`layers.Layers`).
  """
  rules.check(model_config, rules.MODEL, 'model.')
  kwargs = dict(model_config)
  model_cls = MODELS[kwargs.pop('name')]
  compute_dtype = kwargs.pop('compute_dtype', 'float32')
  return model_cls(dtype=COMPUTE_DTYPES[compute_dtype], layers=layers, **kwargs)
