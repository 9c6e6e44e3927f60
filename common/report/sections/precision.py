"""How sure the numbers are: rounds, pairs, dropped windows, wide intervals and
why, and the machine with its start/end canary.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from common.harness import records
from common.report.rows import row_label


def precision_lines(df: pd.DataFrame, run_dir: Path) -> list[str]:
    """Rounds, pairs and dropped windows of the run; each wide interval with its
    reason; the machine and its start/end canary (did it change speed?)."""
    from common.harness import machine
    out = ["## Precision", ""]
    recs = list(df["_rec"]) if "_rec" in df else []
    paired = df[df["ratio"].notna()]
    if len(paired):
        rounds = paired["rounds"].astype(int)
        out.append(f"{len(paired)} DP and direct-use rows are paired with their reference; rounds per row "
                   f"{rounds.min()}-{rounds.max()}, pairs per row {int(paired['pairs'].min())}-"
                   f"{int(paired['pairs'].max())}. Rounds after the first repeat every row a finding can name "
                   "(runner.later_round_keys); the microbatch sweep, A/B variants, microbatch-mean rows and library "
                   "modes more than 2x behind their library's best in round 1 are measured in one process and "
                   "marked so.")
    dropped = sum(len((r.get("paired") or {}).get("dropped") or []) + len((r.get("notes") or {}).get(
        "dropped_windows") or []) for r in recs)
    out.append(f"Windows or pairs dropped for steal above {records.STOLEN_SHARE:.0%} of the CPUs (and replaced "
               f"where the budget allowed), in the rows' latest records: {dropped}.")
    out.append("")
    wide = df[df["pct_wide"].notna() | ((df["row_kind"] == "direct") & df["ratio_wide"].notna())]
    if len(wide):
        out += ["Wide intervals:", ""]
        out += [f"- {r['framework']} {row_label(r)}, {r['model']}, B={int(r['batch_size'])}: "
                f"{r['pct_wide'] if isinstance(r['pct_wide'], str) else r['ratio_wide']}" for _, r in wide.iterrows()]
        out.append("")
    data = machine.read(run_dir / machine.FILE)
    if data:
        m = data.get("machine") or {}
        ext = ", ".join(m.get("vector_extensions") or []) or "-"
        out += [f"Machine: {m.get('cpu_model')} ({m.get('vendor')}, family {m.get('family')} model "
                f"{m.get('model')}), {m.get('cores')} cores, hypervisor {m.get('hypervisor') or '-'}; "
                f"vector extensions: {ext}.", ""]
        can = data.get("canary") or {}
        if can:
            out += ["| Canary | " + " | ".join(can) + " |", "|---|" + "---|" * len(can)]
            for k in ("gemm_s", "conv_s"):
                out.append(f"| {k} (ms) | " + " | ".join(f"{1e3 * c[k]:.2f}" if c.get(k) else "-"
                                                      for c in can.values()) + " |")
            if "start" in can and "end" in can:
                drift = can["end"]["conv_s"] / can["start"]["conv_s"]
                out += ["", f"The conv canary took {drift:.2f}x as long at the end as at the start"
                        + (" (the machine changed speed during the run)." if abs(drift - 1) > 0.1 else ".")]
            out.append("")
    return out
