"""fast94_muon: the airbench94_muon record (94.01% in 2.59 s on an A100).

fast94's network and data with Muon on the convolution filters: batch
2000, 8 epochs' worth of steps, Nesterov SGD for the biases and the head,
every rate decaying linearly to zero, label smoothing 0.2, and no
Lookahead. The head's logits are divided by its 256 inputs and its kernel
starts at standard deviation 1.

Every value is the reference's (KellerJordan/cifar10-airbench
airbench94_muon.py at f1c599c); tests/muon_test.py trains both side by
side, step for step, where that file is at hand.

Run: python -m cifar_jax.main --config configs/fast94_muon.py
"""

from configs import fast94


def get_config():
  config = fast94.get_config()
  config.batch_size = 2000
  config.eval_batch_size = 2000
  config.num_epochs = 8.0  # ceil(8 x 25) = 200 steps of whole batches.

  config.model.logit_scale = 1 / 256
  config.model.head_init = 'unit_std'

  config.optimizer.name = 'muon'
  config.optimizer.learning_rate = 0.24  # Muon's, the filters'.
  config.optimizer.muon_momentum = 0.6
  config.optimizer.momentum = 0.85  # SGD's, the biases' and the head's.
  config.optimizer.bias_learning_rate = 0.053
  config.optimizer.head_learning_rate = 0.67
  config.optimizer.weight_decay = 2e-6  # Per example of a summed loss.
  config.optimizer.whiten_bias_epochs = 3
  config.optimizer.ns_coefficients = (3.4445, -4.7750, 2.0315)
  config.optimizer.ns_steps = 3
  config.optimizer.ns_epsilon = 1e-7
  config.optimizer.normalize_every = 1
  config.optimizer.lookahead_every = 0
  config.optimizer.lookahead_decay = 0.0
  return config
