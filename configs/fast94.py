"""fast94: the airbench94 recipe (arXiv 2404.00498; `airbench.train94`).

94% on CIFAR-10 in 9.9 epochs: a whitening-initialised 2x2 conv, three
conv-pool-BN-GELU blocks (64, 256, 256), Nesterov SGD at batch 1024 with
label smoothing 0.2, a triangle schedule, Lookahead, alternating flips,
2-pixel translations, and mirror + translate test-time augmentation.

Every value is airbench94's (`airbench` 0.1.8, lib_airbench94.py and
utils.py); tests/airbench_test.py trains both side by side, step for step.

Learning rate and weight decay are airbench's: per 1024 examples of a
summed loss, decoupled from the momentum (fast_sgd.rates turns
them into our mean loss's for the run's batch size).

Run: python -m cifar_jax.main --config configs/fast94.py
"""

import ml_collections

from configs import default

# airbench's CIFAR_MEAN and CIFAR_STD, on the [0, 1] scale.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def get_config():
  config = default.get_config()
  # Inputs standardised per channel (airbench's loader normalises first).
  config.data.mean = CIFAR10_MEAN
  config.data.std = CIFAR10_STD
  config.batch_size = 1024
  config.eval_batch_size = 1000
  # ceil(48 x 9.9) = 476 steps of whole batches (airbench's drop_last).
  config.num_epochs = 9.9
  config.drop_remainder = True
  config.label_smoothing = 0.2
  config.eval_tta = 2
  # The first 5,000 training images' patches; epsilon on the scale of the
  # standardised inputs, as airbench's `init_whitening_conv(eps=5e-4)`.
  config.whitening.images = 5000
  config.whitening.epsilon = 5e-4

  config.model = ml_collections.ConfigDict()
  config.model.name = 'FastNet'
  # bf16 convolutions and matmuls, float32 state (models.create_model): the
  # GPU/TPU speed setting (airbench computes in float16). On a CPU, float32
  # is as fast or faster (README).
  config.model.compute_dtype = 'bfloat16'
  config.model.widths = (64, 256, 256)
  config.model.block_depth = 2
  config.model.residual = False
  config.model.whiten_patch = 2
  # Flax's convention: running = 0.6 * running + 0.4 * batch. airbench
  # passes PyTorch momentum=1 - 0.6, whose rule is the same.
  config.model.bn_momentum = 0.6
  config.model.bn_epsilon = 1e-12
  config.model.logit_scale = 1 / 9
  # PyTorch's nn.GELU(), as airbench ('tanh': Flax's default approximation).
  config.model.gelu = 'exact'
  config.model.activation = 'gelu'  # The blocks' ('silu': fast94_hive).
  config.model.head_init = 'uniform'  # PyTorch's Linear init.
  config.model.num_classes = 10

  config.optimizer.name = 'fast_sgd'
  config.optimizer.conv_max_norm = 0.0
  config.optimizer.hidden_max_norm = 0.0
  config.optimizer.momentum = 0.85
  config.optimizer.learning_rate = 11.5  # Per 1024 examples.
  config.optimizer.weight_decay = 0.0153  # Per 1024 examples.
  config.optimizer.bias_lr_scale = 64.0
  config.optimizer.whiten_bias_epochs = 3
  config.optimizer.schedule_start = 0.2
  config.optimizer.schedule_peak = 0.23
  config.optimizer.schedule_end = 0.07
  config.optimizer.lookahead_every = 5
  config.optimizer.lookahead_decay = 0.95**5

  config.augment.horizontal_flip = True
  config.augment.flip_mode = 'alternating'
  config.augment.crop_padding = 2
  config.augment.crop_padding_mode = 'reflect'
  return config
