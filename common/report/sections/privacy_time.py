"""Appendix: epsilon and time to train a CIFAR-10-sized plan for every ok row.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any


from common.report import privacy
from common.report.rows import PLAN


def privacy_section(recs: list[dict[str, Any]], out_dir: Path) -> list[str]:
    """epsilon and time to train a CIFAR-10-sized plan for every ok row (common/report/privacy.py)."""
    try:
        table = privacy.privacy_table(recs, PLAN)
    except ImportError:  # dp-accounting lives in the study env
        return []
    if table.empty:
        return []
    table.to_csv(out_dir / "tables" / "privacy.csv", index=False)
    # epsilon depends on the plan and B only (not on the framework or the clipping): one line per B.
    eps = table.dropna(subset=["epsilon_rdp"]).drop_duplicates("batch_size").sort_values("batch_size")
    out = [f"## Privacy and time to train (N={PLAN.dataset_size:,}, {PLAN.epochs} epochs, sigma={PLAN.noise_multiplier}, "
           f"delta=1/N)", "", privacy.FIXED_BATCH_NOTE, "",
           "The epsilon of the plan at each batch size (every per-example DP row at that B shares it):", "",
           "| B | steps | eps (RDP) | eps (PLD) |", "|---|---|---|---|"]
    out += [f"| {int(r.batch_size)} | {int(r.steps)} | {r.epsilon_rdp:.2f} | {r.epsilon_pld:.2f} |" for r in eps.itertuples()]
    out += ["", "Time to train the plan at each row's median step time (compile and input pipeline excluded) is in "
            "`tables/privacy.csv` (`train_h`, `extra_h_vs_standard`); the appendix's fastest-rows table shows it for "
            "the rows that matter.", ""]
    return out
