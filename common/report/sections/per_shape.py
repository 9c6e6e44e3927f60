"""Appendix: the seed report's per-shape tables (one per model and batch size,
one block per framework), every study row.
"""
from __future__ import annotations

import pandas as pd

from common.report.rows import fmt2, mb_cell, mem_mib, mode_cell, pct_text, row_pct, sps_text, study_rows, versions


def seed_table(block: pd.DataFrame) -> list[str]:
    """The seed's table (plus % of the fastest standard, spread/compile/memory columns) for one framework block."""
    head = ("| Mode | Implementation | Microbatch Size | Throughput (samples/s) | Speedup vs Standard | % of Standard "
            "| % of Fastest Standard (any framework) | Spread p10-p90 (samples/s) | CV | Compile (s) | Peak Mem (MiB) |")
    lines = [head, "|" + "---|" * 11]
    for _, r in block.iterrows():
        if r["status"] != "ok":
            cells = [mode_cell(r), r["label"], mb_cell(r), r["status_text"]] + ["-"] * 7
        else:
            is_ref = r["mode"] == "standard" and r["throughput_sps"] == r["standard_sps"]
            ratio = r["pct_of_standard"] / 100.0
            speed = "1.0x" if is_ref else (f"{ratio:.2f}x" if pd.notna(ratio) else "-")
            pct = "100%" if is_ref else row_pct(r)
            cells = [mode_cell(r), r["label"], mb_cell(r), sps_text(r), speed, pct, pct_text(r["pct_of_fastest_standard"]),
                     f"{r['sps_p10']:.1f}-{r['sps_p90']:.1f}", f"{r['step_s_cv']:.2f}", f"{r['compile_s']:.2f}",
                     mem_mib(r["peak_mem_bytes"])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def seed_tables(df: pd.DataFrame) -> list[str]:
    st = study_rows(df)
    out: list[str] = ["## Every row, per model and batch size", "", "The seed report's tables: every study row of each framework, standard first.", ""] if len(st) else []
    for (shape, b), grp in st.groupby([st["input_shape"].map(tuple), "batch_size"], sort=False):
        out += [f"### Input Shape: {tuple(shape)}, Batch Size: {b}", ""]
        top = grp["fastest_standard_sps"].dropna()
        if len(top):
            out += [f"**Fastest standard of any framework:** {fmt2(top.iloc[0])} samples/s "
                    f"({grp['fastest_standard_row'].dropna().iloc[0]})", ""]
        for fw, block in grp.groupby("framework", sort=False):
            std = block["standard_sps"].dropna()
            out += [f"#### {fw} ({versions(block)})", ""]
            if len(std):
                ref = block[(block["mode"] == "standard") & (block["throughput_sps"] == std.iloc[0])]["label"].iloc[0]
                note = f" (best standard: {ref})" if (block["mode"] == "standard").sum() > 1 else ""
                out += [f"**Standard Throughput:** {fmt2(std.iloc[0])} samples/s{note}", ""]
            else:
                out += ["**Standard Throughput:** no ok standard row", ""]
            out += seed_table(block) + [""]
    return out
