"""The DESIGN.md §2 CNN as an ``nn.Module``, and conversion from/to the exchange format.

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
from common.reference.spec import KERNEL, ModelSpec


class CNN(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.plan: list[tuple[str, str, bool]] = []
        for layer in spec.layers():
            if layer.kind == "conv":
                _, _, cin, cout = layer.kernel_shape
                module: nn.Module = nn.Conv2d(cin, cout, KERNEL, stride=1, padding=KERNEL // 2, bias=True)
            else:
                module = nn.Linear(*layer.kernel_shape, bias=True)
            self.add_module(layer.name, module)
            self.plan.append((layer.name, layer.kind, layer.relu))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name, kind, relu in self.plan:
            if kind == "conv":
                x = F.max_pool2d(F.relu(getattr(self, name)(x)), 2)
                continue
            if x.dim() > 2:
                x = x.permute(0, 2, 3, 1).flatten(1)  # NHWC flatten, as in every framework
            x = getattr(self, name)(x)
            if relu:
                x = F.relu(x)
        return x


def _torch_to_exchange_key(name: str) -> str:
    """``conv0.weight`` -> ``conv0/kernel``; tolerates Opacus's ``_module.`` prefix."""
    layer, kind = name.removeprefix("_module.").split(".")
    return f"{layer}/{'kernel' if kind == 'weight' else 'bias'}"


def _from_exchange(key: str, a: np.ndarray) -> np.ndarray:
    """Exchange layout -> PyTorch layout: HWIO -> OIHW, (in, out) -> (out, in)."""
    if key.endswith("/bias"):
        return a
    return a.transpose(3, 2, 0, 1) if a.ndim == 4 else a.T


def _to_exchange(key: str, a: np.ndarray) -> np.ndarray:
    """PyTorch layout -> exchange layout (inverse of ``_from_exchange``)."""
    if key.endswith("/bias"):
        return a
    return a.transpose(2, 3, 1, 0) if a.ndim == 4 else a.T


def load_exchange(net: CNN, weights: Weights) -> None:
    """Copy exchange ``weights`` into ``net`` in place (any device)."""
    with torch.no_grad():
        for name, p in net.named_parameters():
            key = _torch_to_exchange_key(name)
            p.copy_(torch.from_numpy(np.ascontiguousarray(_from_exchange(key, weights[key]))))


def to_exchange(tensors: Mapping[str, torch.Tensor]) -> Weights:
    """Parameter-shaped tensors keyed by parameter name (``conv0.weight``: e.g. gradients)
    -> exchange layout and keys, as NumPy on the host."""
    out: Weights = {}
    for name, t in tensors.items():
        key = _torch_to_exchange_key(name)
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
