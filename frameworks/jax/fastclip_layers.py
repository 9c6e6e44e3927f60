"""Per-layer check of fastclip's cost model by measurement (issue 5).

For one model and batch, from the real layer inputs A and output gradients G
(``fastclip.layer_taps`` on the exchange weights and batch), times per conv
layer (any stride and padding, bias or none), each as its own jitted
function of (A, G):

- ``standard``: that layer's weight (+ bias) gradient as the standard step
  computes it (the conv's kernel VJP at A with cotangent G, and sum G);
- ``instantiate`` / ``ghost``: fastclip's norms *and* clipped sum of that
  layer by each method (its rule's ``norms`` + ``clipped_sum``, the chunks the
  plan picks), the work fastclip does in place of ``standard``.

Rounds interleave the three so that a noisy CPU hits them alike; the median
of the rounds is reported, with the cost model's choice and its estimates,
so a reader sees whether the model picked the faster method. Dense and
GroupNorm layers have one method each (nothing to choose) and are not timed.

    python -m frameworks.jax.fastclip_layers --model small --batch-size 64

prints one JSON object (``common.report.layer_timing`` runs it in the jax
environment and renders the table).
"""
from __future__ import annotations

import sys
from typing import Any

import jax
import jax.numpy as jnp

from common.reference import fastclip_plan
from common.reference.exchange import init_weights, make_batch
from common.reference.spec import get_model
from frameworks.jax import fastclip
from common.harness.layer_timing import SCHEMA, medians, port_cli
from frameworks.jax.models import CNN, params_from_exchange


def measure(model: str, batch_size: int, clip_norm: float = 1.0, rounds: int = 5) -> dict[str, Any]:
    """Per conv layer of ``model`` at ``batch_size``: standard vs each method, median seconds (the module docstring)."""
    jax.config.update("jax_default_matmul_precision", "highest")
    spec = get_model(model)
    net = CNN(spec)
    params = params_from_exchange(init_weights(spec, 0))
    x, y = (jnp.asarray(a) for a in make_batch(spec, batch_size, 0))
    layers = fastclip.find_layers(net, params, x)
    a, g = jax.jit(lambda p, xx, yy: fastclip.layer_taps(net, p, xx, yy)[1:])(params, x, y)
    chosen = fastclip.make_plans(layers, batch_size)
    rows = []
    for t in layers:
        plan = chosen[t.name]
        if plan.kind != "conv":
            continue
        at, gt = a[t.name], g[t.name]

        def standard(at, gt, t=t):
            kernel = fastclip.kernel_grad(t, at, gt)
            return (kernel, gt.sum(axis=(0, 1, 2))) if t.has_bias else kernel

        fns = {"standard": jax.jit(standard)}
        for method in fastclip_plan.METHODS:
            forced = fastclip.make_plans([t], batch_size, methods={t.name: method})[t.name]

            def clip(at, gt, t=t, plan=forced):
                sq, state = t.rule.norms(t, plan, at, gt)
                s = fastclip_plan.clip_factor(sq, clip_norm, sqrt=jnp.sqrt, floor=jnp.maximum, cap=jnp.minimum)
                return t.rule.clipped_sum(t, at, gt, state, s)

            fns[method] = jax.jit(clip)
        secs = medians({k: (lambda f=f: f(at, gt)) for k, f in fns.items()}, rounds, jax.block_until_ready)
        rows.append({"layer": t.name, "positions": plan.positions, "fan_in": t.fan_in, "features": t.features,
                     "chunk": plan.chunk, "chosen": plan.method, "reason": plan.reason,
                     "literature": fastclip_plan.literature_choice(plan.positions, t.fan_in, t.features),
                     "estimated_s": {m: e.seconds for m, e in plan.estimates.items()},
                     "measured_s": secs})
    return {"schema": SCHEMA, "framework": "jax", "model": model, "batch_size": batch_size,
            "rounds": rounds, "status": "ok", "layers": rows}


def main(argv: list[str] | None = None) -> int:
    return port_cli("jax", measure, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
