"""CPU speed-ups, behind one seam: `kernels.Kernels`.

- `kernels`: the seam: which implementation computes a model's 3x3
  convolutions, max-pools and dropout, chosen once for the platform;
- `conv3x3` (+ `conv3x3.cc`): AVX-512 / AVX2 kernels of 3x3 convolutions,
  as XLA FFI calls; `ffi_build`: compiling and caching them;
- `pooling`: a 2x2 max-pool with a cheap gradient on XLA:CPU;
- `dropout`: dropout's random bits, fused and hashed once;
- `xla_cpu`: XLA:CPU compiler options; `cpu_info`: the CPU's flags.

Nothing here changes what a model computes beyond float rounding. Imports:
`rules` only.
"""
