"""The study's answer, as one frame: per framework, each DP library and fastclip
in every (model, B) cell, the option's fastest per-example mode there as % of
its own standard (same model, batch and variant) with its interval, and its
peak memory as a multiple of that standard's.

This is what a practitioner asks ("which library, and what will it cost
me?"), so the README's Findings block (common/report/readme.py), the
report's Findings section and the headline figure (common/report/plots.py)
all render this one frame and cannot disagree.
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from common.harness.config import FRAMEWORKS
from common.report.rows import model_rank, row_label

FASTCLIP = "dpbench"  # fastclip's dp_library: this study's own, not a library a user installs
LIBRARY_NAMES = {"jax-privacy": "jax-privacy", "opacus": "Opacus", "tensorflow-privacy": "TF-Privacy",
                 FASTCLIP: "fastclip (this study)"}
FRAMEWORK_NAMES = {"jax": "JAX", "torch": "PyTorch", "tf": "TensorFlow"}
COLUMNS = ["framework", "library", "option", "is_fastclip", "model", "batch_size", "status", "impl", "variant",
           "mode", "throughput_sps", "pct", "pct_lo", "pct_hi", "pct_wide", "paired", "mem_multiple"]


def cells(df: pd.DataFrame) -> list[tuple[str, int]]:
    """The (model, B) cells of the study rows, models in catalogue order, then B."""
    st = df[df["row_kind"] == "study"]
    return sorted({(m, int(b)) for m, b in zip(st["model"], st["batch_size"])},
                  key=lambda c: (model_rank(c[0]), c[0], c[1]))


def option_name(framework: str, library: str) -> str:
    """"Opacus", "jax-privacy", ..., or "fastclip (PyTorch)": what a reader calls the option."""
    if library == FASTCLIP:
        return f"fastclip ({FRAMEWORK_NAMES.get(framework, framework)})"
    return LIBRARY_NAMES.get(library, library)


def mem_multiple(df: pd.DataFrame, r: Any) -> float | None:
    """Peak memory of row ``r`` over its own standard's (same framework, model, B, variant)."""
    std = df[(df["framework"] == r["framework"]) & (df["model"] == r["model"]) & (df["batch_size"] == r["batch_size"])
             & (df["variant"] == r["variant"]) & (df["mode"] == "standard") & (df["status"] == "ok")
             & (df["row_kind"] == "study")]
    if std.empty or pd.isna(r["peak_mem_bytes"]) or pd.isna(std["peak_mem_bytes"].iloc[0]) \
            or not std["peak_mem_bytes"].iloc[0]:
        return None
    return float(r["peak_mem_bytes"] / std["peak_mem_bytes"].iloc[0])


PARITY_FAIL = "parity FAIL"


def parity_failures(parity: list[dict[str, Any]]) -> frozenset[tuple[str, str, str, str]]:
    """(framework, impl, variant, model) of the run's parity rows
    (common.harness.verify.read) that failed: a row not proven equal to the
    float64 reference is no finding, however fast it is."""
    return frozenset((r["framework"], r["impl"], r.get("variant") or "", r["model"])
                     for r in parity if r.get("passed") is False)


def frame(df: pd.DataFrame, failed: frozenset[tuple[str, str, str, str]] = frozenset()) -> pd.DataFrame:
    """One row per (framework, DP option, model, B) from the report's frame
    (common.report.rows.frame): libraries in the order they appear, fastclip
    last in each framework. ``status`` is "ok", "not run", the failed rows'
    statuses joined by "/" (e.g. "oom/timeout"), or ``PARITY_FAIL`` where
    every ok row's (framework, impl, variant, model) is in ``failed``
    (:func:`parity_failures`): such rows are never picked."""
    st = df[df["row_kind"] == "study"] if len(df) else df
    dp = st[(st["mode"] == "dp") & (st["privacy_unit"] == "example")] if len(st) else st
    rows: list[dict[str, Any]] = []
    if dp.empty:
        return pd.DataFrame(columns=COLUMNS)
    for fw in [f for f in FRAMEWORKS if f in set(dp["framework"])]:
        mine = dp[dp["framework"] == fw]
        libs = [lib for lib in dict.fromkeys(mine["dp_library"]) if lib != FASTCLIP]
        libs += [FASTCLIP] if (mine["dp_library"] == FASTCLIP).any() else []
        for lib in libs:
            opt = mine[mine["dp_library"] == lib]
            for model, b in cells(df):
                g = opt[(opt["model"] == model) & (opt["batch_size"] == b)]
                row = dict(framework=fw, library=lib, option=option_name(fw, lib), is_fastclip=lib == FASTCLIP,
                           model=model, batch_size=b)
                timed = g[g["status"] == "ok"]
                ok = timed[[(fw, i, v or "", model) not in failed for i, v in zip(timed["impl"], timed["variant"])]]
                if timed.empty:
                    row["status"] = "/".join(sorted(set(g["status"]))) if len(g) else "not run"
                elif ok.empty:
                    row["status"] = PARITY_FAIL
                else:
                    r = ok.loc[ok["throughput_sps"].idxmax()]
                    label = row_label(r)
                    row.update(status="ok", impl=r["impl"], variant=r["variant"],
                               mode=label.removeprefix(r["impl"]).strip(" ,") if lib == FASTCLIP else label,
                               throughput_sps=r["throughput_sps"], pct=r["pct_of_standard"], pct_lo=r["pct_lo"],
                               pct_hi=r["pct_hi"], pct_wide=r["pct_wide"], paired=bool(pd.notna(r["pct_lo"])),
                               mem_multiple=mem_multiple(df, r))
                rows.append(row)
    return pd.DataFrame(rows).reindex(columns=COLUMNS)
