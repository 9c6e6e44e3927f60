"""One picking rule (common/report/findings.py's ``pick``): the README's
findings, the report's Findings and headline tables and the headline figure
name the same row in every cell; a row that failed parity, ran in one process
only, is unpaired, an A/B variant or a microbatch-sweep point is never named."""
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from common.harness import records, verify
from common.report import allocator, build, findings, plots, privacy, readme, rows
from tests.common.report.test_report import headline_records, rec, section_of, two_rounds, write

ROOT = Path(__file__).resolve().parents[3]
WRN = ROOT / "results" / "wrn-20261203T152015Z"  # its TF XLA rows failed parity (4.7e-4 > 2e-4)


@pytest.fixture(autouse=True)
def fast_epsilon(monkeypatch):
    monkeypatch.setattr(privacy, "epsilons", lambda plan: {"rdp": 1.0, "pld": 0.9})


def picking_records():
    """Rows a naive rule would name: JAX's xla-default fastclip (A/B, 460/s) beats the study's (400/s);
    TF's XLA fastclip has the higher % (23.3 % of the XLA standard, 3000/s) but trains slower than the
    graph one (700 against 800/s, 20 % of the graph standard, 4000/s); jax-privacy's mb 16 sweep point
    (90 %) and TF-Privacy's DP model under XLA (measured in round 1 only) are higher than what is named."""
    return headline_records() + [
        rec("tf", "fastclip", 64, None, 700.0, "xla", ratio=700 / 3000),
        rec("tf", "fastclip", 64, None, 700.0, "xla", ratio=700 / 3000, round_=2),
        rec("jax", "jax_privacy", 64, 16, 900.0, ratio=0.9),
        rec("tf", "tfp_dpmodel", 64, None, 2000.0, "xla", ratio=2 / 3),  # one process: not repeated
    ]


def _frame(recs):
    return rows.frame(allocator.preferred(recs))


def test_pick_is_the_fastest_nameable_row():
    f = findings.frame(_frame(picking_records())).set_index(["framework", "library"])
    assert f.loc[("jax", "dpbench"), ["impl", "variant", "pct"]].tolist() == ["fastclip", "", pytest.approx(40.0)]
    assert f.loc[("jax", "jax-privacy"), "microbatch_size"] != 16
    # graph: 20 % of 4000/s; XLA: 23.3 % of 3000/s, which counts as 17.5 % of graph's standard
    assert f.loc[("tf", "dpbench"), ["variant", "pct", "rank_pct"]].tolist() == \
        ["graph", pytest.approx(20.0), pytest.approx(20.0)]
    assert f.loc[("tf", "dpbench"), "setting"] == "fastclip, graph, no XLA"
    assert f.loc[("tf", "tensorflow-privacy"), ["impl", "variant", "rank_pct"]].tolist() == \
        ["tfp_vectorized", "xla", pytest.approx(100 / 30 * 0.75)]
    assert f.loc[("torch", "opacus"), "setting"] == '`grad_sample_mode="hooks"`'


def test_a_variant_wins_by_its_speed_not_its_percent():
    """XLA's row is named where it trains faster than graph's (30 % of 3000/s = 900/s against 800/s),
    even though its standard is the slower one; with equal standards the higher % wins."""
    recs = picking_records() + two_rounds([rec("tf", "fastclip", 64, None, 900.0, "xla", ratio=0.3)])
    recs = [r for r in recs if not (r["impl"] == "fastclip" and r["variant"] == "xla" and r["throughput_sps"] == 700.0)]
    f = findings.frame(_frame(recs)).set_index(["framework", "library"])
    assert f.loc[("tf", "dpbench"), ["variant", "pct", "rank_pct"]].tolist() == \
        ["xla", pytest.approx(30.0), pytest.approx(22.5)]
    assert findings.standard_scale(_frame(recs), "tf", "small", 64) == {"graph": 1.0, "xla": 0.75}


def test_readme_report_and_plot_name_the_same_row_in_every_cell(tmp_path):
    run = write(tmp_path, picking_records())
    text = build.write_report(run).read_text()
    df, failed = readme.run_frame(run)
    f = findings.frame(df, failed)
    ok = f[f["status"] == "ok"]
    assert len(ok) == 5  # torch has no fastclip row here
    block = readme.block([run])
    report_findings = section_of(text, "## Findings")
    for r in f.to_dict("records"):
        line = [ln for ln in block.splitlines()
                if ln.startswith(f"| {findings.FRAMEWORK_NAMES[r['framework']]} | {r['option']} | small B 64 |")]
        assert len(line) == 1, r
        assert line[0] in report_findings  # the report's Findings table: the same line
        if r["status"] == "ok":
            assert f"| {r['setting']} | {readme.pct_cell(r)} |" in line[0]
    # the headline appendix: best library and best overall are the highest of the same picks
    head = pd.read_csv(run / "tables" / "headline.csv").set_index("framework")
    for fw, g in ok.groupby("framework"):
        lib = g[~g["is_fastclip"]].sort_values("rank_pct").iloc[-1]
        assert (head.loc[fw, "lib_impl"], head.loc[fw, "lib_variant"] if pd.notna(head.loc[fw, "lib_variant"]) else "") \
            == (lib["impl"], lib["variant"])
        best = g.sort_values("rank_pct").iloc[-1]
        assert head.loc[fw, "dp_pct_of_standard"] == pytest.approx(best["pct"])
    # the headline figure: one bar per picked row, its height the row's %
    fig = plots.headline_figure(f)
    bars = {(p.get_gid(), round(p.get_height(), 6)) for ax in fig.axes for p in ax.patches if p.get_gid()}
    plt.close(fig)
    assert bars == {(f"{r['framework']}/{r['impl']}", round(r["pct"], 6)) for r in ok.to_dict("records")}


def test_one_process_unpaired_and_other_modes_are_not_findings():
    one_round = [rec("jax", "standard", 64, None, 1000.0), rec("jax", "standard", 64, None, 1000.0, round_=2),
                 rec("jax", "jax_privacy", 64, None, 300.0, ratio=0.3),  # round 1 only, in a 2-round run
                 rec("torch", "standard", 64, None, 1000.0), rec("torch", "opacus_ghost", 64, None, 400.0),  # unpaired
                 rec("tf", "standard", 64, None, 1000.0, "graph"),
                 rec("tf", "tfp_microbatch_mean", 64, 16, 900.0, "graph", ratio=0.9)]  # other privacy unit
    f = findings.frame(_frame(one_round)).set_index("framework")
    assert f.loc["jax", "status"] == findings.ONE_PROCESS and f.loc["torch", "status"] == findings.UNPAIRED
    assert "tf" not in f.index  # no per-example row at all
    assert readme.status_cell(findings.ONE_PROCESS) == "one process (not a finding)"
    # a one-round run: its rows are named (every row had every round the run has)
    f1 = findings.frame(_frame([r for r in one_round if r["round"] == 1])).set_index("framework")
    assert f1.loc["jax", "status"] == "ok"
    sweep_only = two_rounds([rec("jax", "standard", 64, None, 1000.0), rec("jax", "jax_privacy", 64, 16, 500.0,
                                                                            ratio=0.5)])
    assert findings.frame(_frame(sweep_only)).iloc[0]["status"] == findings.OTHER_MODES


def test_recommendation_sets_the_default_beside_the_winner():
    recs = two_rounds([rec("torch", "standard", 64, None, 1000.0),
                       rec("torch", "opacus_ghost", 64, None, 450.0, ratio=0.45),
                       rec("torch", "opacus_hooks", 64, None, 260.0, ratio=0.26),
                       rec("jax", "standard", 64, None, 1000.0),
                       rec("jax", "standard", 64, None, 900.0, variant="xla-default"),
                       rec("jax", "jax_privacy", 64, None, 210.0, ratio=0.21)]) + [
        rec("jax", "jax_privacy", 64, None, 70.0, variant="xla-default", ratio=0.078)]  # A/B: one process
    df = _frame(recs)
    lines = readme.recommendation_lines(df, findings.frame(df))
    torch = next(ln for ln in lines if ln.startswith("| PyTorch |"))
    assert '`grad_sample_mode="ghost"` (best in 1 of 1 cells) | 45.0 % [45.0, 45.0] |' in torch
    assert 'Opacus: `grad_sample_mode="hooks"` | 26.0 % [26.0, 26.0] |' in torch
    jax = next(ln for ln in lines if ln.startswith("| JAX |"))
    assert "XLA flag `--xla_cpu_experimental_ynn_fusion_type=`" in jax and "21.0 % [21.0, 21.0] |" in jax
    assert "XLA's default flags | 7.8 % [7.8, 7.8] (one process) |" in jax


def test_parity_failures_are_the_failed_rows():
    failed = findings.parity_failures(verify.read(WRN))
    assert ("tf", "fastclip", "xla", "wrn16_4") in failed and ("tf", "standard", "xla", "wrn16_4") in failed
    assert ("tf", "fastclip", "graph", "wrn16_4") not in failed and not any(f[0] != "tf" for f in failed)


def test_a_failed_rows_number_is_never_a_finding():
    recs = picking_records()
    failed = frozenset({("tf", "fastclip", "graph", "small")})
    blind, seen = findings.frame(_frame(recs)), findings.frame(_frame(recs), failed)
    tf_fastclip = (seen["framework"] == "tf") & (seen["library"] == findings.FASTCLIP)
    assert set(blind[tf_fastclip]["variant"]) == {"graph"}  # the fastest, unfiltered, is the failed graph row
    assert set(seen[tf_fastclip]["variant"]) == {"xla"}
    every = frozenset((r["framework"], r["impl"], r["variant"], r["model"]) for r in recs)
    f = findings.frame(_frame(recs), every)
    assert set(f["status"]) == {findings.PARITY_FAIL}
    assert readme.status_cell(findings.PARITY_FAIL) == "parity FAIL (not a finding)"
