"""Rounds of fresh processes (runner.run_study(rounds=N)): which rows repeat,
in which order, with which round on their records, and how --resume continues
an interrupted round; plus the CLI's --rounds and --threads validation. Fake
workers only (a script written to tmp_path), no framework."""
import dataclasses
import sys

import pytest

from common.harness import records, runner
from common.harness.config import RunConfig

# A worker that writes an ok result (4 samples in 0.5 s steps) and, for a DP row,
# the ``paired`` field measure_paired gives: ``paired:R`` -> 4 pairs at ratio R.
# ``sleep`` never finishes (a timeout). It claims round 7: the runner knows the round, not the worker.
FAKE_WORKER = r'''
import json, os, sys, time
mode, cfg_path, result = sys.argv[1:4]
if mode == "sleep":
    time.sleep(60)
step = 0.5
out = {"status": "ok", "error": None, "framework_version": "fake", "device": "cpu", "compile_s": 0.1,
       "step_s_median": step, "step_s_min": step, "step_s_max": step, "step_s_p10": step, "step_s_p90": step,
       "step_s_cv": 0.0, "steps_per_window": 2, "window_s": [2 * step] * 3, "throughput_sps": 4 / step,
       "peak_mem_bytes": 1, "mem_source": "fake", "notes": {}, "round": 7}
if mode.startswith("paired:"):
    r = float(mode.split(":")[1])
    out["paired"] = {"ref": {"impl": "standard", "variant": "", "microbatch_size": None},
                     "ratios": [r] * 4, "pairs": [{"subject_step_s": step, "ref_step_s": r * step, "first": f,
                                                   "steal_share": 0.0} for f in ("ref", "subject") * 2],
                     "dropped": [], "error": None, "ref_compile_s": 0.1, "subject_steps": 2, "ref_steps": 2,
                     "pairs_asked": 4}
with open(result + ".tmp", "w") as f:
    json.dump(out, f)
os.replace(result + ".tmp", result)
'''


def cfg(impl, b, budget=20.0, framework="jax", **kw):
    return RunConfig(framework, impl, "small", b, budget_s=budget, **kw)


# name -> (config, worker mode). Round 1 runs them small to large batch, in this order within a batch.
ROWS = {
    "std": (cfg("standard", 2), "ok"),
    "dp_half": (cfg("fastclip", 4), "paired:0.5"),       # fastclip: repeats
    "dp_sweep": (cfg("jax_privacy", 4, microbatch_size=4), "paired:0.9"),  # the microbatch sweep: once
    "timeout": (cfg("standard", 8, budget=1.0), "sleep"),  # a property of the row: not repeated
    "lib_lead": (cfg("opacus_ghost", 8, framework="torch"), "paired:0.4"),  # Opacus' best mode in the cell
    "lib_edge": (cfg("opacus_ew", 8, framework="torch"), f"paired:{0.4 / runner.LEADER_SPAN}"),  # at the span
    "lib_slow": (cfg("opacus_hooks", 8, framework="torch"), "paired:0.1"),  # 4x behind its leader: once
}
NAME = {c.key(): name for name, (c, _) in ROWS.items()}


@pytest.fixture
def worker(tmp_path):
    """(worker_cmd, calls): the command runs the fake worker script in the
    row's mode and logs the row's name in ``calls``; ``calls.stop_at`` (the
    n-th call, 1-based) interrupts the runner there as a Ctrl-C would."""
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)

    class Calls(list):
        stop_at = None

    calls = Calls()

    def cmd(c, cfg_path, result):
        calls.append(NAME[c.key()])
        if calls.stop_at is not None and len(calls) == calls.stop_at:
            raise KeyboardInterrupt
        return [sys.executable, str(script), ROWS[NAME[c.key()]][1], cfg_path, result]

    return cmd, calls


def configs():
    return [c for c, _ in ROWS.values()]


def by_round(recs):
    out = {}
    for r in recs:
        out.setdefault(r["round"], []).append(NAME[records.config_key(r)])
    return out


def test_rows_repeat_by_round_one_and_later_rounds_alternate_order(tmp_path, worker):
    """rounds=3: the standard row, fastclip and the library modes within
    LEADER_SPAN of their library's best mode run three times; the sweep, the
    mode 4x behind and the timeout once; every record carries
    its round (not what the worker wrote); round 2 runs in the reverse order of
    round 1 and round 3 in round 1's again."""
    cmd, calls = worker
    out = tmp_path / "run"
    runner.run_study(configs(), out, worker_cmd=cmd, progress=False, commit="abc", rounds=3)
    assert {n: calls.count(n) for n in ROWS} == {"std": 3, "dp_half": 3, "dp_sweep": 1, "timeout": 1,
                                                 "lib_lead": 3, "lib_edge": 3, "lib_slow": 1}
    recs = records.read(out / "records.jsonl")
    assert len(recs) == len(calls) == 15
    rounds = by_round(recs)
    assert rounds[1] == ["std", "dp_half", "dp_sweep", "timeout", "lib_lead", "lib_edge", "lib_slow"]
    assert rounds[2] == ["lib_edge", "lib_lead", "dp_half", "std"]  # round 1's repeating rows, reversed
    assert rounds[3] == ["std", "dp_half", "lib_lead", "lib_edge"]
    assert sorted(rounds) == [1, 2, 3] and [r["round"] for r in recs] == [1] * 7 + [2] * 4 + [3] * 4
    status = {NAME[records.config_key(r)]: r["status"] for r in recs if r["round"] == 1}
    assert status["timeout"] == "timeout" and status["lib_slow"] == "ok"
    half = [r for r in recs if NAME[records.config_key(r)] == "dp_half"]
    assert all(r["paired"]["ratios"] == [0.5] * 4 for r in half)  # the worker's paired field is kept


def test_later_round_keys_rule():
    """The rule itself on round-1 records: ok standard and direct-use rows
    repeat; fastclip repeats whatever its ratio; a library mode repeats within
    LEADER_SPAN of its library's best findable mode in the same cell (another
    cell's or another library's leader does not count); the sweep, A/B
    variants, microbatch-mean rows, unpaired rows and failures do not."""
    def rec(fw, impl, ratio=None, b=64, status="ok", variant="", mb=None, **kw):
        c = RunConfig(fw, impl, "small", b, microbatch_size=mb, variant=variant)
        r = runner.base_record(c, "run", "abc", {}) | {"status": status}
        r["paired"] = None if ratio is None else {"ratios": [ratio] * 4}
        return r | kw
    rows = {
        "std": rec("jax", "standard"), "std_oom": rec("jax", "standard", b=256, status="oom"),
        "fastclip_low": rec("jax", "fastclip", 0.05),
        "jp": rec("jax", "jax_privacy", 0.2), "jp_sweep": rec("jax", "jax_privacy", 0.9, mb=16),
        "jp_ab": rec("jax", "jax_privacy", 0.9, variant="xla-default"),
        "ghost": rec("torch", "opacus_ghost", 0.4), "ew": rec("torch", "opacus_ew", 0.2),
        "hooks": rec("torch", "opacus_hooks", 0.199), "hooks_256": rec("torch", "opacus_hooks", 0.1, b=256),
        "func_unpaired": rec("torch", "opacus_functorch"), "ghost_timeout": rec("torch", "opacus_ghost", b=256,
                                                                              status="timeout"),
        "mean": rec("tf", "tfp_microbatch_mean", 0.9, variant="graph", mb=16),
        "direct": rec("tf", "direct_tfp_optimizer", 0.05),
    }
    keys = runner.later_round_keys(rows.values())
    assert {n for n, r in rows.items() if records.config_key(r) in keys} == {
        "std", "fastclip_low", "jp", "ghost", "ew", "hooks_256", "direct"}


def test_resume_after_an_interruption_in_round_two_runs_only_what_is_missing(tmp_path, worker):
    """Ctrl-C while round 2's second configuration starts (the 9th launch):
    round 1 and round 2's first row are recorded. --resume runs round 2's
    three missing rows, then round 3, in the same orders; each (row, round) has
    exactly one record at the end."""
    cmd, calls = worker
    out = tmp_path / "run"
    calls.stop_at = 9
    with pytest.raises(KeyboardInterrupt):
        runner.run_study(configs(), out, worker_cmd=cmd, progress=False, commit="abc", rounds=3)
    assert by_round(records.read(out / "records.jsonl")) == {
        1: ["std", "dp_half", "dp_sweep", "timeout", "lib_lead", "lib_edge", "lib_slow"], 2: ["lib_edge"]}
    calls.clear()
    calls.stop_at = None
    again = runner.run_study(configs(), out, resume=True, worker_cmd=cmd, progress=False, commit="abc", rounds=3)
    assert calls == ["lib_lead", "dp_half", "std", "std", "dp_half", "lib_lead", "lib_edge"]
    assert [(NAME[records.config_key(r)], r["round"]) for r in again] == [
        ("lib_lead", 2), ("dp_half", 2), ("std", 2),
        ("std", 3), ("dp_half", 3), ("lib_lead", 3), ("lib_edge", 3)]
    recs = records.read(out / "records.jsonl")
    pairs = [(NAME[records.config_key(r)], r["round"]) for r in recs]
    assert len(pairs) == len(set(pairs)) == 15


def test_one_round_is_the_default(tmp_path, worker):
    cmd, calls = worker
    rows = [ROWS["std"][0], ROWS["dp_half"][0]]
    runner.run_study(rows, tmp_path / "run", worker_cmd=cmd, progress=False, commit="abc")
    assert calls == ["std", "dp_half"]
    assert [r["round"] for r in records.read(tmp_path / "run" / "records.jsonl")] == [1, 1]


def test_round_order():
    a, b, c = cfg("standard", 64), cfg("fastclip", 8), dataclasses.replace(cfg("standard", 8), model="medium")
    assert runner.round_order([a, b, c], 1) == [c, b, a]  # by model (by name), then batch
    assert runner.round_order([a, b, c], 2) == [a, b, c]
    assert runner.round_order([a, b, c], 3) == [c, b, a]


def test_threads_above_the_usable_cpus_are_refused(tmp_path, capsys, monkeypatch):
    """--threads 99 on a 4-CPU allowance: exit 2, one line on stderr, nothing written."""
    monkeypatch.setattr(runner.threads, "allowed_cpus", lambda: [0, 1, 2, 3])
    out = tmp_path / "x"
    code = runner.main(["--frameworks", "jax", "--preset", "tiny", "--threads", "99", "--out", str(out),
                        "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and "more than" in err and "4 CPUs" in err and err.count("\n") == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []
    # the usable count itself is accepted
    assert runner.main(["--frameworks", "jax", "--preset", "tiny", "--threads", "4", "--out", str(out),
                        "--dry-run"]) == 0
    assert not out.exists()


@pytest.mark.parametrize("rounds", ["0", "-1"])
def test_rounds_below_one_are_refused(tmp_path, capsys, rounds):
    out = tmp_path / "x"
    assert runner.main(["--frameworks", "jax", "--preset", "tiny", "--rounds", rounds, "--out", str(out),
                        "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "--rounds must be >= 1" in err and err.count("\n") == 1
    assert not out.exists()
