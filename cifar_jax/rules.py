"""Every config key's rule: which values it allows, in words.

A rule is a test and the words for what it allows. The sections' rules
are here, below everything that reads them and free of JAX, so that a
command refuses a bad config in one line before JAX or the data loads
(`training.checks`); each module built from a section checks it again with
the same rules (`check`), for the callers that skip the commands.
"""

from collections.abc import Callable, Mapping
import functools
import math
import re
from typing import Any

Rule = tuple[Callable[[Any], bool], str]


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def integer(low: int, high: int | None = None) -> Rule:
  """An integer in [low, high]."""
  text = (
      f'an integer >= {low}'
      if high is None
      else f'an integer from {low} to {high}'
  )
  ok = lambda v: _is_int(v) and v >= low and (high is None or v <= high)
  return ok, text


def real(
    low: float,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> Rule:
  """A number in the interval from low to high (open ends as asked)."""

  def ok(v):
    if not _is_real(v) or not math.isfinite(v):
      return False
    above = v > low if low_open else v >= low
    below = high is None or (v < high if high_open else v <= high)
    return above and below

  if high is None:
    return ok, f'a number {">" if low_open else ">="} {low}'
  left, right = '(' if low_open else '[', ')' if high_open else ']'
  return ok, f'a number in {left}{low}, {high}{right}'


def one_of(*values: Any) -> Rule:
  return (lambda v: v in values, f'one of {", ".join(map(repr, values))}')


def each(rule: Rule, *, empty: bool = False, length: int | None = None) -> Rule:
  """A tuple whose every item follows `rule`: non-empty unless `empty`,
  and of `length` items (or empty, where `empty`) if given."""
  ok, text = rule

  def test(v):
    if not isinstance(v, (tuple, list)) or not all(ok(x) for x in v):
      return False
    if not v:
      return empty
    return length is None or len(v) == length

  size = f'a tuple of {length} items' if length else 'a non-empty tuple'
  return test, f'{size}, each {text}' + (', or ()' if empty else '')


TEXT = (lambda v: isinstance(v, str) and bool(v), 'a non-empty string')
FRACTION = real(0, 1, high_open=True)  # Dropout, label smoothing, shifts.
POSITIVE = real(0, low_open=True)
NON_NEGATIVE = real(0)
BOOL = (lambda v: isinstance(v, bool), 'true or false')


def problems(
    values: Mapping[str, Any], rules: Mapping[str, Rule], prefix: str = ''
) -> list[str]:
  """'prefix+key=value must be ...' for each value that breaks its rule
  (keys `values` lacks are not checked)."""
  found = []
  for key, (ok, text) in rules.items():
    if key in values and not ok(values[key]):
      found.append(f'{prefix}{key}={values[key]!r} must be {text}')
  return found


def check(
    values: Mapping[str, Any], rules: Mapping[str, Rule], prefix: str = ''
) -> None:
  """Raises ValueError naming every value of `values` that breaks a rule."""
  found = problems(values, rules, prefix)
  if found:
    raise ValueError('; '.join(found))


# The named choices, each matched by its code (tests/rules_test.py).
IMAGE_SIDE = 32  # data/images.py's SHAPE.
FLIP_MODES = ('random', 'alternating')  # data/augment.py
PADDING_MODES = ('reflect', 'constant')  # np.pad's.
MODELS = ('ConvNet', 'FastNet')  # models/
COMPUTE_DTYPES = ('float32', 'bfloat16')
PADDINGS = ('SAME', 'VALID')  # Flax's conv paddings.
GELUS = ('exact', 'tanh')  # models/fastnet.py
ACTIVATIONS = ('gelu', 'silu')  # models/fastnet.py
HEAD_INITS = ('uniform', 'unit_std')  # models/fastnet.py
OPTIMIZERS = ('sgd', 'adam', 'fast_sgd', 'muon')  # training/optimizers.py
CONV3X3 = ('xla', 'avx512', 'avx2')  # cpu/conv3x3.py
POOLING = ('reduce_window', 'window_max')  # cpu/pooling.py

# The top of a config: the loop's keys (cifar_jax.train, `experiment`).
LOOP = {
    'batch_size': integer(1, 2**31 - 1),  # Batch indices are int32.
    'eval_batch_size': integer(1, 2**31 - 1),
    'num_epochs': POSITIVE,
    'drop_remainder': BOOL,
    'shuffle_batch_order': BOOL,
    'steps_per_epoch': integer(0),
    'steps_per_dispatch': integer(0),
    'seed': integer(0, 2**32 - 1),
    'label_smoothing': FRACTION,
    'eval_tta': integer(0, 2),
    'eval_tta_weights': one_of('airbench', 'uniform'),
    'eval_tta_share': real(0, 1, low_open=True),
    'checkpoint_every_steps': integer(0),
    'keep_checkpoints': integer(1),
    'init_from_optimizer': BOOL,
}
# `data.mean` and `data.std`: a value per RGB channel, or none.
NORMALIZATION = {
    'mean': each(real(float('-inf')), empty=True, length=3),
    'std': each(POSITIVE, empty=True, length=3),
}


# `data`; `dir` and `cache_dir` are checked where they are read.
def _data_set(name: Any) -> bool:
  """One of ours, or a data set TFDS knows ('name' or 'name/config:1.0')."""
  if name in ('cifar10', 'image_folder', 'synthetic'):
    return True
  if not isinstance(name, str) or not name:
    return False
  known = _tfds_names()
  return known is None or re.split('[/:]', name)[0] in known


@functools.cache
def _tfds_names() -> frozenset[str] | None:
  """The data sets TFDS knows (a second, once; only for a name not ours),
  None without TFDS: the name is then refused where the data is read."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return frozenset(tfds.list_builders(with_community_datasets=False))


DATA = {
    'name': (
        _data_set,
        "a data set name ('cifar10', 'image_folder', 'synthetic' or another "
        'TFDS name)',
    ),
    'train_split': (TEXT[0], 'a split name'),
    'eval_split': (TEXT[0], 'a split name'),
    'synthetic_train_size': integer(1),
    'synthetic_eval_size': integer(1),
    **NORMALIZATION,
}
DATA_FREE_FORM = ('dir', 'cache_dir')
WHITENING = {
    'images': integer(0),
    'epsilon': POSITIVE,
    'decomposition': one_of('eigh', 'svd'),
}
AUGMENT = {
    'horizontal_flip': BOOL,
    'flip_mode': one_of(*FLIP_MODES),
    'width_shift_range': FRACTION,
    'height_shift_range': FRACTION,
    'zoom_range': FRACTION,
    'crop_padding': integer(0, 31),
    'crop_padding_mode': one_of(*PADDING_MODES),
    'cutout_size': integer(0, 32),
    'brightness': NON_NEGATIVE,
    'contrast': FRACTION,
}
# `model`: every model's keys, then each model's own.
MODEL = {
    'name': one_of(*MODELS),
    'num_classes': integer(2),
    'compute_dtype': one_of(*COMPUTE_DTYPES),
}
CONVNET = {
    'stage_features': each(integer(1)),
    'second_conv_padding': each(one_of(*PADDINGS)),
    'conv_dropout': each(FRACTION),
    'stage_dropout': each(FRACTION),
    'batch_norm': BOOL,
    'hidden_features': each(integer(1), empty=True),
    'flatten_dropout': FRACTION,
    'hidden_dropout': FRACTION,
}
FASTNET = {
    'widths': each(integer(1)),
    'block_depth': integer(1),
    'residual': BOOL,
    'whiten_patch': integer(1),
    'bn_momentum': FRACTION,
    'bn_epsilon': POSITIVE,
    'logit_scale': POSITIVE,
    'gelu': one_of(*GELUS),
    'activation': one_of(*ACTIVATIONS),
    'head_init': one_of(*HEAD_INITS),
}
_PER_STAGE = ('second_conv_padding', 'conv_dropout', 'stage_dropout')


def _convnet_shapes(values: Mapping[str, Any]) -> list[str]:
  """Per-stage keys (relative to `model`) whose length is not the stages',
  or the first stage whose input is too small for its convs and pool."""
  stages = len(values['stage_features'])
  found = [
      f'model.{key} has {len(values[key])} entries for {stages} stages '
      '(model.stage_features)'
      for key in _PER_STAGE
      if len(values[key]) != stages
  ]
  side = IMAGE_SIDE
  for stage, padding in enumerate(values['second_conv_padding'][:stages]):
    after_convs = side - 2 if padding == 'VALID' else side
    if after_convs < 2:
      return found + [
          f'model.stage_features has {stages} stages, but stage '
          f'{stage + 1} gets {side}x{side} inputs, too small for its '
          f'{padding} conv and 2x2 max-pool; use fewer stages'
      ]
    side = after_convs // 2
  return found


def _fastnet_shapes(values: Mapping[str, Any]) -> list[str]:
  """The first block (or the whitening) whose input is too small."""
  side = IMAGE_SIDE - values['whiten_patch'] + 1
  if side < 1:
    return [
        f'model.whiten_patch={values["whiten_patch"]} is larger than the '
        f'{IMAGE_SIDE}x{IMAGE_SIDE} images'
    ]
  for block in range(len(values['widths'])):
    if side < 2:
      return [
          f'model.widths has {len(values["widths"])} blocks, but block '
          f'{block + 1} gets {side}x{side} inputs, too small for its 2x2 '
          'max-pool; use fewer blocks'
      ]
    side //= 2
  return []


# Each model's keys, and the check of its shapes once they pass.
EACH_MODEL = {'ConvNet': CONVNET, 'FastNet': FASTNET}
_SHAPES = {'ConvNet': _convnet_shapes, 'FastNet': _fastnet_shapes}


def model_problems(model: Mapping[str, Any]) -> list[str]:
  """What breaks the model's own rules, else its shapes' problems."""
  own = EACH_MODEL.get(model.get('name'), {})
  found = problems(model, own, 'model.')
  if found or model.get('name') not in _SHAPES:
    return found
  return _SHAPES[model['name']]({k: model[k] for k in own})


OPTIMIZER = {
    'name': one_of(*OPTIMIZERS),
    'learning_rate': POSITIVE,
    'conv_max_norm': NON_NEGATIVE,
    'hidden_max_norm': NON_NEGATIVE,
    'momentum': FRACTION,
    'decay': NON_NEGATIVE,
    'beta1': FRACTION,
    'beta2': FRACTION,
    'epsilon': POSITIVE,
    'weight_decay': NON_NEGATIVE,
    'bias_lr_scale': POSITIVE,
    'whiten_bias_epochs': NON_NEGATIVE,
    'schedule_start': NON_NEGATIVE,
    'schedule_peak': real(0, 1),
    'schedule_end': NON_NEGATIVE,
    'lookahead_every': integer(0),
    'lookahead_decay': real(0, 1),
    'muon_momentum': FRACTION,
    'bias_learning_rate': POSITIVE,
    'head_learning_rate': POSITIVE,
    'muon_weight_decay': NON_NEGATIVE,
    'ns_coefficients': each(real(float('-inf')), length=3),
    'ns_steps': integer(1),
    'ns_epsilon': POSITIVE,
    'ns_magnitude': each(POSITIVE, empty=True, length=2),
    'normalize_every': integer(1),
    'normalize_every_growth': NON_NEGATIVE,
    'normalize_epsilon': NON_NEGATIVE,
}
# `cpu`: which implementations compute the model, never which model.
CPU = {'conv3x3': one_of('auto', *CONV3X3), 'pooling': one_of('auto', *POOLING)}
