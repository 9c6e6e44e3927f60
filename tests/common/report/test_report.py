"""The report renders its tables exactly from fixture records (all synthetic but the schema-1 fixture)."""
import json
import math
import shutil
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pytest

from common.report import privacy, build as report
from common.report.sections import cross as cross_sec, direct, headline, jax_ab, settings as settings_sec
from common.harness import records
from common.harness.config import IMPLS, RunConfig
from common.harness.runner import base_record
from common.harness.threads import worker_env

ROOT = Path(__file__).resolve().parents[3]
SCHEMA1 = ROOT / "tests" / "fixtures" / "schema1_records.jsonl"  # the first quick run's records (schema 1)

# The seed report's (32, 32, 3), B=32 block.
SEED = [("standard", None, 1027.97), ("jax_privacy", 32, 188.36), ("jax_privacy", 8, 174.68), ("jax_privacy", 1, 148.61)]


def rec(framework, impl, b, mb, sps, variant="", status="ok", model="small", windows=5, notes=None, error=None,
        ratio=None, round_=1):
    """A valid record of one configuration; ``windows`` timed windows of 2 steps (the protocol asks 5);
    ``ratio``: 4 window pairs with its reference at that ratio (subject / reference throughput)."""
    cfg = RunConfig(framework, impl, model, b, mb, variant)
    r = base_record(cfg, "fixture", "abc", worker_env(2))
    info = IMPLS[framework][impl]
    r.update(row_kind=info.kind, timing=asdict(cfg.timing), env_lock=f"lock-{framework}",
             direct_of=dict(zip(("impl", "variant", "microbatch_size"), info.direct_of)) if info.direct_of else None)
    step = b / sps
    r.update(status=status, framework_version="0.10.2", dp_library_version="2.0.0" if r["dp_library"] else None,
             device="cpu", compile_s=1.5, step_s_median=step, step_s_min=step, step_s_max=step, step_s_p10=step,
             step_s_p90=step, step_s_cv=0.0, steps_per_window=2, window_s=[2 * step] * windows, throughput_sps=sps,
             peak_mem_bytes=100 * 2**20, mem_source="rss_peak_above_baseline", elapsed_s=3.0, notes=notes or {})
    if ratio is not None and status == "ok":
        pair = {"subject_step_s": step, "ref_step_s": step * ratio, "first": "ref", "steal_share": 0.0}
        r["paired"] = {"ref": {"impl": "standard", "variant": variant, "microbatch_size": None},
                       "ratios": [ratio] * 4, "pairs": [dict(pair) for _ in range(4)], "dropped": [], "error": None}
    r["round"] = round_
    if status != "ok":
        r.update(throughput_sps=None, step_s_median=None, window_s=None, compile_s=None,
                 error=error or "exceeded the budget")
    return records.validate(r)


def two_rounds(recs):
    """``recs`` in round 1, and again in round 2 where the runner repeats them (standard, direct, findable DP)."""
    from common.harness.config import findable
    again = [dict(r, round=2) for r in recs if r["status"] == "ok" and (
        r["row_kind"] == "direct" or findable(r["framework"], r["impl"], r["variant"], r["microbatch_size"]))]
    return recs + again


def stub_epsilons(plan) -> dict[str, float]:
    """dp-accounting's PLD takes seconds per batch size; the numbers are test_privacy's business."""
    return {"rdp": 1.0, "pld": 0.9}


@pytest.fixture(autouse=True)
def fast_epsilon(monkeypatch):
    monkeypatch.setattr(privacy, "epsilons", stub_epsilons)


def write(path, recs):
    for r in recs:
        records.append(path / "records.jsonl", r)
    return path


@pytest.fixture
def run_dir(tmp_path):
    write(tmp_path, [rec("jax", impl, 32, mb, sps) for impl, mb, sps in SEED])
    records.append(tmp_path / "records.jsonl", rec("jax", "fastclip", 32, None, 1.0, status="timeout"))
    return tmp_path


def test_seed_table_exact(run_dir):
    text = report.write_report(run_dir).read_text()
    want = """### Input Shape: (32, 32, 3), Batch Size: 32

**Fastest standard of any framework:** 1027.97 samples/s (jax: standard)

#### jax (jax 0.10.2, jax-privacy 2.0.0)

**Standard Throughput:** 1027.97 samples/s

| Mode | Implementation | Microbatch Size | Throughput (samples/s) | Speedup vs Standard | % of Standard | % of Fastest Standard (any framework) | Spread p10-p90 (samples/s) | CV | Compile (s) | Peak Mem (MiB) |
|---|---|---|---|---|---|---|---|---|---|---|
| Standard | standard | - | 1027.97 | 1.0x | 100% | 100.0% | 1028.0-1028.0 | 0.00 | 1.50 | 100 |
| Clipped | fastclip | - | timeout | - | - | - | - | - | - | - |
| Clipped | jax_privacy | 32 | 188.36 | 0.18x | 18.3% | 18.3% | 188.4-188.4 | 0.00 | 1.50 | 100 |
| Clipped | jax_privacy | 8 | 174.68 | 0.17x | 17.0% | 17.0% | 174.7-174.7 | 0.00 | 1.50 | 100 |
| Clipped | jax_privacy | 1 | 148.61 | 0.14x | 14.5% | 14.5% | 148.6-148.6 | 0.00 | 1.50 | 100 |
"""
    assert want in text
    assert "| jax | fastclip | small | 32 | - | timeout | exceeded the budget |" in text
    assert report.REDUCED not in text.replace(section_of(text, "## Reading this report"), "")  # 5 windows each
    for png in ("throughput_vs_batch", "pct_of_standard", "peak_memory"):
        assert (run_dir / "plots" / f"{png}.png").stat().st_size > 1000
    assert not (run_dir / "plots" / "headline.png").exists()  # unpaired rows: no finding to draw
    csv = (run_dir / "tables" / "throughput.csv").read_text().splitlines()
    assert len(csv) == 1 + 5 and sum("jax_privacy" in line for line in csv) == 3


def test_cross_framework_and_privacy_unit_label(run_dir):
    path = run_dir / "records.jsonl"
    records.append(path, rec("tf", "standard", 32, None, 500.0, "graph"))
    records.append(path, rec("tf", "standard", 32, None, 400.0, "xla"))
    records.append(path, rec("tf", "tfp_microbatch_mean", 32, 8, 300.0, "graph"))
    df = report.frame(records.read(path))
    cross = cross_sec.cross_framework(df)
    row = cross.loc[("small", 32)]
    # % of own standard / % of the fastest standard of any framework (jax's 1027.97)
    assert row["jax: jax_privacy"] == "18.3% / 18.3% (188/s, mb 32)"
    assert row["tf: standard"] == "100.0% / 48.6% (500/s, graph)"
    assert row["tf: tfp_microbatch_mean†"] == "60.0% / 29.2% (300/s, graph, mb 8)"
    assert row["jax: fastclip"] == "timeout"
    text = report.write_report(run_dir).read_text()
    assert "| Clipped† | tfp_microbatch_mean (graph) | 8 | 300.00 | 0.60x | 60.0% | 29.2% |" in text
    assert "| Standard | standard (xla) | - | 400.00 | 0.80x | 80.0% | 38.9% |" in text
    assert "(best standard: standard (graph))" in text and report.PRIVACY_NOTE in text


def headline_records():
    return two_rounds([
        rec("jax", "standard", 64, None, 1000.0),
        rec("jax", "standard", 64, None, 920.0, variant="xla-default"),  # the A/B variant's own standard
        rec("jax", "jax_privacy", 64, None, 300.0, ratio=0.3),
        rec("jax", "jax_privacy", 64, 64, 200.0, ratio=0.2),
        rec("jax", "fastclip", 64, None, 400.0, ratio=0.4),
        rec("jax", "fastclip", 64, None, 460.0, variant="xla-default", ratio=0.5),  # the A/B variant: never a pick
        rec("jax", "direct_jax_privacy", 64, None, 900.0, ratio=3.0),  # a check, never a pick
        rec("torch", "standard", 64, None, 2000.0),
        rec("torch", "opacus_hooks", 64, None, 500.0, ratio=0.25),
        rec("torch", "opacus_ghost", 64, None, 1.0, status="oom", error="killed at 2 GiB"),
        rec("tf", "standard", 64, None, 4000.0, "graph"),
        rec("tf", "standard", 64, None, 3000.0, "xla"),
        rec("tf", "tfp_microbatch_mean", 64, 16, 3500.0, "graph", ratio=0.875),  # microbatch-mean unit
        rec("tf", "fastclip", 64, None, 800.0, "graph", ratio=0.2),
        rec("tf", "tfp_vectorized", 64, 1, 100.0, "xla", ratio=1 / 30),
    ])


@pytest.fixture(scope="module")
def headline_report(tmp_path_factory) -> tuple[Path, str]:
    """One report of ``headline_records`` (run dir, report text), built once: the
    tests below read different parts of the same report and write nothing, and
    each build takes seconds (fast_epsilon's stub applied here too)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(privacy, "epsilons", stub_epsilons)
        out = write(tmp_path_factory.mktemp("headline"), headline_records())
        return out, report.write_report(out).read_text()


def test_headline_picks_fastest_per_example_study_row(headline_report):
    h = headline.headline_frame(report.frame(headline_records())).set_index("framework")
    assert list(h.index) == ["jax", "torch", "tf"]
    assert h.loc["jax", "dp_label"] == "fastclip"  # the xla-default A/B row (faster, 50 %) is never a pick
    assert h.loc["jax", "dp_sps"] == 400.0
    assert h.loc["jax", "dp_pct_of_standard"] == pytest.approx(40.0)  # of its own variant's standard
    assert h.loc["jax", "dp_pct_of_fastest_standard"] == pytest.approx(10.0)  # of tf's 4000, not jax's 1000
    assert h.loc["torch", "dp_label"] == "opacus_hooks"
    assert h.loc["torch", "dp_pct_of_fastest_standard"] == pytest.approx(12.5)
    assert h.loc["tf", "dp_label"] == "fastclip (graph)"
    assert h.loc["tf", "std_label"] == "standard (graph)" and bool(h.loc["tf", "std_is_fastest"])
    assert not bool(h.loc["jax", "std_is_fastest"])
    steps = math.ceil(30 * 50_000 / 64)
    assert h.loc["jax", "dp_train_h"] == pytest.approx(steps * (64 / 400.0) / 3600)
    assert h.loc["jax", "std_train_h"] == pytest.approx(steps * (64 / 1000.0) / 3600)
    text = headline_report[1]
    assert text.index("## Headline") < text.index("## Cross-framework") < text.index("### Input Shape")
    assert ("| small | 64 | jax | standard | 1000.0 | best overall | fastclip | 400.0 | 40.0% [40.0, 40.0] | 10.0% | 100 | "
            f"{steps * 64 / 400 / 3600:.2f} / {steps * 64 / 1000 / 3600:.2f} |") in text
    assert ("| small | 64 | tf | standard (graph) ★ | 4000.0 | best overall | fastclip (graph) | 800.0 | 20.0% [20.0, 20.0] "
            "| 20.0% |" in text)
    assert "never the `xla-default` A/B variant" in text  # the report says the A/B variant is not picked


def test_headline_best_library_row_is_a_real_library(headline_report):
    """Beside the fastest DP row of any impl (fastclip here), the fastest of a real DP library: never
    dpbench's own fastclip, a direct-use row (jax's 900/s) or a microbatch-mean unit (tf's 3500/s)."""
    h = headline.headline_frame(report.frame(headline_records())).set_index("framework")
    steps = math.ceil(30 * 50_000 / 64)
    train = lambda sps: steps * (64 / sps) / 3600
    want = {  # framework: label, library, samples/s, % of own standard, % of fastest standard (tf's 4000)
        "jax": ("jax_privacy, full vmap (default)", "jax-privacy", 300.0, 30.0, 7.5),
        "torch": ("opacus_hooks", "opacus", 500.0, 25.0, 12.5),  # no fastclip row: the same row as best overall
        "tf": ("tfp_vectorized (xla), mb 1", "tensorflow-privacy", 100.0, 100 / 30, 2.5),  # of the xla standard
    }
    for fw, (label, lib, sps, own, fastest) in want.items():
        r = h.loc[fw]
        assert (r["lib_label"], r["lib_library"], r["lib_sps"]) == (label, lib, sps), fw
        assert r["lib_pct_of_standard"] == pytest.approx(own) and r["lib_pct_of_fastest_standard"] == pytest.approx(fastest)
        assert r["lib_peak_mem_mib"] == pytest.approx(100.0) and r["lib_train_h"] == pytest.approx(train(sps))
    assert (h.loc["jax", "lib_impl"], h.loc["jax", "lib_variant"]) == ("jax_privacy", "")
    assert pd.isna(h.loc["jax", "lib_microbatch_size"])  # full vmap
    assert h.loc["tf", "lib_microbatch_size"] == 1 and h.loc["tf", "lib_variant"] == "xla"
    assert h.loc["jax", "dp_library"] == h.loc["tf", "dp_library"] == headline.OWN_LIBRARY  # best overall: fastclip
    out, text = headline_report
    section = section_of(text, "## Headline")
    rows = [ln for ln in section.splitlines() if ln.startswith("| small |")]
    assert rows == [
        f"| small | 64 | jax | standard | 1000.0 | best overall | fastclip | 400.0 | 40.0% [40.0, 40.0] | 10.0% | 100 | "
        f"{train(400):.2f} / {train(1000):.2f} |",
        f"| small | 64 | jax |  |  | best library | jax_privacy, full vmap (default) | 300.0 | 30.0% [30.0, 30.0] | 7.5% "
        f"| 100 | {train(300):.2f} / {train(1000):.2f} |",
        f"| small | 64 | torch | standard | 2000.0 | best overall | opacus_hooks | 500.0 | 25.0% [25.0, 25.0] | 12.5% | 100 "
        f"| {train(500):.2f} / {train(2000):.2f} |",
        f"| small | 64 | torch |  |  | best library | opacus_hooks | 500.0 | 25.0% [25.0, 25.0] | 12.5% | 100 | "
        f"{train(500):.2f} / {train(2000):.2f} |",
        f"| small | 64 | tf | standard (graph) ★ | 4000.0 | best overall | fastclip (graph) | 800.0 | 20.0% [20.0, 20.0] "
        f"| 20.0% | 100 | {train(800):.2f} / {train(4000):.2f} |",
        f"| small | 64 | tf |  |  | best library | tfp_vectorized (xla), mb 1 | 100.0 | 3.3% [3.3, 3.3] | 2.5% | 100 | "
        f"{train(100):.2f} / {train(4000):.2f} |",
    ]
    csv = pd.read_csv(out / "tables" / "headline.csv").set_index("framework")
    assert csv.loc["jax", "lib_label"] == "jax_privacy, full vmap (default)" and csv.loc["jax", "lib_sps"] == 300.0
    assert csv.loc["tf", "lib_pct_of_standard"] == pytest.approx(100 / 30)


def test_headline_library_row_not_run():
    h = headline.headline_frame(report.frame([rec("jax", "standard", 64, None, 1000.0),
                                            rec("jax", "fastclip", 64, None, 800.0, ratio=0.8)]))
    assert h.iloc[0]["dp_label"] == "fastclip" and pd.isna(h.iloc[0]["lib_label"])
    assert "| small | 64 | jax |  |  | best library | not run | - | - | - | - | - / " in "\n".join(
        headline.headline_lines(h))


def test_headline_without_an_ok_dp_row_says_why():
    h = headline.headline_frame(report.frame([rec("torch", "standard", 64, None, 2000.0),
                                            rec("torch", "opacus_ghost", 64, None, 1.0, status="oom", error="x")]))
    assert h.iloc[0]["dp_label"] == "none ok: oom"
    assert "| none ok: oom | - |" in "\n".join(headline.headline_lines(h))


def test_direct_rows_are_checks_flagged_below_0_90(tmp_path):
    recs = [rec("jax", "standard", 64, None, 1000.0),
            rec("jax", "jax_privacy", 64, None, 85.0),          # study / direct = 0.85: flagged
            rec("jax", "direct_jax_privacy", 64, None, 100.0, ratio=100 / 85),
            rec("torch", "standard", 64, None, 1000.0),
            rec("torch", "opacus_hooks", 64, None, 95.0),        # 0.95: not flagged
            rec("torch", "direct_opacus", 64, None, 100.0, ratio=100 / 95),
            rec("tf", "standard", 64, None, 1000.0, "graph"),
            rec("tf", "direct_tfp_optimizer", 64, None, 50.0)]   # its study row (tfp_microbatch graph mb 1) not run
    dd = direct.direct_frame(report.frame(recs)).set_index("framework")
    assert dd.loc["jax", "ratio"] == pytest.approx(0.85) and bool(dd.loc["jax", "flagged"])
    assert dd.loc["torch", "ratio"] == pytest.approx(0.95) and not bool(dd.loc["torch", "flagged"])
    assert dd.loc["tf", "study_label"] == "tfp_microbatch (graph), mb 1" and pd.isna(dd.loc["tf", "ratio"])
    text = report.write_report(write(tmp_path, recs)).read_text()
    section = section_of(text, "## Study row vs direct use")
    # both samples/s are the paired arms of the direct row's process: they agree with the ratio
    assert ("| jax | small | 64 | direct_jax_privacy | 100.0 | jax_privacy, full vmap (default) | 85.0 | "
            f"0.850 [0.850, 0.850] | {direct.DIRECT_FLAG} |") in section
    assert "| torch | small | 64 | direct_opacus | 100.0 | opacus_hooks | 95.0 | 0.950 [0.950, 0.950] |  |" in section
    assert "| tf | small | 64 | direct_tfp_optimizer | 50.0 | tfp_microbatch (graph), mb 1 | not run | - |  |" in section
    listed = [ln for ln in section.splitlines() if ln.startswith("- ")]
    assert listed == [f"- jax jax_privacy, full vmap (default), small, B=64: 85.0 vs 100.0 samples/s with "
                      "direct_jax_privacy (study / direct 0.850)"]
    # direct rows never enter the per-shape tables, the cross-framework columns or the headline
    assert "direct_" not in text[text.index("### Input Shape"):text.index("## Settings")]
    assert not any("direct" in c for c in cross_sec.cross_framework(report.frame(recs)).columns)
    assert "direct" not in section_of(text, "## Headline").split("\n\n", 2)[2]


def test_skipped_killed_and_timeout_partial_rendering(tmp_path):
    recs = [rec("jax", "standard", 64, None, 1000.0),
            rec("jax", "jax_privacy", 64, 64, 1.0, status="timeout", notes={"partial": {"compile_s": 30.0,
                                                                                        "step_s": [12.0, 12.3, 12.9]}}),
            rec("jax", "jax_privacy", 64, 16, 1.0, status="timeout", notes={"partial": {"compile_s": None,
                                                                                        "step_s": []}}),
            rec("jax", "jax_privacy", 64, 1, 1.0, status="timeout"),
            rec("jax", "jax_privacy", 64, None, 1.0, status="skipped", error="B=32 took 50 s per step > budget"),
            rec("jax", "fastclip", 64, None, 1.0, status="killed", error="SIGKILL from outside")]
    text = report.write_report(write(tmp_path, recs)).read_text()
    assert "| Clipped | jax_privacy | 64 | timeout (step ≈ 12.3 s) | - |" in text
    assert "| Clipped | jax_privacy | 16 | timeout (compile > budget) | - |" in text
    assert "| Clipped | jax_privacy | 1 | timeout | - |" in text
    assert "| Clipped | jax_privacy | full vmap (default) | skipped | - |" in text
    assert "| Clipped | fastclip | - | killed | - |" in text
    assert "| jax | jax_privacy | small | 64 | full vmap (default) | skipped | B=32 took 50 s per step > budget |" in text
    assert "| jax | fastclip | small | 64 | - | killed | SIGKILL from outside |" in text
    # the cross-framework cell of an impl with no ok row: each status once, the timeout that got furthest
    cross = cross_sec.cross_framework(report.frame(recs)).loc[("small", 64)]
    assert cross["jax: jax_privacy"] == "skipped/timeout (step ≈ 12.3 s)"
    assert "| jax | 1 | 3 | 0 | 0 | 1 | 1 | 0 | 6 |" in text  # status counts per framework
    assert ("| small | 64 | jax | standard ★ | 1000.0 | best overall | none ok: killed/skipped/timeout (step ≈ 12.3 s) "
            "| - |") in text
    assert "| small | 64 | jax |  |  | best library | none ok: skipped/timeout (step ≈ 12.3 s) | - |" in text


def test_reduced_precision_mark(tmp_path):
    recs = [rec("jax", "standard", 64, None, 1000.0),
            rec("jax", "fastclip", 64, None, 800.0, windows=2, ratio=0.8)]  # 2 of 5 windows
    assert records.reduced_precision(recs[1]) and not records.reduced_precision(recs[0])
    noisy = dict(recs[0], step_s_cv=records.NOISY_CV * 1.1)
    assert records.reduced_precision(noisy) and not records.reduced_precision(dict(noisy, step_s_cv=0.1))
    stolen = dict(recs[0], notes={"cpu_steal_share": records.STOLEN_SHARE * 1.1})
    assert records.reduced_precision(stolen)
    assert not records.reduced_precision(dict(stolen, notes={"cpu_steal_share": records.STOLEN_SHARE * 0.9}))
    text = report.write_report(write(tmp_path, recs)).read_text()
    assert "| Clipped | fastclip | - | 800.00‡ | 0.80x |" in text
    assert "| Standard | standard | - | 1000.00 | 1.0x |" in text
    assert "| fastclip | 800.0‡ | 80.0% [80.0, 80.0] |" in text  # headline
    assert "80.0% [80.0, 80.0] / 80.0% (800‡/s)" in text  # cross-framework
    # the symbol is defined once, in the legend of symbols, not under each table
    assert text.count("low precision: timed with fewer windows") == 1
    assert "low precision: timed with fewer windows" in section_of(text, "## Reading this report")


def section_of(text: str, heading: str) -> str:
    """From ``heading`` to the next level-1 or level-2 heading."""
    start = text.index(heading)
    ends = [i for i in (text.find("\n## ", start + 1), text.find("\n# ", start + 1)) if i >= 0]
    return text[start:min(ends) if ends else len(text)]


def _rethread(r, n):
    r = json.loads(json.dumps(r))
    r["threads"]["intra_op"] = n
    return records.validate(r)


def test_multiple_settings_are_reported(tmp_path):
    base = [rec("jax", "standard", 64, None, 1000.0), rec("jax", "fastclip", 64, None, 800.0),
            rec("torch", "standard", 64, None, 900.0)]
    groups, warnings = settings_sec.settings_summary(base)  # one per framework (env locks differ by design)
    assert [(g["records"], g["frameworks"]) for g in groups] == [(2, {"jax": 2}), (1, {"torch": 1})]
    assert warnings == []
    odd = _rethread(rec("jax", "jax_privacy", 64, 64, 100.0), 1)
    text = report.write_report(write(tmp_path, base + [odd])).read_text()
    assert text.index("**⚠ This run mixes 3 distinct settings**") < text.index("## Headline")
    settings = text[text.index("## Settings"):]
    assert "- ⚠ jax: its records were measured under 2 different settings" in settings
    assert "- ⚠ threads differs between records: 1, 2" in settings
    assert "| 2 | jax 2 | 2 |" in settings and "| 1 | jax 1 | 1 |" in settings and "| 1 | torch 1 | 2 |" in settings


def test_per_framework_xla_flags_and_the_ab_variant_are_not_a_conflict():
    jax = rec("jax", "fastclip", 64, None, 800.0)
    ab = json.loads(json.dumps(rec("jax", "fastclip", 64, None, 900.0, variant="xla-default")))
    ab["threads"]["env"]["XLA_FLAGS"] = ""
    torch = json.loads(json.dumps(rec("torch", "standard", 64, None, 900.0)))
    torch["threads"]["env"]["XLA_FLAGS"] = ""
    groups, warnings = settings_sec.settings_summary([jax, records.validate(ab), records.validate(torch)])
    assert len(groups) == 3 and warnings == []
    noisy = json.loads(json.dumps(rec("jax", "jax_privacy", 64, 64, 100.0)))
    noisy["noise_multiplier"] = 0.5
    _, warnings = settings_sec.settings_summary([jax, records.validate(noisy)])
    assert warnings == ["DP rows use more than one clip norm / noise multiplier: 1.0/0.5, 1.0/1.0"]


def test_jax_privacy_default_and_xla_ab_tables(tmp_path, monkeypatch):
    recs = [rec("jax", "standard", 64, None, 1000.0),
            rec("jax", "jax_privacy", 64, None, 300.0),
            rec("jax", "jax_privacy", 64, 64, 200.0),
            rec("jax", "jax_privacy", 64, 16, 150.0),
            rec("jax", "fastclip", 64, None, 400.0),
            rec("jax", "fastclip", 64, None, 500.0, variant="xla-default"),
            rec("jax", "standard", 64, None, 1100.0, variant="xla-default")]
    write(tmp_path, recs)
    text = report.write_report(tmp_path).read_text()
    jp = text[text.index("## jax-privacy: default full vmap vs microbatch = B"):text.index("## XLA flag A/B")]
    assert "| small | 64 | - | 300.0 | 200.0 | 1.50 | 100 / 100 |" in jp
    assert jp.count("\n| small |") == 1
    ab = section_of(text, "## XLA flag A/B")
    assert "| fastclip | - | small | 64 | 400.0 | 500.0 | 0.80 |" in ab
    assert "| standard | - | small | 64 | 1000.0 | 1100.0 | 0.91 |" in ab
    assert "jax_privacy" not in ab  # no xla-default jax_privacy row
    monkeypatch.setattr(jax_ab, "JAX_PRIVACY_MICROBATCH_NOTE", "Why the default differs: NOTE-TEXT.")
    assert "Why the default differs: NOTE-TEXT." in report.write_report(tmp_path).read_text()
    # the xla-default standard row is the fastest jax standard, but each DP row's % is of its own variant's
    df = report.frame(recs)
    fc = df[(df["impl"] == "fastclip") & (df["variant"] == "")].iloc[0]
    assert fc["pct_of_standard"] == pytest.approx(400 / 1000 * 100)


def test_schema_1_run_still_renders(tmp_path):
    shutil.copy(SCHEMA1, tmp_path / "records.jsonl")
    raw = [json.loads(line) for line in SCHEMA1.read_text().splitlines() if line.strip()]
    assert {r["schema_version"] for r in raw} == {1}
    assert report.main([str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    head = text[text.index("## Headline"):text.index("- Machine")]
    # 2 B x 3 frameworks x 2 DP picks (best overall, best library) each
    assert head.count("\n| small |") == 12 and head.count("\n| medium |") == 12
    std = next(r for r in raw if r["framework"] == "jax" and r["impl"] == "standard" and r["model"] == "small"
               and r["batch_size"] == 32)
    assert f"| small | 32 | jax | standard | {std['throughput_sps']:.1f} |" in head
    assert "2 distinct settings, no conflict" in text[text.index("## Settings"):]  # jax's XLA flag, the others'
    assert "⚠" not in text.replace(section_of(text, "## Reading this report"), "")
    assert "## Study row vs direct use" not in text  # schema 1 has no direct rows


def test_out_dir_leaves_the_run_dir_alone(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("elsewhere")
    before = sorted(p.name for p in run_dir.iterdir())
    assert report.main([str(run_dir), "--out", str(out)]) == 0
    assert sorted(p.name for p in run_dir.iterdir()) == before
    assert (out / "report.md").exists() and (out / "plots" / "pct_of_standard.png").exists()


def test_report_without_records_fails(tmp_path):
    assert report.main([str(tmp_path)]) == 2
    assert not (tmp_path / "report.md").exists()


def test_code_paths_lists_what_frameworks_recorded():
    from common.report.sections import settings as rp
    a = rec("torch", "opacus_hooks", 64, None, 100.0)
    a["notes"] = {"per_sample_grad_bytes": 3 * 2**20}
    b = rec("tf", "fastclip", 64, None, 100.0, variant="graph")
    b["notes"] = {"fastclip_plan": {"conv0": {"method": "instantiate", "chunk": 8}, "dense0": {"method": "dense", "chunk": 64}},
                  "noise_sampler": "box_muller(uniform)"}
    c = rec("jax", "standard", 64, None, 100.0)
    c["notes"] = {"per_sample_grad_bytes": 1}  # standard rows are not DP rows: left out
    text = "\n".join(rp.code_paths([a, b, c]))
    assert "| torch | opacus_hooks | - | small | 64 | per-example grads 3.0 MiB |" in text
    assert "| tf | fastclip (graph) | - | small | 64 | plan conv0: instantiate/8, dense0: dense; noise: box_muller(uniform) |" in text
    assert "| jax | standard" not in text
    assert rp.code_paths([c]) == []


def test_per_model_budgets_are_by_design_but_two_budgets_in_one_model_warn():
    small = rec("jax", "standard", 64, None, 1000.0)
    medium = records.validate(dict(rec("jax", "standard", 64, None, 50.0, model="medium"), budget_s=40.0))
    _, warnings = settings_sec.settings_summary([small, medium])
    assert not any("budget" in w for w in warnings) and not any("jax:" in w for w in warnings), warnings
    other = records.validate(dict(rec("jax", "fastclip", 64, None, 800.0), budget_s=99.0))
    _, warnings = settings_sec.settings_summary([small, medium, other])
    assert any(w.startswith("budget_s differs between small records") for w in warnings), warnings


def test_stage_lines_from_run_all_and_explain(tmp_path):
    import json
    (tmp_path / settings_sec.STAGES).write_text("study and parity\t3125\nanalyses (jax,torch)\t200\nbroken line\n")
    (tmp_path / "explain.json").write_text(json.dumps(
        [{"framework": "torch", "elapsed_s": 30.5}, {"framework": "jax", "elapsed_s": 61.0},
         {"framework": "torch", "elapsed_s": 40.0}, {"framework": "jax"}]))
    text = "\n".join(settings_sec.stage_lines(tmp_path))
    assert "| study and parity | 52 min 5 s |" in text and "| analyses (jax,torch) | 3 min 20 s |" in text
    assert "broken" not in text
    assert text.index("| analyses of jax (1 processes) | 1 min 1 s |") < text.index(
        "| analyses of torch (2 processes) | 1 min 10 s |")
    assert settings_sec.stage_lines(tmp_path / "missing") == []


def test_the_report_answers_first_and_has_contents(headline_report):
    """Contents, then the answer (Findings, every mode, what did not run, precision), then the appendix;
    every contents link is the anchor of a heading in the report."""
    text = headline_report[1]
    order = ["## Contents", "## Findings", "## Every mode of each library", "## What did not run", "## Precision",
             "# Appendix", "## Headline", "### Input Shape", "## Settings"]
    assert [text.index(h) for h in order] == sorted(text.index(h) for h in order)
    contents = section_of(text, "## Contents")
    anchors = {report.anchor(ln.lstrip("#")) for ln in text.splitlines() if ln.startswith(("# ", "## "))}
    links = [ln.split("](#")[1].rstrip(")") for ln in contents.splitlines() if "](#" in ln]
    assert len(links) >= 10 and set(links) <= anchors
    assert report.anchor("## Privacy (N=50,000, sigma=1.0)") == "privacy-n50000-sigma10"


def test_every_mode_table_keeps_other_privacy_units_and_fastclip_apart(headline_report):
    text = headline_report[1]
    modes = section_of(text, "## Every mode of each library")
    tf = modes[modes.index("### TensorFlow"):modes.index("### Not per-example DP")]
    assert "tfp_microbatch_mean" not in tf  # a microbatch-mean row is not per-example DP
    assert tf.index("| TF-Privacy |") < tf.index("| fastclip (this study) |")
    assert "| TF-Privacy | tfp_microbatch_mean (graph), mb 16 † |" in modes[modes.index("### Not per-example DP"):]
    assert "| Opacus | opacus_ghost | oom |" in modes


def test_a_dp_ratio_never_crosses_variants():
    """Unpaired rows: against the standard of their own variant (xla fastclip vs xla standard), so an
    A/B variant's ratio does not mix its flag's effect into the cost of DP; a variant with no standard
    of its own has no ratio rather than one against another variant."""
    df = report.frame([rec("tf", "standard", 64, None, 4000.0, "graph"), rec("tf", "standard", 64, None, 1000.0, "xla"),
                       rec("tf", "fastclip", 64, None, 800.0, "xla"),
                       rec("jax", "standard", 64, None, 1000.0), rec("jax", "fastclip", 64, None, 460.0, "xla-default")])
    pct = {(r["framework"], r["impl"], r["variant"]): r["pct_of_standard"] for _, r in df.iterrows()}
    assert pct[("tf", "fastclip", "xla")] == pytest.approx(80.0)
    assert pct[("tf", "standard", "xla")] == pytest.approx(25.0)  # a standard row: of the framework's best
    assert math.isnan(pct[("jax", "fastclip", "xla-default")])


def test_environment_names_the_gpus_and_driver_where_the_machine_had_any():
    from common.report.rows import frame
    plain = [rec("torch", "standard", 64, None, 100.0)]
    on_gpu = [dict(r, device="NVIDIA H100 80GB HBM3", machine={**r["machine"], "gpus": [
        {"name": "NVIDIA H100 80GB HBM3", "driver": "580.65.06", "memory_mib": 81559}]}) for r in plain]
    line = settings_sec.environment_lines(frame(on_gpu), on_gpu)[0]
    assert "GPU(s): NVIDIA H100 80GB HBM3 (driver 580.65.06); device(s): NVIDIA H100 80GB HBM3" in line
    assert "GPU(s)" not in settings_sec.environment_lines(frame(plain), plain)[0]
