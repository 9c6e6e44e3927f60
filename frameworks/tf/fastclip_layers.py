"""Per-layer timing of TF fastclip against the standard weight gradient (issues 18, 37).

The port of ``frameworks/jax/fastclip_layers.py``, the same JSON, with each
layer row timed in both of the study's TF variants (``variant``: ``graph``, a
``tf.function``; ``xla``, ``jit_compile=True``). For one model and batch, from the real
layer inputs A and output gradients G (``FastClip.taps_and_grads`` on the
exchange weights and batch), per timed layer
(``common.harness.layer_timing.TIMED_KINDS``), each its own compiled function
of (A, G):

- ``standard``: that layer's parameter gradient as the standard step's
  backward computes it (:data:`STANDARD`, by the layer's rule: a conv's
  ``Conv2DBackpropFilter`` at its strides and padding, a dense layer on T
  tokens' A^T G over the B*T rows, a norm layer's sum G * xhat and sum G (A is
  xhat in this port), an embedding's ``unsorted_segment_sum`` of G, the dense
  form of the gather's gradient; plus sum G for a bias);
- conv and ``seq_dense``: ``instantiate`` / ``ghost``, fastclip's norms *and*
  clipped sum of that layer by each method (its rule's ``norms`` +
  ``clipped_sum``, with the unfold the study row uses for that variant);
- GroupNorm, LayerNorm, embedding (one exact method): ``fastclip``, the same
  work by that method.

``python -m frameworks.tf.fastclip_layers --model small --batch-size 64``
prints one JSON object (``common.report.layer_timing`` runs it in the tf
environment with the worker's settings).
"""
from __future__ import annotations

import sys
from typing import Any, Callable

import tensorflow as tf

from common.harness.layer_timing import TIMED_KINDS, Shared, port_cli, record, row, time_layer
from common.reference import fastclip_plan
from common.reference.exchange import init_weights, make_batch
from common.reference.spec import get_model
from frameworks.tf import fastclip
from frameworks.tf.fastclip import FastClip, Tap
from frameworks.tf.models import build_model

VARIANTS = {"graph": False, "xla": True}  # variant -> jit_compile
# TF's ghost norm is one whole-batch product (FastClip.chunked is off), its two
# B x T x T Gram matrices live at once: timed only where they fit this (medium
# conv0 at B 256 would need 34 GB); the row then shows no ghost time.
GHOST_BYTES_MAX = 2 * 2**30


def _lead_sum(g: tf.Tensor) -> tf.Tensor:
    """Sum over every axis but the features: a bias's (or shift's) standard gradient."""
    return tf.reduce_sum(g, axis=list(range(g.shape.rank - 1)))


def _conv_standard(t: Tap, a: tf.Tensor, g: tf.Tensor) -> list[tf.Tensor]:
    return [fastclip.weight_grad(t, a, g), *([_lead_sum(g)] if t.has_bias else [])]


def _dense_standard(t: Tap, a: tf.Tensor, g: tf.Tensor) -> list[tf.Tensor]:
    d, p = t.kernel_shape
    return [tf.matmul(tf.reshape(a, [-1, d]), tf.reshape(g, [-1, p]), transpose_a=True), _lead_sum(g)]


def _norm_standard(t: Tap, a: tf.Tensor, g: tf.Tensor) -> list[tf.Tensor]:
    return [_lead_sum(g * a), _lead_sum(g)]  # A is xhat (the rule's forward)


def _embed_standard(t: Tap, a: tf.Tensor, g: tf.Tensor) -> list[tf.Tensor]:
    rows, p = t.kernel_shape
    return [tf.math.unsorted_segment_sum(tf.reshape(g, [-1, p]), tf.reshape(tf.cast(a, tf.int32), [-1]), rows)]


# The standard step's gradient of a layer's parameters, by the layer's rule class.
STANDARD: dict[type, Callable[[Tap, tf.Tensor, tf.Tensor], list[tf.Tensor]]] = {
    fastclip.ConvRule: _conv_standard, fastclip.DenseRule: _dense_standard,
    fastclip.GroupNormRule: _norm_standard, fastclip.LayerNormRule: _norm_standard,
    fastclip.EmbeddingRule: _embed_standard,
}


def _layers(model: tf.keras.Model, batch_size: int, x: tf.Tensor, y: tf.Tensor, clip_norm: float, rounds: int,
            xla: bool) -> list[dict[str, Any]]:
    chosen = FastClip(model, batch_size, clip_norm, xla=xla)
    forced = {m: fastclip.make_plans(chosen.taps, batch_size, methods=m) for m in fastclip_plan.METHODS}
    a, g = tf.function(chosen.taps_and_grads)(x, y)
    notes = chosen.notes()
    shared = Shared(lambda fn: tf.function(fn, jit_compile=xla))
    rows = []
    for t in chosen.taps:
        plan = chosen.plans[t.name]
        if plan.kind not in TIMED_KINDS:
            continue
        at, gt = a[t.name], g[t.name]

        def clip(p: fastclip_plan.LayerPlan, t=t) -> Callable[[], Any] | None:
            if p.method == "ghost" and 2 * batch_size * p.positions ** 2 * 4 > GHOST_BYTES_MAX:
                return None

            def fn(at, gt):
                sq, state = t.rule.norms(t, p, at, gt, chosen)  # the forced plans run under the same settings
                s = fastclip_plan.clip_factor(sq, clip_norm, sqrt=tf.sqrt, floor=tf.maximum, cap=tf.minimum)
                return t.rule.clipped_sum(t, at, gt, state, s)
            return _bound(shared.get((_signature(t), p.method, p.chunk), fn), at, gt)

        standard = shared.get((_signature(t), "standard"), lambda at, gt, t=t: STANDARD[type(t.rule)](t, at, gt))
        # ``.numpy()`` of the output waits for it (the TF runtime runs ops asynchronously on GPUs)
        secs = time_layer(plan, _bound(standard, at, gt), clip, rounds, lambda out: [o.numpy() for o in out],
                          forced=lambda m, t=t: forced[m][t.name])
        extra = {"variant": "xla" if xla else "graph"}
        if plan.kind in fastclip_plan.CHOICE_KINDS:  # one whole-batch product: the plan's chunk is only recorded
            extra |= {"chunk": plan.batch} | {k: v for k, v in notes[t.name].items() if k == "unfold"}
        rows.append(row(plan, secs, **extra))
    return rows


def _signature(t: Tap) -> tuple:
    """All a layer's timed functions depend on besides (A, G), the plan and the variant:
    its rule and static shapes, a conv's strides and padding (a norm layer's A is
    already xhat, so its epsilon and groups are not among them)."""
    return (type(t.rule), t.kernel_shape, t.in_shape, t.out_shape, t.strides, t.padding, t.has_bias,
            getattr(t.layer, "padding", None))


def _bound(f: Callable, *args) -> Callable[[], Any]:
    return lambda: f(*args)


def measure(model: str, batch_size: int, clip_norm: float = 1.0, rounds: int = 5) -> dict[str, Any]:
    spec = get_model(model)
    net = build_model(spec, init_weights(spec, 0))
    xn, yn = make_batch(spec, batch_size, 0)
    x, y = tf.constant(xn), tf.constant(yn)
    rows = [r for xla in VARIANTS.values() for r in _layers(net, batch_size, x, y, clip_norm, rounds, xla)]
    return record("tf", model, batch_size, rounds, rows)


def main(argv: list[str] | None = None) -> int:
    return port_cli("tf", measure, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
