"""Data-parallel scaling: the same impl on 1 and N devices (weak scaling).

Each device holds ``batch_size`` examples, so N devices step on N times the
batch. From the records of one run (latest per configuration, study rows
only), per framework, impl, variant, model and per-device batch:

- samples/s at every device count the run has;
- speedup = samples/s at N / samples/s at 1 device;
- scaling efficiency = samples/s at N / (N x samples/s at 1 device);
- each row's % of the standard row of the same framework, variant, model,
  per-device batch and device count: whether DP scales like standard.

On a CPU the N devices share the machine's cores (``threads.per_device``
each): 1 device has all the threads, so the efficiency of perfect use of
the cores is 1/N there, and the comparison that carries over to real
devices is DP's % of standard at each device count. Read from records only.
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from common.harness import records


def frame(recs: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per (framework, impl, variant, model, per-device batch,
    microbatch size, devices) of a run that has some configuration on more
    than one device; empty otherwise."""
    latest = [r for r in records.latest(recs) if r.get("row_kind", "study") == "study"]
    multi = {(r["framework"], r["model"], r["batch_size"]) for r in latest if r.get("devices", 1) > 1}
    rows = [r for r in latest if (r["framework"], r["model"], r["batch_size"]) in multi]
    if not rows:
        return pd.DataFrame()
    ok = {records.config_key(r): r for r in rows if r["status"] == "ok"}
    std = {(r["framework"], r["variant"], r["model"], r["batch_size"], r.get("devices", 1)): r
           for r in ok.values() if r["mode"] == "standard"}
    out = []
    for r in rows:
        n = r.get("devices", 1)
        k = records.config_key(r)  # (..., devices, allocator): the same configuration on 1 device
        one = ok.get(k[:-2] + (1,) + k[-1:])
        s = std.get((r["framework"], r["variant"], r["model"], r["batch_size"], n))
        sps = r["throughput_sps"] if r["status"] == "ok" else None
        out.append({
            "framework": r["framework"], "impl": r["impl"], "variant": r["variant"], "mode": r["mode"],
            "microbatch_size": r["microbatch_size"], "model": r["model"], "batch_per_device": r["batch_size"],
            "devices": n, "global_batch": r.get("global_batch_size", r["batch_size"]), "status": r["status"],
            "error": r["error"], "samples_per_s": sps, "reduced": records.reduced_precision(r),
            "threads_per_device": (r.get("threads") or {}).get("per_device"),
            "speedup": sps / one["throughput_sps"] if sps and one else None,
            "efficiency": sps / (n * one["throughput_sps"]) if sps and one else None,
            "pct_of_standard": 100.0 * sps / s["throughput_sps"] if sps and s else None,
        })
    return pd.DataFrame(out)


def num(v: Any, fmt: str) -> str:
    """A table cell: ``fmt`` of ``v``, or "-" when there is no number (None or NaN)."""
    return "-" if v is None or pd.isna(v) else fmt.format(v)


def lines(sf: pd.DataFrame, reduced_mark: str = "‡", reduced_legend: str = "") -> list[str]:
    """The report's Markdown section (empty without multi-device rows)."""
    if sf.empty:
        return []
    counts = sorted(sf["devices"].unique())
    out = ["## Data-parallel scaling (weak: the batch per device fixed)", "",
           "Samples/s over all devices; % std: of the standard row of the same framework, variant, model, batch "
           "per device and device count; speedup: samples/s at N devices / at 1; efficiency: samples/s at N / "
           "(N x samples/s at 1). Noise is drawn once per step. On a CPU the N devices share its cores "
           "(threads per device in the records), so efficiency 1/N there is as fast as one device with all "
           "of them; what carries over to real devices is DP's % of standard at each device count.", ""]
    why: dict[str, list[str]] = {}  # reason -> the rows it holds for
    for (model, b), block in sf.groupby(["model", "batch_per_device"], sort=False):
        head = ["Framework", "Impl"] + [h for n in counts for h in (f"{n} dev (samples/s)", f"% std @{n}")]
        head += [h for n in counts if n > 1 for h in (f"speedup @{n}", f"efficiency @{n}")]
        out += [f"**{model}, B {b} per device**", "", "| " + " | ".join(head) + " |",
                "|" + "---|" * len(head)]
        block = block.assign(_o=block["mode"].map({"standard": 0, "dp": 1}))
        for (fw, impl, variant, mb), g in block.sort_values(["framework", "_o", "impl"]).groupby(
                ["framework", "impl", "variant", "microbatch_size"], sort=False, dropna=False):
            by_n = {int(r["devices"]): r for r in g.to_dict("records")}
            label = impl + (f" ({variant})" if variant else "") + ("" if pd.isna(mb) else f", mb {int(mb)}")
            cells = [fw, label]
            for n in counts:
                r = by_n.get(n)
                if r is None:
                    cells += ["-", "-"]
                elif r["samples_per_s"] is None or pd.isna(r["samples_per_s"]):
                    cells += [r["status"], "-"]
                    if r["status"] in ("unsupported", "error"):
                        rows_of = why.setdefault(f"{r['status']}: {r['error']}", [])
                        if f"{fw} {label}" not in rows_of:
                            rows_of.append(f"{fw} {label}")
                else:
                    cells += [f"{r['samples_per_s']:.1f}" + (reduced_mark if r["reduced"] else ""),
                              num(r["pct_of_standard"], "{:.1f}")]
            for n in counts:
                if n > 1:
                    r = by_n.get(n) or {}
                    cells += [num(r.get("speedup"), "{:.2f}x"), num(r.get("efficiency"), "{:.2f}")]
            out.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
        out.append("")
    if why:
        out += ["Rows without a number (each reason once, with the rows it holds for, on every model):", ""]
        out += [f"- {', '.join(rows)}: {reason}" for reason, rows in why.items()] + [""]
    if sf["reduced"].any() and reduced_legend:
        out += [reduced_legend, ""]
    return out
