"""XLA:CPU settings that make the seed's CNNs train fast on a CPU.

Measured with benchmarks/cpu_vs_keras.py (README, "CPU speed"): jaxlib 0.10
hands every convolution to YNNPACK, whose kernel gradient of a 3x3 conv ran
3-5x slower than Eigen's on a 2-core AVX2 EPYC, and it made the large
rung's step 2.7x slower. Turning YNNPACK off for convolutions alone (its matmuls stay)
changes results only by float rounding (tests/xla_cpu_test.py).

The flags are read once, when JAX starts its CPU backend, so
`cifar_jax/__init__.py` applies them at import. They only touch XLA:CPU:
GPU and TPU programs are compiled as before.
"""

import logging
import os
from collections.abc import MutableMapping

# flag -> value. A flag the user already set in XLA_FLAGS is left as it is.
CPU_FLAGS = {'--xla_cpu_experimental_ynn_fusion_type': '-individual_convolution'}
# Set to 1 to leave XLA_FLAGS alone (e.g. to measure XLA's own defaults).
OPT_OUT = 'CIFAR_JAX_KEEP_XLA_FLAGS'


def apply_defaults(environ: MutableMapping[str, str] = os.environ
                   ) -> list[str]:
  """Adds `CPU_FLAGS` the user has not set to XLA_FLAGS; returns them.

  Too late once JAX has started a backend: then it only logs a warning.
  """
  if environ.get(OPT_OUT, '') not in ('', '0'):
    return []
  current = environ.get('XLA_FLAGS', '')
  set_by_user = {item.split('=', 1)[0] for item in current.split()}
  added = [f'{flag}={value}' for flag, value in CPU_FLAGS.items()
           if flag not in set_by_user]
  if not added:
    return []
  if _backend_started():
    logging.warning('JAX started before cifar_jax was imported, so XLA:CPU '
                    'runs without %s (slower CPU training); import cifar_jax '
                    'first or set XLA_FLAGS yourself.', ' '.join(added))
    return []
  environ['XLA_FLAGS'] = ' '.join([current, *added]).strip()
  return added


def _backend_started() -> bool:
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    return xla_bridge.backends_are_initialized()
  except (ImportError, AttributeError):  # A JAX without it: assume not.
    return False
