"""cwm_jax: the Code World Model training system in JAX/Flax."""

__version__ = "0.1.0"
