"""fast94_hive: hiverge's CIFAR-10 speedrun (94.01% in 2.015 s on an A100).

fast94_muon's design, retuned: batch 1536 for 7.59 epochs' worth of
steps, SiLU in the blocks, whitening from 960 images by SVD, brightness
and contrast jitter, label smoothing 0.09, and BatchNorm momentum 0.5566.
Muon scales each update to a magnitude that shrinks over the run before
normalising it, renormalises the filters ever more rarely (every 2 to 17
updates) and decays them; the whitening bias trains for 7 steps. The test
set is evaluated at once, and only its least confident quarter gets the
six equally weighted augmented views.

Every value is the reference's (hiverge/cifar10-speedrun at 5cd49b1);
tests/muon_test.py trains both side by side, step for step, where that
file is at hand.

Run: python -m cifar_jax.main --config configs/fast94_hive.py
"""

from configs import fast94_muon


def get_config():
  config = fast94_muon.get_config()
  config.batch_size = 1536
  # One batch: the least confident quarter of the whole test set, as hiverge.
  config.eval_batch_size = 10000
  config.num_epochs = 7.59  # ceil(7.59 x 32) = 243 steps.
  config.label_smoothing = 0.09
  config.eval_tta_weights = 'uniform'
  config.eval_tta_share = 0.25
  config.whitening.images = 960
  config.whitening.decomposition = 'svd'

  config.model.activation = 'silu'
  config.model.bn_momentum = 0.5566

  config.augment.brightness = 0.1399
  config.augment.contrast = 0.1308

  config.optimizer.learning_rate = 0.205
  config.optimizer.muon_momentum = 0.655
  config.optimizer.momentum = 0.825
  config.optimizer.bias_learning_rate = 0.0573
  config.optimizer.head_learning_rate = 0.5415
  config.optimizer.weight_decay = 1.0418e-6
  config.optimizer.muon_weight_decay = 1.0418e-6
  config.optimizer.whiten_bias_epochs = 0.19  # ceil(0.19 x 32) = 7 steps.
  config.optimizer.ns_coefficients = (3.4576, -4.7391, 2.0843)
  config.optimizer.ns_epsilon = 1e-5
  config.optimizer.ns_magnitude = (0.5012, 0.0786)
  config.optimizer.normalize_every = 2
  config.optimizer.normalize_every_growth = 15.0
  config.optimizer.normalize_epsilon = 1e-7
  return config
