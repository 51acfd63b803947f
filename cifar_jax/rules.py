"""The vocabulary of config rules: which values a key allows, in words.

A rule is a test and the words for what it allows. Each module that reads
config values defines its keys' rules beside its code (a `RULES` dict, keys
relative to its config section) and checks them itself where it is built
from a config (`check`); `training.checks` collects every module's rules to
check a whole config once, up front, in one line.
"""

from collections.abc import Callable, Mapping
import math
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
