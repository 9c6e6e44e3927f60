"""Per-layer timing of torch fastclip against the standard weight gradient (issue 18).

The port of ``frameworks/jax/fastclip_layers.py``, the same JSON. For one
model and batch, from the real layer inputs A and output gradients G
(``FastClip.taps`` on the exchange weights and batch), per conv layer:

- ``standard``: that layer's weight + bias gradient as the standard step's
  backward computes it (``torch.nn.grad.conv2d_weight``, the conv's weight
  VJP, and sum G);
- ``instantiate`` / ``ghost``: fastclip's norms *and* clipped sum of that
  layer by each method (its rule's ``norms`` + ``clipped_sum``), each at the plan the
  cost model gives that method, except that the method the study row runs
  is timed at the plan its build-time calibration chose (``FastClip.calibrate``
  with the adapter's budget), so ``chosen`` is what the timed step does.

Convs of any stride and symmetric zero padding, with or without a bias (the
standard gradient then has no bias term either). GroupNorm layers have one
method (their per-example scale and shift grads, 2C floats each, are always
instantiated), so they are no conv row; they are timed apart, in
``gn_layers``: ``standard`` (torch's own GroupNorm backward for the scale
and shift alone, ``aten.native_group_norm_backward``) against ``gn``
(fastclip's per-example grads, norms and clipped sum).

Rounds interleave the methods, after one untimed call each; the median is
reported. ``python -m frameworks.torch.fastclip_layers --model small
--batch-size 64`` prints one JSON object (``common.report.layer_timing``
runs it in the torch environment with the worker's settings).
"""
from __future__ import annotations

import sys
from typing import Any, Callable

import torch

from common.harness.config import PRESETS
from common.reference import fastclip_plan
from common.reference.exchange import init_weights, make_batch
from common.reference.spec import get_model
from common.harness.layer_timing import SCHEMA, medians, port_cli
from frameworks.torch import fastclip
from frameworks.torch.adapter import CALIBRATION_MAX_S, CALIBRATION_SHARE
from frameworks.torch.models import labels, make_model, nchw


def measure(model: str, batch_size: int, clip_norm: float = 1.0, rounds: int = 5) -> dict[str, Any]:
    spec = get_model(model)
    budget_s = PRESETS["full"].budget_for(model)  # the calibration's share of the study row's budget
    xn, yn = make_batch(spec, batch_size, 0)
    device = torch.device("cpu")
    x, y = nchw(xn, device), labels(yn, device)
    net = make_model(spec, init_weights(spec, 0), device)
    clip = fastclip.FastClip(net, clip_norm)
    model_plans = dict(clip.plans(x))
    clip.calibrate(x, y, min(CALIBRATION_SHARE * budget_s, CALIBRATION_MAX_S))
    chosen = clip.plans(x)
    a, g = clip.taps(x, y)
    rows, gn_rows = [], []
    for name, (rule, m) in clip.layers.items():
        if chosen[name].kind == "gn":
            gn_rows.append(_gn_row(name, rule, m, chosen[name], a[name], g[name], clip_norm, rounds))
        if chosen[name].kind != "conv":
            continue
        at, gt = a[name], g[name]

        def standard(at=at, gt=gt, m=m):
            w = torch.nn.grad.conv2d_weight(at, m.weight.shape, gt, stride=m.stride, padding=fastclip.conv_padding(m))
            return w if m.bias is None else (w, gt.sum((0, 2, 3)))

        fns: dict[str, Callable[[], Any]] = {"standard": standard}
        plans = {}
        for method in fastclip_plan.METHODS:
            p = chosen[name] if chosen[name].method == method else fastclip_plan.plan_layer(
                name, "conv", model_plans[name].positions, model_plans[name].fan_in, model_plans[name].features,
                batch_size, method=method)
            plans[method] = p
            buf = torch.empty(batch_size, p.fan_in, p.features) if method == "instantiate" else None

            def run(at=at, gt=gt, rule=rule, m=m, p=p, buf=buf):
                sq, state = rule.norms(m, p, at, gt, lambda shape: buf)
                return rule.clipped_sum(m, at, gt, state, fastclip.clip_factor(sq, clip_norm))
            fns[method] = run
        with torch.no_grad():
            secs = medians(fns, rounds, lambda _: None)  # CPU ops are synchronous
        p = chosen[name]
        rows.append({"layer": name, "positions": p.positions, "fan_in": p.fan_in, "features": p.features,
                     "chunk": p.chunk, "chosen": p.method, "reason": p.reason,
                     "chunks": {k: v.chunk for k, v in plans.items()},
                     "model_choice": {"method": model_plans[name].method, "chunk": model_plans[name].chunk},
                     "literature": fastclip_plan.literature_choice(p.positions, p.fan_in, p.features),
                     "estimated_s": {k: e.seconds for k, e in model_plans[name].estimates.items()},
                     "measured_s": secs})
    return {"schema": SCHEMA, "framework": "torch", "model": model, "batch_size": batch_size,
            "rounds": rounds, "threads": torch.get_num_threads(), "status": "ok", "layers": rows,
            **({"gn_layers": gn_rows} if gn_rows else {})}


def _gn_row(name: str, rule: fastclip.Rule, m: torch.nn.GroupNorm, plan: fastclip_plan.LayerPlan, a: torch.Tensor,
            g: torch.Tensor, clip_norm: float, rounds: int) -> dict[str, Any]:
    """One GroupNorm's timing: its standard scale + shift gradient against fastclip's."""
    n, c = a.shape[:2]
    hw = a[0, 0].numel()
    with torch.no_grad():
        _, mean, rstd = torch.ops.aten.native_group_norm(a, m.weight, m.bias, n, c, hw, m.num_groups, m.eps)

        def standard():
            return torch.ops.aten.native_group_norm_backward(g, a, mean, rstd, m.weight, n, c, hw, m.num_groups,
                                                             [False, True, True])

        def run():
            sq, state = rule.norms(m, plan, a, g, torch.empty)
            return rule.clipped_sum(m, a, g, state, fastclip.clip_factor(sq, clip_norm))
        secs = medians({"standard": standard, "gn": run}, rounds, lambda _: None)
    return {"layer": name, "positions": hw, "channels": c, "groups": m.num_groups, "measured_s": secs}


def main(argv: list[str] | None = None) -> int:
    return port_cli("torch", measure, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
