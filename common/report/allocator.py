"""Allocator A/B: the same configuration under the study's malloc settings and glibc's defaults.

``RunConfig.allocator`` is an environment setting applied to every framework
alike (common.harness.threads.ALLOCATORS). A run made with ``--allocators
keep,glibc`` times each configuration under both; this section puts each
pair side by side: samples/s, their ratio, peak memory, and each DP row's %
of the standard row *under the same allocator* (what the setting does to the
DP gap). Every other table takes, per configuration, the row of the study's
default allocator (``preferred``). Read from records only.
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from common.harness import records
from common.harness.threads import DEFAULT_ALLOCATOR
from common.report.scaling import num

OTHER = "glibc"  # the A/B's other arm: glibc's defaults


def _alloc(r: dict[str, Any]) -> str:
    return r.get("allocator", OTHER)


def _key(r: dict[str, Any]) -> tuple:
    """A configuration's identity without the allocator."""
    return records.config_key(r)[:-1]


def preferred(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of the study's default allocator, plus those of configurations
    the run has under another allocator only (e.g. runs from before the setting)."""
    has_default = {_key(r) for r in recs if _alloc(r) == DEFAULT_ALLOCATOR}
    return [r for r in recs if _alloc(r) == DEFAULT_ALLOCATOR or _key(r) not in has_default]


def frame(recs: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per single-device study configuration the run has under both
    ``DEFAULT_ALLOCATOR`` and ``OTHER``; empty when it has none."""
    latest = [r for r in records.latest(recs) if r.get("row_kind", "study") == "study" and r.get("devices", 1) == 1]
    by = {(_key(r), _alloc(r)): r for r in latest}
    std = {(r["framework"], r["variant"], r["model"], r["batch_size"], _alloc(r)): r["throughput_sps"]
           for r in latest if r["mode"] == "standard" and r["status"] == "ok"}

    def pct(r: dict[str, Any]) -> float | None:
        s = std.get((r["framework"], r["variant"], r["model"], r["batch_size"], _alloc(r)))
        return 100.0 * r["throughput_sps"] / s if s and r["status"] == "ok" and r["mode"] == "dp" else None

    rows = []
    for (key, alloc), a in by.items():
        b = by.get((key, OTHER))
        if alloc != DEFAULT_ALLOCATOR or b is None:
            continue
        ok = a["status"] == "ok" and b["status"] == "ok"
        rows.append({
            "framework": a["framework"], "impl": a["impl"], "variant": a["variant"], "model": a["model"],
            "batch_size": a["batch_size"], "microbatch_size": a["microbatch_size"], "mode": a["mode"],
            "default_status": a["status"], "other_status": b["status"],
            "default_sps": a["throughput_sps"] if a["status"] == "ok" else None,
            "other_sps": b["throughput_sps"] if b["status"] == "ok" else None,
            "ratio": a["throughput_sps"] / b["throughput_sps"] if ok else None,
            "default_pct_std": pct(a), "other_pct_std": pct(b),
            "default_mem": a["peak_mem_bytes"], "other_mem": b["peak_mem_bytes"],
            "reduced": records.reduced_precision(a) or records.reduced_precision(b),
        })
    return pd.DataFrame(rows)


def lines(af: pd.DataFrame, mark: str, legend: str) -> list[str]:
    """The report's section; ``mark``/``legend``: the low-precision marker and its text."""
    if af.empty:
        return []
    out = [f"## Allocator A/B: `{DEFAULT_ALLOCATOR}` (the study's malloc settings) vs `{OTHER}` (glibc's defaults)", "",
           "The same configuration under both, one worker each, back to back; the settings are in every record "
           "(`threads.env`, README: Allocator). Ratio: samples/s with "
           f"`{DEFAULT_ALLOCATOR}` / with `{OTHER}` (> 1: the study's setting is faster). % std: of the standard "
           "row of the same framework, variant, model and batch under the same allocator. Peak memory is RSS, "
           f"which under `{DEFAULT_ALLOCATOR}` keeps freed blocks.", "",
           f"| Framework | Impl | Model | B | {DEFAULT_ALLOCATOR} (samples/s) | {OTHER} (samples/s) | ratio | "
           f"% std {DEFAULT_ALLOCATOR} | % std {OTHER} | Peak MiB {DEFAULT_ALLOCATOR} | Peak MiB {OTHER} |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    reduced = False
    for r in af.itertuples():
        impl = r.impl + (f" ({r.variant})" if r.variant else "") + (
            f" mb {int(r.microbatch_size)}" if r.microbatch_size is not None and not pd.isna(r.microbatch_size) else "")
        m = mark if r.reduced else ""
        sps = lambda v, st: (num(v, "{:.1f}") + m) if v is not None and not pd.isna(v) else st
        out.append(f"| {r.framework} | {impl} | {r.model} | {r.batch_size} | {sps(r.default_sps, r.default_status)} | "
                   f"{sps(r.other_sps, r.other_status)} | {num(r.ratio, '{:.2f}')} | "
                   f"{num(r.default_pct_std, '{:.1f}')} | {num(r.other_pct_std, '{:.1f}')} | "
                   f"{num(None if r.default_mem is None else r.default_mem / 2**20, '{:.0f}')} | "
                   f"{num(None if r.other_mem is None else r.other_mem / 2**20, '{:.0f}')} |")
        reduced |= bool(r.reduced)
    return out + [""] + ([legend, ""] if reduced else [])
