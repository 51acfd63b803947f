# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # cifar_jax: the seed notebook's ladder, in JAX
#
# A walk-through of [cifar_jax](../README.md): CIFAR-10, the seed notebook's
# baseline CNN trained and drawn beside the seed's own curves, evaluation and
# prediction, augmentation, resuming, the whole ladder of the seed at a small
# scale, and on a GPU or TPU the fast94 recipe (airbench94).
#
# Every cell calls the package's own functions, the same ones
# `python -m cifar_jax.main` runs: nothing here is a copy of the training
# loop. It runs on a laptop CPU (slowly: the baseline takes about 40 minutes
# at full length there) and on a Colab GPU or TPU runtime.

# %% tags=["parameters"]
# TINY: a few steps of everything, to check the notebook (CI runs it so).
TINY = False
# DATA: '' reads CIFAR-10 through TFDS (needs internet); or the path of an
# image folder or zip of CIFAR-10 (<split>/<class>/*.png|jpg).
DATA = ''
# Where the runs go; run the notebook again and each run continues.
WORKDIR = 'runs/walkthrough'
# The ladder's epochs, as a fraction of the seed's (at least 1 per rung).
EPOCHS_SCALE = 0.04

# %% [markdown]
# ## Set-up
#
# On Colab the first cell clones the repository and installs it, with JAX
# for the runtime's accelerator; set `REPOSITORY` to the GitHub copy this
# notebook came from. Locally, install the repository first
# (`pip install -e .` in its root) and open the notebook from there.

# %%
import os
import shutil
import subprocess
import sys

REPOSITORY = 'https://github.com/OWNER/cifar_jax'  # Colab only.
if 'google.colab' in sys.modules and not os.path.isdir('cifar_jax'):
  if os.path.exists('/dev/accel0') or 'TPU_ACCELERATOR_TYPE' in os.environ:
    extra = '[tpu]'
  elif shutil.which('nvidia-smi'):
    extra = '[cuda]'
  else:
    extra = ''
  subprocess.run(['git', 'clone', '-q', REPOSITORY, 'cifar_jax'], check=True)
  subprocess.run(
      [
          sys.executable,
          '-m',
          'pip',
          'install',
          '-q',
          '-e',
          f'./cifar_jax{extra}',
      ],
      check=True,
  )
  sys.path.insert(0, os.path.abspath('cifar_jax'))
if os.path.isdir('cifar_jax/configs'):
  os.chdir('cifar_jax')  # The configs are files of the repository.
elif os.path.basename(os.getcwd()) == 'notebooks':
  os.chdir('..')

import jax

print(f'jax {jax.__version__}: {jax.devices()}')

# %% [markdown]
# ## The data
#
# The seed trained on Keras' CIFAR-10: 50,000 training images and 10,000
# test images of 32x32 pixels in ten classes. Here the same split comes from
# TFDS, or from an image folder (`DATA`).

# %%
from cifar_jax.config import loading
from cifar_jax.data import input_pipeline
from cifar_jax.reporting import plots

if DATA:
  data_keys = {'data.name': 'image_folder', 'data.dir': DATA}
elif TINY:
  data_keys = {'data.name': 'synthetic'}  # Random images: checks, no accuracy.
else:
  data_keys = {'data.name': 'cifar10'}
config = loading.load_config('simple', data_keys)
train_data = input_pipeline.load_split(config.data, 'train')
test_data = input_pipeline.load_split(config.data, 'test')
print(f'train: {len(train_data):,} images, test: {len(test_data):,} images')
print('classes:', ', '.join(train_data.class_names))
plots.image_grid(
    train_data.images[:32],
    [train_data.class_names[i] for i in train_data.labels[:32]],
)

# %% [markdown]
# ## The seed's baseline
#
# `configs/simple.py` is the seed notebook's first model: two convolutions,
# a max-pool, dropout and a dense layer, trained with Keras 2.3's SGD for 25
# epochs (the seed reached 69.88%). `train_and_evaluate` is what
# `python -m cifar_jax.main --config configs/simple.py` runs.

# %%
from cifar_jax import train

# In TINY mode: 2 epochs of 4 steps, evaluated on 256 test images.
tiny = {'num_epochs': 2, 'steps_per_epoch': 4, 'data.eval_split': 'test[:256]'}
overrides = {**data_keys, **(tiny if TINY else {})}
config = loading.load_config('simple', overrides)
state, history = train.train_and_evaluate(config, f'{WORKDIR}/simple')

# %% [markdown]
# Its curves, with the seed notebook's own (dashed) for the same epochs:

# %%
from cifar_jax.reporting import seed_notebook

plots.curves_figure(
    history, 'simple', seed_notebook.reference('simple', len(history))
)

# %% [markdown]
# ## Evaluate and predict
#
# `evaluate` reloads the run's checkpoint, as
# `python -m cifar_jax.evaluate --workdir ...` does: accuracy, loss, the
# accuracy of each class and the confusion matrix.

# %%
from cifar_jax.runs import evaluation

result = evaluation.evaluate(f'{WORKDIR}/simple', checkpoint='best')
plots.confusion_matrix_figure(result['confusion'], train_data.class_names)

# %% [markdown]
# A few test images with the model's three most likely classes (green: the
# true class is the first):

# %%
from cifar_jax.runs import inference

run = inference.load_run(f'{WORKDIR}/simple')
probabilities = inference.probabilities(run, test_data.images[:8])
plots.predictions_figure(
    test_data.images[:8], probabilities, run.class_names, test_data.labels[:8]
)

# %% [markdown]
# ## Augmentation
#
# The later rungs train on augmented images, transformed on the device as
# Keras' `ImageDataGenerator` would: each row is a training image, then
# six random views of it.

# %%
from cifar_jax.reporting import augment_views

config = loading.load_config('deep_adam_aug', data_keys)
augment_views.figure(config, num_images=4, num_views=6)

# %% [markdown]
# ## Resuming
#
# A run keeps Orbax checkpoints in its folder. Stop a cell while it trains
# (the interrupt saves a checkpoint first) and run it again: it continues
# where it stopped, as it would after a preempted cloud machine. Asking a
# finished run for more epochs continues it the same way:

# %%
config = loading.load_config(
    'simple', {**overrides, 'num_epochs': len(history) + 1}
)
state, history = train.train_and_evaluate(config, f'{WORKDIR}/simple')

# %% [markdown]
# ## The ladder
#
# Every rung of the seed notebook, in order, at `EPOCHS_SCALE` of its
# length, beside the seed's numbers (deep_adam_aug continues deep_adam, as
# in the seed). `python -m cifar_jax.ladder` runs the same.

# %%
from IPython.display import Markdown

from cifar_jax import rungs

ladder_overrides = dict(data_keys)
if TINY:  # One epoch of 2 steps per rung.
  ladder_overrides |= {
      'num_epochs': 1,
      'steps_per_epoch': 2,
      'data.eval_split': 'test[:128]',
  }
rungs.run_ladder(
    list(rungs.RUNGS),
    EPOCHS_SCALE,
    ladder_overrides,
    root=f'{WORKDIR}/ladder',
    command='notebooks/walkthrough.ipynb',
)
with open(f'{WORKDIR}/ladder/REPORT.md') as f:
  report = f.read()
Markdown(report.split('\n## ')[0])  # The summary table; the rest is per rung.

# %% [markdown]
# ## fast94 on a GPU or TPU
#
# `configs/fast94.py` is airbench94, the recipe of the CIFAR-10 speed record
# at 94%: about 10 epochs, seconds on a GPU. On a CPU it takes most of an
# hour, so this cell runs only on an accelerator.

# %%
if jax.default_backend() == 'cpu':
  print('fast94: skipped on a CPU (about an hour on 2 cores); run it on a GPU.')
else:
  config = loading.load_config('fast94', data_keys)
  _, fast_history = train.train_and_evaluate(config, f'{WORKDIR}/fast94')
