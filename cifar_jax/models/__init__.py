"""The models: plain Flax linen networks, built by name from a config.

- `convnet`: the seed notebook's Keras CNNs (`ConvNet`), every rung of the
  ladder;
- `fastnet`: the airbench recipes' network (`FastNet`);
- `batch_norm`, `initializers`: their BatchNorm and data-dependent inits;
- `layers`: how their 3x3 convs, max-pools and dropout compute (Flax's own,
  unless the caller hands in a platform's: `cifar_jax.cpu.for_platform`).

`create_model` builds the one a config names. Imports: `data` (the image
shape), `rules`.
"""

import jax.numpy as jnp
import ml_collections

from cifar_jax.models import convnet
from cifar_jax.models.convnet import ConvNet
from cifar_jax.models import fastnet
from cifar_jax.models.fastnet import FastNet
from cifar_jax.models.layers import FlaxLayers
from cifar_jax.models.layers import Layers
from cifar_jax import rules

COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
MODELS = {'ConvNet': ConvNet, 'FastNet': FastNet}
# The `model` keys of every model, and each model's own.
RULES = {
    'name': rules.one_of(*MODELS),
    'num_classes': rules.integer(2),
    'compute_dtype': rules.one_of(*COMPUTE_DTYPES),
}
MODEL_RULES = {'ConvNet': convnet.RULES, 'FastNet': fastnet.RULES}
# Each model's check of its shapes, once its keys pass their rules.
SHAPE_PROBLEMS = {
    'ConvNet': convnet.stage_problems,
    'FastNet': fastnet.shape_problems,
}


def create_model(
    model_config: ml_collections.ConfigDict, layers: Layers = FlaxLayers()
) -> ConvNet | FastNet:
  """Builds the model named by `model_config.name` from its other fields.

  `compute_dtype` is the dtype of activations and of the convolutions and
  matmuls; parameters, BatchNorm statistics and logits stay float32.
  `layers`: how the machine computes them (`layers.Layers`).
  """
  rules.check(model_config, RULES, 'model.')
  kwargs = dict(model_config)
  model_cls = MODELS[kwargs.pop('name')]
  compute_dtype = kwargs.pop('compute_dtype', 'float32')
  return model_cls(dtype=COMPUTE_DTYPES[compute_dtype], layers=layers, **kwargs)
