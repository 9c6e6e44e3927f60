"""Float64 NumPy reference: forward pass, per-example gradients, clipped sum.

The ground truth every framework's parity tests compare against. Written with
explicit im2col so it depends on nothing but NumPy; slow, meant for a handful
of examples. Gradients are of the per-example (unreduced) cross-entropy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.reference.exchange import Weights
from common.reference.spec import KERNEL, ModelSpec


def _im2col(x: np.ndarray) -> np.ndarray:
    """(B,H,W,C) -> (B,H*W,k*k*C) patches of a 3x3 SAME conv, HWI order."""
    b, h, w, c = x.shape
    pad = KERNEL // 2
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    cols = [xp[:, i:i + h, j:j + w, :] for i in range(KERNEL) for j in range(KERNEL)]
    return np.stack(cols, axis=3).reshape(b, h * w, KERNEL * KERNEL * c)


def _col2im(cols: np.ndarray, shape: tuple[int, int, int, int]) -> np.ndarray:
    b, h, w, c = shape
    pad = KERNEL // 2
    cols = cols.reshape(b, h, w, KERNEL * KERNEL, c)
    xp = np.zeros((b, h + 2 * pad, w + 2 * pad, c), dtype=cols.dtype)
    for n, (i, j) in enumerate((i, j) for i in range(KERNEL) for j in range(KERNEL)):
        xp[:, i:i + h, j:j + w, :] += cols[:, :, :, n, :]
    return xp[:, pad:pad + h, pad:pad + w, :]


def _pool(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2x2/2 max-pool; also returns the one-hot argmax mask (first max wins)."""
    b, h, w, c = x.shape
    win = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4).reshape(b, h // 2, w // 2, c, 4)
    idx = win.argmax(-1)
    mask = np.zeros_like(win)
    np.put_along_axis(mask, idx[..., None], 1.0, axis=-1)
    return win.max(-1), mask


def _unpool(g: np.ndarray, mask: np.ndarray) -> np.ndarray:
    b, h2, w2, c, _ = mask.shape
    full = (mask * g[..., None]).reshape(b, h2, w2, c, 2, 2).transpose(0, 1, 4, 2, 5, 3)
    return full.reshape(b, 2 * h2, 2 * w2, c)


def forward(spec: ModelSpec, weights: Weights, x: np.ndarray, *, keep: bool = False):
    """Logits (float64). With ``keep``, also the per-layer caches for backprop."""
    a = np.asarray(x, dtype=np.float64)
    caches = []
    for layer in spec.layers():
        k = weights[f"{layer.name}/kernel"].astype(np.float64)
        bias = weights[f"{layer.name}/bias"].astype(np.float64)
        if layer.kind == "conv":
            cols = _im2col(a)
            z = cols @ k.reshape(-1, layer.features) + bias
            z = z.reshape(a.shape[0], *layer.out_hw, layer.features)
            r = np.maximum(z, 0.0)
            pooled, mask = _pool(r)
            caches.append((layer, cols, a.shape, z, mask))
            a = pooled
        else:
            if a.ndim > 2:
                a = a.reshape(a.shape[0], -1)  # NHWC flatten
            z = a @ k + bias
            caches.append((layer, a, a.shape, z, None))
            a = np.maximum(z, 0.0) if layer.relu else z
    return (a, caches) if keep else a


def per_example_losses(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    m = logits.max(-1, keepdims=True)
    logz = m[:, 0] + np.log(np.exp(logits - m).sum(-1))
    return logz - logits[np.arange(len(y)), y]


def per_example_grads(spec: ModelSpec, weights: Weights, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Gradient of each example's own loss, shape (B, *param_shape), float64."""
    logits, caches = forward(spec, weights, x, keep=True)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    g = p
    g[np.arange(len(y)), y] -= 1.0  # dL_i/dlogits_i
    grads: dict[str, np.ndarray] = {}
    for layer, a, a_shape, z, mask in reversed(caches):
        k = weights[f"{layer.name}/kernel"].astype(np.float64)
        if layer.kind == "dense":
            if layer.relu:
                g = g * (z > 0)
            grads[f"{layer.name}/kernel"] = np.einsum("bi,bo->bio", a, g)
            grads[f"{layer.name}/bias"] = g.copy()
            g = g @ k.T
        else:
            if g.ndim == 2:
                g = g.reshape(a_shape[0], layer.out_hw[0] // 2, layer.out_hw[1] // 2, layer.features)
            g = _unpool(g, mask) * (z > 0)
            gt = g.reshape(g.shape[0], -1, layer.features)  # (B, T, p)
            grads[f"{layer.name}/kernel"] = np.einsum("btd,btp->bdp", a, gt).reshape(-1, *layer.kernel_shape)
            grads[f"{layer.name}/bias"] = gt.sum(1)
            if layer is not caches[0][0]:
                g = _col2im(gt @ k.reshape(-1, layer.features).T, a_shape)
    return grads


def per_example_norms(grads: dict[str, np.ndarray]) -> np.ndarray:
    b = next(iter(grads.values())).shape[0]
    return np.sqrt(sum((v.reshape(b, -1) ** 2).sum(1) for v in grads.values()))


def per_layer_sq_norms(grads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Squared per-example norm of each layer's (kernel + bias) gradient."""
    out: dict[str, np.ndarray] = {}
    for key, v in grads.items():
        name = key.split("/")[0]
        out[name] = out.get(name, 0.0) + (v.reshape(v.shape[0], -1) ** 2).sum(1)
    return out


def clip_factors(norms: np.ndarray, clip_norm: float) -> np.ndarray:
    """min(1, C/||g_i||): the per-example scale of DP-SGD clipping."""
    return np.minimum(1.0, clip_norm / np.maximum(norms, 1e-30))


def clipped_sum(spec: ModelSpec, weights: Weights, x: np.ndarray, y: np.ndarray, clip_norm: float) -> dict[str, np.ndarray]:
    """sum_i clip(g_i, C): DP-SGD's clipped gradient sum with noise 0."""
    grads = per_example_grads(spec, weights, x, y)
    s = clip_factors(per_example_norms(grads), clip_norm)
    return {k: np.tensordot(s, v, axes=1) for k, v in grads.items()}


def microbatch_mean_clipped_sum(spec: ModelSpec, weights: Weights, x: np.ndarray, y: np.ndarray,
                                clip_norm: float, num_microbatches: int) -> dict[str, np.ndarray]:
    """TF-Privacy's unit when num_microbatches < B: clip each microbatch's *mean*
    gradient, then sum over microbatches (examples split in contiguous groups)."""
    grads = per_example_grads(spec, weights, x, y)
    b = len(y)
    if b % num_microbatches:
        raise ValueError("num_microbatches must divide the batch")
    mb = {k: v.reshape(num_microbatches, b // num_microbatches, *v.shape[1:]).mean(1) for k, v in grads.items()}
    s = clip_factors(per_example_norms(mb), clip_norm)
    return {k: np.tensordot(s, v, axes=1) for k, v in mb.items()}


def max_rel_error(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> float:
    """max over tensors of ||got - want||_inf / ||want||_inf."""
    if set(got) != set(want):
        raise ValueError(f"keys differ: {sorted(set(got) ^ set(want))}")
    return max(float(np.abs(np.asarray(got[k], np.float64) - want[k]).max() / max(np.abs(want[k]).max(), 1e-30))
               for k in want)


@dataclass(frozen=True)
class ClipCase:
    """A model and batch with their float64 per-example reference: what every
    framework's fast-clipping parity tests compare against."""

    spec: ModelSpec
    weights: Weights
    x: np.ndarray
    y: np.ndarray
    norms: np.ndarray  # (B,) per-example gradient norms
    layer_sq: dict[str, np.ndarray]  # per-layer squared norms (kernel + bias)
    clip: float
    want: dict[str, np.ndarray]  # sum_i clip(g_i, clip)


def clip_case(model: str, batch: int, seed: int = 0) -> ClipCase:
    """Exchange weights and batch of ``seed``; the clip norm is the median
    per-example norm, so some examples are clipped and some are not (B=1:
    half the one norm, so it is clipped)."""
    from common.reference.exchange import init_weights, make_batch
    from common.reference.spec import get_model
    spec = get_model(model)
    weights = init_weights(spec, seed)
    x, y = make_batch(spec, batch, seed)
    grads = per_example_grads(spec, weights, x, y)
    norms = per_example_norms(grads)
    clip = float(np.median(norms)) if batch > 1 else float(norms[0] / 2)
    want = {k: np.tensordot(clip_factors(norms, clip), v, axes=1) for k, v in grads.items()}
    return ClipCase(spec, weights, x, y, norms, per_layer_sq_norms(grads), clip, want)


def sq_rel_error(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> float:
    """Max error of per-layer squared norms relative to each layer's largest."""
    assert set(got) == set(want), (sorted(got), sorted(want))
    return max(float(np.abs(got[k] - want[k]).max() / want[k].max()) for k in want)


def min_pool_gap(spec: ModelSpec, weights: Weights, x: np.ndarray) -> float:
    """Smallest gap between a pool window's two largest pre-activations (or
    between a positive maximum and 0, where ReLU ties them), relative to the
    layer's largest |z|: a near-tie lets float32 rounding pick another max,
    so parity cases use seeds whose gap is well above float32 precision."""
    _, caches = forward(spec, weights, x, keep=True)
    worst = np.inf
    for layer, _, _, z, _ in caches:
        if layer.kind == "conv":
            b, h, w, c = z.shape
            win = np.sort(z.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4).reshape(-1, 4), axis=1)
            gap = np.where(win[:, 3] > 0, np.minimum(win[:, 3] - win[:, 2], win[:, 3]), np.inf)
            worst = min(worst, float(gap.min() / np.abs(z).max()))
    return worst


# A pool window whose two largest pre-activations are closer than this (relative
# to the layer's largest |z|) is a near-tie float32 may break either way.
MIN_POOL_GAP = 1e-6


def tie_free_seed(model: str, batch: int, start: int = 0, tries: int = 100) -> int:
    """The first seed from ``start`` whose exchange weights and batch have no
    max-pool near-tie (``min_pool_gap`` > ``MIN_POOL_GAP``): parity cases use
    it, so that an error means a wrong gradient, not a tie-break."""
    from common.reference.exchange import init_weights, make_batch
    from common.reference.spec import get_model
    spec = get_model(model)
    for seed in range(start, start + tries):
        x, _ = make_batch(spec, batch, seed)
        if min_pool_gap(spec, init_weights(spec, seed), x) > MIN_POOL_GAP:
            return seed
    raise ValueError(f"no tie-free seed for {model} B={batch} in {start}..{start + tries - 1}")
