"""Per-layer check of fastclip's cost model by measurement (issues 5, 37).

For one model and batch, from the real layer inputs A and output gradients G
(``fastclip.layer_taps`` on the exchange weights and batch), times per layer
(``common.harness.layer_timing.TIMED_KINDS``), each as its own jitted function
of (A, G):

- ``standard``: that layer's parameter gradient as the standard step computes
  it (:data:`STANDARD`, by the layer's rule): a conv's kernel VJP at A with
  cotangent G, a dense layer on T tokens' A^T G over the B*T rows, a norm
  layer's sum G * xhat and sum G, an embedding's scatter-add of G; plus the
  bias's sum G where there is one;
- conv and ``seq_dense`` (a dense layer on T tokens): ``instantiate`` /
  ``ghost``, fastclip's norms *and* clipped sum of that layer by each method
  (its rule's ``norms`` + ``clipped_sum``, the chunks the plan picks), the work
  fastclip does in place of ``standard``;
- GroupNorm, LayerNorm, embedding (one exact method): ``fastclip``, the same
  work by that method.

Rounds interleave them so that a noisy CPU hits them alike; the median of the
rounds is reported, with the cost model's choice and its estimates, so a
reader sees whether the model picked the faster method. Dense layers on
(batch, features) have one method, the standard gradient's own product, and
are not timed.

    python -m frameworks.jax.fastclip_layers --model small --batch-size 64

prints one JSON object (``common.report.layer_timing`` runs it in the jax
environment and renders the tables).
"""
from __future__ import annotations

import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp

from common.harness.layer_timing import TIMED_KINDS, Shared, port_cli, record, row, time_layer
from common.reference import fastclip_plan
from common.reference.exchange import init_weights, make_batch
from common.reference.spec import get_model
from frameworks.jax import fastclip
from frameworks.jax.models import CNN, params_from_exchange


def _lead_sum(g):
    """Sum over every axis but the features: a bias's (or shift's) standard gradient."""
    return g.sum(axis=tuple(range(g.ndim - 1)))


def _token_standard(t: fastclip.Tap, a, g) -> dict:
    """A conv's or token dense layer's kernel gradient over the batch (its rule's book-keeping
    product, at cotangent G unscaled), and its bias's."""
    return {"kernel": t.rule.book(t, a, g)} | ({"bias": _lead_sum(g)} if t.has_bias else {})


def _norm_standard(t: fastclip.Tap, a, g) -> dict:
    """A GroupNorm's or LayerNorm's scale and shift gradients over the batch, sum G * xhat and sum G."""
    return {"scale": _lead_sum(g * t.normalize(a)), "bias": _lead_sum(g)}


def _embed_standard(t: fastclip.Tap, a, g) -> dict:
    """An embedding's table gradient over the batch: every lookup's G row scatter-added to its row."""
    return {"embedding": jnp.zeros(t.kernel_shape, g.dtype).at[a.reshape(-1)].add(g.reshape(-1, t.features))}


# The standard step's gradient of a layer's parameters, by the layer's rule class.
STANDARD: dict[type, Callable[[fastclip.Tap, Any, Any], dict]] = {
    fastclip.ConvRule: _token_standard, fastclip.DenseRule: _token_standard,
    fastclip.GroupNormRule: _norm_standard, fastclip.LayerNormRule: _norm_standard,
    fastclip.EmbedRule: _embed_standard,
}


def measure(model: str, batch_size: int, clip_norm: float = 1.0, rounds: int = 5) -> dict[str, Any]:
    """Per timed layer of ``model`` at ``batch_size``: standard vs fastclip, median seconds (the module docstring)."""
    jax.config.update("jax_default_matmul_precision", "highest")
    spec = get_model(model)
    net = CNN(spec)
    params = params_from_exchange(init_weights(spec, 0))
    x, y = (jnp.asarray(a) for a in make_batch(spec, batch_size, 0))
    layers = fastclip.find_layers(net, params, x)
    a, g = jax.jit(lambda p, xx, yy: fastclip.layer_taps(net, p, xx, yy)[1:])(params, x, y)
    chosen = fastclip.make_plans(layers, batch_size)
    shared = Shared(jax.jit)
    rows = []
    for t in layers:
        plan = chosen[t.name]
        if plan.kind not in TIMED_KINDS:
            continue
        at, gt = a[t.name], g[t.name]

        def clip(p: fastclip_plan.LayerPlan, t=t) -> Callable[[], Any]:
            def fn(at, gt):
                sq, state = t.rule.norms(t, p, at, gt)
                s = fastclip_plan.clip_factor(sq, clip_norm, sqrt=jnp.sqrt, floor=jnp.maximum, cap=jnp.minimum)
                return t.rule.clipped_sum(t, at, gt, state, s)
            return _bound(shared.get((_signature(t), p.method, p.chunk), fn), at, gt)

        standard = shared.get((_signature(t), "standard"), lambda at, gt, t=t: STANDARD[type(t.rule)](t, at, gt))
        secs = time_layer(plan, _bound(standard, at, gt), clip, rounds, jax.block_until_ready,
                          forced=lambda m, t=t: fastclip.make_plans([t], batch_size, methods={t.name: m})[t.name])
        rows.append(row(plan, secs))
    return record("jax", model, batch_size, rounds, rows)


def _signature(t: fastclip.Tap) -> tuple:
    """All a layer's timed functions depend on besides (A, G) and the plan: its rule and
    static shapes; a norm layer's own normaliser (its groups, epsilon) is not among
    them, so a norm layer shares with no other."""
    return (type(t.rule), t.kernel_shape, t.in_shape, t.out_shape, t.leaves, t.strides, t.padding,
            t.name if t.normalize is not None else None)


def _bound(f: Callable, *args) -> Callable[[], Any]:
    return lambda: f(*args)


def main(argv: list[str] | None = None) -> int:
    return port_cli("jax", measure, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
