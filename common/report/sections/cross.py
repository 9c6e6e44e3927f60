"""Appendix: every study impl's best variant per cell, across frameworks.
"""
from __future__ import annotations

import pandas as pd

from common.report.rows import mb_text, none_ok, pct_text, row_pct, sps_text, study_rows


def cross_framework(df: pd.DataFrame) -> pd.DataFrame:
    """Rows (model, B); one column per framework x impl (study rows): its best variant / microbatch as
    "% of own standard / % of fastest standard (samples/s, variant, mb)"."""
    st = study_rows(df)
    cells: dict[tuple, dict[str, str]] = {}
    for (model, b, fw, impl), g in st.groupby(["model", "batch_size", "framework", "impl"], sort=False):
        gok = g[g["status"] == "ok"]
        col = f"{fw}: {impl}" + ("†" if (g["privacy_unit"] == "microbatch_mean").any() else "")
        if gok.empty:
            text = none_ok(g)
        else:
            r = gok.loc[gok["throughput_sps"].idxmax()]
            m = mb_text(fw, impl, r["microbatch_size"]) if impl != "standard" else ""
            extra = [v for v in (r["variant"], (f"mb {m}" if m.isdigit() else m) if m else "") if v]
            text = (f"{row_pct(r)} / {pct_text(r['pct_of_fastest_standard'])} "
                    f"({sps_text(r, '{:.0f}')}/s{', ' + ', '.join(extra) if extra else ''})")
        cells.setdefault((model, b), {})[col] = text
    if not cells:
        return pd.DataFrame()
    table = pd.DataFrame.from_dict(cells, orient="index")
    table.index = pd.MultiIndex.from_tuples(table.index, names=["model", "batch_size"])
    return table.fillna("-")
