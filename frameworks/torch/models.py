"""The docs/design.md §2 CNN as an ``nn.Module``, and conversion from/to the exchange format.

Submodules are named after the spec's layers (``conv0``, ``dense0``, ...) so that
parameter ``conv0.weight`` is exchange key ``conv0/kernel``. The module takes NCHW
(PyTorch's native conv layout) but flattens in NHWC order, so exchange dense
kernels load without reordering rows.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.reference.exchange import Weights, check_weights
from common.reference.spec import GN_EPS, INPUT, ModelSpec, Node


class CNN(nn.Module):
    """The spec's graph (common/reference/spec.py), node by node: a chain CNN
    or WRN alike. Parametrised nodes are submodules named after the node
    (stock ``Conv2d``, ``GroupNorm``, ``Linear``: what Opacus recognises);
    the rest are functional ops."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.nodes = spec.nodes
        for n in spec.nodes:
            cin = spec.in_shape(n)[-1]
            if n.op == "conv":
                self.add_module(n.name, nn.Conv2d(cin, n.features, n.kernel, stride=n.stride, padding=n.padding,
                                                  bias=n.bias))
            elif n.op == "dense":
                self.add_module(n.name, nn.Linear(cin, n.features, bias=n.bias))
            elif n.op == "gn":
                self.add_module(n.name, nn.GroupNorm(n.groups, cin, eps=GN_EPS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        vals = {INPUT: x}
        for n in self.nodes:
            vals[n.name] = self._op(n, [vals[i] for i in n.inputs])
        return vals[self.nodes[-1].name]

    def _op(self, n: Node, ins: list[torch.Tensor]) -> torch.Tensor:
        x = ins[0]
        if n.op in ("conv", "dense", "gn"):
            return getattr(self, n.name)(x)
        if n.op == "relu":
            return F.relu(x)
        if n.op == "maxpool":
            return F.max_pool2d(x, 2)
        if n.op == "avgpool":
            return F.avg_pool2d(x, 2)
        if n.op == "gap":
            return x.mean(dim=(2, 3))
        if n.op == "flatten":
            return x.permute(0, 2, 3, 1).flatten(1)  # NHWC flatten, as in every framework
        return ins[0] + ins[1]  # add


def _torch_to_exchange_key(name: str, ndim: int) -> str:
    """``conv0.weight`` -> ``conv0/kernel``; a 1-D ``weight`` (GroupNorm's) ->
    ``<gn>/scale``, its exchange name; tolerates Opacus's ``_module.`` prefix."""
    layer, kind = name.removeprefix("_module.").split(".")
    if kind == "bias":
        return f"{layer}/bias"
    return f"{layer}/{'scale' if ndim == 1 else 'kernel'}"


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


def load_exchange(net: CNN, weights: Weights) -> None:
    """Copy exchange ``weights`` into ``net`` in place (any device)."""
    with torch.no_grad():
        for name, p in net.named_parameters():
            key = _torch_to_exchange_key(name, p.dim())
            p.copy_(torch.from_numpy(np.ascontiguousarray(_from_exchange(key, weights[key]))))


def to_exchange(tensors: Mapping[str, torch.Tensor]) -> Weights:
    """Parameter-shaped tensors keyed by parameter name (``conv0.weight``: e.g. gradients)
    -> exchange layout and keys, as NumPy on the host."""
    out: Weights = {}
    for name, t in tensors.items():
        key = _torch_to_exchange_key(name, t.dim())
        out[key] = np.ascontiguousarray(_to_exchange(key, t.detach().cpu().numpy()))
    return out


def make_model(spec: ModelSpec, weights: Weights, device: torch.device) -> CNN:
    """The CNN with exchange ``weights``, float32, on ``device``."""
    check_weights(spec, weights)
    net = CNN(spec)
    load_exchange(net, weights)
    return net.to(device)


def nchw(x: np.ndarray, device: torch.device) -> torch.Tensor:
    """NHWC NumPy batch (the exchange format) -> contiguous NCHW tensor on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(device)


def labels(y: np.ndarray, device: torch.device) -> torch.Tensor:
    """int labels -> int64 (what cross-entropy takes) on ``device``."""
    return torch.from_numpy(np.asarray(y, dtype=np.int64)).to(device)
