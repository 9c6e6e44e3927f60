"""Appendix: per cell, the fastest standard and the fastest per-example DP rows
(best overall and best library), with time to train a CIFAR-10-sized plan.
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from common.harness.config import XLA_DEFAULT
from common.report import findings, privacy
from common.report.rows import PLAN, REDUCED, esc, mb_int, none_ok, pct_text, row_label, row_pct, study_rows


PICKS_NOTE = ("The DP picks are the Findings' (common.report.findings.pick: per option, the mode that trains "
              "fastest among the rows repeated in fresh processes, paired and proven equal to the float64 "
              "reference: the highest % of its own standard, scaled by its variant's standard over the framework's fastest "
              "(TF graph or XLA); "
              f"never the `{XLA_DEFAULT}` A/B variant or the microbatch sweep); best overall "
              "and best library are the fastest of those picks. Direct-use rows (`direct_*`) are checks of a "
              "study row and are never picked; they have their own table.")


OWN_LIBRARY = findings.FASTCLIP  # fastclip's dp_library: not a library a user picks up
HEADLINE_PICKS = (("dp", "best overall"), ("lib", "best library"))  # (column prefix, the table's "DP pick" cell)
_PICK_FIELDS = ("label", "impl", "variant", "microbatch_size", "library", "sps", "reduced", "pct_of_standard",
                "pct_lo", "pct_hi", "pct_wide", "pct_of_fastest_standard", "peak_mem_mib", "train_h")


def _dp_pick(prefix: str, dp_all: pd.DataFrame, picks: pd.DataFrame) -> dict[str, Any]:
    """The fastest row among ``picks`` (the findings frame's ok rows of one cell and framework; by
    ``rank_pct``, the picking rule's order) as
    ``{prefix}_*`` columns, read from ``dp_all`` (the cell's DP rows); "none named: ..." where none is."""
    if len(picks):
        p = picks.loc[picks["rank_pct"].idxmax()]
        d = dp_all[(dp_all["impl"] == p["impl"]) & (dp_all["variant"] == p["variant"])
                   & (dp_all["microbatch_size"].isna() if pd.isna(p["microbatch_size"])
                      else dp_all["microbatch_size"] == p["microbatch_size"])].iloc[0]
        out = dict(label=row_label(d), impl=d["impl"], variant=d["variant"], microbatch_size=mb_int(d["microbatch_size"]),
                   library=d["dp_library"], sps=d["throughput_sps"], reduced=bool(d["reduced"]),
                   pct_of_standard=d["pct_of_standard"], pct_lo=d["pct_lo"], pct_hi=d["pct_hi"],
                   pct_wide=d["pct_wide"], pct_of_fastest_standard=d["pct_of_fastest_standard"],
                   peak_mem_mib=None if pd.isna(d["peak_mem_bytes"]) else d["peak_mem_bytes"] / 2**20,
                   train_h=privacy.train_time_s(d["_rec"], PLAN) / 3600.0)
    elif (dp_all["status"] == "ok").any():
        out = dict(label="none named (see Findings)")
    elif len(dp_all):
        out = dict(label="none ok: " + none_ok(dp_all))
    else:
        return {}
    return {f"{prefix}_{k}": v for k, v in out.items()}


def headline_frame(df: pd.DataFrame, answer: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per (model, B, framework): the fastest standard row, the findings' fastest pick (``rank_pct``)
    of any option (``dp_*``; fastclip in practice) and of a real DP library (``lib_*``:
    dp_library set and not this project's own "dpbench"). ``answer``: findings.frame(df) (computed when None)."""
    answer = findings.frame(df) if answer is None else answer
    rows = []
    st = study_rows(df)
    for (model, b, fw), g in st.groupby(["model", "batch_size", "framework"], sort=False):
        ok = g[g["status"] == "ok"]
        std = ok[ok["mode"] == "standard"]
        dp_all = g[(g["mode"] == "dp") & (g["privacy_unit"] == "example")]
        lib_all = dp_all[dp_all["dp_library"].notna() & (dp_all["dp_library"] != OWN_LIBRARY)]
        picks = answer[(answer["model"] == model) & (answer["batch_size"] == b) & (answer["framework"] == fw)
                       & (answer["status"] == "ok")] if len(answer) else answer
        row: dict[str, Any] = {"model": model, "batch_size": int(b), "framework": fw,
                               "fastest_standard_sps": g["fastest_standard_sps"].iloc[0],
                               "fastest_standard_row": g["fastest_standard_row"].iloc[0]}
        if len(std):
            s = std.loc[std["throughput_sps"].idxmax()]
            row.update(std_label=s["label"], std_sps=s["throughput_sps"], std_reduced=bool(s["reduced"]),
                       std_is_fastest=bool(s["throughput_sps"] == s["fastest_standard_sps"]),
                       std_train_h=privacy.train_time_s(s["_rec"], PLAN) / 3600.0)
        else:
            has = (g["mode"] == "standard").any()
            row.update(std_label="none ok: " + none_ok(g[g["mode"] == "standard"]) if has else None)
        row.update(_dp_pick("dp", dp_all, picks))
        row.update(_dp_pick("lib", lib_all, picks[~picks["is_fastclip"]] if len(picks) else picks))
        rows.append(row)
    cols = ["model", "batch_size", "framework", "std_label", "std_sps", "std_reduced", "std_is_fastest", "std_train_h",
            "fastest_standard_sps", "fastest_standard_row"]
    cols += [f"{p}_{k}" for p, _ in HEADLINE_PICKS for k in _PICK_FIELDS]
    return pd.DataFrame(rows).reindex(columns=cols)


def headline_lines(h: pd.DataFrame) -> list[str]:
    if h.empty:
        return []
    f = lambda v, p: "-" if v is None or pd.isna(v) else f"{v:.{p}f}"
    out = ["## Headline: fastest standard and fastest per-example DP rows", "",
           "Per model, batch size and framework: the fastest ok standard row, then two ok DP rows that clip "
           "per example (study rows): **best overall**, the Findings' fastest pick of any "
           f"option (this project's own `fastclip` included), and **best library**, the same among the DP libraries "
           f"a user would pick up "
           f"(jax-privacy, Opacus, TensorFlow Privacy: `dp_library` not `{OWN_LIBRARY}`); the two are the same row "
           "where a library is fastest. % of own standard: paired with that framework's standard of the same variant, "
           "median and 95 % interval (see below); % of fastest "
           "standard: of the fastest standard row of any framework at that model and batch size (★). "
           f"Train (h): {PLAN.epochs} epochs of N={PLAN.dataset_size:,} at the row's B and median step time "
           "(common/report/privacy.py; compile and input pipeline excluded; epsilon in the privacy section). " + PICKS_NOTE,
           "",
           "| Model | B | Framework | Fastest standard | Standard (samples/s) | DP pick | Per-example DP row "
           "| DP (samples/s) | % of own standard | % of fastest standard | DP Peak Mem (MiB) | Train DP / standard (h) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in h.to_dict("records"):
        std = esc(r["std_label"]) if isinstance(r["std_label"], str) else "-"
        if pd.notna(r["std_sps"]) and r["std_is_fastest"]:
            std += " ★"
        std_sps = "-" if pd.isna(r["std_sps"]) else f"{r['std_sps']:.1f}" + (REDUCED if r["std_reduced"] else "")
        for i, (p, pick) in enumerate(HEADLINE_PICKS):
            label = esc(r[f"{p}_label"]) if isinstance(r[f"{p}_label"], str) else "not run" if p == "lib" else "-"
            sps = "-" if pd.isna(r[f"{p}_sps"]) else f"{r[f'{p}_sps']:.1f}" + (REDUCED if r[f"{p}_reduced"] else "")
            train = f"{f(r[f'{p}_train_h'], 2)} / {f(r['std_train_h'], 2)}"
            # the standard cells once per framework: its second (library) row leaves them empty
            std_cells = f"{std} | {std_sps}" if i == 0 else " | "
            out.append(f"| {r['model']} | {r['batch_size']} | {r['framework']} | {std_cells} | {pick} | {label} | "
                       f"{sps} | {row_pct(r, f'{p}_')} | {pct_text(r[f'{p}_pct_of_fastest_standard'])} | "
                       f"{f(r[f'{p}_peak_mem_mib'], 0)} | {train} |")
    out.append("")
    return out
