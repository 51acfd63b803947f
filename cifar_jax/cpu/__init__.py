"""CPU speed-ups, behind one seam: `for_platform`.

- `kernels`: the seam: `for_platform` chooses, once per run, which
  implementation computes a model's 3x3 convolutions, max-pools and dropout,
  the compiler options and the dispatch default (a `Platform`);
- `conv3x3` (+ `conv3x3.cc`): AVX-512 / AVX2 kernels of 3x3 convolutions,
  as XLA FFI calls; `ffi_build`: compiling and caching them;
- `pooling`: a 2x2 max-pool with a cheap gradient on XLA:CPU;
- `dropout`: dropout's random bits, fused and hashed once;
- `xla_cpu`: XLA:CPU compiler options.

Nothing here changes what a model computes beyond float rounding. The rest
of the package uses `cpu.for_platform` only. Imports:
`cpu_info`.
"""

from cifar_jax.cpu.kernels import for_platform
from cifar_jax.cpu.kernels import Platform
