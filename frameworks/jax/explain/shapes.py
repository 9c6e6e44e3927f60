"""Shapes: does a tensor hold kernel-shaped gradients of a layer? (frameworks.jax.explain)"""
from __future__ import annotations

from math import prod

from common.reference.spec import Layer

def _in_order(dims: tuple[int, ...], kernel: tuple[int, ...]) -> bool:
    """The kernel's dims in their order, or reversed (a transposed dense grad)."""
    return dims == tuple(kernel) or dims == tuple(kernel)[::-1]


def kernel_form(shape: tuple[int, ...], kernel: tuple[int, ...], groups: int = 1,
                max_k: int | None = None) -> tuple[str, int] | None:
    """How ``shape`` holds ``k`` gradients of a ``kernel``-shaped weight.

    ``kernel``: the kernel's dims in any order, or ``(fan_in, features)``
    (k = 1: a summed gradient);
    ``batched``: the kernel's dims in order (or reversed) with one more dim k
    anywhere: ``(k, *kernel)``, ``(3,3,32,k,64)``, ``(k, out, in)``;
    ``flat``: ``(k, fan_in, features)`` (or ``(k, features, fan_in)``, k first
    or last): unfolded conv grads; ``folded``: the output of a conv with
    ``groups`` > 1 feature/batch groups, one kernel per group: one dim
    ``groups`` times too large, e.g. HWIO ``(3, 3, 32, 64 k)`` (the seed's
    pattern). k counts examples, so ``max_k`` (the batch size) bounds it.
    """
    shape = tuple(int(d) for d in shape)
    kernel = tuple(int(d) for d in kernel)
    flat = (prod(kernel[:-1]), kernel[-1])
    if (len(shape) == len(kernel) and sorted(shape) == sorted(kernel)) or (len(kernel) > 2 and _in_order(shape, flat)):
        return "kernel", 1
    ok = (lambda k: max_k is None or k <= max_k)
    if len(shape) == len(kernel) + 1:
        for i, k in enumerate(shape):
            if ok(k) and _in_order(shape[:i] + shape[i + 1:], kernel):
                return "batched", k
    if len(kernel) > 2 and len(shape) == 3:
        for i in (0, 2):
            if ok(shape[i]) and _in_order(shape[:i] + shape[i + 1:], flat):
                return "flat", shape[i]
    if groups > 1 and len(shape) == len(kernel):
        for i, d in enumerate(shape):
            for j, kd in enumerate(kernel):
                if d == kd * groups and sorted(shape[:i] + shape[i + 1:]) == sorted(kernel[:j] + kernel[j + 1:]):
                    return "folded", groups
    return None


def match_layer(shape: tuple[int, ...], layers: list[Layer], groups: int = 1,
                max_k: int | None = None) -> tuple[Layer, str, int] | None:
    """The layer whose kernel gradients ``shape`` holds (fewest copies k if several fit)."""
    found = [(layer, *form) for layer in layers if (form := kernel_form(shape, layer.kernel_shape, groups, max_k))]
    return min(found, key=lambda m: m[2]) if found else None


