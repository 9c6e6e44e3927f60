"""fastclip's per-layer timing, the measuring half every port
(``frameworks/<fw>/fastclip_layers.py``) shares: which layers are timed and
against what (:func:`time_layer`), the rows and the record they make
(:func:`row`, :func:`record`), interleaved median timing and the command line
that prints one JSON object (a fault is a row). A port supplies only its
framework's mechanics: per layer, the standard step's gradient of that layer's
parameters and fastclip's norms + clipped sum of it at a given plan.
common/report/layer_timing.py runs the ports and renders their tables.

Record layout: ``layers``, one row per layer whose plan chooses a method
(``fastclip_plan.CHOICE_KINDS``: conv, seq_dense), timed by each method;
``single_layers``, one row per layer of one exact method
(``fastclip_plan.EXACT_KINDS``: GroupNorm, LayerNorm, embedding), ``standard``
against ``fastclip``. Records of torch's first GroupNorm timing carry
``gn_layers`` instead (``fastclip`` under the key ``gn``).

Imports no framework.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
import traceback
from typing import Any, Callable, Mapping, Sequence

from common.reference.fastclip_plan import CHOICE_KINDS, EXACT_KINDS, METHODS, LayerPlan, literature_choice

# 2: rows carry their plan kind, one-method layers in ``single_layers`` (issue 37);
# 1: conv rows only, torch's GroupNorms in ``gn_layers``.
SCHEMA = 2
# The plan kinds a port times: the choice kinds by each method, the exact ones
# against their one method. Dense layers (T = 1) are not timed: their norms and
# clipped sum are the standard gradient's one product, nothing to choose or compare.
TIMED_KINDS = (*CHOICE_KINDS, *EXACT_KINDS)


def medians(fns: dict[str, Callable[[], Any]], rounds: int, sync: Callable[[Any], Any]) -> dict[str, float]:
    """Median seconds per call of each function over ``rounds`` interleaved rounds
    (so that a noisy CPU hits them alike), after one untimed call each (compile,
    warm caches); ``sync`` waits for a call's output (e.g. ``jax.block_until_ready``)."""
    for fn in fns.values():
        sync(fn())
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            sync(fn())
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


class Shared:
    """Compiled functions shared by the layers that compute the same thing: ``get(key,
    fn)`` compiles ``fn`` (``compile``: ``jax.jit``, ``tf.function``) the first time
    ``key`` is asked for and returns that compiled function after, so that a ViT's
    repeated blocks (every q, k, v, o of the same shapes) compile once rather than
    once per layer (compiling was most of a JAX port's time on the ViT). ``key`` must
    name all that ``fn`` depends on besides its arguments (the port's layer signature
    and what the function is, e.g. a method and chunk)."""

    def __init__(self, compile: Callable[[Callable], Callable]):
        self.compile, self.fns = compile, {}

    def get(self, key: Any, fn: Callable) -> Callable:
        if key not in self.fns:
            self.fns[key] = self.compile(fn)
        return self.fns[key]


def time_layer(plan: LayerPlan, standard: Callable[[], Any],
               fastclip: Callable[[LayerPlan], Callable[[], Any] | None], rounds: int, sync: Callable[[Any], Any],
               forced: Callable[[str], LayerPlan] | None = None) -> dict[str, float]:
    """Median seconds of one layer's ``standard`` gradient and of ``fastclip(plan)``
    (a call of fastclip's norms + clipped sum of the layer at that plan; None: not
    timed, e.g. a ghost norm that would not fit): for a choice kind by each of
    METHODS, at ``plan`` for its own method and at ``forced(method)`` for the other
    (keys: the methods); for an exact kind at ``plan`` (key ``fastclip``)."""
    if plan.kind in CHOICE_KINDS:
        if forced is None:
            raise ValueError(f"{plan.name}: a {plan.kind} layer is timed by each method: forced is required")
        cands = {m: fastclip(plan if plan.method == m else forced(m)) for m in METHODS}
    else:
        cands = {"fastclip": fastclip(plan)}
    return medians({"standard": standard, **{k: f for k, f in cands.items() if f is not None}}, rounds, sync)


def row(plan: LayerPlan, secs: Mapping[str, float], estimates_of: LayerPlan | None = None,
        **extra: Any) -> dict[str, Any]:
    """One layer's row: its shapes and measured seconds (``secs``, :func:`time_layer`);
    a choice kind's also the method it runs and why, the literature's rule and the
    cost model's estimates (of ``estimates_of``, default ``plan``: torch's chosen plan
    is its calibration's, the estimates its cost model's). ``extra`` adds or
    overrides fields (TF: ``variant``, ``unfold``, its whole-batch chunk)."""
    out: dict[str, Any] = {"layer": plan.name, "kind": plan.kind, "positions": plan.positions,
                           "fan_in": plan.fan_in, "features": plan.features}
    if plan.kind in CHOICE_KINDS:
        out |= {"chunk": plan.chunk, "chosen": plan.method, "reason": plan.reason,
                "literature": literature_choice(plan.positions, plan.fan_in, plan.features),
                "estimated_s": {m: e.seconds for m, e in (estimates_of or plan).estimates.items()}}
    return out | extra | {"measured_s": dict(secs)}


def record(framework: str, model: str, batch_size: int, rounds: int, rows: Sequence[dict[str, Any]],
           **extra: Any) -> dict[str, Any]:
    """A port's JSON object: the choice kinds' rows in ``layers``, the exact kinds'
    in ``single_layers`` (the module docstring)."""
    return {"schema": SCHEMA, "framework": framework, "model": model, "batch_size": batch_size, "rounds": rounds,
            **extra, "status": "ok", "layers": [r for r in rows if r["kind"] in CHOICE_KINDS],
            "single_layers": [r for r in rows if r["kind"] not in CHOICE_KINDS]}


def port_cli(framework: str, measure: Callable[..., dict[str, Any]], doc: str,
             argv: Sequence[str] | None = None) -> int:
    """A port's command line: ``--model --batch-size --rounds``; prints one JSON
    object, ``measure``'s or an error row (a fault is a row, as in the worker)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--model", default="small")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args(argv)
    try:
        res = measure(a.model, a.batch_size, rounds=a.rounds)
    except Exception as exc:  # noqa: BLE001 - reported as a row
        res = {"schema": SCHEMA, "framework": framework, "model": a.model, "batch_size": a.batch_size,
               "status": "error", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}
    print(json.dumps(res))
    return 0
