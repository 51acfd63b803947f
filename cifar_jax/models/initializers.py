"""Initialisation of the fast recipes: the whitening convolution, Dirac kernels.

airbench (arXiv 2404.00498) starts its network with a convolution that
whitens the input patches (`whitening`), so training starts from
decorrelated features instead of spending epochs learning them; the
convolutions after it start as identity maps (`dirac_init`).
"""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np


def patches(images: np.ndarray, size: int) -> np.ndarray:
  """Every size x size patch ('valid'), flattened in (h, w, c) order."""
  c = images.shape[-1]
  windows = np.lib.stride_tricks.sliding_window_view
  # (n, h-size+1, w-size+1, c, size, size) -> (..., size, size, c).
  views = np.moveaxis(windows(images, (size, size), axis=(1, 2)), 3, -1)
  return views.reshape(-1, size * size * c)


def whitening(
    images: np.ndarray, size: int, epsilon: float, decomposition: str = 'eigh'
) -> tuple[np.ndarray, np.ndarray]:
  """(kernel, bias) of a conv that whitens `images`' size x size patches.

  As airbench's `init_whitening_conv`: the eigenvectors of the patches'
  second moment X^T X / n (not centred: the images are standardised per
  channel already), each over sqrt(eigenvalue + epsilon), largest first,
  then the same filters negated (a ReLU-like activation after them then
  loses nothing); the bias starts at zero.

  `images`: (n, h, w, c) floats as the model sees them; `epsilon` keeps
  near-constant directions from blowing up; `decomposition` 'svd' finds
  the eigenvectors as hiverge's record does. The kernel is (size, size, c,
  2 * size * size * c) = [W, -W].
  """
  x = patches(np.asarray(images, np.float64), size)
  moments = x.T @ x / len(x)
  if decomposition == 'svd':  # The same vectors (up to sign), largest first.
    eigenvectors, eigenvalues, _ = np.linalg.svd(moments)
  else:
    eigenvalues, eigenvectors = np.linalg.eigh(moments)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, eigenvectors = eigenvalues[order], eigenvectors[:, order]
  w = eigenvectors / np.sqrt(eigenvalues + epsilon)
  w = np.concatenate([w, -w], axis=1)
  c = images.shape[-1]
  kernel = w.reshape(size, size, c, -1)
  return kernel, np.zeros(w.shape[1])  # float64: the params take their dtype.


def dirac_init(
    base: nn.initializers.Initializer = nn.initializers.variance_scaling(
        1 / 3, 'fan_in', 'uniform'
    )
) -> nn.initializers.Initializer:
  """`base`, with the first min(in, out) filters made identity maps.

  A deep stack of convolutions then starts close to passing its input
  through, which lets the fast recipes use large learning rates at once.
  """

  def init(key, shape, dtype=jnp.float32):
    kernel = base(key, shape, dtype)
    kh, kw, cin, cout = shape
    n = min(cin, cout)
    identity = jnp.zeros((kh, kw, n, n), dtype)
    identity = identity.at[kh // 2, kw // 2].set(jnp.eye(n, dtype=dtype))
    return kernel.at[:, :, :n, :n].set(identity)

  return init
