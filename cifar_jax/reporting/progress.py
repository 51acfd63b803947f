"""Keras-style console output: a progress bar with ETA, one line per epoch.

The seed's users read training through these lines, so we keep their shape:
  1563/1563 [==============================] - ETA: 0s - loss: 1.71 - ...
  Epoch 3/25 - 12s - loss: 1.1908 - accuracy: 0.5754 - val_loss: ...
On a terminal the bar redraws in place; in a log file it is written as a
plain line at most every `log_interval` seconds, so logs stay readable.
Reading metrics forces a device sync, so callers ask `due()` first.
"""

import sys
import time
from typing import TextIO


def format_metrics(metrics: dict[str, float]) -> str:
  return ' - '.join(f'{k}: {v:.4f}' for k, v in metrics.items())


def epoch_line(
    epoch: int, num_epochs: float, seconds: float, metrics: dict[str, float]
) -> str:
  """'Epoch 3/25 - 12s - loss: 1.1908 - ...' (epoch counted from 1; 9.9
  epochs read 9.9, 25.0 read 25)."""
  return (
      f'Epoch {epoch}/{num_epochs:g} - {seconds:.0f}s - '
      f'{format_metrics(metrics)}'
  )


class ProgressBar:
  """The bar of one epoch of `total` steps."""

  def __init__(
      self,
      total: int,
      out: TextIO = sys.stdout,
      interval: float = 0.5,
      log_interval: float = 30.0,
      width: int = 30,
  ):
    self.total = total
    self.out = out
    self.tty = out.isatty()
    self.interval = interval if self.tty else log_interval
    self.width = width
    self._last = time.monotonic()
    self._base: tuple[float, int] | None = None  # See `mark`.
    self._drawn = False

  @property
  def marked(self) -> bool:
    return self._base is not None

  def mark(self, done: int) -> None:
    """Times steps from here, `done` of `total` steps done: the first
    step's one-off costs (a restored state's first use, a first run of a
    compiled program) would otherwise count as a step in the ETA."""
    self._base = (time.monotonic(), done)

  def due(self) -> bool:
    """Whether enough time has passed that the bar should be redrawn."""
    return time.monotonic() - self._last >= self.interval

  def update(self, done: int, metrics: dict[str, float]) -> None:
    """Draws the bar after `done` of `total` steps."""
    now = time.monotonic()
    self._last = now
    since, base = self._base or (now, done)
    rate = (now - since) / (done - base) if done > base else None
    speed = '?' if rate is None else f'{rate * 1000:.0f}'
    eta = '?' if rate is None else f'{rate * (self.total - done):.0f}'

    filled = int(self.width * done / self.total)
    arrow = '>' if done < self.total else '='
    bar = '=' * max(filled - 1, 0) + arrow * (filled > 0)
    bar = bar.ljust(self.width, '.')
    digits = len(str(self.total))
    line = (
        f'{done:>{digits}}/{self.total} [{bar}] - ETA: {eta}s - '
        f'{speed}ms/step - {format_metrics(metrics)}'
    )
    if self.tty:
      self.out.write('\r' + line + '\x1b[K')
      self._drawn = True
    elif done < self.total:  # In a log, the epoch line ends the epoch.
      self.out.write(line + '\n')
    self.out.flush()

  def close(self) -> None:
    """Erases the bar, so the epoch line can take its place."""
    if self._drawn:
      self.out.write('\r\x1b[K')
      self.out.flush()
