"""Tables and plots of one run directory, from its records.jsonl alone.

    python -m common.report RESULTS_DIR [--out DIR]

(Re)writes report.md, tables/*.csv and plots/*.png in RESULTS_DIR (or in
``--out``, reading RESULTS_DIR only). Nothing here is typed by hand: every
number comes from a record. Throughput percentages are relative to the
framework's best ``standard`` row at the same model and batch size (TF has
two: graph and XLA) and to the fastest standard row of any framework there.

"Fastest" / "best" picks consider every *study* row of every variant, the
JAX A/B variant ``xla-default`` included (a user can set XLA's default flags
too; its label says so). *Direct-use* rows (``row_kind`` "direct": a minimal
loop written the way the library's README does it) are checks of a study row:
they never enter a pick, a percentage or a per-shape table, only their own
"study row vs direct use" table.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from common.report import allocator, intervals, noise_share, privacy, scaling
from common.harness import records
from common.harness.runner import ROUNDS_MIN_RATIO
from common.harness.config import FRAMEWORKS, IMPLS, XLA_DEFAULT
from common.reference.spec import MODELS

# Filled in by hand with the explanation of the jax-privacy table (rendered only when non-empty).
JAX_PRIVACY_MICROBATCH_NOTE = (
    "Why an integer `microbatch_size` is slower even at B (jax-privacy 2.0, optax 0.2.8, jax 0.10.2, read from "
    "the source and the compiled HLO): with `None`, optax's `micro_vmap` is a plain `vmap` + sum "
    "(`optax/microbatching/_microbatching.py`); with an integer it reshapes the batch and runs a "
    "`lax.fori_loop` whose trip count jax-privacy passes as a traced value (`jax_privacy/clipping.py`, "
    "`_num_real_microbatches`), so even one microbatch compiles to a while loop that XLA removes only late. "
    "XLA:CPU's convolution canonicalization runs before that and visits only the entry computation, so the "
    "per-example (grouped) weight-gradient convolutions inside the loop keep a layout Eigen cannot run and are "
    "emitted as XLA's generic loop code (the JAXPR/HLO analysis counts them as `convolution_not_eigen_layout`). "
    "The table above is this run's own measurement of what that costs.")

PRIVACY_NOTE = ("† clips the *mean* gradient of each microbatch (TF-Privacy num_microbatches < B): "
                "a different privacy unit from per-example clipping; not comparable as if it were.")
REDUCED = "‡"
REDUCED_LEGEND = ("‡ low precision: timed with fewer windows/steps than the preset asks (budget), "
                  f"its windows' CV is above {records.NOISY_CV:g} (a noisy machine; see CV), or the hypervisor "
                  f"took more than {records.STOLEN_SHARE:.0%} of the CPUs while it was timed (notes.cpu_steal_share)")
DIRECT_THRESHOLD = 0.90
DIRECT_FLAG = "⚠ study row > 10 % slower than direct use"
FULL_VMAP = "full vmap (default)"
PLAN = privacy.TrainingPlan()  # the CIFAR-10-sized plan of the time-to-train columns
PICKS_NOTE = ("Picks (\"fastest\", \"best\") consider every study row of every variant, including JAX's "
              f"`{XLA_DEFAULT}` A/B variant (XLA's default flags instead of the study's flag: a setting a user "
              "can choose too, so it is not excluded; its label names it). Direct-use rows (`direct_*`) are "
              "checks of a study row and are never picked; they have their own table.")
# Settings fields that must not differ between frameworks (XLA flags and the env lock are per framework by design).
# Settings every record of a run shares; the budget is compared within a model (settings_summary).
SHARED_SETTINGS = ("threads", "cpu_affinity", "timing", "git_commit")


# --- per-row text ----------------------------------------------------------------------------

def _impl_info(fw: str, impl: str):
    return IMPLS.get(fw, {}).get(impl)


def _mb(v: Any) -> int | None:
    """A microbatch size from a record or a frame cell (NaN -> None)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return int(v)


def mb_text(fw: str, impl: str, mb: Any) -> str:
    """The microbatch cell: "full vmap (default)" for a sweep impl's library default, "" where none applies."""
    mb = _mb(mb)
    if mb is None:
        info = _impl_info(fw, impl)
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


def _sps(r: Any, fmt: str = "{:.2f}") -> str:
    return fmt.format(r["throughput_sps"]) + (REDUCED if r["reduced"] else "")


def _pct(v: Any) -> str:
    return "-" if v is None or pd.isna(v) else f"{v:.1f}%"


WIDE = "(wide)"


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


def _row_pct(r: Any, prefix: str = "") -> str:
    return pct_ci(r[f"{prefix}pct_of_standard"], r[f"{prefix}pct_lo"], r[f"{prefix}pct_hi"], r[f"{prefix}pct_wide"])


def _mem(v: Any) -> str:
    return "-" if v is None or pd.isna(v) else f"{v / 2**20:.0f}"


def _esc(text: Any) -> str:
    return str(text).replace("|", "\\|")


def _model_rank(m: str) -> int:
    return list(MODELS).index(m) if m in MODELS else len(MODELS)


def _fw_rank(fw: str) -> int:
    return FRAMEWORKS.index(fw) if fw in FRAMEWORKS else len(FRAMEWORKS)


# --- the frame -------------------------------------------------------------------------------

def frame(recs: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per configuration (latest record), with % of the framework's standard and
    % of the fastest standard of any framework (both from study rows only)."""
    latest = records.latest(recs)
    df = pd.DataFrame(latest)
    if df.empty:
        return df
    df["_rec"] = pd.Series(latest, index=df.index, dtype=object)
    stats = round_stats(recs)
    for col in ("ratio", "ratio_lo", "ratio_hi", "ratio_wide", "pairs", "rounds", "sps_lo", "sps_hi", "sps_med"):
        df[col] = [stats.get(records.config_key(r), {}).get(col) for r in latest]
    df[["ratio", "ratio_lo", "ratio_hi", "sps_lo", "sps_hi", "sps_med"]] = df[
        ["ratio", "ratio_lo", "ratio_hi", "sps_lo", "sps_hi", "sps_med"]].astype(float)
    # Throughput: the median over every round's windows (the record's own is one round's; with one
    # round the two are the same number).
    has = (df["status"] == "ok") & df["sps_med"].notna() & (df["rounds"].fillna(0) > 1)
    df.loc[has, "throughput_sps"] = df.loc[has, "sps_med"]
    df["row_kind"] = df["row_kind"].fillna("study")
    df["label"] = df["impl"] + df["variant"].map(lambda v: f" ({v})" if v else "")
    df["reduced"] = [records.reduced_precision(r) for r in latest]
    df["status_text"] = [status_text(r) for r in latest]
    df["is_ab"] = [r["variant"] in getattr(_impl_info(r["framework"], r["impl"]), "ab_variants", ()) for r in latest]
    ok_std = df[(df["status"] == "ok") & (df["mode"] == "standard") & (df["row_kind"] == "study")]
    keys = ["framework", "model", "batch_size"]
    best = ok_std.groupby(keys)["throughput_sps"].max().rename("standard_sps")
    df = df.join(best, on=keys)
    if len(ok_std):
        top = ok_std.loc[ok_std.groupby(["model", "batch_size"])["throughput_sps"].idxmax()]
        top = top.set_index(["model", "batch_size"])
        top = pd.DataFrame({"fastest_standard_sps": top["throughput_sps"],
                            "fastest_standard_row": top["framework"] + ": " + top["label"]})
        df = df.join(top, on=["model", "batch_size"])
    else:
        df["fastest_standard_sps"], df["fastest_standard_row"] = float("nan"), None
    # Unpaired (records before schema 5): against the framework's best standard.
    df["pct_of_standard"] = 100.0 * df["throughput_sps"] / df["standard_sps"]
    df["pct_of_fastest_standard"] = 100.0 * df["throughput_sps"] / df["fastest_standard_sps"]
    # Paired: the median of the row's pairs with its own standard (same variant), 95 % interval.
    paired = df["ratio"].notna() & (df["mode"] == "dp")
    df.loc[paired, "pct_of_standard"] = 100.0 * df.loc[paired, "ratio"]
    df["pct_lo"], df["pct_hi"] = 100.0 * df["ratio_lo"].where(paired), 100.0 * df["ratio_hi"].where(paired)
    df["pct_wide"] = df["ratio_wide"].where(paired)
    direct = df["row_kind"] != "study"
    df.loc[direct, ["pct_of_standard", "pct_of_fastest_standard", "pct_lo", "pct_hi"]] = float("nan")
    df["sps_p10"] = df["batch_size"] / df["step_s_p90"]
    df["sps_p90"] = df["batch_size"] / df["step_s_p10"]
    df["_m"] = df["model"].map(_model_rank)
    df["_f"] = df["framework"].map(_fw_rank)
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
        if ri is not None:
            out[key].update(ratio=ri.median, ratio_lo=ri.lo, ratio_hi=ri.hi, ratio_wide=ri.reason, pairs=ri.n)
        if ti is not None:
            out[key].update(sps_med=ti.median, sps_lo=ti.lo, sps_hi=ti.hi)
    return out


def _study(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["row_kind"] == "study"]


def _none_ok(g: pd.DataFrame) -> str:
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


# --- headline --------------------------------------------------------------------------------

OWN_LIBRARY = "dpbench"  # the dp_library of this project's own impl (fastclip): not a library a user picks up
HEADLINE_PICKS = (("dp", "best overall"), ("lib", "best library"))  # (column prefix, the table's "DP pick" cell)
_PICK_FIELDS = ("label", "impl", "variant", "microbatch_size", "library", "sps", "reduced", "pct_of_standard",
                "pct_lo", "pct_hi", "pct_wide", "pct_of_fastest_standard", "peak_mem_mib", "train_h")


def _dp_pick(prefix: str, dp_all: pd.DataFrame) -> dict[str, Any]:
    """The fastest ok row of ``dp_all`` as ``{prefix}_*`` columns; "none ok: ..." where none is ok."""
    dp = dp_all[dp_all["status"] == "ok"]
    if len(dp):
        d = dp.loc[dp["throughput_sps"].idxmax()]
        out = dict(label=row_label(d), impl=d["impl"], variant=d["variant"], microbatch_size=_mb(d["microbatch_size"]),
                   library=d["dp_library"], sps=d["throughput_sps"], reduced=bool(d["reduced"]),
                   pct_of_standard=d["pct_of_standard"], pct_lo=d["pct_lo"], pct_hi=d["pct_hi"],
                   pct_wide=d["pct_wide"], pct_of_fastest_standard=d["pct_of_fastest_standard"],
                   peak_mem_mib=None if pd.isna(d["peak_mem_bytes"]) else d["peak_mem_bytes"] / 2**20,
                   train_h=privacy.train_time_s(d["_rec"], PLAN) / 3600.0)
    elif len(dp_all):
        out = dict(label="none ok: " + _none_ok(dp_all))
    else:
        return {}
    return {f"{prefix}_{k}": v for k, v in out.items()}


def headline_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Per (model, B, framework): the fastest standard row, the fastest per-example DP study row of any
    implementation (``dp_*``; fastclip in practice) and the fastest one of a real DP library (``lib_*``:
    dp_library set and not this project's own "dpbench")."""
    rows = []
    st = _study(df)
    for (model, b, fw), g in st.groupby(["model", "batch_size", "framework"], sort=False):
        ok = g[g["status"] == "ok"]
        std = ok[ok["mode"] == "standard"]
        dp_all = g[(g["mode"] == "dp") & (g["privacy_unit"] == "example")]
        lib_all = dp_all[dp_all["dp_library"].notna() & (dp_all["dp_library"] != OWN_LIBRARY)]
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
            row.update(std_label="none ok: " + _none_ok(g[g["mode"] == "standard"]) if has else None)
        row.update(_dp_pick("dp", dp_all))
        row.update(_dp_pick("lib", lib_all))
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
           "per example (study rows): **best overall**, the fastest of any implementation (this project's own "
           f"`fastclip` included), and **best library**, the fastest of a DP library a user would pick up "
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
        std = _esc(r["std_label"]) if isinstance(r["std_label"], str) else "-"
        if pd.notna(r["std_sps"]) and r["std_is_fastest"]:
            std += " ★"
        std_sps = "-" if pd.isna(r["std_sps"]) else f"{r['std_sps']:.1f}" + (REDUCED if r["std_reduced"] else "")
        for i, (p, pick) in enumerate(HEADLINE_PICKS):
            label = _esc(r[f"{p}_label"]) if isinstance(r[f"{p}_label"], str) else "not run" if p == "lib" else "-"
            sps = "-" if pd.isna(r[f"{p}_sps"]) else f"{r[f'{p}_sps']:.1f}" + (REDUCED if r[f"{p}_reduced"] else "")
            train = f"{f(r[f'{p}_train_h'], 2)} / {f(r['std_train_h'], 2)}"
            # the standard cells once per framework: its second (library) row leaves them empty
            std_cells = f"{std} | {std_sps}" if i == 0 else " | "
            out.append(f"| {r['model']} | {r['batch_size']} | {r['framework']} | {std_cells} | {pick} | {label} | "
                       f"{sps} | {_row_pct(r, f'{p}_')} | {_pct(r[f'{p}_pct_of_fastest_standard'])} | "
                       f"{f(r[f'{p}_peak_mem_mib'], 0)} | {train} |")
    out.append("")
    if any(h[c].eq(True).any() for c in ("std_reduced", "dp_reduced", "lib_reduced")):
        out += [REDUCED_LEGEND, ""]
    return out


# --- precision ------------------------------------------------------------------------------

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
                   f"{int(paired['pairs'].max())}. Rows below {100 * ROUNDS_MIN_RATIO:.0f} % of standard in "
                   "round 1 are measured in one round (runner.repeats_in_later_rounds).")
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


# --- per-shape tables ------------------------------------------------------------------------

def _mode_cell(r: pd.Series) -> str:
    if r["mode"] == "standard":
        return "Standard"
    return "Clipped†" if r["privacy_unit"] == "microbatch_mean" else "Clipped"


def _mb_cell(r: pd.Series) -> str:
    return mb_text(r["framework"], r["impl"], r["microbatch_size"]) or "-"


def seed_table(block: pd.DataFrame) -> list[str]:
    """The seed's table (plus % of the fastest standard, spread/compile/memory columns) for one framework block."""
    head = ("| Mode | Implementation | Microbatch Size | Throughput (samples/s) | Speedup vs Standard | % of Standard "
            "| % of Fastest Standard (any framework) | Spread p10-p90 (samples/s) | CV | Compile (s) | Peak Mem (MiB) |")
    lines = [head, "|" + "---|" * 11]
    for _, r in block.iterrows():
        if r["status"] != "ok":
            cells = [_mode_cell(r), r["label"], _mb_cell(r), r["status_text"]] + ["-"] * 7
        else:
            is_ref = r["mode"] == "standard" and r["throughput_sps"] == r["standard_sps"]
            ratio = r["pct_of_standard"] / 100.0
            speed = "1.0x" if is_ref else (f"{ratio:.2f}x" if pd.notna(ratio) else "-")
            pct = "100%" if is_ref else _row_pct(r)
            cells = [_mode_cell(r), r["label"], _mb_cell(r), _sps(r), speed, pct, _pct(r["pct_of_fastest_standard"]),
                     f"{r['sps_p10']:.1f}-{r['sps_p90']:.1f}", f"{r['step_s_cv']:.2f}", f"{r['compile_s']:.2f}",
                     _mem(r["peak_mem_bytes"])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def seed_tables(df: pd.DataFrame) -> list[str]:
    out: list[str] = []
    st = _study(df)
    for (shape, b), grp in st.groupby([st["input_shape"].map(tuple), "batch_size"], sort=False):
        out += [f"## Input Shape: {tuple(shape)}, Batch Size: {b}", ""]
        top = grp["fastest_standard_sps"].dropna()
        if len(top):
            out += [f"**Fastest standard of any framework:** {_fmt(top.iloc[0])} samples/s "
                    f"({grp['fastest_standard_row'].dropna().iloc[0]})", ""]
        for fw, block in grp.groupby("framework", sort=False):
            std = block["standard_sps"].dropna()
            out += [f"### {fw} ({_versions(block)})", ""]
            if len(std):
                ref = block[(block["mode"] == "standard") & (block["throughput_sps"] == std.iloc[0])]["label"].iloc[0]
                note = f" (best standard: {ref})" if (block["mode"] == "standard").sum() > 1 else ""
                out += [f"**Standard Throughput:** {_fmt(std.iloc[0])} samples/s{note}", ""]
            else:
                out += ["**Standard Throughput:** no ok standard row", ""]
            out += seed_table(block) + [""]
            if (block["privacy_unit"] == "microbatch_mean").any():
                out += [PRIVACY_NOTE, ""]
            if block["reduced"].any():
                out += [REDUCED_LEGEND, ""]
    return out


def _fmt(x: float) -> str:
    return f"{x:.2f}"


def _versions(block: pd.DataFrame) -> str:
    parts = []
    fw = block.dropna(subset=["framework_version"])
    if len(fw):
        parts.append(f"{block['framework'].iloc[0]} {fw['framework_version'].iloc[0]}")
    libs = block.dropna(subset=["dp_library", "dp_library_version"]).drop_duplicates("dp_library")
    parts += [f"{r.dp_library} {r.dp_library_version}" for r in libs.itertuples() if r.dp_library != "dpbench"]
    return ", ".join(parts)


# --- cross-framework -------------------------------------------------------------------------

def cross_framework(df: pd.DataFrame) -> pd.DataFrame:
    """Rows (model, B); one column per framework x impl (study rows): its best variant / microbatch as
    "% of own standard / % of fastest standard (samples/s, variant, mb)"."""
    st = _study(df)
    cells: dict[tuple, dict[str, str]] = {}
    for (model, b, fw, impl), g in st.groupby(["model", "batch_size", "framework", "impl"], sort=False):
        gok = g[g["status"] == "ok"]
        col = f"{fw}: {impl}" + ("†" if (g["privacy_unit"] == "microbatch_mean").any() else "")
        if gok.empty:
            text = _none_ok(g)
        else:
            r = gok.loc[gok["throughput_sps"].idxmax()]
            m = mb_text(fw, impl, r["microbatch_size"]) if impl != "standard" else ""
            extra = [v for v in (r["variant"], (f"mb {m}" if m.isdigit() else m) if m else "") if v]
            text = (f"{_row_pct(r)} / {_pct(r['pct_of_fastest_standard'])} "
                    f"({_sps(r, '{:.0f}')}/s{', ' + ', '.join(extra) if extra else ''})")
        cells.setdefault((model, b), {})[col] = text
    if not cells:
        return pd.DataFrame()
    table = pd.DataFrame.from_dict(cells, orient="index")
    table.index = pd.MultiIndex.from_tuples(table.index, names=["model", "batch_size"])
    return table.fillna("-")


# --- direct use, jax-privacy default, XLA A/B -------------------------------------------------

def _by_key(df: pd.DataFrame) -> dict[tuple, dict[str, Any]]:
    """Frame rows as dicts by configuration key (microbatch NaN -> None)."""
    return {(r["framework"], r["impl"], r["variant"], r["model"], int(r["batch_size"]), _mb(r["microbatch_size"])): r
            for r in df.to_dict("records")}


def _cell(r: dict[str, Any] | None, fmt: str = "{:.1f}") -> str:
    if r is None:
        return "not run"
    return _sps(r, fmt) if r["status"] == "ok" else r["status_text"]


def _ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> float | None:
    if a is None or b is None or a["status"] != "ok" or b["status"] != "ok":
        return None
    return float(a["throughput_sps"] / b["throughput_sps"])


def direct_frame(df: pd.DataFrame) -> pd.DataFrame:
    """One row per direct-use record: it, the study row it names (direct_of), study / direct."""
    keyed = _by_key(df)
    rows = []
    for d in df[df["row_kind"] == "direct"].to_dict("records"):
        of = d["direct_of"] if isinstance(d["direct_of"], dict) else None
        if of is None:  # not recorded: the catalogue's
            info = _impl_info(d["framework"], d["impl"])
            if info is None or info.direct_of is None:
                continue
            of = dict(zip(("impl", "variant", "microbatch_size"), info.direct_of))
        key = (d["framework"], of["impl"], of.get("variant") or "", d["model"], int(d["batch_size"]),
               _mb(of.get("microbatch_size")))
        s = keyed.get(key)
        ratio, lo, hi = _ratio(s, d), None, None
        if d["status"] == "ok" and pd.notna(d.get("ratio")):  # paired: direct / study in one process, inverted
            ratio, lo, hi = 1 / d["ratio"], 1 / d["ratio_hi"], 1 / d["ratio_lo"]
        rows.append({"dp_library": d["dp_library"] or "-", "framework": d["framework"], "model": d["model"],
                     "batch_size": int(d["batch_size"]), "direct_impl": d["label"], "direct": d,
                     "study_label": row_label({"framework": d["framework"], "impl": key[1], "variant": key[2],
                                               "microbatch_size": key[5], "mode": "dp"}),
                     "study": s, "direct_sps": d["throughput_sps"] if d["status"] == "ok" else None,
                     "study_sps": s["throughput_sps"] if s is not None and s["status"] == "ok" else None,
                     "ratio": ratio, "ratio_lo": lo, "ratio_hi": hi,
                     # flagged only when the whole interval lies below the threshold (unpaired: the point)
                     "flagged": ratio is not None and (hi if hi is not None else ratio) < DIRECT_THRESHOLD})
    return pd.DataFrame(rows)


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
                "| Framework | Model | B | Direct row | Direct (samples/s) | Study row | Study (samples/s) "
                "| Study / direct | Flag |", "|---|---|---|---|---|---|---|---|---|"]
        for r in g.itertuples():
            ratio = "-" if r.ratio is None or pd.isna(r.ratio) else f"{r.ratio:.3f}" + (
                f" [{r.ratio_lo:.3f}, {r.ratio_hi:.3f}]" if r.ratio_lo is not None and pd.notna(r.ratio_lo) else "")
            out.append(f"| {r.framework} | {r.model} | {r.batch_size} | {r.direct_impl} | {_cell(r.direct)} | "
                       f"{_esc(r.study_label)} | {_cell(r.study)} | {ratio} | {DIRECT_FLAG if r.flagged else ''} |")
        out.append("")
        flagged = g[g["flagged"]]
        if len(flagged):
            out += [f"{DIRECT_FLAG}:", ""]
            out += [f"- {r.framework} {r.study_label}, {r.model}, B={r.batch_size}: {r.study_sps:.1f} vs "
                    f"{r.direct_sps:.1f} samples/s with {r.direct_impl} (study / direct {r.ratio:.3f})"
                    for r in flagged.itertuples()]
            out.append("")
        if any(x is not None and x["reduced"] for x in list(g["direct"]) + list(g["study"])):
            out += [REDUCED_LEGEND, ""]
    return out


def jax_privacy_frame(df: pd.DataFrame) -> pd.DataFrame:
    """jax_privacy's default (microbatch None: one vmap over the batch) vs microbatch_size = B."""
    keyed = _by_key(df)
    rows = []
    for (fw, impl, variant, model, b, mb), r in keyed.items():
        if fw != "jax" or impl != "jax_privacy" or mb is not None:
            continue
        m = keyed.get((fw, impl, variant, model, b, b))
        rows.append({"model": model, "batch_size": b, "variant": variant, "default": r, "mb_b": m,
                     "default_sps": r["throughput_sps"] if r["status"] == "ok" else None,
                     "mb_b_sps": m["throughput_sps"] if m is not None and m["status"] == "ok" else None,
                     "ratio": _ratio(r, m)})
    return pd.DataFrame(rows)


def jax_privacy_lines(jp: pd.DataFrame) -> list[str]:
    if jp.empty:
        return []
    out = ["## jax-privacy: default full vmap vs microbatch = B", ""]
    if JAX_PRIVACY_MICROBATCH_NOTE:
        out += [JAX_PRIVACY_MICROBATCH_NOTE, ""]
    out += ["| Model | B | Variant | Full vmap (default) (samples/s) | mb = B (samples/s) | default / mb=B "
            "| Peak Mem default / mb=B (MiB) |", "|---|---|---|---|---|---|---|"]
    reduced = False
    for r in jp.itertuples():
        ratio = "-" if r.ratio is None or pd.isna(r.ratio) else f"{r.ratio:.2f}"
        mem = f"{_mem(r.default['peak_mem_bytes'])} / {'-' if r.mb_b is None else _mem(r.mb_b['peak_mem_bytes'])}"
        out.append(f"| {r.model} | {r.batch_size} | {r.variant or '-'} | {_cell(r.default)} | {_cell(r.mb_b)} | "
                   f"{ratio} | {mem} |")
        reduced |= any(x is not None and x["reduced"] for x in (r.default, r.mb_b))
    return out + [""] + ([REDUCED_LEGEND, ""] if reduced else [])


def xla_ab_frame(df: pd.DataFrame) -> pd.DataFrame:
    """JAX study rows with both the study's XLA flag ("") and XLA's defaults (xla-default)."""
    keyed = _by_key(_study(df))
    rows = []
    for (fw, impl, variant, model, b, mb), r in keyed.items():
        if fw != "jax" or variant != "":
            continue
        a = keyed.get((fw, impl, XLA_DEFAULT, model, b, mb))
        if a is None:
            continue
        rows.append({"impl": impl, "microbatch_size": mb, "model": model, "batch_size": b, "flag": r, "default": a,
                     "flag_sps": r["throughput_sps"] if r["status"] == "ok" else None,
                     "default_sps": a["throughput_sps"] if a["status"] == "ok" else None,
                     "ratio": _ratio(r, a)})
    return pd.DataFrame(rows)


def xla_ab_lines(ab: pd.DataFrame) -> list[str]:
    if ab.empty:
        return []
    flags = sorted({str(records.settings(r["_rec"])["xla_flags"]) for r in ab["flag"]})
    dflt = sorted({str(records.settings(r["_rec"])["xla_flags"]) for r in ab["default"]})
    out = ["## XLA flag A/B (JAX)", "",
           f"The study's XLA_FLAGS (`{'`, `'.join(flags)}`) vs XLA's defaults (`{XLA_DEFAULT}` variant, recorded "
           f"XLA_FLAGS `{'`, `'.join(dflt)}`), same impl, microbatch, model and batch. flag / default > 1: the "
           "study's flag is faster.", "",
           "| Impl | Microbatch | Model | B | Study flag (samples/s) | XLA default (samples/s) | flag / default |",
           "|---|---|---|---|---|---|---|"]
    reduced = False
    for r in ab.itertuples():
        ratio = "-" if r.ratio is None or pd.isna(r.ratio) else f"{r.ratio:.2f}"
        out.append(f"| {r.impl} | {mb_text('jax', r.impl, r.microbatch_size) or '-'} | {r.model} | {r.batch_size} | "
                   f"{_cell(r.flag)} | {_cell(r.default)} | {ratio} |")
        reduced |= bool(r.flag["reduced"] or r.default["reduced"])
    return out + [""] + ([REDUCED_LEGEND, ""] if reduced else [])


# --- settings, status counts -----------------------------------------------------------------

def _base_settings(rec: dict[str, Any]) -> dict[str, Any]:
    s = records.settings(rec)
    s.pop("clip_norm"), s.pop("noise_multiplier")
    return s


def settings_summary(recs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """(distinct settings with counts, warnings). A distinct setting is a distinct
    ``records.settings_key`` once a standard row (which has no clip/noise) is merged with the DP rows
    sharing the rest; its DP rows' clip/noise pairs are listed with it. Warnings: more than one
    setting within a framework (the XLA flags compared only among rows of the same A/B variant: the
    JAX ``xla-default`` rows differ in them on purpose; malloc settings only among rows of the same
    allocator); a shared field (threads, affinity, timing, commit) differing between
    frameworks; a budget differing within a model; more than one clip/noise pair among DP rows. XLA flags and env locks differ between
    frameworks by design."""
    groups: dict[str, dict[str, Any]] = {}
    per_fw: dict[str, set[str]] = {}
    flags: dict[tuple[str, str], set[str]] = {}  # (framework, A/B variant or "") -> XLA flags seen
    shared: dict[str, set[str]] = {k: set() for k in SHARED_SETTINGS}
    mallocs: dict[str, set[str]] = {}  # allocator -> malloc settings seen (an allocator A/B differs on purpose)
    dp_pairs: set[tuple] = set()
    budgets: dict[str, set[str]] = {}
    for r in recs:
        base = _base_settings(r)
        k = json.dumps(base, sort_keys=True)
        g = groups.setdefault(k, {"settings": base, "records": 0, "frameworks": {}, "dp": {}, "keys": set()})
        g["records"] += 1
        g["frameworks"][r["framework"]] = g["frameworks"].get(r["framework"], 0) + 1
        g["keys"].add(records.settings_key(r))
        if r["mode"] == "dp":
            pair = (r["clip_norm"], r["noise_multiplier"])
            g["dp"][pair] = g["dp"].get(pair, 0) + 1
            dp_pairs.add(pair)
        # Budgets are compared within a model (presets may give each model its own; tables never mix models).
        budgets.setdefault(r["model"], set()).add(str(base["budget_s"]))
        comparable = {k: v for k, v in base.items() if k not in ("xla_flags", "budget_s", "malloc")}
        mallocs.setdefault(r.get("allocator", allocator.OTHER), set()).add(json.dumps(base["malloc"], sort_keys=True))
        per_fw.setdefault(r["framework"], set()).add(json.dumps(comparable, sort_keys=True))
        info = _impl_info(r["framework"], r["impl"])
        ab = r["variant"] if info is not None and r["variant"] in info.ab_variants else ""
        flags.setdefault((r["framework"], ab), set()).add(str(base["xla_flags"]))
        for f in SHARED_SETTINGS:
            shared[f].add(json.dumps(base[f], sort_keys=True))
    warnings = []
    for fw, ks in per_fw.items():
        if len(ks) > 1:
            warnings.append(f"{fw}: its records were measured under {len(ks)} different settings")
    for (fw, ab), vals in flags.items():
        if len(vals) > 1:
            warnings.append(f"{fw}{' ' + ab if ab else ''} rows use {len(vals)} different XLA flags: "
                            + ", ".join(f"`{v}`" for v in sorted(vals)))
    for alloc, vals in mallocs.items():
        if len(vals) > 1:
            warnings.append(f"allocator {alloc} rows use {len(vals)} different malloc settings: {', '.join(sorted(vals))}")
    for f, vals in shared.items():
        if len(vals) > 1:
            warnings.append(f"{f} differs between records: {', '.join(sorted(vals))}")
    for model, vals in budgets.items():
        if len(vals) > 1:
            warnings.append(f"budget_s differs between {model} records: {', '.join(sorted(vals))}")
    if len(dp_pairs) > 1:
        warnings.append("DP rows use more than one clip norm / noise multiplier: "
                        + ", ".join(f"{c}/{n}" for c, n in sorted(dp_pairs, key=str)))
    out = sorted(groups.values(), key=lambda g: -g["records"])
    return out, warnings


def settings_lines(groups: list[dict[str, Any]], warnings: list[str]) -> list[str]:
    j = lambda v: ("-" if v is None else "(empty)" if v == "" else
                   f"`{json.dumps(v, sort_keys=True)}`" if isinstance(v, dict) else f"`{v}`")
    out = ["## Settings", "",
           "Everything besides the configuration key that changes a measurement (`records.settings`), one row per "
           "distinct setting, with how many records have it. XLA flags and the environment lock differ between "
           "frameworks by design (the XLA flag is set for JAX only); the JAX `xla-default` A/B rows differ in their "
           "XLA flags on purpose.", ""]
    if warnings:
        out += [f"**⚠ {len(groups)} distinct settings in this run; measurements under different settings are not "
                "directly comparable:**", ""] + [f"- ⚠ {w}" for w in warnings] + [""]
    else:
        n = len(groups)
        out += ["1 distinct setting." if n == 1 else
                f"{n} distinct settings, no conflict: they differ only where frameworks differ by design.", ""]
    out += ["| Records | Frameworks | Threads | CPU affinity | XLA flags | malloc | Budget (s) | Timing | "
            "Clip / noise (DP rows) | Commit | Env lock |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for g in groups:
        s = g["settings"]
        fws = ", ".join(f"{fw} {n}" for fw, n in sorted(g["frameworks"].items(), key=lambda kv: _fw_rank(kv[0])))
        dp = ", ".join(f"{c}/{n} ({k})" for (c, n), k in g["dp"].items()) or "-"
        aff = s["cpu_affinity"]
        aff = "-" if aff is None else f"`{aff}`"
        out.append(f"| {g['records']} | {fws} | {s['threads']} | {aff} | {j(s['xla_flags'])} | {j(s['malloc'])} | "
                   f"{s['budget_s']} | {j(s['timing'])} | {dp} | {j(s['git_commit'])} | {j(s['env_lock'])} |")
    return out + [""]


def status_counts(df: pd.DataFrame) -> pd.DataFrame:
    """Configurations (latest record of each) per framework and status, every status a column."""
    t = pd.crosstab(df["framework"], df["status"]).reindex(columns=list(records.STATUSES), fill_value=0)
    t = t.loc[sorted(t.index, key=_fw_rank)]
    t["total"] = t.sum(axis=1)
    return t


def status_lines(df: pd.DataFrame) -> list[str]:
    t = status_counts(df)
    out = ["## Status per framework (configurations, latest record of each; direct rows included)", "",
           "| Framework | " + " | ".join(t.columns) + " |", "|---" * (len(t.columns) + 1) + "|"]
    out += [f"| {fw} | " + " | ".join(str(int(v)) for v in row) + " |" for fw, row in t.iterrows()]
    return out + [""]


# --- the rest --------------------------------------------------------------------------------

def environment_lines(df: pd.DataFrame, recs: list[dict[str, Any]]) -> list[str]:
    times = sorted(r["time_utc"] for r in recs)
    vers = df.dropna(subset=["framework_version"]).drop_duplicates("framework")
    libs = df.dropna(subset=["dp_library_version"]).drop_duplicates("dp_library")
    thr = df["threads"].iloc[0]
    return [
        f"- Machine: {', '.join(sorted(set(df['cpu_model'])))}; device(s): {', '.join(sorted(set(df['device'].dropna())))}",
        f"- Threads: intra-op {thr.get('intra_op')}, inter-op {thr.get('inter_op')} of {thr.get('cpu_count')} cores; "
        f"XLA_FLAGS=`{(thr.get('env') or {}).get('XLA_FLAGS')}` (all settings: see Settings)",
        "- Versions: " + ", ".join([f"{r.framework} {r.framework_version}" for r in vers.itertuples()] +
                                   [f"{r.dp_library} {r.dp_library_version}" for r in libs.itertuples()]),
        f"- Date (UTC): {times[0]} to {times[-1]}; run id(s): {', '.join(sorted(set(df['run_id'])))}; "
        f"commit(s): {', '.join(sorted(set(df['git_commit'].dropna())))}",
        f"- Records: {len(recs)} ({len(df)} configurations; "
        + ", ".join(f"{n} {s}" for s, n in df["status"].value_counts().items()) + ")",
    ]


def problems(df: pd.DataFrame) -> list[str]:
    bad = df[df["status"] != "ok"]
    if bad.empty:
        return []
    out = ["## Configurations that did not finish", "", "| Framework | Impl | Model | B | Microbatch | Status | Error |",
           "|---|---|---|---|---|---|---|"]
    for _, r in bad.iterrows():
        err = _esc(r["error"])[:300]
        out.append(f"| {r['framework']} | {r['label']} | {r['model']} | {r['batch_size']} | {_mb_cell(r)} | "
                   f"{r['status_text']} | {err} |")
    return out + [""]


def code_paths(recs: list[dict[str, Any]]) -> list[str]:
    """What each DP row's clipping did, as its framework recorded it (record
    notes): per-example gradient bytes the step materialises (Opacus's
    grad_sample buffers, fastclip's kept per-example conv grads), fastclip's
    per-layer methods, TF-Privacy's DP-model path and pfor fallbacks, and the
    noise sampler where it is not the framework's default."""
    rows = []
    for r in recs:
        n = r.get("notes") or {}
        if r.get("mode") != "dp" or r.get("status") != "ok":
            continue
        facts = []
        if n.get("per_sample_grad_bytes") is not None:
            facts.append(f"per-example grads {n['per_sample_grad_bytes'] / 2**20:.1f} MiB")
        if n.get("fastclip_plan"):
            facts.append("plan " + ", ".join(f"{k}: {v['method']}" + (f"/{v['chunk']}" if v["method"] != "dense" else "")
                                              for k, v in n["fastclip_plan"].items()))
        if n.get("tfp_dpmodel_path"):
            facts.append(f"DP model path: {n['tfp_dpmodel_path']}")
        if n.get("pfor_while_loop_fallbacks"):
            facts.append(f"{n['pfor_while_loop_fallbacks']} pfor while_loop fallbacks")
        if n.get("noise_sampler"):
            facts.append(f"noise: {n['noise_sampler']}")
        if facts:
            label = r["impl"] + (f" ({r['variant']})" if r.get("variant") else "")
            mb = mb_text(r["framework"], r["impl"], r.get("microbatch_size")) or "-"
            rows.append(f"| {r['framework']} | {label} | {mb} | {r['model']} | {r['batch_size']} | {'; '.join(facts)} |")
    if not rows:
        return []
    return ["## What each DP row's clipping did (recorded by its framework)", "",
            "fastclip plans: layer: method/examples per chunk (dense: |a|²|g|², nothing per example). "
            "JAX's per-example tensors are in the JAXPR/HLO analysis below.", "",
            "| Framework | Impl | Microbatch | Model | B | Recorded |", "|---|---|---|---|---|---|", *rows, ""]


def privacy_section(recs: list[dict[str, Any]], out_dir: Path) -> list[str]:
    """epsilon and time to train a CIFAR-10-sized plan for every ok row (common/report/privacy.py)."""
    try:
        table = privacy.privacy_table(recs, PLAN)
    except ImportError:  # dp-accounting lives in the study env
        return []
    if table.empty:
        return []
    table.to_csv(out_dir / "tables" / "privacy.csv", index=False)
    show = table.assign(label=table["impl"] + table["variant"].map(lambda v: f" ({v})" if v else ""))
    out = [f"## Privacy and time to train (N={PLAN.dataset_size:,}, {PLAN.epochs} epochs, sigma={PLAN.noise_multiplier}, "
           f"delta=1/N)", "", privacy.FIXED_BATCH_NOTE, "",
           "| Framework | Impl | Model | B | Microbatch | eps (RDP) | eps (PLD) | Epoch (s) | Train (h) | +h vs standard |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    f = lambda v, p: "-" if pd.isna(v) else f"{v:.{p}f}"
    for r in show.itertuples():
        mb = mb_text(r.framework, r.impl, r.microbatch_size) or "-"
        out.append(f"| {r.framework} | {r.label}{'†' if r.privacy_unit == 'microbatch_mean' else ''} | {r.model} | "
                   f"{r.batch_size} | {mb} | {f(r.epsilon_rdp, 2)} | {f(r.epsilon_pld, 2)} | {f(r.epoch_s, 1)} | "
                   f"{f(r.train_h, 2)} | {f(r.extra_h_vs_standard, 2)} |")
    return out + [""]


STAGES = "stages.tsv"  # run_all.sh: one "stage<TAB>seconds" line per finished stage


def stage_lines(run_dir: Path) -> list[str]:
    """Wall time of each run_all.sh stage, and of each framework's analyses (explain.json)."""
    path = run_dir / STAGES
    rows = []
    if path.exists():
        for ln in path.read_text().splitlines():
            name, _, secs = ln.rpartition("\t")
            if name and secs.strip().isdigit():
                rows.append((name, int(secs)))
    per_fw: dict[str, list[float]] = {}
    explain_json = run_dir / "explain.json"
    if explain_json.exists():
        for a in json.loads(explain_json.read_text()):
            if a.get("elapsed_s") is not None:
                per_fw.setdefault(a["framework"], []).append(float(a["elapsed_s"]))
    if not rows and not per_fw:
        return []
    out = ["## Run stages (wall time)", "", "`run_all.sh`'s stages as it timed them (`stages.tsv`), then the "
           "analyses per framework (each analysis process, start to exit, from `explain.json`).", "",
           "| Stage | Wall time |", "|---|---|"]
    out += [f"| {_esc(name)} | {secs // 60} min {secs % 60} s |" for name, secs in rows]
    out += [f"| analyses of {fw} ({len(v)} processes) | {int(sum(v)) // 60} min {int(sum(v)) % 60} s |"
            for fw, v in sorted(per_fw.items(), key=lambda kv: _fw_rank(kv[0]))]
    return out + [""]


def _csv(frame_: pd.DataFrame, path: Path, drop: Sequence[str] = ()) -> None:
    frame_.drop(columns=[c for c in drop if c in frame_.columns]).to_csv(path, index=False)


def write_report(run_dir: Path, out_dir: Path | None = None) -> Path:
    """Read run_dir's records; write report.md, tables/ and plots/ into out_dir (default run_dir)."""
    from common.harness import maxbatch, verify
    out_dir = run_dir if out_dir is None else out_dir
    recs = records.read(run_dir / "records.jsonl")
    probes = records.read(run_dir / maxbatch.MAX_BATCH)
    parity = verify.read(run_dir)
    if not recs and not probes:
        raise ValueError(f"no records in {run_dir / 'records.jsonl'}")
    out_dir.mkdir(parents=True, exist_ok=True)
    extra = (verify.render(parity) if parity else []) + (maxbatch.table(probes) if probes else [])
    if not recs:
        out = out_dir / "report.md"
        out.write_text("\n".join([f"# dpbench — {run_dir.name}", ""] + extra))
        return out
    # Multi-device rows have their own section (scaling), the allocator A/B's other arm its
    # own (allocator); every other table is of one device under the study's allocator.
    df = frame(allocator.preferred([r for r in recs if r.get("devices", 1) == 1]))
    sf = scaling.frame(allocator.preferred(recs))
    af = allocator.frame(recs)
    tables = out_dir / "tables"
    tables.mkdir(exist_ok=True)
    cols = ["framework", "impl", "variant", "row_kind", "privacy_unit", "model", "batch_size", "microbatch_size",
            "status", "status_text", "throughput_sps", "sps_lo", "sps_hi", "reduced", "pct_of_standard", "pct_lo",
            "pct_hi", "pct_wide", "rounds", "pairs", "pct_of_fastest_standard",
            "step_s_median", "step_s_p10", "step_s_p90", "step_s_cv", "compile_s", "peak_mem_bytes", "mem_source",
            "device", "error"]
    df[cols].to_csv(tables / "throughput.csv", index=False)
    cross = cross_framework(df)
    cross.to_csv(tables / "cross_framework.csv")
    head = headline_frame(df)
    head.to_csv(tables / "headline.csv", index=False)
    every = pd.DataFrame(records.latest(recs))  # status counts: every device count
    status_counts(every).to_csv(tables / "status_counts.csv")
    dd, jp, ab = direct_frame(df), jax_privacy_frame(df), xla_ab_frame(df)
    _csv(dd, tables / "direct.csv", ("direct", "study"))
    _csv(jp, tables / "jax_privacy_default.csv", ("default", "mb_b"))
    _csv(ab, tables / "xla_ab.csv", ("flag", "default"))
    nf = noise_share.frame(df)
    _csv(nf, tables / "fastclip_noise_share.csv")
    if not sf.empty:
        sf.to_csv(tables / "scaling.csv", index=False)
    if not af.empty:
        af.to_csv(tables / "allocator_ab.csv", index=False)
    groups, warnings = settings_summary(recs)
    from common.report import plots
    pngs = plots.write_all(df, out_dir / "plots", headline=head)

    lines = [f"# dpbench: DP-SGD vs standard training — {run_dir.name}", ""]
    if warnings:
        lines += [f"> **⚠ This run mixes {len(groups)} distinct settings** ({'; '.join(warnings)}); see Settings.", ""]
    lines += headline_lines(head)
    lines += environment_lines(df, recs) + [""]
    lines += ["Throughput is samples/s, the median over the timed windows of every round (spread: p10-p90 of "
              "one round's windows; CV over them). % of Standard of a DP row is paired: its process timed its "
              "framework's standard row (same model, batch and variant) in alternating windows, ABBA order, and "
              "the number is the median of the per-pair ratios over every round, with its 95 % interval "
              "[low, high] (two-level bootstrap: rounds, then pairs; common/report/intervals.py). "
              f"{WIDE}: the half-width is above {intervals.WIDE_REL:.0%} of the median (the Precision section "
              "says why). A row above 100 % whose interval reaches 100 % reads \"≈ standard\". "
              "Rows without pairs (older records) show an unpaired ratio with no interval. "
              "% of Fastest Standard is unpaired: against the fastest standard row of any framework there. Peak Mem: "
              "steady-state peak RSS of the timed steps above the worker's idle baseline on CPU (the compile "
              "step's peak is in the record's notes), the allocator's peak on GPUs. A timeout that took steps "
              "before the budget ran out shows their median step time."
              + (" " + REDUCED_LEGEND + "." if df["reduced"].any() else ""), ""]
    lines += status_lines(every)
    lines += precision_lines(df, run_dir)
    if not cross.empty:
        lines += ["## Cross-framework: % of own framework's standard / % of the fastest standard of any framework "
                  "(samples/s, best variant / microbatch)", "", cross.reset_index().to_markdown(index=False), ""]
        if any("†" in c for c in cross.columns):
            lines += [PRIVACY_NOTE, ""]
        if any(REDUCED in str(v) for v in cross.to_numpy().ravel()):
            lines += [REDUCED_LEGEND, ""]
    lines += direct_lines(dd) + jax_privacy_lines(jp) + xla_ab_lines(ab)
    lines += noise_share.lines(nf, REDUCED, REDUCED_LEGEND)
    lines += scaling.lines(sf, REDUCED, REDUCED_LEGEND)
    lines += allocator.lines(af, REDUCED, REDUCED_LEGEND)
    lines += extra + seed_tables(df) + problems(df)
    lines += settings_lines(groups, warnings) + stage_lines(run_dir)
    lines += privacy_section(recs, out_dir)
    lines += code_paths(recs)
    from common.harness import phases as phase_report
    lines += phase_report.table(recs)
    phase_png = phase_report.plot(recs, out_dir / "plots" / "phases.png")
    if phase_png is not None:
        pngs.append(phase_png)
    explain_json = run_dir / "explain.json"
    if explain_json.exists():
        from common.report import explain
        lines += ["## Automatic analyses", "",
                  explain.render(json.loads(explain_json.read_text())), ""]
    from common.report import layer_timing
    if (run_dir / layer_timing.FILE).exists():
        lines += layer_timing.table(json.loads((run_dir / layer_timing.FILE).read_text()))
    lines += ["## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in pngs] + [""]
    out = out_dir / "report.md"
    out.write_text("\n".join(lines))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m common.report", description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path, help="run directory holding records.jsonl")
    ap.add_argument("--out", type=Path, default=None,
                    help="write report.md, tables/ and plots/ here instead of into RUN_DIR")
    a = ap.parse_args(argv)
    try:
        print(write_report(a.run_dir, a.out))
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
