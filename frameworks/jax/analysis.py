"""Where a JAX step's time goes: the analysis seam's JAX side.

``frameworks.jax.explain.analyze`` reads the JAXPR and the compiled HLO of
the very jitted step the benchmark times; this module adds the ``summary``
every framework's analysis has (``common.report.analysis``): the
weight-gradient convolutions/products with their shapes and group counts,
the per-example gradients materialised (bytes at once), and the costliest
conv/dot operations by FLOPs (loop trips counted). JAX on CPU has no per-op
timer the study can read, so its top ops are ranked by work, XLA's cost
analysis giving the compiled total.

    python -m frameworks.jax.analysis --impl jax_privacy --model small --batch-size 64
"""
from __future__ import annotations

import sys
from typing import Any

from common.harness.analysis import SCHEMA, TOP_N, cli

FRAMEWORK = "jax"


def _op_name(o: dict[str, Any], prim: str) -> str:
    name = prim if o["role"] != "weight_grad" else f"{prim} → {o['layer']} weight grad"
    groups = o.get("feature_group_count", 1) * o.get("batch_group_count", 1)
    return name + (f" (groups {groups})" if groups != 1 else "")


def summary(a: dict[str, Any], top: int = TOP_N) -> dict[str, Any]:
    """The seam's three answers from a ``frameworks.jax.explain`` analysis."""
    j = a["jaxpr"]
    ops = [(o, "conv") for o in j["convs"]] + [(o, "dot") for o in j["dots"]]
    total = sum(o["flops"] * (o["mult"] or 1) for o, _ in ops)
    wgrad = [{"op": _op_name(o, p), "shapes": [o["out"]], "calls": o["mult"] or 1,
              "flops": o["flops"] * (o["mult"] or 1), "per_example": (o.get("k") or 1) > 1}
             for o, p in ops if o["role"] == "weight_grad"]
    ranked = sorted(ops, key=lambda op: -op[0]["flops"] * (op[0]["mult"] or 1))[:top]
    top_ops = [{"op": _op_name(o, p), "flops": o["flops"] * (o["mult"] or 1),
                "share": o["flops"] * (o["mult"] or 1) / total if total else None, "calls": o["mult"] or 1,
                "mem_bytes": None} for o, p in ranked]
    mat = any(e["materialised"] for e in j["per_example"].values())
    return {"weight_grad_ops": sorted(wgrad, key=lambda w: -w["flops"]),
            "per_example_grads": {"materialised": mat, "bytes": j["per_example_bytes_at_once"] or None},
            "top_ops": top_ops,
            "top_by": "FLOPs of the JAXPR's convolutions and products (x loop trips; no per-op timer on XLA:CPU)",
            "xla_flops": (a.get("xla") or {}).get("cost", {}).get("flops")}


def analyze(cfg: Any) -> dict[str, Any]:
    """``frameworks.jax.explain.analyze`` of ``cfg`` (a RunConfig), with the seam's summary."""
    from frameworks.jax import explain
    res = explain.analyze(cfg.impl, cfg.model, cfg.batch_size, cfg.microbatch_size)
    res.update(schema=SCHEMA, variant=cfg.variant, error=None, summary=summary(res))
    return res


def main(argv: list[str] | None = None) -> int:
    return cli(FRAMEWORK, analyze, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
