"""common.report.compare on fabricated run directories: agreement, a shifted
named row, a drifted machine, a shifted slow row, bad input."""
import json

import numpy as np
import pytest

from common.harness import records
from common.harness.config import IMPLS
from common.report import compare as cmp
from common.report import intervals

CPU = "Fabricated CPU @ 2.0GHz"


@pytest.fixture(autouse=True)
def fast_bootstrap(monkeypatch):
    """200 resamples instead of 2000: the same intervals to a point, ten times faster."""
    monkeypatch.setattr(cmp, "ratio_interval", lambda recs: intervals.hierarchical(
        [intervals.pair_ratios(r.get("paired")) for r in recs if r.get("status") == "ok"], n_boot=200))


def rec(impl, ratio=None, *, rnd=1, fw="torch", model="small", b=64, mb=None, mode="dp", unit="example",
        kind="study", status="ok", spread=0.002, seed=0, variant=""):
    """A valid record; DP/direct rows carry 6 paired ratios around ``ratio``."""
    r = {k: None for k in records.FIELDS}
    r.update(schema_version=records.SCHEMA_VERSION, run_id="run", time_utc="2026-12-03T00:00:00+00:00",
             framework=fw, impl=impl, variant=variant, privacy_unit=unit if mode == "dp" else None, model=model,
             dp_library=IMPLS[fw][impl].dp_library,
             params=1000, mode=mode, batch_size=b, devices=1, global_batch_size=b, allocator="keep",
             microbatch_size=mb, input_shape=[3, 32, 32], dtype="float32", cpu_model=CPU, threads={},
             status=status, budget_s=300.0, notes={}, row_kind=kind, round=rnd,
             machine={"cpu_model": CPU, "vector_extensions": ["avx2", "fma"]})
    if status == "ok":
        r.update(framework_version="0", device="cpu", compile_s=1.0, step_s_median=0.1, throughput_sps=640.0,
                 window_s=[1.0] * 5, steps_per_window=10)
    else:
        r["error"] = "fabricated failure"
    if ratio is not None and status == "ok":
        rng = np.random.default_rng(seed * 100 + rnd)
        r["paired"] = {"ratios": [float(x) for x in ratio + rng.uniform(-spread, spread, 6)], "error": None}
    return records.validate(r)


def run_dir(path, recs, canary=None, machine=None):
    """A run directory: records.jsonl (written as the runner does) and optionally machine.json."""
    path.mkdir()
    for r in recs:
        records.append(path / "records.jsonl", r)
    if canary is not None or machine is not None:
        (path / "machine.json").write_text(json.dumps({k: v for k, v in (("machine", machine), ("canary", canary))
                                                       if v is not None}))
    return path


def study(ratios, seed=0, rounds=3, spread=0.002):
    """Three rounds of: a standard row, two per-example DP cells, a microbatch-mean cell, a direct row."""
    out = []
    for rnd in range(1, rounds + 1):
        out += [rec("standard", mode="standard", rnd=rnd),
                rec("opacus_hooks", ratios["opacus"], rnd=rnd, seed=seed, spread=spread),
                rec("fastclip", ratios["fastclip"], rnd=rnd, seed=seed, spread=spread),
                rec("tfp_microbatch_mean", ratios["mean"], rnd=rnd, fw="tf", variant="graph", unit="microbatch_mean",
                    mb=16, seed=seed),
                rec("direct_opacus", ratios["direct"], rnd=rnd, kind="direct", seed=seed)]
    return out


BASE = {"opacus": 0.60, "fastclip": 0.85, "mean": 0.90, "direct": 1.0}
CANARY = {"start": {"gemm_s": 1.0, "conv_s": 2.0}, "end": {"gemm_s": 1.02, "conv_s": 2.0}}
MACHINE = {"cpu_model": CPU, "vector_extensions": ["avx2", "fma"], "cores": 2}


def test_two_agreeing_runs_exit_0(tmp_path, capsys):
    # 1 pp apart with pairs spread +-2 pp: the intervals overlap.
    a = run_dir(tmp_path / "a", study(BASE, seed=1, spread=0.02), CANARY, MACHINE)
    b = run_dir(tmp_path / "b", study({**BASE, "opacus": 0.61}, seed=2, spread=0.02), CANARY, MACHINE)
    res = cmp.compare(a, b)
    assert res.ok and len(res.headline) == 2  # opacus and fastclip; not the mean-clipped nor the direct row
    assert {r.verdict for r in res.headline} == {"agree"}
    assert len(res.rows) == 4  # the standard row is the reference, not a row
    assert cmp.main([str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "machine identity: same" in out and "gemm 1.00x, conv 1.00x" in out
    assert "2 named rows (every row the README's findings name in either run), 0 disagree" in out
    assert "| torch | small | 64 | direct_opacus [direct] |" in out


def test_a_shifted_headline_cell_disagrees_and_exits_1(tmp_path, capsys):
    a = run_dir(tmp_path / "a", study(BASE, seed=1))
    b = run_dir(tmp_path / "b", study({**BASE, "opacus": 0.70}, seed=2))
    res = cmp.compare(a, b)
    assert not res.ok
    row = next(r for r in res.rows if r.key[1] == "opacus_hooks")
    assert row.headline and row.verdict == "DISAGREE" and row.delta_pp == pytest.approx(10, abs=0.5)
    assert row.overlap is False
    assert [r.verdict for r in res.headline if r is not row] == ["agree"]
    assert cmp.main([str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "DISAGREE" in out and "2 named rows (every row the README's findings name in either run), 1 disagree" in out
    # A threshold above the shift alone does not save it: the intervals are apart.
    assert not cmp.compare(a, b, threshold=0.2).ok


def test_overlapping_intervals_beyond_the_threshold_disagree(tmp_path):
    """A wide A interval overlaps B's, but the medians are 7 pp apart: more than the band (10 % of 0.60 = 6 pp,
    above the 3 pp floor), less than an 8 pp floor."""
    wide = [dict(r, paired={"ratios": [r["paired"]["ratios"][0] + d for d in (-.1, 0, .1)]})
            if r["impl"] == "opacus_hooks" else r for r in study(BASE, seed=1)]
    a = run_dir(tmp_path / "a", wide)
    b = run_dir(tmp_path / "b", study({**BASE, "opacus": 0.67}, seed=2))
    row = next(r for r in cmp.compare(a, b).rows if r.key[1] == "opacus_hooks")
    assert row.overlap and row.verdict == "DISAGREE"
    assert "rounds" in row.note or "spread" in row.note or row.note == ""  # a wide interval may say why
    row = next(r for r in cmp.compare(a, b, threshold=0.08).rows if r.key[1] == "opacus_hooks")
    assert row.verdict == "agree"


def test_a_drifted_machine_is_reported_but_agreeing_ratios_pass(tmp_path, capsys):
    slow = {"start": {"gemm_s": 2.0, "conv_s": 4.0}, "end": {"gemm_s": 3.0, "conv_s": 4.0}}
    a = run_dir(tmp_path / "a", study(BASE, seed=1), CANARY, MACHINE)
    b = run_dir(tmp_path / "b", study(BASE, seed=2), slow, MACHINE)
    res = cmp.compare(a, b)
    assert res.ok
    head = "\n".join(res.header)
    assert "gemm 2.00x, conv 2.00x" in head and "not A's speed on gemm, conv" in head
    assert "drift of run B (canary end/start): gemm 1.50x, conv 1.00x" in head
    assert "drift of run A (canary end/start): gemm 1.02x, conv 1.00x" in head
    assert cmp.main([str(a), str(b)]) == 0
    assert "canary B/A" in capsys.readouterr().out


def test_machine_identity_differences_and_absent_canaries(tmp_path):
    a = run_dir(tmp_path / "a", study(BASE, seed=1), machine=MACHINE)
    b = run_dir(tmp_path / "b", study(BASE, seed=2), machine={**MACHINE, "vector_extensions": ["avx2", "avx512f"]})
    head = "\n".join(cmp.compare(a, b).header)
    assert "machine identity: DIFFERENT" in head and "avx512f" in head
    assert "canary B/A at start: not recorded in A" in head and "drift of run A (canary end/start): not recorded" in head
    c = run_dir(tmp_path / "c", study(BASE, seed=3))  # no machine.json: the records' machine field
    assert "machine identity: same" in "\n".join(cmp.compare(a, c).header)
    (c / "machine.json").write_text(json.dumps({"machine": MACHINE, "machine_changed": {"resume": {"cpu_model": "x"}}}))
    assert "run B changed machine during the run (at resume)" in "\n".join(cmp.compare(a, c).header)


def test_a_named_row_below_a_quarter_of_standard_is_judged_in_relative_terms(tmp_path):
    """No row the README names is exempt for being slow: 10 % vs 20 % disagrees (the band there is the
    3 pp floor); 10 % vs 11.5 % agrees; 60 % vs 64.5 % agrees (4.5 pp: above the floor, within 10 % of 60 = 6 pp)."""
    a = run_dir(tmp_path / "a", study({**BASE, "opacus": 0.10}, seed=1))
    b = run_dir(tmp_path / "b", study({**BASE, "opacus": 0.20}, seed=2))
    res = cmp.compare(a, b)
    row = next(r for r in res.rows if r.key[1] == "opacus_hooks")
    assert row.headline and row.verdict == "DISAGREE" and row.delta_pp == pytest.approx(10, abs=0.5)
    assert not res.ok and len(res.headline) == 2
    c = run_dir(tmp_path / "c", study({**BASE, "opacus": 0.115}, seed=3, spread=0.02))
    a_wide = run_dir(tmp_path / "a_wide", study({**BASE, "opacus": 0.10}, seed=1, spread=0.02))
    assert cmp.compare(a_wide, c).ok
    d = run_dir(tmp_path / "d", study({**BASE, "opacus": 0.645}, seed=4, spread=0.05))
    e = run_dir(tmp_path / "e", study(BASE, seed=5, spread=0.05))
    assert cmp.compare(e, d).ok
    assert cmp.band(0.10, 0.20) == pytest.approx(0.03) and cmp.band(0.6, 0.9) == pytest.approx(0.06)
    # Rows no finding names, shifted as far, do not fail: mean clipping, direct rows.
    f = run_dir(tmp_path / "f", study({**BASE, "mean": 0.5, "direct": 0.5}, seed=6))
    assert cmp.compare(e, f).ok


def test_rows_in_one_run_only_are_listed_and_do_not_fail(tmp_path, capsys):
    a = run_dir(tmp_path / "a", study(BASE, seed=1))
    b = run_dir(tmp_path / "b", study(BASE, seed=2) + [rec("opacus_hooks", 0.3, model="medium")])
    res = cmp.compare(a, b)
    only = [r for r in res.rows if r.status_a is None]
    assert res.ok and len(only) == 1 and only[0].note == "only in B" and not only[0].headline
    assert cmp.main([str(a), str(b)]) == 0
    assert "absent" in capsys.readouterr().out


def test_a_failed_or_unpaired_headline_cell(tmp_path):
    a = run_dir(tmp_path / "a", study(BASE, seed=1))
    failed = [dict(r, status="timeout", error="budget", paired=None, **{k: None for k in records.MEASURED})
              if r["impl"] == "opacus_hooks" else r for r in study(BASE, seed=2)]
    res = cmp.compare(a, run_dir(tmp_path / "b", failed))
    row = next(r for r in res.rows if r.key[1] == "opacus_hooks")
    # named in A, failed in B: the claim did not reproduce
    assert row.status_b == "timeout" and row.headline and row.verdict == "DISAGREE" and not res.ok
    unpaired = [dict(r, paired=None) if r["impl"] == "opacus_hooks" else r for r in study(BASE, seed=3)]
    res = cmp.compare(a, run_dir(tmp_path / "c", unpaired))
    row = next(r for r in res.rows if r.key[1] == "opacus_hooks")
    assert row.headline and row.verdict == "NO RATIO" and not res.ok


def test_bad_input_exits_2_with_one_line(tmp_path, capsys):
    a = run_dir(tmp_path / "a", study(BASE, seed=1))
    (tmp_path / "empty").mkdir()
    assert cmp.main([str(a), str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "records.jsonl" in err and err.count("\n") == 1
    other = run_dir(tmp_path / "other", [rec("standard", mode="standard"), rec("opacus_hooks", 0.6, model="medium")])
    assert cmp.main([str(a), str(other)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "in both" in err and err.count("\n") == 1
    with pytest.raises(cmp.CompareError):
        cmp.compare(a, tmp_path / "missing")
