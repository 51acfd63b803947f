"""cifar_jax: the seed's CIFAR-10 ladder and modern recipes in JAX/Flax."""
