"""JAX adapter: flax models, standard / jax-privacy / fastclip steps."""
from frameworks.jax.adapter import JaxAdapter

ADAPTER = JaxAdapter()
