"""Canonical weight-exchange format and synthetic data shared by all frameworks.

Weights: one ``.npz`` per model, keys ``<layer>/kernel`` (HWIO for convs,
(in, out) for dense, on vectors and sequences alike, flatten in NHWC order),
``<layer>/bias`` (layers with a bias), ``<gn>/scale`` + ``<gn>/bias``
(GroupNorm), ``<ln>/scale`` + ``<ln>/bias`` (LayerNorm) and
``<embed>/embedding`` (rows, features) (an embedding table: flax nn.Embed's
``embedding``, nn.Embedding's ``weight`` and keras Embedding's
``embeddings`` as they are, no transpose), float32; the keys and shapes are
``ModelSpec.param_shapes()``, derived from the model's graph. Adapters
convert from/to their own layout (e.g. PyTorch OIHW) on load.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from common.reference.spec import ModelSpec

Weights = dict[str, np.ndarray]


def init_weights(spec: ModelSpec, seed: int = 0) -> Weights:
    """He-normal kernels, small random biases, GroupNorm and LayerNorm scales
    near 1 (random, so that a test sees a wrong scale) and embeddings of std
    0.02 (ViT's position-embedding init; random, the class token too, so
    that a test sees a wrong row), float32, deterministic; drawn in
    ``param_shapes`` order (the chain CNNs' weights are those they had before
    the spec was a graph; a model without embeddings draws as before)."""
    rng = np.random.default_rng(seed)
    out: Weights = {}
    for key, shape in spec.param_shapes().items():
        if key.endswith("/kernel"):
            std = np.sqrt(2.0 / np.prod(shape[:-1]))
            out[key] = (rng.standard_normal(shape) * std).astype(np.float32)
        elif key.endswith("/scale"):
            out[key] = (1.0 + rng.standard_normal(shape) * 0.1).astype(np.float32)
        elif key.endswith("/embedding"):
            out[key] = (rng.standard_normal(shape) * 0.02).astype(np.float32)
        else:
            out[key] = (rng.standard_normal(shape) * 0.05).astype(np.float32)
    return out


def make_batch(spec: ModelSpec, batch_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic NHWC float32 inputs in [0, 1) and int32 labels in 0..9."""
    rng = np.random.default_rng(seed + 1_000_003)
    x = rng.random((batch_size, *spec.input_shape), dtype=np.float32)
    y = rng.integers(0, spec.num_classes, size=batch_size, dtype=np.int32)
    return x, y


def save_weights(path: str | Path, weights: Weights) -> None:
    np.savez(path, **weights)


def load_weights(path: str | Path) -> Weights:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def check_weights(spec: ModelSpec, weights: Weights) -> None:
    """Raise ValueError unless ``weights`` has exactly the spec's keys and shapes."""
    expected = spec.param_shapes()
    if set(weights) != set(expected):
        raise ValueError(f"weight keys {sorted(weights)} != spec keys {sorted(expected)}")
    for key, shape in expected.items():
        if tuple(weights[key].shape) != shape:
            raise ValueError(f"{key}: shape {weights[key].shape} != {shape}")
