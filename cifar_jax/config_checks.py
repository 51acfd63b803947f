"""The config's values checked in one place, before anything is loaded.

A negative batch size used to hang, a zero one to crash deep inside the
loop, and `num_epochs=0` to exit 0 having trained nothing. Every key of
configs/default.py (and FastNet's model keys) has a rule here; `check`
reports every value that breaks one, in a single line.
"""

from collections.abc import Callable, Sequence
from typing import Any

import ml_collections

from cifar_jax import seed_notebook
from cifar_jax.errors import UserError

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
  return (
      lambda v: _is_int(v) and v >= low and (high is None or v <= high),
      text,
  )


def real(
    low: float,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> Rule:
  """A number in the interval from low to high (open ends as asked)."""

  def ok(v):
    if not _is_real(v):
      return False
    above = v > low if low_open else v >= low
    below = high is None or (v < high if high_open else v <= high)
    return above and below

  if high is None:
    text = f'a number {">" if low_open else ">="} {low}'
  else:
    text = (
        f'a number in {"(" if low_open else "["}{low}, {high}'
        f'{")" if high_open else "]"}'
    )
  return ok, text


def one_of(*values: Any) -> Rule:
  return (lambda v: v in values, f'one of {", ".join(map(repr, values))}')


def each(rule: Rule) -> Rule:
  """A non-empty tuple whose every item follows `rule`."""
  ok, text = rule
  return (
      lambda v: isinstance(v, (tuple, list))
      and len(v) > 0
      and all(ok(x) for x in v),
      f'a non-empty tuple, each {text}',
  )


FRACTION = real(0, 1, high_open=True)  # Dropout, label smoothing, shifts.
POSITIVE = real(0, low_open=True)
NON_NEGATIVE = real(0)
BOOL = (lambda v: isinstance(v, bool), 'true or false')

COMMON: dict[str, Rule] = {
    'data.name': (
        lambda v: isinstance(v, str) and bool(v),
        "a data set name ('cifar10', 'image_folder', 'synthetic' "
        'or another TFDS name)',
    ),
    'data.train_split': (
        lambda v: isinstance(v, str) and bool(v),
        'a split name',
    ),
    'data.eval_split': (
        lambda v: isinstance(v, str) and bool(v),
        'a split name',
    ),
    'data.synthetic_train_size': integer(1),
    'data.synthetic_eval_size': integer(1),
    'data.mean': (
        lambda v: isinstance(v, (tuple, list))
        and len(v) in (0, 3)
        and all(_is_real(x) for x in v),
        'a tuple of 3 numbers (one per channel), or () for none',
    ),
    'data.std': (
        lambda v: isinstance(v, (tuple, list))
        and len(v) in (0, 3)
        and all(_is_real(x) and x > 0 for x in v),
        'a tuple of 3 positive numbers (one per channel), or () for none',
    ),
    'batch_size': integer(1, 2**31 - 1),  # Batch indices are int32.
    'eval_batch_size': integer(1, 2**31 - 1),
    'num_epochs': POSITIVE,
    'drop_remainder': BOOL,
    'steps_per_epoch': integer(0),
    'steps_per_dispatch': integer(0),
    'seed': integer(0, 2**32 - 1),
    'checkpoint_every_steps': integer(0),
    'keep_checkpoints': integer(1),
    'seed_rung': one_of('', *seed_notebook.rungs()),
    'label_smoothing': FRACTION,
    'eval_tta': integer(0, 2),
    'whitening.images': integer(0),
    'whitening.epsilon': POSITIVE,
    'model.name': one_of('ConvNet', 'FastNet'),
    'model.num_classes': integer(2),
    'model.compute_dtype': one_of('float32', 'bfloat16'),
    'model.pooling': one_of('auto', 'reduce_window', 'window_max'),
    'model.conv3x3': one_of('auto', 'xla', 'avx512', 'avx2'),
    'optimizer.name': one_of('sgd', 'adam', 'fast_sgd'),
    'optimizer.learning_rate': POSITIVE,
    'optimizer.conv_max_norm': NON_NEGATIVE,
    'optimizer.hidden_max_norm': NON_NEGATIVE,
    'optimizer.momentum': FRACTION,
    'optimizer.decay': NON_NEGATIVE,
    'optimizer.beta1': FRACTION,
    'optimizer.beta2': FRACTION,
    'optimizer.epsilon': POSITIVE,
    'optimizer.weight_decay': NON_NEGATIVE,
    'optimizer.bias_lr_scale': POSITIVE,
    'optimizer.whiten_bias_epochs': integer(0),
    'optimizer.schedule_start': NON_NEGATIVE,
    'optimizer.schedule_peak': real(0, 1),
    'optimizer.schedule_end': NON_NEGATIVE,
    'optimizer.lookahead_every': integer(0),
    'optimizer.lookahead_decay': real(0, 1),
    'augment.horizontal_flip': BOOL,
    'augment.flip_mode': one_of('random', 'alternating'),
    'augment.width_shift_range': FRACTION,
    'augment.height_shift_range': FRACTION,
    'augment.zoom_range': FRACTION,
    'augment.crop_padding': integer(0, 31),
    'augment.crop_padding_mode': one_of('reflect', 'constant'),
    'augment.cutout_size': integer(0, 32),
}
MODEL: dict[str, dict[str, Rule]] = {
    'ConvNet': {
        'model.stage_features': each(integer(1)),
        'model.second_conv_padding': each(one_of('SAME', 'VALID')),
        'model.conv_dropout': each(FRACTION),
        'model.stage_dropout': each(FRACTION),
        'model.batch_norm': BOOL,
        'model.hidden_features': (
            lambda v: isinstance(v, (tuple, list))
            and all(_is_int(x) and x >= 1 for x in v),
            'a tuple, each an integer >= 1',
        ),
        'model.flatten_dropout': FRACTION,
        'model.hidden_dropout': FRACTION,
    },
    'FastNet': {
        'model.widths': each(integer(1)),
        'model.block_depth': integer(1),
        'model.residual': BOOL,
        'model.whiten_patch': integer(1),
        'model.bn_momentum': FRACTION,
        'model.bn_epsilon': POSITIVE,
        'model.logit_scale': POSITIVE,
        'model.gelu': one_of('exact', 'tanh'),
    },
}
# Paths and names checked where they are used (data, checkpoints).
FREE_FORM = ('data.dir', 'data.cache_dir', 'init_from')
# ConvNet's per-stage tuples: one entry per stage.
_PER_STAGE = (
    'model.second_conv_padding',
    'model.conv_dropout',
    'model.stage_dropout',
)


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
  node = config
  for part in key.split('.'):
    node = node[part]
  return node


def _has(config: ml_collections.ConfigDict, key: str) -> bool:
  node = config
  for part in key.split('.'):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return False
    node = node[part]
  return True


def problems(config: ml_collections.ConfigDict) -> list[str]:
  """'key=value must be ...' for every value that breaks its rule."""
  rules = dict(COMMON)
  if _has(config, 'model.name'):
    rules.update(MODEL.get(_get(config, 'model.name'), {}))
  found = []
  for key, (ok, text) in rules.items():
    if _has(config, key):
      value = _get(config, key)
      if not ok(value):
        found.append(f'{key}={value!r} must be {text}')
  if not found and _get(config, 'model.name') == 'ConvNet':
    stages = len(config.model.stage_features)
    found += [
        f'{key} has {len(_get(config, key))} entries for '
        f'{stages} stages (model.stage_features)'
        for key in _PER_STAGE
        if len(_get(config, key)) != stages
    ]
  return found


def check(config: ml_collections.ConfigDict) -> None:
  """Raises UserError naming every bad value of `config`."""
  found = problems(config)
  if found:
    raise UserError('bad config: ' + '; '.join(found) + '.')


def ruled_keys() -> Sequence[str]:
  """Every key with a rule, and the free-form ones that need none."""
  keys = list(COMMON) + list(FREE_FORM)
  for model_rules in MODEL.values():
    keys += model_rules
  return keys
