"""fastclip against standard: how much of the gap is the Gaussian noise draw.

Every DP row of a framework draws its noise with the same sampler (the fair-
rows rule), so the draw costs the same whatever the clipping: it is the part
of the DP gap that no clipping algorithm can remove. fastclip's records carry
the draw timed alone (``notes.noise_draw_s``, ``Bench.noise_draw``); from
them and the standard row of the same framework, variant, model and batch:

- ceiling = standard step / (standard step + noise draw): the % of standard
  of a DP row whose clipped gradient sum costs what the standard gradient
  costs (fastclip can beat it where its per-example products are cheaper
  than the standard step's weight gradients);
- without the noise = standard step / (fastclip step - noise draw): what
  the clipping itself costs against the standard step's weight gradients.

The draw depends on the parameter count, not the batch: a cell whose own
row could not time it (budget) takes the median of the rows of the same
framework, variant and model that did, marked ``*``. Read from records only.
"""
from __future__ import annotations

import statistics
from typing import Any

import pandas as pd

FASTCLIP = "fastclip"
BORROWED = "*"


def frame(df: pd.DataFrame) -> pd.DataFrame:
    """One row per fastclip study row that has an ok standard row of the same
    framework, variant, model and batch (``common.report.build.frame`` rows)."""
    study = df[df["row_kind"] == "study"]
    fc = study[study["impl"] == FASTCLIP]
    std = {(r["framework"], r["variant"], r["model"], int(r["batch_size"])): r
           for r in study[(study["impl"] == "standard") & (study["status"] == "ok")].to_dict("records")}
    drawn: dict[tuple, list[float]] = {}
    for r in fc.to_dict("records"):
        s = (r["_rec"].get("notes") or {}).get("noise_draw_s")
        if s is not None:
            drawn.setdefault((r["framework"], r["variant"], r["model"]), []).append(float(s))
    rows = []
    for r in fc.to_dict("records"):
        b = int(r["batch_size"])
        s = std.get((r["framework"], r["variant"], r["model"], b))
        if s is None:
            continue
        own = (r["_rec"].get("notes") or {}).get("noise_draw_s")
        pool = drawn.get((r["framework"], r["variant"], r["model"]), [])
        noise = float(own) if own is not None else (statistics.median(pool) if pool else None)
        std_step = b / s["throughput_sps"]
        ok = r["status"] == "ok"
        fc_step = b / r["throughput_sps"] if ok else None
        rows.append({
            "framework": r["framework"], "variant": r["variant"], "model": r["model"], "batch_size": b,
            "standard_sps": s["throughput_sps"], "fastclip_sps": r["throughput_sps"] if ok else None,
            "fastclip_status": r["status_text"], "reduced": bool(r["reduced"] or s["reduced"]),
            "pct_of_standard": 100.0 * std_step / fc_step if ok else None,
            "noise_draw_s": noise, "noise_borrowed": own is None and noise is not None,
            "noise_pct_of_standard_step": None if noise is None else 100.0 * noise / std_step,
            "ceiling_pct": None if noise is None else 100.0 * std_step / (std_step + noise),
            "without_noise_pct": (100.0 * std_step / (fc_step - noise)
                                  if ok and noise is not None and fc_step > noise else None),
            "mem_ratio": (r["peak_mem_bytes"] / s["peak_mem_bytes"]
                          if ok and r["peak_mem_bytes"] and s["peak_mem_bytes"] else None),
        })
    return pd.DataFrame(rows)


def _pct(v: Any) -> str:
    return "-" if v is None or pd.isna(v) else f"{v:.1f}"


def lines(nf: pd.DataFrame, reduced_mark: str = "‡", reduced_legend: str = "") -> list[str]:
    """The report's Markdown section (empty without fastclip rows)."""
    if nf.empty:
        return []
    out = ["## fastclip vs standard: the noise draw's share of the gap", "",
           "Same framework, variant, model and batch. The noise draw is one step's Gaussian noise for every "
           "parameter, timed alone with the sampler every DP row of that framework uses (median of timed draws). "
           "Ceiling: standard step / (standard step + noise draw), where a DP row lands whose clipped gradient sum costs what "
           "the standard gradient costs. "
           "Without the noise: standard step / (fastclip step - noise draw), what the clipping itself costs. "
           f"{BORROWED} the draw was timed in another batch size's row of the same model (this row's budget had no "
           "room for it). Mem: fastclip's peak / standard's.", "",
           "| Framework | Model | B | Standard (samples/s) | fastclip (samples/s) | % of standard | Noise draw (ms) "
           "| Noise / standard step (%) | Ceiling (%) | Without the noise (%) | Mem ratio |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in nf.itertuples():
        fw = r.framework + (f" ({r.variant})" if r.variant else "")
        sps = r.fastclip_status if r.fastclip_sps is None or pd.isna(r.fastclip_sps) else f"{r.fastclip_sps:.1f}"
        noise = "-" if r.noise_draw_s is None or pd.isna(r.noise_draw_s) else (
            f"{r.noise_draw_s * 1e3:.1f}" + (BORROWED if r.noise_borrowed else ""))
        mem = "-" if r.mem_ratio is None or pd.isna(r.mem_ratio) else f"{r.mem_ratio:.2f}x"
        mark = reduced_mark if r.reduced and r.pct_of_standard is not None and not pd.isna(r.pct_of_standard) else ""
        out.append(f"| {fw} | {r.model} | {r.batch_size} | {r.standard_sps:.1f} | {sps} | "
                   f"{_pct(r.pct_of_standard)}{mark} | {noise} | "
                   f"{_pct(r.noise_pct_of_standard_step)} | {_pct(r.ceiling_pct)} | {_pct(r.without_noise_pct)} | "
                   f"{mem} |")
    out.append("")
    if nf["reduced"].any() and reduced_legend:
        out += [reduced_legend, ""]
    return out
