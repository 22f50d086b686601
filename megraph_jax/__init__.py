"""megraph-jax: ME-GraphAU in JAX/Flax NNX."""

__version__ = "0.1.0"
