"""The largest-batch search's table (common/harness/maxbatch.py measures; this renders its probe records)."""
from __future__ import annotations

from typing import Any


def table(recs: list[dict[str, Any]]) -> list[str]:
    """Markdown: largest ok batch and first failure per implementation, from probe records."""
    groups: dict[tuple, dict[int, dict[str, Any]]] = {}
    for r in recs:
        groups.setdefault((r["framework"], r["impl"], r["variant"], r["model"]), {})[r["batch_size"]] = r
    out = ["## Largest batch within the memory limit and time budget", "",
           "| Framework | Impl | Model | Largest ok batch | Peak Mem there (MiB) | First failing batch | Failure |",
           "|---|---|---|---|---|---|---|"]
    for (fw, impl, variant, model), by_b in groups.items():
        ok = [b for b, r in by_b.items() if r["status"] == "ok"]
        bad = sorted(b for b in by_b if by_b[b]["status"] != "ok" and (not ok or b > max(ok)))
        best = max(ok) if ok else None
        label = impl + (f" ({variant})" if variant else "")
        mem = "-" if best is None or by_b[best]["peak_mem_bytes"] is None else f"{by_b[best]['peak_mem_bytes'] / 2**20:.0f}"
        fail = by_b[bad[0]] if bad else None
        why = f"{fail['status']}: {fail['error'][:80]}" if fail else "-"
        out.append(f"| {fw} | {label} | {model} | {best or '-'} | {mem} | {bad[0] if bad else '-'} | {why} |")
    return out + [""]
