"""Flax models built from the common spec.

The parameter tree is the exchange format's (``params[layer][kernel|bias|scale]``,
HWIO kernels, NHWC flatten; flax's GroupNorm names its parameters ``scale`` and
``bias`` like the exchange format). Fast clipping (fastclip.py) taps the layers by
intercepting the ``nn.Conv``/``nn.Dense``/``nn.GroupNorm`` calls, so the model has no hooks.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from common.reference.exchange import Weights
from common.reference.spec import GN_EPS, INPUT, ModelSpec, Node


class CNN(nn.Module):
    """The spec's graph (common/reference/spec.py), node by node: a chain CNN
    or WRN alike. Parametrised nodes are submodules named after the node."""

    spec: ModelSpec
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        vals = {INPUT: x}
        for node in self.spec.nodes:
            vals[node.name] = self._op(node, [vals[i] for i in node.inputs])
        return vals[self.spec.nodes[-1].name]

    def _op(self, node: Node, ins: list[jnp.ndarray]) -> jnp.ndarray:
        x = ins[0]
        if node.op == "conv":
            pad = ((node.padding, node.padding),) * 2
            if node.stride == 1 and node.padding == node.kernel // 2:
                pad = "SAME"  # identical for odd kernels at stride 1 (fastclip takes either)
            return nn.Conv(node.features, (node.kernel, node.kernel), strides=node.stride, padding=pad,
                           use_bias=node.bias, dtype=self.dtype, name=node.name)(x)
        if node.op == "dense":
            return nn.Dense(node.features, use_bias=node.bias, dtype=self.dtype, name=node.name)(x)
        if node.op == "gn":
            return nn.GroupNorm(num_groups=node.groups, epsilon=GN_EPS, dtype=self.dtype, name=node.name)(x)
        if node.op == "relu":
            return nn.relu(x)
        if node.op == "maxpool":
            return nn.max_pool(x, (2, 2), strides=(2, 2))
        if node.op == "avgpool":
            return nn.avg_pool(x, (2, 2), strides=(2, 2))
        if node.op == "gap":
            return x.mean(axis=(1, 2))
        if node.op == "flatten":
            return x.reshape(x.shape[0], -1)  # NHWC flatten
        return ins[0] + ins[1]  # add


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
