"""The models of docs/design.md §2 as ``nn.Module``s, and conversion from/to the exchange format.

One class, ``GraphNet``, builds every spec in common/reference/spec.py MODELS (the
chain CNNs, WRN-16-4, the ViTs) from its graph. Submodules are named after the
spec's layers (``conv0``, ``b0_q``, ``cls``, ...) so that parameter ``conv0.weight``
is exchange key ``conv0/kernel``. The module takes NCHW (PyTorch's native conv
layout) but flattens and cuts patches in NHWC order, so exchange dense kernels
load without reordering rows.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.reference.exchange import Weights, check_weights
from common.reference.spec import GN_EPS, INPUT, LN_EPS, ModelSpec, Node

# Parametrised ops: the stock layer each builds (what Opacus recognises by exact
# type: its grad samplers, norm samplers and ModuleValidator key on type(module)).
LAYERS: dict[str, Callable[[Node, int], nn.Module]] = {
    "conv": lambda n, cin: nn.Conv2d(cin, n.features, n.kernel, stride=n.stride, padding=n.padding, bias=n.bias),
    "dense": lambda n, cin: nn.Linear(cin, n.features, bias=n.bias),  # on (B, F) or (B, T, F) alike
    "gn": lambda n, cin: nn.GroupNorm(n.groups, cin, eps=GN_EPS),
    "layernorm": lambda n, cin: nn.LayerNorm(cin, eps=LN_EPS),  # torch's default eps is 1e-5
    "embed": lambda n, _: nn.Embedding(n.rows, n.features),
}
# Each parametrised op's exchange name for its torch ``weight``; only ``kernel`` is
# transposed (``_from_exchange``): an embedding table is (rows, features) in both.
WEIGHT_LEAF = {"conv": "kernel", "dense": "kernel", "gn": "scale", "layernorm": "scale", "embed": "embedding"}


def _patches(n: Node, ins: list[torch.Tensor]) -> torch.Tensor:
    """NCHW (B, C, H, W) -> (B, T, P*P*C): P x P patches in raster order, each
    flattened (ph, pw, c) as the spec orders them (NHWC first, then cut)."""
    x = ins[0].permute(0, 2, 3, 1)
    b, h, w, c = x.shape
    p = n.kernel
    return x.reshape(b, h // p, p, w // p, p, c).permute(0, 1, 3, 2, 4, 5).reshape(b, (h // p) * (w // p), p * p * c)


def _attention(n: Node, ins: list[torch.Tensor]) -> torch.Tensor:
    """Per head softmax(q_h k_h^T / sqrt(dh)) v_h on channels h*dh:(h+1)*dh, heads
    concatenated in order. ``scaled_dot_product_attention`` is exactly that op
    (default scale 1/sqrt(dh), no mask, no dropout) and what a torch ViT calls
    (timm's fused path); it has no parameters, so every Opacus mode sees only
    the q, k, v, o Linears around it."""
    q, k, v = ins
    b, t, d = q.shape
    h = n.groups
    q, k, v = (a.reshape(b, t, h, d // h).transpose(1, 2) for a in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(d // h))
    return out.transpose(1, 2).reshape(b, t, d)


# Ops without parameters, as functions of (node, inputs). An op in neither table
# has no torch rule: GraphNet refuses the spec when it is built.
FUNCTIONS: dict[str, Callable[[Node, list[torch.Tensor]], torch.Tensor]] = {
    "relu": lambda n, ins: F.relu(ins[0]),
    "maxpool": lambda n, ins: F.max_pool2d(ins[0], 2),
    "avgpool": lambda n, ins: F.avg_pool2d(ins[0], 2),
    "gap": lambda n, ins: ins[0].mean(dim=(2, 3)),
    "flatten": lambda n, ins: ins[0].permute(0, 2, 3, 1).flatten(1),  # NHWC flatten, as in every framework
    "add": lambda n, ins: ins[0] + ins[1],
    "patches": _patches,
    "concat": lambda n, ins: torch.cat(ins, dim=1),  # tokens: the first input's first
    "attention": _attention,
    "gelu": lambda n, ins: F.gelu(ins[0], approximate="none"),  # exact erf GELU
    "token": lambda n, ins: ins[0][:, 0],
}


def embedding_rows(batch: int, rows: int, device: torch.device) -> torch.Tensor:
    """Indices 0..rows-1 for each of ``batch`` examples, (B, rows) int64.

    The batch axis is what lets Opacus clip the table per example (its grad and
    norm samplers and ExpandedWeights read B off the index tensor's first axis).
    Contiguous, not an ``expand``ed view: Opacus's embedding norm sampler calls
    ``.view(-1, 1)`` on the indices (opacus/grad_sample/embedding_norm_sample.py),
    which a stride-0 view cannot take. Built per forward, not a buffer: Opacus
    refuses modules with buffers (GradSampleModule strict, functorch's prepare_layer)."""
    return torch.arange(rows, device=device).repeat(batch, 1)


class GraphNet(nn.Module):
    """The spec's graph (common/reference/spec.py), node by node: a chain CNN,
    WRN or ViT alike. Parametrised nodes are stock submodules named after the
    node (``LAYERS``); the rest are functional ops (``FUNCTIONS``). An op with
    no rule in either raises here, at construction."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        for n in spec.nodes:
            if n.op in LAYERS:
                self.add_module(n.name, LAYERS[n.op](n, spec.in_shape(n)[-1]))
            elif n.op not in FUNCTIONS:
                raise ValueError(f"{spec.name}: node {n.name}: torch has no rule for op {n.op!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        vals = {INPUT: x}
        for n in self.spec.nodes:
            ins = [vals[i] for i in n.inputs]
            if n.op == "embed":  # reads its input (the model's) for the batch size only
                vals[n.name] = getattr(self, n.name)(embedding_rows(ins[0].shape[0], n.rows, x.device))
            elif n.op in LAYERS:
                vals[n.name] = getattr(self, n.name)(ins[0])
            else:
                vals[n.name] = FUNCTIONS[n.op](n, ins)
        return vals[self.spec.nodes[-1].name]


def _torch_to_exchange_key(name: str, spec: ModelSpec) -> str:
    """``conv0.weight`` -> ``conv0/kernel``; a GroupNorm's or LayerNorm's
    ``weight`` -> ``<layer>/scale``, an embedding's -> ``<layer>/embedding``
    (the spec's op says which: a Linear's and an Embedding's weights are both
    2-D); tolerates Opacus's ``_module.`` prefix."""
    layer, kind = name.removeprefix("_module.").split(".")
    if kind == "bias":
        return f"{layer}/bias"
    return f"{layer}/{WEIGHT_LEAF[spec.node(layer).op]}"


def _from_exchange(key: str, a: np.ndarray) -> np.ndarray:
    """Exchange layout -> PyTorch layout: HWIO -> OIHW, (in, out) -> (out, in)."""
    if not key.endswith("/kernel"):
        return a
    return a.transpose(3, 2, 0, 1) if a.ndim == 4 else a.T


def _to_exchange(key: str, a: np.ndarray) -> np.ndarray:
    """PyTorch layout -> exchange layout (inverse of ``_from_exchange``)."""
    if not key.endswith("/kernel"):
        return a
    return a.transpose(2, 3, 1, 0) if a.ndim == 4 else a.T


def load_exchange(net: GraphNet, weights: Weights) -> None:
    """Copy exchange ``weights`` into ``net`` in place (any device)."""
    with torch.no_grad():
        for name, p in net.named_parameters():
            key = _torch_to_exchange_key(name, net.spec)
            p.copy_(torch.from_numpy(np.ascontiguousarray(_from_exchange(key, weights[key]))))


def to_exchange(tensors: Mapping[str, torch.Tensor], spec: ModelSpec) -> Weights:
    """Parameter-shaped tensors of a ``spec`` model keyed by parameter name
    (``conv0.weight``: e.g. gradients) -> exchange layout and keys, as NumPy on the host."""
    out: Weights = {}
    for name, t in tensors.items():
        key = _torch_to_exchange_key(name, spec)
        out[key] = np.ascontiguousarray(_to_exchange(key, t.detach().cpu().numpy()))
    return out


def make_model(spec: ModelSpec, weights: Weights, device: torch.device) -> GraphNet:
    """The spec's model with exchange ``weights``, float32, on ``device``."""
    check_weights(spec, weights)
    net = GraphNet(spec)
    load_exchange(net, weights)
    return net.to(device)


def nchw(x: np.ndarray, device: torch.device) -> torch.Tensor:
    """NHWC NumPy batch (the exchange format) -> contiguous NCHW tensor on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(device)


def labels(y: np.ndarray, device: torch.device) -> torch.Tensor:
    """int labels -> int64 (what cross-entropy takes) on ``device``."""
    return torch.from_numpy(np.asarray(y, dtype=np.int64)).to(device)
