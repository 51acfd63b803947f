"""XLA:CPU compiler options that make the seed's CNNs train fast on a CPU.

jaxlib 0.10 to 0.12 hand every convolution to YNNPACK, whose kernel gradient
of a 3x3 conv ran 3-5x slower than XLA's own (Eigen) on a 2-core AVX2 EPYC;
the large rung's step was 2.7x slower (benchmarks/cpu_vs_keras.py). We keep
YNNPACK's other fusions and take convolutions off it, which changes results
only by float rounding (tests/xla_cpu_test.py).

The options go to each program we compile (`jax.jit(...,
compiler_options=compiler_options(platform))`), not to XLA_FLAGS: importing
cifar_jax changes nothing in the process, a notebook that trains through
`train.train_and_evaluate` gets them as the command line does, and GPU/TPU
programs are compiled exactly as before.
"""

import functools
import logging
import os
from collections.abc import Mapping

import jax
import numpy as np

# DebugOptions field: the fusions XLA:CPU hands to YNNPACK.
YNN_FUSION_TYPE = 'xla_cpu_experimental_ynn_fusion_type'
# jaxlib 0.10-0.12's default set (DOT, REDUCE, INDIVIDUAL_DOT and
# INDIVIDUAL_CONVOLUTION) less the convolutions; XLA_FLAGS'
# `--xla_cpu_experimental_ynn_fusion_type=-individual_convolution` compiles
# the same programs.
YNN_FUSIONS_WITHOUT_CONVOLUTIONS = ','.join(
    f'LIBRARY_FUSION_TYPE_{name}'
    for name in ('DOT', 'REDUCE', 'INDIVIDUAL_DOT')
)
# Set to 1 to compile with XLA's own defaults (e.g. to measure them).
OPT_OUT = 'CIFAR_JAX_KEEP_XLA_FLAGS'


def compiler_options(
    platform: str, environ: Mapping[str, str] = os.environ
) -> dict[str, str]:
  """The compiler options for a program compiled for `platform`.

  Empty off the CPU, under OPT_OUT, where the user's XLA_FLAGS set the
  option themselves (theirs wins), and with a jaxlib that no longer knows
  the option (it then logs why, once).
  """
  if platform != 'cpu' or environ.get(OPT_OUT, '') not in ('', '0'):
    return {}
  user_flags = {
      item.split('=', 1)[0].lstrip('-')
      for item in environ.get('XLA_FLAGS', '').split()
  }
  if YNN_FUSION_TYPE in user_flags:
    return {}
  options = {YNN_FUSION_TYPE: YNN_FUSIONS_WITHOUT_CONVOLUTIONS}
  return options if _accepted(tuple(options.items())) else {}


@functools.cache
def _accepted(options: tuple[tuple[str, str], ...]) -> bool:
  """Whether this jaxlib's XLA:CPU compiles with `options` (a tiny program)."""
  x = jax.device_put(np.float32(1), jax.devices('cpu')[0])
  try:
    jax.jit(lambda v: v + 1, compiler_options=dict(options)).lower(x).compile()
    return True
  except jax.errors.JaxRuntimeError as e:
    logging.warning(
        'This jaxlib refuses the XLA:CPU options %s (%s); CPU '
        "programs compile with XLA's defaults.",
        options,
        e,
    )
    return False
