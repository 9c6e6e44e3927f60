"""Per-layer timing of TF fastclip against the standard weight gradient (issue 18).

The port of ``frameworks/jax/fastclip_layers.py``, the same JSON, with each
layer row timed in both of the study's TF variants (``variant``: ``graph``, a
``tf.function``; ``xla``, ``jit_compile=True``). For one model and batch, from the real
layer inputs A and output gradients G (``FastClip.taps_and_grads`` on the
exchange weights and batch), per conv layer, each its own compiled function
of (A, G):

- ``standard``: that layer's kernel (+ bias, where it has one) gradient as
  the standard step's backward computes it (``Conv2DBackpropFilter`` at the
  layer's strides and padding, and sum G);
- ``instantiate`` / ``ghost``: fastclip's norms *and* clipped sum of that
  layer by each method (its rule's ``norms`` + ``clipped_sum``, with the
  unfold the study row uses for that variant).

Convs only: dense layers are one product either way, and a GroupNorm's
per-example grads (2C floats) are always instantiated (there is no choice to
check). ``python -m frameworks.tf.fastclip_layers --model small --batch-size 64``
prints one JSON object (``common.report.layer_timing`` runs it in the tf
environment with the worker's settings).
"""
from __future__ import annotations

import sys
from typing import Any

import tensorflow as tf

from common.reference import fastclip_plan
from common.reference.exchange import init_weights, make_batch
from common.reference.spec import get_model
from common.harness.layer_timing import SCHEMA, medians, port_cli
from frameworks.tf.fastclip import FastClip, weight_grad
from frameworks.tf.models import build_model

VARIANTS = {"graph": False, "xla": True}  # variant -> jit_compile
# TF's ghost norm is one whole-batch product (FastClip.chunked is off), its two
# B x T x T Gram matrices live at once: timed only where they fit this (medium
# conv0 at B 256 would need 34 GB); the row then shows no ghost time.
GHOST_BYTES_MAX = 2 * 2**30


def _layers(model: tf.keras.Model, batch_size: int, x: tf.Tensor, y: tf.Tensor, clip_norm: float, rounds: int,
            xla: bool) -> list[dict[str, Any]]:
    chosen = FastClip(model, batch_size, clip_norm, xla=xla)
    a, g = tf.function(chosen.taps_and_grads)(x, y)
    notes = chosen.notes()
    rows = []
    for t in chosen.taps:
        plan = chosen.plans[t.name]
        if plan.kind != "conv":
            continue
        at, gt = a[t.name], g[t.name]

        def standard(at, gt, t=t):
            return (weight_grad(t, at, gt), *([tf.reduce_sum(gt, axis=[0, 1, 2])] if t.has_bias else []))

        fns = {"standard": tf.function(standard, jit_compile=xla)}
        for method in fastclip_plan.METHODS:
            if method == "ghost" and 2 * batch_size * plan.positions ** 2 * 4 > GHOST_BYTES_MAX:
                continue
            fc = FastClip(model, batch_size, clip_norm, methods={t.name: method}, xla=xla)

            def clip(at, gt, t=t, fc=fc):
                sq, state = t.rule.norms(t, fc.plans[t.name], at, gt, fc)
                s = fastclip_plan.clip_factor(sq, clip_norm, sqrt=tf.sqrt, floor=tf.maximum, cap=tf.minimum)
                return t.rule.clipped_sum(t, at, gt, state, s)
            fns[method] = tf.function(clip, jit_compile=xla)
        # ``.numpy()`` of the output waits for it (the TF runtime runs ops asynchronously on GPUs)
        secs = medians({k: (lambda f=f: f(at, gt)) for k, f in fns.items()}, rounds,
                       lambda out: [o.numpy() for o in out])
        rows.append({"variant": "xla" if xla else "graph", "layer": t.name, "positions": plan.positions, "fan_in": plan.fan_in, "features": plan.features,
                     "chunk": plan.batch, "chosen": plan.method, "reason": plan.reason,
                     "unfold": notes[t.name]["unfold"],
                     "literature": fastclip_plan.literature_choice(plan.positions, plan.fan_in, plan.features),
                     "estimated_s": {m: e.seconds for m, e in plan.estimates.items()},
                     "measured_s": secs})
    return rows


def measure(model: str, batch_size: int, clip_norm: float = 1.0, rounds: int = 5) -> dict[str, Any]:
    spec = get_model(model)
    net = build_model(spec, init_weights(spec, 0))
    xn, yn = make_batch(spec, batch_size, 0)
    x, y = tf.constant(xn), tf.constant(yn)
    rows = [r for xla in VARIANTS.values() for r in _layers(net, batch_size, x, y, clip_norm, rounds, xla)]
    return {"schema": SCHEMA, "framework": "tf", "model": model, "batch_size": batch_size, "rounds": rounds,
            "status": "ok", "layers": rows}


def main(argv: list[str] | None = None) -> int:
    return port_cli("tf", measure, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
