"""Per-layer timing of torch fastclip against the standard weight gradient (issues 18, 37).

The port of ``frameworks/jax/fastclip_layers.py``, the same JSON. For one
model and batch, from the real layer inputs A and output gradients G
(``FastClip.taps`` on the exchange weights and batch), per timed layer
(``common.harness.layer_timing.TIMED_KINDS``):

- ``standard``: that layer's parameter gradient as the standard step's
  backward computes it (:data:`STANDARD`, by the layer's rule: a conv's
  ``torch.nn.grad.conv2d_weight``, a dense layer on T tokens' G^T A over the
  B*T rows, torch's own GroupNorm / LayerNorm backward for the scale and shift
  alone, ``aten.embedding_dense_backward``; plus sum G for a bias), with what
  the forward saves for it (a norm's mean and 1/std) computed beforehand;
- conv and ``seq_dense``: ``instantiate`` / ``ghost``, fastclip's norms *and*
  clipped sum of that layer by each method (its rule's ``norms`` +
  ``clipped_sum``), each at the plan the cost model gives that method, except
  that the method the study row runs is timed at the plan its build-time
  calibration chose (``FastClip.calibrate`` with the adapter's budget), so
  ``chosen`` is what the timed step does;
- GroupNorm, LayerNorm, embedding (one exact method): ``fastclip``, the same
  work by that method.

Per-example buffers are allocated in the untimed first call and reused, as
``FastClip`` holds them between steps. Rounds interleave the methods, after
one untimed call each; the median is reported. ``python -m
frameworks.torch.fastclip_layers --model small --batch-size 64`` prints one
JSON object (``common.report.layer_timing`` runs it in the torch environment
with the worker's settings).
"""
from __future__ import annotations

import sys
from typing import Any, Callable

import torch
from torch import nn

from common.harness.config import PRESETS
from common.harness.layer_timing import TIMED_KINDS, port_cli, record, row, time_layer
from common.reference import fastclip_plan
from common.reference.exchange import init_weights, make_batch
from common.reference.spec import get_model
from frameworks.torch import fastclip
from frameworks.torch.adapter import CALIBRATION_MAX_S, CALIBRATION_SHARE
from frameworks.torch.models import labels, make_model, nchw

Backward = Callable[[torch.Tensor], Any]  # G -> the layer's parameter gradients


def _conv_standard(m: nn.Conv2d, a: torch.Tensor) -> Backward:
    def grad(g: torch.Tensor) -> Any:
        w = torch.nn.grad.conv2d_weight(a, m.weight.shape, g, stride=m.stride, padding=fastclip.conv_padding(m))
        return w if m.bias is None else (w, g.sum((0, 2, 3)))
    return grad


def _dense_standard(m: nn.Linear, a: torch.Tensor) -> Backward:
    """On T tokens: G^T A over the B*T rows, as Linear's backward on a (B, T, d) input."""
    return lambda g: (g.flatten(0, -2).T @ a.flatten(0, -2), g.flatten(0, -2).sum(0))


def _gn_standard(m: nn.GroupNorm, a: torch.Tensor) -> Backward:
    n, c, hw = a.shape[0], a.shape[1], a[0, 0].numel()
    _, mean, rstd = torch.ops.aten.native_group_norm(a, m.weight, m.bias, n, c, hw, m.num_groups, m.eps)
    return lambda g: torch.ops.aten.native_group_norm_backward(g, a, mean, rstd, m.weight, n, c, hw, m.num_groups,
                                                               [False, True, True])


def _ln_standard(m: nn.LayerNorm, a: torch.Tensor) -> Backward:
    shape = list(m.normalized_shape)
    _, mean, rstd = torch.ops.aten.native_layer_norm(a, shape, m.weight, m.bias, m.eps)
    return lambda g: torch.ops.aten.native_layer_norm_backward(g, a, shape, mean, rstd, m.weight, m.bias,
                                                               [False, True, True])


def _embed_standard(m: nn.Embedding, a: torch.Tensor) -> Backward:
    # what nn.Embedding's backward runs for a dense (not sparse) weight without padding_idx
    return lambda g: torch.ops.aten.embedding_dense_backward(g, a, m.num_embeddings, -1, False)


# The standard step's backward for a layer's parameters, by the layer's rule class:
# (module, its input A) -> G -> gradients.
STANDARD: dict[type, Callable[[Any, torch.Tensor], Backward]] = {
    fastclip.ConvRule: _conv_standard, fastclip.DenseRule: _dense_standard, fastclip.GroupNormRule: _gn_standard,
    fastclip.LayerNormRule: _ln_standard, fastclip.EmbeddingRule: _embed_standard,
}


def _held() -> fastclip.Kept:
    """A rule's ``kept``: one buffer per shape, allocated at the first (untimed) call and
    reused after, as ``FastClip`` holds its per-example grads between steps."""
    bufs: dict[tuple[int, ...], torch.Tensor] = {}

    def kept(shape: tuple[int, ...]) -> torch.Tensor:
        if shape not in bufs:
            bufs[shape] = torch.empty(shape)
        return bufs[shape]
    return kept


def measure(model: str, batch_size: int, clip_norm: float = 1.0, rounds: int = 5) -> dict[str, Any]:
    spec = get_model(model)
    budget_s = PRESETS["full"].budget_for(model)  # the calibration's share of the study row's budget
    xn, yn = make_batch(spec, batch_size, 0)
    device = torch.device("cpu")
    x, y = nchw(xn, device), labels(yn, device)
    net = make_model(spec, init_weights(spec, 0), device)
    clip = fastclip.FastClip(net, clip_norm)
    model_plans = dict(clip.plans(x))
    forced = {m: fastclip.FastClip(net, clip_norm, methods=m).plans(x) for m in fastclip_plan.METHODS}
    clip.calibrate(x, y, min(CALIBRATION_SHARE * budget_s, CALIBRATION_MAX_S))
    chosen = clip.plans(x)
    a, g = clip.taps(x, y)
    rows = []
    with torch.no_grad():
        for name, (rule, m) in clip.layers.items():
            p = chosen[name]
            if p.kind not in TIMED_KINDS:
                continue
            at, gt = a[name], g[name]

            def run(plan: fastclip_plan.LayerPlan, rule=rule, m=m, at=at, gt=gt) -> Callable[[], Any]:
                kept = _held()

                def fn() -> Any:
                    sq, state = rule.norms(m, plan, at, gt, kept)
                    return rule.clipped_sum(m, at, gt, state, fastclip.clip_factor(sq, clip_norm))
                return fn

            backward = STANDARD[type(rule)](m, at)
            secs = time_layer(p, lambda backward=backward, gt=gt: backward(gt), run, rounds, lambda _: None,
                              forced=lambda method, name=name: forced[method][name])  # CPU ops are synchronous
            extra = {}
            if p.kind in fastclip_plan.CHOICE_KINDS:
                extra = {"chunks": {k: (p if p.method == k else forced[k][name]).chunk for k in fastclip_plan.METHODS},
                         "model_choice": {"method": model_plans[name].method, "chunk": model_plans[name].chunk}}
            rows.append(row(p, secs, estimates_of=model_plans[name], **extra))
    return record("torch", model, batch_size, rounds, rows, threads=torch.get_num_threads())


def main(argv: list[str] | None = None) -> int:
    return port_cli("torch", measure, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
