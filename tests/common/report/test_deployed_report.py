"""The "DP-SGD as trained" section and README lines (common/report/deployed.py),
from hand-made deployed.jsonl records: what they pick and print."""
import numpy as np
import pytest

from common.harness import deployed as harness
from common.harness import runner
from common.report import build, deployed, readme


def rec(fw, impl, strategy, ratios, draws=1.0, status="ok", L=8, P=4, sizes=None, rate=100.0, round_=1):
    """A record whose pairs' deployed windows ran at ``rate`` real examples/s (+-1 %); its pairs with
    standard training at half its ratios to the fixed step (standard at 300 examples/s)."""
    c = harness.DeployedConfig(fw, impl, strategy, dataset_size=400, logical_batch=L, physical_batch=P).validate()
    r = harness.base_record(c, "run", "abc1234", round_=round_)
    pairs = [{"subject_step_s": 1.0, "subject_steps": 1, "subject_work": rate * (1 + 0.01 * (i % 3 - 1)),
              "ref_step_s": P / 150.0} for i in range(len(ratios))]
    r.update(status=status, error=None if status == "ok" else "boom",
             paired={"ratios": list(ratios), "pairs": pairs}, real_examples_per_s=rate, fixed_examples_per_s=150.0,
             paired_standard={"ratios": [x / 2 for x in ratios], "pairs": [dict(p, ref_step_s=P / 300.0)
                                                                            for p in pairs]},
             standard_examples_per_s=300.0,
             padding_share=0.25, physical_per_logical=2.5, noise_draws_per_logical=draws, compiles=1,
             first_cycle_s=3.0, steady_compiles=0,
             sizes=sizes if sizes is not None else list(np.random.default_rng(0).binomial(400, L / 400, 200)))
    return r


def write(tmp_path, recs):
    for r in recs:
        runner.DEPLOYED.append(tmp_path / harness.FILE, r)  # as the runner appends a deployed record
    return tmp_path


def test_the_cheapest_correct_strategy_is_named_and_a_wrong_one_never(tmp_path):
    recs = [rec("jax", "jax_privacy", "pad", [0.80, 0.82, 0.81, 0.83], rate=300.0),
            rec("jax", "jax_privacy", "recompile", [0.95, 0.96, 0.97, 0.95], draws=3.0, rate=900.0),  # noise thrice
            rec("jax", "jax_privacy", "truncate", [0.80, 0.81, 0.82, 0.80], rate=280.0),  # within drift of pad
            rec("jax", "fastclip", "pad", [0.60, 0.61, 0.62, 0.60], rate=1000.0),
            rec("torch", "opacus", "variable", [], status="ok"),  # unpaired
            rec("torch", "fastclip", "variable", [0.7, 0.72, 0.71, 0.7])]
    df = deployed.frame(write(tmp_path, recs) and harness.read(tmp_path))
    best = {c["framework"]: c for c in deployed.cheapest(df)}
    assert (best["jax"]["impl"], best["jax"]["strategy"]) == ("fastclip", "pad") and best["jax"]["clear"]
    assert best["torch"]["impl"] == "fastclip" and best["torch"]["of"] == 1
    lib = {c["framework"]: c for c in deployed.cheapest(df, library_only=True)}
    assert lib["jax"]["strategy"] == "pad" and not lib["jax"]["clear"]  # 300 vs 280: not 2x apart
    assert "torch" not in lib  # Opacus' only row is unpaired
    lines = "\n".join(deployed.section(tmp_path))
    assert "## DP-SGD as trained" in lines and "unpaired (not a finding)" in lines
    assert f"{np.median([0.80, 0.82, 0.81, 0.83]) * 100:.1f} %" in lines
    # real examples/s: the median of the pairs' deployed windows (1000 +- 1 %: 990, 1000, 1010, 990)
    assert "L 8, JAX: fastclip / pad, 995 real examples/s" in lines and "3.3x the next" in lines


def test_the_binomial_fit_is_run_on_the_drawn_sizes(tmp_path):
    fixed = rec("jax", "jax_privacy", "pad", [0.8, 0.8], sizes=[8] * 200)  # a fixed batch is not Poisson
    df = deployed.frame([rec("jax", "fastclip", "pad", [0.8, 0.8]), fixed])
    p = dict(zip(df["impl"], df["binomial_p"]))
    assert p["fastclip"] > 1e-3 and p["jax_privacy"] < 1e-6


def test_a_run_of_deployed_rows_only_gets_its_report_and_readme_block(tmp_path):
    write(tmp_path, [rec("jax", "jax_privacy", "pad", [0.8, 0.82]),
                     rec("tf", "fastclip", "pad", [0.5, 0.52], status="error")])
    report = build.write_report(tmp_path).read_text()
    assert "What DP-SGD costs as trained" in report and "Poisson-sampled" in report
    assert "tf fastclip/pad L 8: error: boom" in report
    assert "![DP-SGD as trained](plots/deployed.png)" in report and (tmp_path / "plots" / "deployed.png").stat().st_size
    block = readme.block([tmp_path])
    # % of the fixed DP step and % of standard training, both paired, then both arms' examples/s
    assert "| JAX | jax_privacy / pad | 8 (4) | 81.0 % [80.0, 82.0] | 40.5 % [40.0, 41.0] | 100 / 300 | 25% |" in block
    assert "| TensorFlow | fastclip / pad | 8 (4) | error | - | - | - |" in block and "Cheapest correct strategy (most real examples/s): JAX L 8" in block


def test_no_deployed_rows_no_section(tmp_path):
    assert deployed.section(tmp_path) == []
    with pytest.raises(ValueError):
        build.write_report(tmp_path)


def test_results_index_reads_a_deployed_run(tmp_path):
    from common.report import index
    write(tmp_path, [rec("jax", "jax_privacy", "pad", [0.8]), rec("jax", "jax_privacy", "pad", [0.9]),
                     rec("tf", "fastclip", "pad", [0.5], status="error")])
    f = index.facts(tmp_path)
    assert f["records"] == 3 and f["configurations"] == 2 and f["statuses"] == {"error": 1, "ok": 1}
    assert f["commits"] == ["abc1234"] and f["frameworks"] == ["jax", "tf"]


def test_two_runs_agree_where_every_pair_of_intervals_overlaps(tmp_path):
    a, b, c = (tmp_path / n for n in "abc")
    for d in (a, b, c):
        d.mkdir()
    write(a, [rec("jax", "jax_privacy", "pad", [0.80, 0.82, 0.84]), rec("jax", "fastclip", "pad", [0.6, 0.62])])
    write(b, [rec("jax", "jax_privacy", "pad", [0.83, 0.85, 0.86]), rec("jax", "fastclip", "pad", [0.61, 0.63])])
    write(c, [rec("jax", "jax_privacy", "pad", [0.90, 0.91, 0.92]), rec("jax", "fastclip", "pad", [0.61, 0.63])])
    out = tmp_path / "cmp.md"
    assert deployed.main([str(a), str(b), "--out", str(out)]) == 0
    assert "every pair of intervals overlaps" in out.read_text()
    assert deployed.main([str(a), str(c), "--out", str(out)]) == 1
    assert "| JAX | jax_privacy / pad | 8 |" in out.read_text() and "| no |" in out.read_text()
    assert deployed.main([str(a), str(tmp_path / "none")]) == 2


def test_a_rows_rounds_are_pooled_into_one_interval(tmp_path):
    """Two rounds of one row (the runner's deployed rounds): one line, the median and interval over both
    rounds' pairs, for % of the fixed step and % of standard alike."""
    write(tmp_path, [rec("jax", "fastclip", "pad", [0.80] * 4, round_=1), rec("jax", "fastclip", "pad", [0.90] * 4,
                                                                           round_=2)])
    df = deployed.frame(harness.read(tmp_path))
    assert len(df) == 1 and df.iloc[0]["rounds"] == 2
    r = df.iloc[0]
    assert r["pct_of_fixed"] == pytest.approx(85.0) and r["pct_lo"] == pytest.approx(80.0) and r["pct_hi"] == pytest.approx(90.0)
    assert r["pct_of_standard"] == pytest.approx(42.5) and r["std_lo"] == pytest.approx(40.0)


def test_compare_states_each_interval_width_and_which_run_is_narrower(tmp_path):
    """The deployed comparison gives each row's interval width in both runs and a summary of them
    (issue 36: a 2-round run's intervals against a 1-round canonical's, from the records)."""
    wide = [0.70, 0.80, 0.90, 1.00, 1.10, 0.75]
    narrow = [0.88, 0.90, 0.92, 0.89, 0.91, 0.90]
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    a = write(tmp_path / "a", [rec("torch", "opacus", "variable", wide)])
    b = write(tmp_path / "b", [rec("torch", "opacus", "variable", narrow, round_=1),
                               rec("torch", "opacus", "variable", narrow, round_=2)])
    lines, ok = deployed.compare(a, b)
    assert ok
    row = next(x for x in lines if x.startswith("| PyTorch"))
    wa, wb = (float(c) for c in row.strip("|").split("|")[-2:])
    assert wb < 5 < 20 < wa
    assert lines[-1].endswith("b narrower in 1 of 1 rows.") and "median" in lines[-1]
    lines, _ = deployed.compare(b, a)
    assert lines[-1].endswith("a narrower in 0 of 1 rows.")


def test_a_row_that_compiles_while_timed_is_marked_in_the_readme_table(tmp_path):
    """A recompile-per-size row's % depends on how many sizes the run met (issue 36's deployed
    runs: 41 % then 61 % at L 1024): the README's table marks it; a steady row is not marked."""
    steady = rec("jax", "jax_privacy", "pad", [0.8, 0.85, 0.9])
    moving = rec("jax", "jax_privacy", "recompile", [0.4, 0.45, 0.5])
    moving["steady_compiles"] = 3
    lines = deployed.readme_lines(write(tmp_path, [steady, moving]))
    row = {ln.split("|")[2].strip(): ln for ln in lines if ln.startswith("| JAX")}
    assert set(row) == {"jax_privacy / pad", "jax_privacy / recompile (compiles while timed)"}, row
