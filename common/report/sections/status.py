"""What did not run: status counts per framework and each configuration that
did not finish, with its error.
"""
from __future__ import annotations

import pandas as pd

from common.harness import records
from common.report.rows import esc, fw_rank, mb_cell


def status_counts(df: pd.DataFrame) -> pd.DataFrame:
    """Configurations (latest record of each) per framework and status, every status a column."""
    t = pd.crosstab(df["framework"], df["status"]).reindex(columns=list(records.STATUSES), fill_value=0)
    t = t.loc[sorted(t.index, key=fw_rank)]
    t["total"] = t.sum(axis=1)
    return t


def status_lines(df: pd.DataFrame) -> list[str]:
    t = status_counts(df)
    out = ["## What did not run", "", "Configurations per framework and status (the latest record of each; direct-use rows included), then every configuration that did not finish with its error.", "",
           "| Framework | " + " | ".join(t.columns) + " |", "|---" * (len(t.columns) + 1) + "|"]
    out += [f"| {fw} | " + " | ".join(str(int(v)) for v in row) + " |" for fw, row in t.iterrows()]
    return out + [""]


def problems(df: pd.DataFrame) -> list[str]:
    bad = df[df["status"] != "ok"]
    if bad.empty:
        return []
    out = ["| Framework | Impl | Model | B | Microbatch | Status | Error |",
           "|---|---|---|---|---|---|---|"]
    for _, r in bad.iterrows():
        err = esc(r["error"])[:300]
        out.append(f"| {r['framework']} | {r['label']} | {r['model']} | {r['batch_size']} | {mb_cell(r)} | "
                   f"{r['status_text']} | {err} |")
    return out + [""]
