"""Which mode of each library: every per-example DP study row, by framework,
the libraries' modes first and fastclip's below them, as % of its own
standard (same model, batch and variant) with its interval, in every cell.

Rows that clip another privacy unit (†, TF-Privacy's microbatch mean) are not
per-example DP and never sit in this comparison: they have their own table.
"""
from __future__ import annotations

import pandas as pd

from common.report import findings
from common.report.rows import esc, pct_ci, row_label, study_rows

COLUMNS = ["framework", "library", "row", "model", "batch_size", "status", "pct_of_standard", "pct_lo", "pct_hi",
           "pct_wide", "throughput_sps", "peak_mem_mib"]


def frame(df: pd.DataFrame) -> pd.DataFrame:
    """One row per DP study row (latest record of each configuration)."""
    st = study_rows(df)
    dp = st[st["mode"] == "dp"] if len(st) else st
    if dp.empty:
        return pd.DataFrame(columns=COLUMNS)
    out = pd.DataFrame({
        "framework": dp["framework"], "library": dp["dp_library"], "row": [row_label(r) for _, r in dp.iterrows()],
        "privacy_unit": dp["privacy_unit"], "model": dp["model"], "batch_size": dp["batch_size"].astype(int),
        "status": dp["status_text"], "pct_of_standard": dp["pct_of_standard"], "pct_lo": dp["pct_lo"],
        "pct_hi": dp["pct_hi"], "pct_wide": dp["pct_wide"], "throughput_sps": dp["throughput_sps"],
        "peak_mem_mib": dp["peak_mem_bytes"] / 2**20})
    out["_own"] = (out["library"] == findings.FASTCLIP).astype(int)
    return out.sort_values(["_own"], kind="stable").drop(columns="_own").reset_index(drop=True)


def _table(g: pd.DataFrame, cells: list[tuple[str, int]]) -> list[str]:
    out = ["| Library | Row | " + " | ".join(f"{m} B {b}" for m, b in cells) + " |", "|---|---|" + "---|" * len(cells)]
    for (lib, row), rows in g.groupby(["library", "row"], sort=False):
        by = {(r["model"], r["batch_size"]): r for r in rows.to_dict("records")}
        texts = []
        for c in cells:
            r = by.get(c)
            texts.append("not run" if r is None else esc(r["status"]) if r["status"] != "ok" else
                         pct_ci(r["pct_of_standard"], r["pct_lo"], r["pct_hi"], r["pct_wide"])
                         + (" (unpaired)" if pd.isna(r["pct_lo"]) else ""))
        out.append(f"| {findings.LIBRARY_NAMES.get(lib, lib)} | {esc(row)} | " + " | ".join(texts) + " |")
    return out + [""]


def lines(mf: pd.DataFrame, cells: list[tuple[str, int]]) -> list[str]:
    if mf.empty:
        return []
    out = ["## Every mode of each library", "",
           "Each framework's per-example DP study rows as % of that framework's standard (same model, batch and "
           "variant; paired, median and 95 % interval), the libraries' modes first and this study's fastclip below "
           "them. A cell that did not finish shows its status; the Findings take each library's fastest mode here.",
           ""]
    per_example = mf[mf["privacy_unit"] == "example"]
    for fw, g in per_example.groupby("framework", sort=False):
        out += [f"### {findings.FRAMEWORK_NAMES.get(fw, fw)}", ""] + _table(g, cells)
    other = mf[mf["privacy_unit"] != "example"]
    if len(other):
        out += ["### Not per-example DP (†)", "",
                "These rows clip the mean gradient of each microbatch: a different privacy unit, so they are "
                "not compared with the rows above.", ""] + _table(other.assign(row=other["row"] + " †"), cells)
    return out

