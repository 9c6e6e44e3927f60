"""The study's answer, as one frame: per framework, each DP library and fastclip
in every (model, B) cell, the row that ``pick`` names there, as % of its own
standard (same model, batch and variant) with its interval, its peak memory as
a multiple of that standard's, and both arms' samples/s in the same window
pairs (their quotient is the ratio's neighbour, never a number from another
process).

This is what a practitioner asks ("which library, and what will it cost
me?"). ``pick`` is the one picking rule: the README's Findings and
recommendation (common/report/readme.py), the report's Findings section and
headline table, and the headline figure (common/report/plots.py) all render
this one frame, so they cannot disagree (tests/common/report/test_findings.py).
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from common.harness.config import FRAMEWORKS, OWN_LIBRARY, XLA_DEFAULT, findable
from common.report.rows import mb_text, model_rank, row_label

FASTCLIP = OWN_LIBRARY  # fastclip's dp_library: this study's own, not a library a user installs
LIBRARY_NAMES = {"jax-privacy": "jax-privacy", "opacus": "Opacus", "tensorflow-privacy": "TF-Privacy",
                 FASTCLIP: "fastclip (this study)"}
FRAMEWORK_NAMES = {"jax": "JAX", "torch": "PyTorch", "tf": "TensorFlow"}
COLUMNS = ["framework", "library", "option", "is_fastclip", "model", "batch_size", "status", "impl", "variant",
           "microbatch_size", "mode", "setting", "throughput_sps", "paired_sps", "paired_standard_sps", "pct", "pct_lo", "pct_hi",
           "pct_wide", "rank_pct", "paired", "rounds", "mem_multiple"]
# A cell whose rows ran but none can be named (``pick``): why not.
UNPAIRED = "unpaired"  # no window pairs fitted the budget: a number without an interval
ONE_PROCESS = "one process"  # measured in round 1 only: its interval describes one process
OTHER_MODES = "other modes only"  # only the sweep / A/B variants ran


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


# What a library does when its user writes the least: the row a recommendation
# sets beside the winner. jax-privacy's ``clipped_grad`` with one vmap over the
# batch under XLA's own flags (the study's rows set XLA_FLAGS; the
# ``xla-default`` A/B variant does not); Opacus' ``make_private`` default
# ``grad_sample_mode="hooks"``; TF-Privacy's tutorial optimizer
# ``DPKerasSGDOptimizer`` clipping per example (num_microbatches = B), in
# tf.keras 2.15's default graph mode (``jit_compile`` off).
LIBRARY_DEFAULTS: dict[str, tuple[str, str, int | None]] = {
    "jax-privacy": ("jax_privacy", XLA_DEFAULT, None),
    "opacus": ("opacus_hooks", "", None),
    "tensorflow-privacy": ("tfp_microbatch", "graph", 1),
}
SETTINGS = {  # impl -> what the user sets to get that row
    "jax_privacy": "`clipped_grad`",
    "opacus_hooks": '`grad_sample_mode="hooks"`',
    "opacus_functorch": '`grad_sample_mode="functorch"`',
    "opacus_ew": '`grad_sample_mode="ew"`',
    "opacus_ghost": '`grad_sample_mode="ghost"`',
    "tfp_microbatch": "`DPKerasSGDOptimizer`",
    "tfp_vectorized": "`VectorizedDPKerasSGDOptimizer`",
    "tfp_dpmodel": "DP Keras model (`DPSequential`)",
    "fastclip": "fastclip",
}
VARIANT_SETTINGS = {
    ("jax", ""): "XLA flag `--xla_cpu_experimental_ynn_fusion_type=`",
    ("jax", XLA_DEFAULT): "XLA's default flags",
    ("tf", "graph"): "graph, no XLA",
    ("tf", "xla"): "XLA (`jit_compile=True`)",
}


def setting(framework: str, impl: str, variant: str, microbatch_size: Any) -> str:
    """What a user sets to get this row: the library call or mode, its microbatching, the XLA setting."""
    parts = [SETTINGS.get(impl, impl)]
    mb = mb_text(framework, impl, microbatch_size)
    if impl.startswith("tfp_") and mb == "1":
        parts.append("num_microbatches = B")
    elif mb and mb.isdigit():
        parts.append(f"microbatch {mb}")
    elif mb:
        parts.append(mb)
    if (framework, variant) in VARIANT_SETTINGS:
        parts.append(VARIANT_SETTINGS[(framework, variant)])
    return ", ".join(parts)


def run_rounds(df: pd.DataFrame) -> int:
    """The most rounds any configuration of the frame has (1 for a one-round run)."""
    return int(df["rounds"].fillna(1).max()) if len(df) and "rounds" in df else 1


def repeated(row_rounds: Any, rounds: int) -> Any:
    """Whether a row (or a column of rows) was measured in every round the run
    repeats named rows in: at least 2 where the run has 2 or more."""
    return row_rounds >= min(rounds, 2)


def nameable(g: pd.DataFrame, rounds: int = 1) -> pd.DataFrame:
    """The rows of ``g`` (ok, parity-passed rows of findable kinds) a finding
    may name: paired with their standard (an interval) and ``repeated``."""
    return g[g["pct_lo"].notna() & repeated(g["rounds"].fillna(1), rounds)]


def standard_scale(df: pd.DataFrame, framework: str, model: str, b: int) -> dict[str, float]:
    """Variant -> its standard's samples/s over the fastest study variant's standard
    (same framework and cell). Only TF has two study variants (graph, XLA); on
    these CPUs XLA's standard runs at 0.25-0.7x of graph's, so a DP row's % of
    its XLA standard is against a slower reference: 90 % of XLA's standard can
    be 2.7x slower than 61 % of graph's (the small CNN, B 64)."""
    std = df[(df["framework"] == framework) & (df["model"] == model) & (df["batch_size"] == b)
             & (df["mode"] == "standard") & (df["status"] == "ok") & (df["row_kind"] == "study")]
    sps = std.groupby(std["variant"].fillna(""))["throughput_sps"].max()
    return {} if sps.empty else {v: float(x / sps.max()) for v, x in sps.items()}


def rank_pct(rows: pd.DataFrame, scale: dict[str, float]) -> pd.Series:
    """What ``pick`` orders by: each row's paired % of its own standard times its
    variant's ``standard_scale`` (the % of the fastest standard variant it
    stands for). Within a variant the order is the paired %'s, which cancels
    the drift between processes; across variants it is the order of training
    speed."""
    return rows["pct_of_standard"] * rows["variant"].map(lambda v: scale.get(v if isinstance(v, str) else "", 1.0))


def pick(g: pd.DataFrame, failed: frozenset[tuple[str, str, str, str]] = frozenset(),
         rounds: int = 1, scale: dict[str, float] | None = None) -> tuple[str, Any]:
    """The one picking rule: among one option's rows in one cell (``g``), the
    ``nameable`` row that trains fastest, by ``rank_pct``: the highest paired
    % of its own standard (the study's measure, the one that reproduces
    between runs), each variant's scaled by its standard's speed (``scale``,
    ``standard_scale``), so that a mode is never named for a high % of a
    slow standard (TF's XLA rows on CPUs). Returns ("ok", row) with the
    row's ``rank_pct`` set, or a status
    and None: the failed rows' statuses, ``PARITY_FAIL``, ``OTHER_MODES``,
    ``UNPAIRED`` or ``ONE_PROCESS``, in that order of precedence."""
    if g.empty:
        return "not run", None
    timed = g[g["status"] == "ok"]
    if timed.empty:
        return "/".join(sorted(set(g["status"]))), None
    passed = timed[[(f, i, v or "", m) not in failed
                    for f, i, v, m in zip(timed["framework"], timed["impl"], timed["variant"], timed["model"])]]
    if passed.empty:
        return PARITY_FAIL, None
    kinds = passed[[findable(f, i, v or "", None if pd.isna(mb) else int(mb)) for f, i, v, mb in
                    zip(passed["framework"], passed["impl"], passed["variant"], passed["microbatch_size"])]]
    if kinds.empty:
        return OTHER_MODES, None
    if kinds["pct_lo"].isna().all():
        return UNPAIRED, None
    named = nameable(kinds, rounds)
    if named.empty:
        return ONE_PROCESS, None
    ranks = rank_pct(named, scale or {})
    best = ranks.idxmax()
    return "ok", pd.concat([named.loc[best], pd.Series({"rank_pct": ranks[best]})])


def frame(df: pd.DataFrame, failed: frozenset[tuple[str, str, str, str]] = frozenset()) -> pd.DataFrame:
    """One row per (framework, DP option, model, B) from the report's frame
    (common.report.rows.frame): libraries in the order they appear, fastclip
    last in each framework; each the row ``pick`` names, or the reason there is none."""
    st = df[df["row_kind"] == "study"] if len(df) else df
    dp = st[(st["mode"] == "dp") & (st["privacy_unit"] == "example")] if len(st) else st
    rows: list[dict[str, Any]] = []
    if dp.empty:
        return pd.DataFrame(columns=COLUMNS)
    rounds = run_rounds(df)
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
                status, r = pick(g, failed, rounds, standard_scale(df, fw, model, b))
                row["status"] = status
                if r is not None:
                    label = row_label(r)
                    row.update(impl=r["impl"], variant=r["variant"], microbatch_size=r["microbatch_size"],
                               mode=label.removeprefix(r["impl"]).strip(" ,") if lib == FASTCLIP else label,
                               setting=setting(fw, r["impl"], r["variant"], r["microbatch_size"]),
                               throughput_sps=r["throughput_sps"], paired_sps=r["paired_sps"],
                               paired_standard_sps=r["paired_ref_sps"],
                               pct=r["pct_of_standard"], pct_lo=r["pct_lo"], pct_hi=r["pct_hi"],
                               pct_wide=r["pct_wide"], rank_pct=r["rank_pct"],
                               paired=True, rounds=int(r["rounds"] or 1),
                               mem_multiple=mem_multiple(df, r))
                rows.append(row)
    return pd.DataFrame(rows).reindex(columns=COLUMNS)


def default_row(df: pd.DataFrame, library: str, model: str, b: int) -> Any:
    """The library's default (``LIBRARY_DEFAULTS``) in one cell, ok or not; None where it did not run."""
    if library not in LIBRARY_DEFAULTS:
        return None
    impl, variant, mb = LIBRARY_DEFAULTS[library]
    g = df[(df["row_kind"] == "study") & (df["impl"] == impl) & (df["variant"] == variant)
           & (df["model"] == model) & (df["batch_size"] == b) & (df["dp_library"] == library)]
    g = g[g["microbatch_size"].isna()] if mb is None else g[g["microbatch_size"] == mb]
    return None if g.empty else g.iloc[0]
