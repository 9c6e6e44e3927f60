"""One configuration, measured in its own process with its framework's interpreter.

    <venv>/bin/python -m common.worker CONFIG.json RESULT.json

Writes the framework-side fields of the record to RESULT.json: versions,
device, timing, memory and notes, or a status (oom / error) with the message
when building or stepping raised. Hard deaths (OOM killer, segfault, budget)
leave no result; the runner turns those into records.
"""
from __future__ import annotations

import json
import sys
import time
import traceback
from typing import Any

from common import adapter as adapter_mod
from common import timing, threads
from common.config import RunConfig
from common.memory import PeakTracker

OOM_MARKERS = ("out of memory", "resource_exhausted", "resource exhausted", "memoryerror", "oom", "cannot allocate memory")


def classify(exc: BaseException) -> str:
    """'oom' for allocation failures of any framework, else 'error'."""
    text = f"{type(exc).__name__}: {exc}".lower()
    if isinstance(exc, MemoryError) or any(m in text for m in OOM_MARKERS):
        return "oom"
    return "error"


def one_line(exc: BaseException, limit: int = 500) -> str:
    msg = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {msg}"[:limit]


def run(cfg: RunConfig, started: float) -> dict[str, Any]:
    out: dict[str, Any] = {"threads": threads.recorded(cfg.threads)}
    try:
        adapter = adapter_mod.load(cfg.framework)
        adapter.setup(threads.resolve(cfg.threads))
        versions = adapter.versions()
        out["framework_version"] = versions.get(cfg.framework)
        lib = cfg.impl_info.dp_library
        out["dp_library"] = lib
        out["dp_library_version"] = versions.get(lib) if lib else None
        out["device"] = adapter.device()
        tracker = PeakTracker()
        bench = adapter.build(cfg)
        out["notes"] = dict(bench.notes)
        budget_left = cfg.budget_s - (time.monotonic() - started)
        t = timing.measure(bench.step, bench.sync, cfg.timing, budget_s=budget_left)
        out.update(t.to_dict())
        out.pop("warmup_step_s")
        out["notes"]["warmup_step_s"] = t.warmup_step_s
        out["notes"].update(bench.notes)  # a step may add notes when first traced
        out["throughput_sps"] = cfg.batch_size / t.step_s_median
        peak = bench.peak_memory()
        if peak is not None:
            out["peak_mem_bytes"], out["mem_source"] = int(peak), "allocator_peak"
        else:
            out["peak_mem_bytes"] = tracker.peak_above_baseline()
            out["mem_source"] = "rss_peak_above_baseline" if tracker.reset_ok else "rss_peak_since_start"
        out["status"], out["error"] = "ok", None
    except Exception as exc:  # noqa: BLE001 - every failure becomes a record
        traceback.print_exc()
        out["status"], out["error"] = classify(exc), one_line(exc)
    return out


def main(argv: list[str]) -> int:
    started = time.monotonic()
    cfg_path, result_path = argv
    with open(cfg_path) as f:
        cfg = RunConfig.from_dict(json.load(f)).validate()
    result = run(cfg, started)
    with open(result_path, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
