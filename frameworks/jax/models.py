"""Flax models built from the common spec: the chain CNNs, WRN-16-4 and the ViTs.

The parameter tree is the exchange format's (``params[layer][kernel|bias|scale|
embedding]``, HWIO kernels, NHWC flatten): flax's GroupNorm and LayerNorm name
their parameters ``scale`` and ``bias`` and nn.Embed its table ``embedding``,
like the exchange format. Fast clipping (fastclip.py) taps the layers by
intercepting the ``nn.Conv``/``nn.Dense``/``nn.GroupNorm``/``nn.LayerNorm``/``nn.Embed``
calls, so the model has no hooks.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from common.reference.exchange import Weights
from common.reference.spec import GN_EPS, INPUT, LN_EPS, ModelSpec, Node


def patches(x: jnp.ndarray, p: int) -> jnp.ndarray:
    """(B, H, W, C) -> (B, T, P*P*C): P x P patches in raster order, each
    flattened (ph, pw, c) (the spec's ``patches``: a stride-P conv's HWI rows)."""
    b, h, w, c = x.shape
    return x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, p * p * c)


def attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, heads: int) -> jnp.ndarray:
    """The spec's ``attention`` on (B, T, D): head h is channels h*dh:(h+1)*dh,
    softmax(q_h k_h^T / sqrt(dh)) v_h over the key axis, heads concatenated
    in order. Written out rather than flax's MultiHeadDotProductAttention,
    whose q/k/v/o kernels are (D, heads, dh) / (heads, dh, D), not the
    exchange format's (D, D) dense kernels."""
    b, t, d = q.shape
    dh = d // heads
    qh, kh, vh = (a.reshape(b, t, heads, dh) for a in (q, k, v))
    probs = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", qh, kh) / math.sqrt(dh), axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, vh).reshape(b, t, d)


class CNN(nn.Module):
    """The spec's graph (common/reference/spec.py), node by node: a chain CNN,
    WRN or ViT alike (the name predates the ViT; torch's builder has it too).
    Parametrised nodes are submodules named after the node; an op the builder
    does not know raises rather than computes something else."""

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
        if node.op == "add":
            return ins[0] + ins[1]
        if node.op == "patches":
            return patches(x, node.kernel)
        if node.op == "embed":
            # A batched lookup at indices 0..rows-1 of every example (the input
            # is read for its batch size only), so that a per-example transform
            # (jax-privacy's vmap) sees each example's own lookup of the table.
            rows = jnp.broadcast_to(jnp.arange(node.rows), (x.shape[0], node.rows))
            return nn.Embed(node.rows, node.features, dtype=self.dtype, name=node.name)(rows)
        if node.op == "concat":
            return jnp.concatenate(ins, axis=1)
        if node.op == "layernorm":
            # flax's default epsilon is LN_EPS already; passed so that a change
            # of either is seen. use_fast_variance=False: var = mean((x - mean)^2),
            # the reference's, not E[x^2] - E[x]^2 (cancellation in float32).
            return nn.LayerNorm(epsilon=LN_EPS, use_fast_variance=False, dtype=self.dtype, name=node.name)(x)
        if node.op == "attention":
            return attention(*ins, node.groups)
        if node.op == "gelu":
            return jax.nn.gelu(x, approximate=False)  # exact erf; jax's default is the tanh approximation
        if node.op == "token":
            return x[:, 0]
        raise ValueError(f"{node.name}: the flax builder has no op {node.op!r}")


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
