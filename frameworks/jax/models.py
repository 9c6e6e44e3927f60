"""Flax models built from the common spec.

The parameter tree is the exchange format's (``params[layer][kernel|bias]``,
HWIO kernels, NHWC flatten). Fast clipping (fastclip.py) taps the layers by
intercepting the ``nn.Conv``/``nn.Dense`` calls, so the model has no hooks.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from common.reference.exchange import Weights
from common.reference.spec import KERNEL, ModelSpec


class CNN(nn.Module):
    spec: ModelSpec
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        for layer in self.spec.layers():
            if layer.kind == "dense" and x.ndim > 2:
                x = x.reshape(x.shape[0], -1)  # NHWC flatten
            if layer.kind == "conv":
                mod = nn.Conv(layer.features, (KERNEL, KERNEL), padding="SAME", dtype=self.dtype, name=layer.name)
            else:
                mod = nn.Dense(layer.features, dtype=self.dtype, name=layer.name)
            x = mod(x)
            if layer.relu:
                x = nn.relu(x)
            if layer.kind == "conv":
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
        return x


def params_from_exchange(weights: Weights) -> dict:
    """Exchange dict -> flax params tree (same layouts, only nesting differs)."""
    tree: dict = {}
    for key, value in weights.items():
        layer, leaf = key.split("/")
        tree.setdefault(layer, {})[leaf] = jnp.asarray(value)
    return tree


def params_to_exchange(tree: dict) -> dict[str, np.ndarray]:
    return {f"{layer}/{leaf}": np.asarray(v) for layer, leaves in tree.items() for leaf, v in leaves.items()}


def param_count(tree: dict) -> int:
    return sum(int(np.prod(v.shape)) for leaves in tree.values() for v in leaves.values())


def cross_entropy(logits: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    """Per-example softmax cross-entropy (unreduced)."""
    logp = nn.log_softmax(logits)
    return -jnp.take_along_axis(logp, y[:, None], axis=1)[:, 0]
