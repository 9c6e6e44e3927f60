"""The report's frame (one row per configuration, with % of standard and its
interval) and the per-row text every section uses (labels, statuses, cells).

Symbols mean one thing everywhere: ‡ low precision (REDUCED), † a privacy
unit other than the example (TF-Privacy's microbatch mean).
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Sequence

import numpy as np
import pandas as pd

from common.harness import records
from common.harness.config import FRAMEWORKS, IMPLS, OWN_LIBRARY
from common.reference.spec import MODELS
from common.report import intervals
from common.report import privacy


REDUCED = "‡"
REDUCED_LEGEND = ("‡ low precision: timed with fewer windows/steps than the preset asks (budget), "
                  f"its windows' CV is above {records.NOISY_CV:g} (a noisy machine; see CV), or the hypervisor "
                  f"took more than {records.STOLEN_SHARE:.0%} of the CPUs while it was timed (notes.cpu_steal_share)")


PRIVACY_NOTE = ("† clips the *mean* gradient of each microbatch (TF-Privacy num_microbatches < B): "
                "a different privacy unit from per-example clipping; not comparable as if it were.")


FULL_VMAP = "full vmap (default)"
PLAN = privacy.TrainingPlan()  # the CIFAR-10-sized plan of the time-to-train columns
WIDE = "(wide)"


def impl_info(fw: str, impl: str):
    return IMPLS.get(fw, {}).get(impl)


def mb_int(v: Any) -> int | None:
    """A microbatch size from a record or a frame cell (NaN -> None)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return int(v)


def mb_text(fw: str, impl: str, mb: Any) -> str:
    """The microbatch cell: "full vmap (default)" for a sweep impl's library default, "" where none applies."""
    mb = mb_int(mb)
    if mb is None:
        info = impl_info(fw, impl)
        return FULL_VMAP if info is not None and info.microbatch == "sweep" else ""
    return str(mb)


def row_label(r: Any) -> str:
    """impl (variant), mb N / full vmap (default)."""
    text = r["impl"] + (f" ({r['variant']})" if r["variant"] else "")
    m = mb_text(r["framework"], r["impl"], r["microbatch_size"])
    if m and r["mode"] != "standard":
        text += f", mb {m}" if m.isdigit() else f", {m}"
    return text


def status_text(r: Any) -> str:
    """The status as a table shows it; a timeout with notes.partial says how far it got."""
    s = r["status"]
    part = (r.get("notes") or {}).get("partial") if s == "timeout" else None
    if not isinstance(part, dict):
        return s
    steps = [x for x in part.get("step_s") or () if isinstance(x, (int, float)) and not isinstance(x, bool)]
    if steps:
        return f"timeout (step ≈ {statistics.median(steps):.3g} s)"
    if part.get("compile_s") is None:
        return "timeout (compile > budget)"
    return f"timeout (compile {part['compile_s']:.3g} s, no step after it)"


def sps_text(r: Any, fmt: str = "{:.2f}") -> str:
    return fmt.format(r["throughput_sps"]) + (REDUCED if r["reduced"] else "")


def pct_text(v: Any) -> str:
    return "-" if v is None or pd.isna(v) else f"{v:.1f}%"


def pct_ci(med: Any, lo: Any = None, hi: Any = None, wide: Any = None) -> str:
    """A % of standard with its 95 % interval, "85.2% [83.1, 87.0]"; an unpaired
    number (older records) has none. Above 100 % only where the whole interval
    is: otherwise the row is not distinguishable from its standard and says so."""
    if med is None or pd.isna(med):
        return "-"
    if lo is None or pd.isna(lo):
        return f"{med:.1f}%"
    text = f"{med:.1f}% [{lo:.1f}, {hi:.1f}]"
    if med > 100 and lo <= 100:
        text = f"≈ standard ({text})"
    return text + (f" {WIDE}" if isinstance(wide, str) and wide else "")


def row_pct(r: Any, prefix: str = "") -> str:
    return pct_ci(r[f"{prefix}pct_of_standard"], r[f"{prefix}pct_lo"], r[f"{prefix}pct_hi"], r[f"{prefix}pct_wide"])


def mem_mib(v: Any) -> str:
    return "-" if v is None or pd.isna(v) else f"{v / 2**20:.0f}"


def esc(text: Any) -> str:
    return str(text).replace("|", "\\|")


def cpu_text(m: dict[str, Any], fallback: str = "?") -> str:
    """"AMD EPYC, family 25 model 17 (AVX-512)": what a ratio's CPU is."""
    ext = m.get("vector_extensions") or []
    vec = "AVX-512" if "avx512f" in ext else "AVX2, no AVX-512" if "avx2" in ext else "no AVX2"
    fam = f", family {m['family']} model {m['model']}" if m.get("family") and m.get("model") else ""
    return f"{m.get('cpu_model') or fallback}{fam} ({vec})"


def model_rank(m: str) -> int:
    return list(MODELS).index(m) if m in MODELS else len(MODELS)


def fw_rank(fw: str) -> int:
    return FRAMEWORKS.index(fw) if fw in FRAMEWORKS else len(FRAMEWORKS)


def frame(recs: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per configuration (latest record), with % of the framework's standard and
    % of the fastest standard of any framework (both from study rows only)."""
    latest = records.latest(recs)
    df = pd.DataFrame(latest)
    if df.empty:
        return df
    df["_rec"] = pd.Series(latest, index=df.index, dtype=object)
    stats = round_stats(recs)
    floats = ["ratio", "ratio_lo", "ratio_hi", "sps_lo", "sps_hi", "sps_med", "win_sps_p10", "win_sps_p90",
              "paired_sps", "paired_ref_sps"]
    for col in ("ratio_wide", "pairs", "rounds", *floats):
        df[col] = [stats.get(records.config_key(r), {}).get(col) for r in latest]
    df[floats] = df[floats].astype(float)
    # Throughput: the median over every round's windows (the record's own is one round's; with one
    # round the two are the same number).
    has = (df["status"] == "ok") & df["sps_med"].notna() & (df["rounds"].fillna(0) > 1)
    df.loc[has, "throughput_sps"] = df.loc[has, "sps_med"]
    df["row_kind"] = df["row_kind"].fillna("study")
    df["label"] = df["impl"] + df["variant"].map(lambda v: f" ({v})" if v else "")
    df["reduced"] = [records.reduced_precision(r) for r in latest]
    df["status_text"] = [status_text(r) for r in latest]
    df["is_ab"] = [r["variant"] in getattr(impl_info(r["framework"], r["impl"]), "ab_variants", ()) for r in latest]
    ok_std = df[(df["status"] == "ok") & (df["mode"] == "standard") & (df["row_kind"] == "study")]
    keys = ["framework", "model", "batch_size"]
    best = ok_std.groupby(keys)["throughput_sps"].max().rename("standard_sps")
    df = df.join(best, on=keys)
    # Each row's own standard: same framework, model, batch and variant (a ratio never crosses variants:
    # JAX's xla-default fastclip against the flagged standard would mix the flag's effect into DP's cost).
    own = ok_std.groupby(keys + ["variant"])["throughput_sps"].max().rename("own_standard_sps")
    df = df.join(own, on=keys + ["variant"])
    if len(ok_std):
        top = ok_std.loc[ok_std.groupby(["model", "batch_size"])["throughput_sps"].idxmax()]
        top = top.set_index(["model", "batch_size"])
        top = pd.DataFrame({"fastest_standard_sps": top["throughput_sps"],
                            "fastest_standard_row": top["framework"] + ": " + top["label"]})
        df = df.join(top, on=["model", "batch_size"])
    else:
        df["fastest_standard_sps"], df["fastest_standard_row"] = float("nan"), None
    # Unpaired (no pairs fitted the budget, or records before schema 5): against its own variant's standard.
    # A standard row itself: against the framework's best standard (TF's xla standard as % of its graph one).
    df["pct_of_standard"] = 100.0 * df["throughput_sps"] / df["own_standard_sps"].where(
        df["mode"] != "standard", df["standard_sps"])
    df["pct_of_fastest_standard"] = 100.0 * df["throughput_sps"] / df["fastest_standard_sps"]
    # Paired: the median of the row's pairs with its own standard (same variant), 95 % interval.
    paired = df["ratio"].notna() & (df["mode"] == "dp")
    df.loc[paired, "pct_of_standard"] = 100.0 * df.loc[paired, "ratio"]
    df["pct_lo"], df["pct_hi"] = 100.0 * df["ratio_lo"].where(paired), 100.0 * df["ratio_hi"].where(paired)
    df["pct_wide"] = df["ratio_wide"].where(paired)
    direct = df["row_kind"] != "study"
    df.loc[direct, ["pct_of_standard", "pct_of_fastest_standard", "pct_lo", "pct_hi"]] = float("nan")
    # The spread of the same windows the throughput is the median of (every round's), so that a median
    # never sits outside its own spread; a record without windows: its steps' p10-p90.
    own = {q: df["batch_size"] / pd.to_numeric(df[f"step_s_{q}"], errors="coerce") for q in ("p10", "p90")}
    df["sps_p10"] = df["win_sps_p10"].where(df["win_sps_p10"].notna(), own["p90"])
    df["sps_p90"] = df["win_sps_p90"].where(df["win_sps_p90"].notna(), own["p10"])
    df["_m"] = df["model"].map(model_rank)
    df["_f"] = df["framework"].map(fw_rank)
    df["_k"] = direct.astype(int)
    df["_o"] = df["mode"].map({"standard": 0, "dp": 1})
    df["_mb"] = -pd.to_numeric(df["microbatch_size"], errors="coerce").fillna(1e9)
    return df.sort_values(["_m", "model", "batch_size", "_f", "framework", "_k", "_o", "impl", "variant", "_mb"]
                          ).reset_index(drop=True)


def round_stats(recs: Sequence[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    """Per configuration: its paired ratio and throughput, medians with 95 %
    intervals over rounds and pairs/windows (common/report/intervals.py)."""
    out = {}
    for key, rs in records.per_round(recs).items():
        ri, ti = intervals.ratio_interval(rs), intervals.throughput_interval(rs)
        out[key] = {"rounds": sum(r["status"] == "ok" for r in rs)}
        wins = intervals.window_throughputs(rs)
        if wins:
            out[key].update(win_sps_p10=float(np.percentile(wins, 10)), win_sps_p90=float(np.percentile(wins, 90)))
        arms = intervals.paired_throughputs(rs)
        if arms is not None:
            out[key].update(paired_sps=arms[0], paired_ref_sps=arms[1])
        if ri is not None:
            out[key].update(ratio=ri.median, ratio_lo=ri.lo, ratio_hi=ri.hi, ratio_wide=ri.reason, pairs=ri.n)
        if ti is not None:
            out[key].update(sps_med=ti.median, sps_lo=ti.lo, sps_hi=ti.hi)
    return out


def study_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["row_kind"] == "study"]


def none_ok(g: pd.DataFrame) -> str:
    """What a group with no ok row shows: each status once; a timeout with the fastest partial step."""
    out = []
    for s in sorted(set(g["status"])):
        texts = list(g.loc[g["status"] == s, "status_text"])
        if s == "timeout":
            stepped = [t for t in texts if "step ≈" in t]
            texts = sorted(stepped, key=lambda t: float(t.split("≈ ")[1].split(" s")[0]))[:1] or texts[:1]
            out.append(texts[0])
        else:
            out.append(s)
    return "/".join(out)


def mode_cell(r: pd.Series) -> str:
    if r["mode"] == "standard":
        return "Standard"
    return "Clipped†" if r["privacy_unit"] == "microbatch_mean" else "Clipped"


def mb_cell(r: pd.Series) -> str:
    return mb_text(r["framework"], r["impl"], r["microbatch_size"]) or "-"


def fmt2(x: float) -> str:
    return f"{x:.2f}"


def versions(block: pd.DataFrame) -> str:
    parts = []
    fw = block.dropna(subset=["framework_version"])
    if len(fw):
        parts.append(f"{block['framework'].iloc[0]} {fw['framework_version'].iloc[0]}")
    libs = block.dropna(subset=["dp_library", "dp_library_version"]).drop_duplicates("dp_library")
    parts += [f"{r.dp_library} {r.dp_library_version}" for r in libs.itertuples() if r.dp_library != OWN_LIBRARY]
    return ", ".join(parts)


def by_key(df: pd.DataFrame) -> dict[tuple, dict[str, Any]]:
    """Frame rows as dicts by configuration key (microbatch NaN -> None)."""
    return {(r["framework"], r["impl"], r["variant"], r["model"], int(r["batch_size"]), mb_int(r["microbatch_size"])): r
            for r in df.to_dict("records")}


def cell_text(r: dict[str, Any] | None, fmt: str = "{:.1f}") -> str:
    if r is None:
        return "not run"
    return sps_text(r, fmt) if r["status"] == "ok" else r["status_text"]


def ratio_of(a: dict[str, Any] | None, b: dict[str, Any] | None) -> float | None:
    if a is None or b is None or a["status"] != "ok" or b["status"] != "ok":
        return None
    return float(a["throughput_sps"] / b["throughput_sps"])
