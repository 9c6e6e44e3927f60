"""The check that the study runs each library as its users do: each study row
against a minimal loop written the way the library's README does it.
"""
from __future__ import annotations

import pandas as pd

from common.report.rows import by_key, cell_text, esc, impl_info, mb_int, ratio_of, row_label


DIRECT_THRESHOLD = 0.90
DIRECT_FLAG = "⚠ study row > 10 % slower than direct use"


def direct_frame(df: pd.DataFrame) -> pd.DataFrame:
    """One row per direct-use record: it, the study row it names (direct_of), study / direct."""
    keyed = by_key(df)
    rows = []
    for d in df[df["row_kind"] == "direct"].to_dict("records"):
        of = d["direct_of"] if isinstance(d["direct_of"], dict) else None
        if of is None:  # not recorded: the catalogue's
            info = impl_info(d["framework"], d["impl"])
            if info is None or info.direct_of is None:
                continue
            of = dict(zip(("impl", "variant", "microbatch_size"), info.direct_of))
        key = (d["framework"], of["impl"], of.get("variant") or "", d["model"], int(d["batch_size"]),
               mb_int(of.get("microbatch_size")))
        s = keyed.get(key)
        ratio, lo, hi = ratio_of(s, d), None, None
        if d["status"] == "ok" and pd.notna(d.get("ratio")):  # paired: direct / study in one process, inverted
            ratio, lo, hi = 1 / d["ratio"], 1 / d["ratio_hi"], 1 / d["ratio_lo"]
        rows.append({"dp_library": d["dp_library"] or "-", "framework": d["framework"], "model": d["model"],
                     "batch_size": int(d["batch_size"]), "direct_impl": d["label"], "direct": d,
                     "study_label": row_label({"framework": d["framework"], "impl": key[1], "variant": key[2],
                                               "microbatch_size": key[5], "mode": "dp"}),
                     # both arms in the same window pairs of the direct row's process: their quotient is the
                     # ratio's neighbour (the study row's own process ran minutes apart, on another footing)
                     "study": s, "direct_sps": _paired(d, "paired_sps"), "study_sps": _paired(d, "paired_ref_sps"),
                     "ratio": ratio, "ratio_lo": lo, "ratio_hi": hi,
                     # flagged only when the whole interval lies below the threshold (unpaired: the point)
                     "flagged": ratio is not None and (hi if hi is not None else ratio) < DIRECT_THRESHOLD})
    return pd.DataFrame(rows)


def _paired(d: dict, col: str) -> float | None:
    v = d.get(col) if d["status"] == "ok" else None
    return None if v is None or pd.isna(v) else float(v)


def _sps(v: float | None) -> str:
    return "-" if v is None or pd.isna(v) else f"{v:.1f}"


def direct_lines(dd: pd.DataFrame) -> list[str]:
    if dd.empty:
        return []
    out = ["## Study row vs direct use", "",
           "Each direct-use row is a minimal training loop written the way the library's README does it, on the "
           "same model, weights and batch; it names the study row it checks. Study / direct is the median of "
           "window pairs timed alternately in the direct row's process, with its 95 % interval over pairs and "
           f"rounds; a row is flagged only when the whole interval lies below {DIRECT_THRESHOLD:.2f}: the "
           "study's wrapping of the library would then cost more than 10 %.", ""]
    for lib, g in dd.groupby("dp_library", sort=False):
        out += [f"### {lib}", "",
                "| Framework | Model | B | Direct row | Direct (samples/s, paired) | Study row | Study (samples/s, paired) "
                "| Study / direct | Flag |", "|---|---|---|---|---|---|---|---|---|"]
        for r in g.itertuples():
            ratio = "-" if r.ratio is None or pd.isna(r.ratio) else f"{r.ratio:.3f}" + (
                f" [{r.ratio_lo:.3f}, {r.ratio_hi:.3f}]" if r.ratio_lo is not None and pd.notna(r.ratio_lo) else "")
            # unpaired (no pairs fitted, or no study row): each row's own number or status
            direct_cell = _sps(r.direct_sps) if pd.notna(r.direct_sps) else cell_text(r.direct)
            study_cell = _sps(r.study_sps) if pd.notna(r.study_sps) else cell_text(r.study)
            out.append(f"| {r.framework} | {r.model} | {r.batch_size} | {r.direct_impl} | {direct_cell} | "
                       f"{esc(r.study_label)} | {study_cell} | {ratio} | {DIRECT_FLAG if r.flagged else ''} |")
        out.append("")
        flagged = g[g["flagged"]]
        if len(flagged):
            out += [f"{DIRECT_FLAG}:", ""]
            out += [f"- {r.framework} {r.study_label}, {r.model}, B={r.batch_size}: {_sps(r.study_sps)} vs "
                    f"{_sps(r.direct_sps)} samples/s with {r.direct_impl} (study / direct {r.ratio:.3f})"
                    for r in flagged.itertuples()]
            out.append("")
    return out
