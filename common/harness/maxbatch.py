"""Largest batch per implementation within a memory limit and a time budget.

Doubling from a start batch until a configuration fails (oom / timeout /
error), then bisection between the last ok and the first failing batch until
the gap is within 1/16 of the ok batch. Every probe is a normal record (short
timing), appended to ``<out>/max_batch.jsonl``; failures are outcomes.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Sequence

from common.harness import records
from common.harness.config import IMPLS, RunConfig, Timing

MAX_BATCH = "max_batch.jsonl"
PROBE_TIMING = Timing(warmup_steps=1, repeats=2, window_s=0.2, min_steps=1)


def search(probe: Callable[[int], str], start: int = 16, limit: int = 8192) -> dict[str, Any]:
    """Largest B with ``probe(B) == 'ok'``; ``probe`` returns a record status."""
    tried: dict[int, str] = {}

    def ok(b: int) -> bool:
        if b not in tried:
            tried[b] = probe(b)
        return tried[b] == "ok"

    lo, hi = 0, None
    b = start
    while b <= limit:
        if not ok(b):
            hi = b
            break
        lo, b = b, b * 2
    if hi is not None and lo == 0:  # the start batch already fails: halve down
        b = start // 2
        while b >= 1 and not ok(b):
            hi, b = b, b // 2
        lo = max(b, 0)
    while hi is not None and lo and hi - lo > max(1, lo // 16):
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return {"largest_ok": lo or None, "first_failure": hi, "failure_status": tried.get(hi) if hi else None,
            "probes": dict(sorted(tried.items()))}


def _microbatch(cfg_impl, b: int) -> int | None:
    """The microbatch a search uses: whole batch for sweeps (the memory-hungry
    vectorised case), 1 where the impl is per-example, none otherwise."""
    return {"none": None, "per_example": 1, "sweep": b, "mean_sweep": b}[cfg_impl.microbatch]


def run_searches(base: Sequence[RunConfig], out: Path, run_one: Callable[[RunConfig], dict[str, Any]],
                 start: int = 16, limit: int = 8192) -> list[dict[str, Any]]:
    """One search per distinct (framework, impl, variant, model) of ``base``."""
    seen, results = set(), []
    for cfg in base:
        key = (cfg.framework, cfg.impl, cfg.variant, cfg.model)
        if key in seen:
            continue
        seen.add(key)
        info = IMPLS[cfg.framework][cfg.impl]

        def probe(b: int, cfg=cfg, info=info) -> str:
            c = dataclasses.replace(cfg, batch_size=b, microbatch_size=_microbatch(info, b), timing=PROBE_TIMING).validate()
            rec = run_one(c)
            records.append(out / MAX_BATCH, rec)
            return rec["status"]

        results.append({"framework": cfg.framework, "impl": cfg.impl, "variant": cfg.variant, "model": cfg.model,
                        **search(probe, start, limit)})
    return results
