"""Appendix: what was in force (settings, environment, stages) and what each DP
row's clipping did as its framework recorded it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from common.harness import records
from common.report import allocator
from common.report.rows import esc, fw_rank, impl_info, mb_text


# Settings fields that must not differ between frameworks (XLA flags and the env lock are per framework by design).
# Settings every record of a run shares; the budget is compared within a model (settings_summary).
SHARED_SETTINGS = ("threads", "cpu_affinity", "timing", "git_commit")


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
        info = impl_info(r["framework"], r["impl"])
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
        fws = ", ".join(f"{fw} {n}" for fw, n in sorted(g["frameworks"].items(), key=lambda kv: fw_rank(kv[0])))
        dp = ", ".join(f"{c}/{n} ({k})" for (c, n), k in g["dp"].items()) or "-"
        aff = s["cpu_affinity"]
        aff = "-" if aff is None else f"`{aff}`"
        out.append(f"| {g['records']} | {fws} | {s['threads']} | {aff} | {j(s['xla_flags'])} | {j(s['malloc'])} | "
                   f"{s['budget_s']} | {j(s['timing'])} | {dp} | {j(s['git_commit'])} | {j(s['env_lock'])} |")
    return out + [""]


def environment_lines(df: pd.DataFrame, recs: list[dict[str, Any]]) -> list[str]:
    times = sorted(r["time_utc"] for r in recs)
    vers = df.dropna(subset=["framework_version"]).drop_duplicates("framework")
    libs = df.dropna(subset=["dp_library_version"]).drop_duplicates("dp_library")
    thr = df["threads"].iloc[0]
    # The GPUs the machine had (name, driver: common.harness.accel), where any (records since issue 38).
    gpus = sorted({f"{g.get('name')} (driver {g.get('driver')})" for r in recs
                   for g in ((r.get("machine") or {}).get("gpus") or [])})
    return [
        f"- Machine: {', '.join(sorted(set(df['cpu_model'])))}"
        + (f"; GPU(s): {', '.join(gpus)}" if gpus else "")
        + f"; device(s): {', '.join(sorted(set(df['device'].dropna())))}",
        f"- Threads: intra-op {thr.get('intra_op')}, inter-op {thr.get('inter_op')} of {thr.get('cpu_count')} cores; "
        f"XLA_FLAGS=`{(thr.get('env') or {}).get('XLA_FLAGS')}` (all settings: see Settings)",
        "- Versions: " + ", ".join([f"{r.framework} {r.framework_version}" for r in vers.itertuples()] +
                                   [f"{r.dp_library} {r.dp_library_version}" for r in libs.itertuples()]),
        f"- Date (UTC): {times[0]} to {times[-1]}; run id(s): {', '.join(sorted(set(df['run_id'])))}; "
        f"commit(s): {', '.join(sorted(set(df['git_commit'].dropna())))}",
        f"- Records: {len(recs)} ({len(df)} configurations; "
        + ", ".join(f"{n} {s}" for s, n in df["status"].value_counts().items()) + ")",
    ]


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
    out += [f"| {esc(name)} | {secs // 60} min {secs % 60} s |" for name, secs in rows]
    out += [f"| analyses of {fw} ({len(v)} processes) | {int(sum(v)) // 60} min {int(sum(v)) % 60} s |"
            for fw, v in sorted(per_fw.items(), key=lambda kv: fw_rank(kv[0]))]
    return out + [""]
