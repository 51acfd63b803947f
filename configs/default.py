"""Every key of a cifar_jax config, with the seed's baseline (simple) values.

The rungs of the seed notebook's ladder import this and override only
what differs, so each key is documented once, here. Any key can be overridden
on the command line: `--config.num_epochs=3`,
`--config.optimizer.learning_rate=0.02`. Each part of the code gets its own
section: `data`, `model`, `optimizer`, `augment` (and `whitening`, the
data-dependent init); the loop's keys are at the top.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """The simple rung: 2 convs + 1 dense layer, SGD with decay, 25 epochs."""
  config = ml_collections.ConfigDict()

  # Data (input_pipeline.load_split).
  config.data = ml_collections.ConfigDict()
  # 'cifar10' (TFDS), 'image_folder' (<dir>/<split>/<class>/*.jpg, or a .zip
  # of that) or 'synthetic' (a small learnable offline set for tests).
  config.data.name = 'cifar10'
  # TFDS data_dir, or the root of the image folder; None = TFDS's default.
  config.data.dir = ml_collections.FieldReference(None, field_type=str)
  # Decoded splits are cached here as .npz ('' = no cache).
  config.data.cache_dir = '~/.cache/cifar_jax'
  # Split names, with TFDS slicing: 'train[:45000]' / 'train[45000:]'.
  config.data.train_split = 'train'
  config.data.eval_split = 'test'
  # Sizes of the synthetic data set's train and eval splits.
  config.data.synthetic_train_size = 2048
  config.data.synthetic_eval_size = 512
  # Model inputs are pixels / 255, then (x - mean) / std per channel when
  # these hold 3 values each (images.Normalization; () = the [0, 1] scale).
  config.data.mean = ()
  config.data.std = ()

  # Loop. Global batch size (split over all devices).
  config.batch_size = 32
  # Batch size of evaluation; it changes nothing but speed and memory.
  config.eval_batch_size = 500
  # Epochs to train; a fraction cuts the last epoch short (the run trains
  # ceil(num_epochs x steps_per_epoch) steps, as airbench's 9.9 epochs).
  config.num_epochs = 25.0
  # Batches per epoch; 0 = ceil(examples / batch_size), one full pass with
  # the last partial batch, as Keras `fit`. k > 0 = exactly k batches, going
  # on through the shuffled passes as Keras' `fit_generator` did.
  config.steps_per_epoch = 0
  # Whole batches only: each pass over the shuffled data is cut into
  # floor(examples / batch_size) batches and the rest left out (PyTorch's
  # drop_last, as airbench); False = a last, partial batch, as Keras.
  config.drop_remainder = False
  # Each pass visits its batches in a shuffled order, so the partial batch
  # falls anywhere in it (Keras' `fit_generator`, whose enqueuer shuffles
  # the batches of an ImageDataGenerator's flow); False = in order, the
  # partial batch last (Keras `fit`).
  config.shuffle_batch_order = False
  # Train steps per dispatch from the host, run as one compiled lax.scan;
  # 0 = a whole epoch on GPU/TPU and 1 on CPU (where a scan is slower).
  config.steps_per_dispatch = 0
  # Seeds parameter init, data order, augmentation and dropout.
  config.seed = 0

  # Checkpoints (in <workdir>/checkpoints; a run resumes from the newest).
  # Every epoch's end is saved; this also saves every N steps within epochs
  # (0 = only at epoch ends).
  config.checkpoint_every_steps = 0
  # Keep the newest this many checkpoints, plus the best by val_accuracy.
  config.keep_checkpoints = 2
  # Start from the params (and BatchNorm statistics) of another run
  # directory or checkpoint, with a fresh optimizer ('' = from scratch).
  config.init_from = ''
  # With init_from: continue that run's optimizer state too (Adam's moments
  # and update count), as a Keras model fit again without compile() does;
  # the new run's step, schedule and epochs still start at 0.
  config.init_from_optimizer = False

  # The seed notebook's rung (cifar_jax.seed_notebook) whose printed curves
  # are drawn beside this run's in curves.png ('' = none). Reporting only.
  config.seed_rung = ''

  # Label smoothing of the training loss (0 = none; the logged loss is
  # always the plain cross-entropy).
  config.label_smoothing = 0.0
  # Test-time augmentation of every evaluation: 0 none, 1 mirror, 2 mirror
  # and one-pixel translations (augment.tta_logits).
  config.eval_tta = 0
  # Level 2's six views weighted as airbench ('airbench': half the plain
  # pair, a quarter each translated pair) or equally ('uniform'); and the
  # share of each eval batch, least confident in the plain pass first, that
  # gets them (1.0 = all; hiverge's record: 0.25 of its whole test set).
  config.eval_tta_weights = 'airbench'
  config.eval_tta_share = 1.0
  # Data-dependent init of a model's 'whiten' layer (models.FastNet): the
  # patch covariance of the first `images` training images (0 = off).
  config.whitening = ml_collections.ConfigDict()
  config.whitening.images = 0
  config.whitening.epsilon = 5e-4
  # How the eigenvectors are found: 'eigh' (airbench) or 'svd' (hiverge's
  # record): the same filters up to sign, by other rounding.
  config.whitening.decomposition = 'eigh'

  # Model (models.create_model): models.ConvNet, a stack of ConvStages and
  # dense layers.
  config.model = ml_collections.ConfigDict()
  config.model.name = 'ConvNet'
  # dtype of activations, convolutions and matmuls: 'float32' or 'bfloat16'
  # (mixed precision: params, optimizer state, BatchNorm statistics, the
  # loss and the updates stay float32).
  config.model.compute_dtype = 'float32'
  # Filters of each stage's two 3x3 convs.
  config.model.stage_features = (32,)
  # Padding of each stage's second conv ('SAME' or 'VALID').
  config.model.second_conv_padding = ('SAME',)
  # Dropout between each stage's two convs (0 = none).
  config.model.conv_dropout = (0.2,)
  # Dropout after each stage's max-pool (0 = none).
  config.model.stage_dropout = (0.0,)
  # BatchNorm after each conv's ReLU (Keras momentum 0.99, epsilon 1e-3).
  config.model.batch_norm = False
  # Widths of the dense ReLU layers after Flatten.
  config.model.hidden_features = (512,)
  # Dropout right after Flatten, and after each dense ReLU layer (0 = none).
  config.model.flatten_dropout = 0.0
  config.model.hidden_dropout = 0.5
  config.model.num_classes = 10
  # model.name='FastNet' (models/fastnet.py; configs/fast94.py) takes these
  # keys in place of ConvNet's: widths (features of each block), block_depth
  # (convs per block), residual (a shortcut around a block's later convs),
  # whiten_patch (side of the whitening conv), bn_momentum and bn_epsilon
  # (BatchNorm, Flax's convention: running = m * running + (1 - m) * batch),
  # logit_scale (multiplies the logits), gelu ('exact' or 'tanh'),
  # activation (the blocks': 'gelu' or 'silu') and head_init ('uniform', or
  # 'unit_std': that kernel over its standard deviation).

  # Optimizer (optimizers.create_optimizer): 'sgd' (Keras SGD: momentum,
  # lr / (1 + decay * updates)) or 'adam' (Keras Adam; epsilon added to
  # sqrt(v) as Keras 2.3 did).
  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = 'sgd'
  config.optimizer.learning_rate = 0.01
  # Keras MaxNorm bound of ConvNet's conv kernels and dense ReLU layers'
  # kernels, projected after every update (0 = unconstrained).
  config.optimizer.conv_max_norm = 3.0
  config.optimizer.hidden_max_norm = 3.0
  # SGD only: momentum and per-update inverse-time decay (seed: lr/epochs).
  config.optimizer.momentum = 0.9
  config.optimizer.decay = 0.01 / 25
  # Adam only: Keras 2.3 defaults.
  config.optimizer.beta1 = 0.9
  config.optimizer.beta2 = 0.999
  config.optimizer.epsilon = 1e-7
  # 'fast_sgd' only (training.fast_sgd): Nesterov SGD with `momentum` and
  # weight decay added to the gradient, both rates per 1024 examples as
  # airbench gives them (learning_rate too: fast_sgd.rates);
  # BatchNorm biases at bias_lr_scale x the learning rate; the whitening
  # bias trained for whiten_bias_epochs; a triangle schedule (x start -> x1
  # at fraction peak -> x end); and Lookahead of the params and BatchNorm
  # statistics every lookahead_every steps (0 = off) with its EMA decay
  # rising to lookahead_decay.
  config.optimizer.weight_decay = 0.0
  config.optimizer.bias_lr_scale = 1.0
  config.optimizer.whiten_bias_epochs = 0.0
  config.optimizer.schedule_start = 0.0
  config.optimizer.schedule_peak = 0.5
  config.optimizer.schedule_end = 0.0
  config.optimizer.lookahead_every = 0
  config.optimizer.lookahead_decay = 0.0
  # 'muon' only (training.muon; configs/fast94_muon.py): Muon on the conv
  # filters at learning_rate with Nesterov muon_momentum; Nesterov SGD with
  # `momentum` on the BatchNorm and whitening biases at bias_learning_rate
  # and on the head at head_learning_rate; every rate decays linearly to 0
  # (the whitening bias's over whiten_bias_epochs). The rates and
  # weight_decay are for a loss summed over the batch, as the references
  # give them: weight_decay per example, added to the gradient as PyTorch's
  # SGD (weight_decay / rate, for each rate); muon_weight_decay per example,
  # the filters' decoupled decay. Newton-Schulz: ns_steps iterations of the
  # quintic ns_coefficients on the update over its norm (+ ns_epsilon),
  # first scaled to a magnitude going linearly from ns_magnitude[0] to [1]
  # (() = not). Each kernel is rescaled to norm sqrt(filters) (+
  # normalize_epsilon) before an update once normalize_every + floor(growth
  # x progress) updates have passed since the last time, with
  # normalize_every_growth the growth.
  config.optimizer.muon_momentum = 0.6
  config.optimizer.bias_learning_rate = 0.053
  config.optimizer.head_learning_rate = 0.67
  config.optimizer.muon_weight_decay = 0.0
  config.optimizer.ns_coefficients = (3.4445, -4.7750, 2.0315)
  config.optimizer.ns_steps = 3
  config.optimizer.ns_epsilon = 1e-7
  config.optimizer.ns_magnitude = ()
  config.optimizer.normalize_every = 1
  config.optimizer.normalize_every_growth = 0.0
  config.optimizer.normalize_epsilon = 0.0

  # Augmentation, as Keras' ImageDataGenerator (0 / False = off).
  config.augment = ml_collections.ConfigDict()
  config.augment.horizontal_flip = False
  # 'random' (Keras) or 'alternating' (each image flipped every other pass).
  config.augment.flip_mode = 'random'

  # Shift by a uniform fraction of the width / height in [-r, r].
  config.augment.width_shift_range = 0.0
  config.augment.height_shift_range = 0.0
  # Zoom x and y independently, uniform in [1 - z, 1 + z].
  config.augment.zoom_range = 0.0
  # Fast-recipe transforms: random crop after padding by this many pixels
  # ('reflect' or 'constant' = zero padding), and cutout of a square this
  # size (0 = off).
  config.augment.crop_padding = 0
  config.augment.crop_padding_mode = 'reflect'
  config.augment.cutout_size = 0
  # Per image, on the normalised inputs: add U(-brightness, brightness),
  # then multiply by U(1 - contrast, 1 + contrast) (0 = off).
  config.augment.brightness = 0.0
  config.augment.contrast = 0.0

  # How the machine computes the model (cifar_jax.cpu.for_platform), never
  # which model: a run may change these when it resumes on another machine.
  config.cpu = ml_collections.ConfigDict()
  # The 3x3 convs (forward and both gradients): 'auto' = the best compiled
  # kernel the CPU has, 'avx512' (AVX-512) or else 'avx2' (AVX2 with FMA)
  # (cifar_jax/cpu/conv3x3.py: Winograd's algorithm where the input
  # channels are a multiple of 16; faster than XLA's on both), and 'xla'
  # (XLA's own) on GPUs, TPUs and other CPUs.
  config.cpu.conv3x3 = 'auto'
  # 2x2 max-pooling: 'auto' = 'window_max' on CPUs (a cheaper gradient
  # there), 'reduce_window' (XLA's own) on GPUs and TPUs.
  config.cpu.pooling = 'auto'

  return config
