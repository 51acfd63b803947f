"""cifar_jax: the seed's CIFAR-10 ladder and modern recipes in JAX/Flax."""

from cifar_jax import xla_cpu as _xla_cpu

# Before any JAX backend starts: the CPU flags are read only then.
_xla_cpu.apply_defaults()
