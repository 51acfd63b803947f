"""A small learnable data set: noisy, shifted copies of 10 class patterns.

The class patterns are fixed (independent of the run's seed), so a train
and an eval split made with different seeds share them.
"""

import numpy as np

# Examples made at a time: float64 work arrays of this many stay small.
_CHUNK = 1024


def make(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """`size` examples, made in chunks: the memory beyond the result stays
  small, and a size whose result cannot fit fails at once (MemoryError)."""
  patterns = np.random.default_rng(1234).uniform(0, 255, (10, 8, 8, 3))
  patterns = patterns.repeat(4, axis=1).repeat(4, axis=2)  # 32x32 blocks.
  images = np.empty((size, *patterns.shape[1:]), np.uint8)
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, size).astype(np.int32)
  shifts = rng.integers(-2, 3, (size, 2))
  # The noise is drawn chunk after chunk: the same stream as in one draw.
  for start in range(0, size, _CHUNK):
    end = min(start + _CHUNK, size)
    chunk = np.stack(
        [
            np.roll(patterns[label], tuple(shift), axis=(0, 1))
            for label, shift in zip(labels[start:end], shifts[start:end])
        ]
    )
    chunk = chunk + rng.normal(0, 48, chunk.shape)
    images[start:end] = np.clip(chunk, 0, 255).astype(np.uint8)
  return images, labels
