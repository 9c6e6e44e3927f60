"""JAX tests run with the study's XLA flags (common/threads.py), set before
JAX starts its backend: with XLA:CPU's default YNNPACK fusions the medium
model's conv gradients were measured off by ~1e-2 (jax 0.10.2)."""
import os

from common.threads import JAX_XLA_FLAGS

if JAX_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {JAX_XLA_FLAGS}".strip()
