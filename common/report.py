"""Tables and plots of one run directory, from its records.jsonl alone.

    python -m common.report RESULTS_DIR

(Re)writes RESULTS_DIR/report.md, RESULTS_DIR/tables/*.csv and
RESULTS_DIR/plots/*.png. Nothing here is typed by hand: every number comes
from a record. Throughput percentages are relative to the framework's best
``standard`` row at the same model and batch size (TF has two: graph and XLA).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from common import records

PRIVACY_NOTE = ("† clips the *mean* gradient of each microbatch (TF-Privacy num_microbatches < B): "
                "a different privacy unit from per-example clipping; not comparable as if it were.")


def frame(recs: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per configuration (latest record), with % of standard."""
    df = pd.DataFrame(records.latest(recs))
    if df.empty:
        return df
    df["label"] = df["impl"] + df["variant"].map(lambda v: f" ({v})" if v else "")
    ok = df[(df["status"] == "ok") & (df["mode"] == "standard")]
    best = ok.groupby(["framework", "model", "batch_size"])["throughput_sps"].max().rename("standard_sps")
    df = df.join(best, on=["framework", "model", "batch_size"])
    df["pct_of_standard"] = 100.0 * df["throughput_sps"] / df["standard_sps"]
    df["sps_p10"] = df["batch_size"] / df["step_s_p90"]
    df["sps_p90"] = df["batch_size"] / df["step_s_p10"]
    order = {"standard": 0, "dp": 1}
    df["_o"] = df["mode"].map(order)
    df["_mb"] = -pd.to_numeric(df["microbatch_size"], errors="coerce").fillna(1e9)
    return df.sort_values(["model", "batch_size", "framework", "_o", "impl", "variant", "_mb"]).reset_index(drop=True)


def _fmt_sps(x: float) -> str:
    return f"{x:.2f}"


def _mode_cell(r: pd.Series) -> str:
    if r["mode"] == "standard":
        return "Standard"
    return "Clipped†" if r["privacy_unit"] == "microbatch_mean" else "Clipped"


def _mb_cell(r: pd.Series) -> str:
    return "-" if pd.isna(r["microbatch_size"]) else str(int(r["microbatch_size"]))


def seed_table(block: pd.DataFrame) -> list[str]:
    """The seed's table (plus spread/compile/memory columns) for one framework block."""
    head = ("| Mode | Implementation | Microbatch Size | Throughput (samples/s) | Speedup vs Standard | % of Standard "
            "| Spread p10-p90 (samples/s) | CV | Compile (s) | Peak Mem (MiB) |")
    lines = [head, "|" + "---|" * 10]
    for _, r in block.iterrows():
        if r["status"] != "ok":
            cells = [_mode_cell(r), r["label"], _mb_cell(r), r["status"], "-", "-", "-", "-", "-", "-"]
        else:
            is_ref = r["mode"] == "standard" and r["throughput_sps"] == r["standard_sps"]
            ratio = r["pct_of_standard"] / 100.0
            speed = "1.0x" if is_ref else (f"{ratio:.2f}x" if pd.notna(ratio) else "-")
            pct = "100%" if is_ref else (f"{r['pct_of_standard']:.1f}%" if pd.notna(ratio) else "-")
            mem = "-" if pd.isna(r["peak_mem_bytes"]) else f"{r['peak_mem_bytes'] / 2**20:.0f}"
            cells = [_mode_cell(r), r["label"], _mb_cell(r), _fmt_sps(r["throughput_sps"]), speed, pct,
                     f"{r['sps_p10']:.1f}-{r['sps_p90']:.1f}", f"{r['step_s_cv']:.2f}", f"{r['compile_s']:.2f}", mem]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def seed_tables(df: pd.DataFrame) -> list[str]:
    out: list[str] = []
    for (shape, b), grp in df.groupby([df["input_shape"].map(tuple), "batch_size"], sort=False):
        out += [f"## Input Shape: {tuple(shape)}, Batch Size: {b}", ""]
        for fw, block in grp.groupby("framework", sort=False):
            std = block["standard_sps"].dropna()
            vers = _versions(block)
            out += [f"### {fw} ({vers})", ""]
            if len(std):
                ref = block[(block["mode"] == "standard") & (block["throughput_sps"] == std.iloc[0])]["label"].iloc[0]
                note = f" (best standard: {ref})" if (block["mode"] == "standard").sum() > 1 else ""
                out += [f"**Standard Throughput:** {_fmt_sps(std.iloc[0])} samples/s{note}", ""]
            else:
                out += ["**Standard Throughput:** no ok standard row", ""]
            out += seed_table(block) + [""]
            if (block["privacy_unit"] == "microbatch_mean").any():
                out += [PRIVACY_NOTE, ""]
    return out


def _versions(block: pd.DataFrame) -> str:
    parts = []
    fw = block.dropna(subset=["framework_version"])
    if len(fw):
        parts.append(f"{block['framework'].iloc[0]} {fw['framework_version'].iloc[0]}")
    libs = block.dropna(subset=["dp_library", "dp_library_version"]).drop_duplicates("dp_library")
    parts += [f"{r.dp_library} {r.dp_library_version}" for r in libs.itertuples() if r.dp_library != "dpbench"]
    return ", ".join(parts)


def cross_framework(df: pd.DataFrame) -> pd.DataFrame:
    """Rows (model, B); one column per framework x impl: best variant/microbatch, % of standard (samples/s)."""
    ok = df[df["status"] == "ok"]
    cells: dict[tuple, dict[str, str]] = {}
    for (model, b, fw, impl), g in df.groupby(["model", "batch_size", "framework", "impl"], sort=False):
        gok = ok.loc[ok.index.intersection(g.index)]
        col = f"{fw}: {impl}" + ("†" if (g["privacy_unit"] == "microbatch_mean").any() else "")
        if gok.empty:
            text = "/".join(sorted(set(g["status"])))
        else:
            r = gok.loc[gok["throughput_sps"].idxmax()]
            extra = [v for v in (r["variant"], None if pd.isna(r["microbatch_size"]) or impl == "standard"
                                 else f"mb {int(r['microbatch_size'])}") if v]
            pct = f"{r['pct_of_standard']:.1f}%" if pd.notna(r["pct_of_standard"]) else "-"
            text = f"{pct} ({r['throughput_sps']:.0f}/s{', ' + ', '.join(extra) if extra else ''})"
        cells.setdefault((model, b), {})[col] = text
    table = pd.DataFrame.from_dict(cells, orient="index")
    table.index = pd.MultiIndex.from_tuples(table.index, names=["model", "batch_size"])
    return table.fillna("-")


def environment_lines(df: pd.DataFrame, recs: list[dict[str, Any]]) -> list[str]:
    times = sorted(r["time_utc"] for r in recs)
    vers = df.dropna(subset=["framework_version"]).drop_duplicates("framework")
    libs = df.dropna(subset=["dp_library_version"]).drop_duplicates("dp_library")
    thr = df["threads"].iloc[0]
    return [
        f"- Machine: {', '.join(sorted(set(df['cpu_model'])))}; device(s): {', '.join(sorted(set(df['device'].dropna())))}",
        f"- Threads: intra-op {thr.get('intra_op')}, inter-op {thr.get('inter_op')} of {thr.get('cpu_count')} cores; "
        f"XLA_FLAGS=`{(thr.get('env') or {}).get('XLA_FLAGS')}`",
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
        err = str(r["error"]).replace("|", "\\|")[:300]
        out.append(f"| {r['framework']} | {r['label']} | {r['model']} | {r['batch_size']} | {_mb_cell(r)} | {r['status']} | {err} |")
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
            mb = "-" if r.get("microbatch_size") is None else r["microbatch_size"]
            rows.append(f"| {r['framework']} | {label} | {mb} | {r['model']} | {r['batch_size']} | {'; '.join(facts)} |")
    if not rows:
        return []
    return ["## What each DP row's clipping did (recorded by its framework)", "",
            "fastclip plans: layer: method/examples per chunk (dense: |a|²|g|², nothing per example). "
            "JAX's per-example tensors are in the JAXPR/HLO analysis below.", "",
            "| Framework | Impl | Microbatch | Model | B | Recorded |", "|---|---|---|---|---|---|", *rows, ""]


def privacy_section(recs: list[dict[str, Any]], run_dir: Path) -> list[str]:
    """epsilon and time to train a CIFAR-10-sized plan for every ok row (common/privacy.py)."""
    from common import privacy
    plan = privacy.TrainingPlan()
    try:
        table = privacy.privacy_table(recs, plan)
    except ImportError:  # dp-accounting lives in the study env
        return []
    if table.empty:
        return []
    table.to_csv(run_dir / "tables" / "privacy.csv", index=False)
    show = table.assign(label=table["impl"] + table["variant"].map(lambda v: f" ({v})" if v else ""))
    out = [f"## Privacy and time to train (N={plan.dataset_size:,}, {plan.epochs} epochs, sigma={plan.noise_multiplier}, "
           f"delta=1/N)", "", privacy.FIXED_BATCH_NOTE, "",
           "| Framework | Impl | Model | B | Microbatch | eps (RDP) | eps (PLD) | Epoch (s) | Train (h) | +h vs standard |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    f = lambda v, p: "-" if pd.isna(v) else f"{v:.{p}f}"
    for r in show.itertuples():
        mb = "-" if pd.isna(r.microbatch_size) else str(int(r.microbatch_size))
        out.append(f"| {r.framework} | {r.label}{'†' if r.privacy_unit == 'microbatch_mean' else ''} | {r.model} | "
                   f"{r.batch_size} | {mb} | {f(r.epsilon_rdp, 2)} | {f(r.epsilon_pld, 2)} | {f(r.epoch_s, 1)} | "
                   f"{f(r.train_h, 2)} | {f(r.extra_h_vs_standard, 2)} |")
    return out + [""]


def write_report(run_dir: Path) -> Path:
    from common import maxbatch, verify
    recs = records.read(run_dir / "records.jsonl")
    probes = records.read(run_dir / maxbatch.MAX_BATCH)
    parity = verify.read(run_dir)
    if not recs and not probes:
        raise ValueError(f"no records in {run_dir / 'records.jsonl'}")
    extra = (verify.render(parity) if parity else []) + (maxbatch.table(probes) if probes else [])
    if not recs:
        out = run_dir / "report.md"
        out.write_text("\n".join([f"# dpbench — {run_dir.name}", ""] + extra))
        return out
    df = frame(recs)
    (run_dir / "tables").mkdir(exist_ok=True)
    cols = ["framework", "impl", "variant", "privacy_unit", "model", "batch_size", "microbatch_size", "status",
            "throughput_sps", "pct_of_standard", "step_s_median", "step_s_p10", "step_s_p90", "step_s_cv",
            "compile_s", "peak_mem_bytes", "mem_source", "device", "error"]
    df[cols].to_csv(run_dir / "tables" / "throughput.csv", index=False)
    cross = cross_framework(df)
    cross.to_csv(run_dir / "tables" / "cross_framework.csv")
    from common import plots
    pngs = plots.write_all(df, run_dir / "plots")
    lines = [f"# dpbench: DP-SGD vs standard training — {run_dir.name}", ""] + environment_lines(df, recs) + [""]
    lines += ["Throughput is samples/s from the median of timed windows (spread: p10-p90 of windows; CV over "
              "windows). % of Standard is relative to the framework's best standard row at the same model and "
              "batch size. Peak Mem: steady-state peak RSS of the timed steps above the worker's idle baseline on CPU (the compile step's peak is in the record's notes), the allocator's peak on GPUs.", ""]
    lines += ["## Cross-framework: % of each framework's standard (samples/s, best variant / microbatch)", "",
              cross.reset_index().to_markdown(index=False), ""]
    if any("†" in c for c in cross.columns):
        lines += [PRIVACY_NOTE, ""]
    lines += extra + seed_tables(df) + problems(df)
    lines += privacy_section(recs, run_dir)
    lines += code_paths(recs)
    from common import phases as phase_report
    lines += phase_report.table(recs)
    phase_png = phase_report.plot(recs, run_dir / "plots" / "phases.png")
    if phase_png is not None:
        pngs.append(phase_png)
    explain_json = run_dir / "explain.json"
    if explain_json.exists():
        import json
        from common import explain
        lines += ["## Automatic analysis of the JAX steps (JAXPR + compiled HLO)", "",
                  explain.render(json.loads(explain_json.read_text())), ""]
    from common import layer_timing
    if (run_dir / layer_timing.FILE).exists():
        import json
        lines += layer_timing.table(json.loads((run_dir / layer_timing.FILE).read_text()))
    lines += ["## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in pngs] + [""]
    out = run_dir / "report.md"
    out.write_text("\n".join(lines))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m common.report", description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    a = ap.parse_args(argv)
    try:
        print(write_report(a.run_dir))
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
