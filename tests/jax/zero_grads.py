"""Gradients that are zero in exact arithmetic, and the parity error around them.

A ViT's key bias (``b<i>_k/bias``) never gets a gradient: it adds q_i . b_k
to every score of query i alike, and softmax ignores such a shift. Its float64
reference is rounding (4.8e-16 on vit_tiny B 4), a float32 implementation's
is float32 rounding (4e-7), and ``float64.max_rel_error``, which divides each
tensor's error by that tensor's own largest reference value, returns ~1e9 for
every correct implementation. Here such a tensor's error is taken relative to
its layer's kernel gradient instead (the scale a wrong bias gradient would be
seen against); every other tensor is compared as ``max_rel_error`` compares it.

Not JAX-specific: the rule belongs next to ``float64.max_rel_error`` (and
verify.py's ViT case needs it), where the three frameworks would share it.
"""
from __future__ import annotations

import numpy as np

from common.reference import float64 as R
from common.reference.spec import ModelSpec


def zero_grad_keys(spec: ModelSpec) -> set[str]:
    """Exchange keys whose gradient is zero for every weight and input: the
    bias of each attention's key projection (its second input)."""
    out = set()
    for n in spec.nodes:
        if n.op == "attention":
            k = spec.node(n.inputs[1])
            if k.op == "dense" and k.bias:
                out.add(f"{k.name}/bias")
    return out


def max_rel_error(got: dict[str, np.ndarray], want: dict[str, np.ndarray], spec: ModelSpec) -> float:
    """``float64.max_rel_error``, with each ``zero_grad_keys`` tensor's error
    relative to its layer's largest reference kernel gradient."""
    if set(got) != set(want):
        raise ValueError(f"keys differ: {sorted(set(got) ^ set(want))}")
    zero = zero_grad_keys(spec)
    err = R.max_rel_error({k: got[k] for k in want if k not in zero}, {k: want[k] for k in want if k not in zero})
    for key in zero:
        scale = np.abs(want[key.replace("/bias", "/kernel")]).max()
        err = max(err, float(np.abs(np.asarray(got[key], np.float64) - want[key]).max() / scale))
    return err
