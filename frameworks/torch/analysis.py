"""Where a PyTorch step's time goes: the analysis seam's torch side.

``analyze(cfg)`` builds the very step the benchmark times (the adapter's
``build``), runs it a few times untimed, then ``STEPS`` more under
``torch.profiler`` (CPU activity, input shapes, memory) and answers the
questions every framework's analysis answers, in the shape
``common.report.explain`` renders (``summary``):

* ``weight_grad_ops``: the products that make weight gradients (the conv
  backward's weight half, ``mm``/``bmm``/``einsum``), grouped by input shapes,
  with a flag when their batch dimension is the batch (per example);
* ``per_example_grads``: whether per-example weight gradients are kept and
  how many bytes (what the impl itself reports in its notes);
* ``top_ops``: the operators with the largest self CPU time per step, their
  share of the profiled time, calls per step and self memory.

    python -m frameworks.torch.analysis --impl opacus_hooks --model small --batch-size 64
"""
from __future__ import annotations

import sys
from typing import Any

from torch.profiler import ProfilerActivity, profile

from common.harness import threads
from common.harness.config import RunConfig
from common.harness.analysis import TOP_N, base_record, cli

FRAMEWORK = "torch"
WARMUP = 2
STEPS = 3
# Operators whose output can be a weight gradient (aten names as the profiler shows them).
PRODUCTS = ("aten::convolution_backward", "aten::mm", "aten::bmm", "aten::einsum")  # addmm: the forward


def _per_step(v: float) -> float:
    return v / STEPS


def _product_rows(prof) -> list[dict[str, Any]]:
    rows = []
    for e in prof.key_averages(group_by_input_shape=True):
        if e.key not in PRODUCTS:
            continue
        shapes = [list(s) for s in (e.input_shapes or []) if s]
        # Batched products (Opacus's einsums, fastclip's bmm over a chunk of
        # examples) make one product per example; a plain step has none.
        per_example = e.key in ("aten::bmm", "aten::einsum")
        rows.append({"op": e.key.removeprefix("aten::"), "shapes": shapes[:3], "calls": e.count // STEPS,
                     "self_s": _per_step(e.self_cpu_time_total) / 1e6, "per_example": per_example})
    return sorted(rows, key=lambda r: -r["self_s"])


def _top_rows(prof, top: int) -> tuple[list[dict[str, Any]], float]:
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    rows = [{"op": e.key.removeprefix("aten::"), "self_s": _per_step(e.self_cpu_time_total) / 1e6,
             "share": e.self_cpu_time_total / total if total else None, "calls": e.count // STEPS,
             "mem_bytes": int(_per_step(e.self_cpu_memory_usage))}
            for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]]
    return rows, _per_step(total) / 1e6


def analyze(cfg: RunConfig, top: int = TOP_N) -> dict[str, Any]:
    from frameworks.torch import ADAPTER
    ADAPTER.setup(threads.resolve(cfg.threads))
    bench = ADAPTER.build(cfg)
    for _ in range(WARMUP):
        bench.sync(bench.step())
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, profile_memory=True) as prof:
        for _ in range(STEPS):
            bench.sync(bench.step())
    products = _product_rows(prof)
    top_ops, total_s = _top_rows(prof, top)
    kept = bench.notes.get("per_sample_grad_bytes")  # what Opacus / fastclip keep, as the impl reports it
    per_example = bool(kept) if kept is not None else any(p["per_example"] for p in products)
    rec = base_record(FRAMEWORK, cfg, ADAPTER.versions(), ADAPTER.device())
    rec["summary"] = {
        "weight_grad_ops": products,
        "per_example_grads": {"materialised": per_example, "bytes": kept},
        "top_ops": top_ops,
        "top_by": f"self CPU time per step (torch.profiler, {STEPS} steps after {WARMUP} untimed)",
        "profiled_step_s": total_s,
    }
    rec["notes"] = {k: v for k, v in bench.notes.items() if isinstance(v, (int, float, str, bool, type(None)))}
    return rec


def main(argv: list[str] | None = None) -> int:
    return cli(FRAMEWORK, analyze, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
