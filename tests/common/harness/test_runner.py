"""Faults become records, the run goes on, --resume skips what is done."""
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.harness import records, runner, worker
from common.harness.config import RunConfig, Timing
from tests.common.harness import fakes

FAKES = str(Path(fakes.__file__))
ROOT = Path(__file__).resolve().parents[3]


def cfg(impl="standard", b=8, budget=20.0, **kw):
    return RunConfig("jax", impl, "small", b, budget_s=budget, **kw)


def fake_cmd(modes):
    """Worker command whose behaviour is chosen per batch size."""
    return lambda c, cfg_path, result: [sys.executable, FAKES, modes[c.batch_size], cfg_path, result]


def test_faults_become_records_and_run_continues(tmp_path):
    """Each fault in its own series (impl/variant/model), so no skip proof applies."""
    modes = {1: "ok", 2: "sleep", 3: "crash", 4: "oom", 5: "killed", 6: "badresult", 7: "ok"}
    configs = [cfg(b=b, budget=3.0 if modes[b] == "sleep" else 20.0, seed=b) for b in modes]
    configs = [dataclasses.replace(c, clip_norm=float(c.batch_size)) for c in configs]  # distinct series
    runner.run_study(configs, tmp_path, worker_cmd=fake_cmd(modes), progress=False, commit="abc")
    recs = records.read(tmp_path / "records.jsonl")
    got = {r["batch_size"]: r for r in recs}
    assert [got[b]["status"] for b in sorted(got)] == ["ok", "timeout", "error", "oom", "killed", "error", "ok"]
    assert "budget of 3 s" in got[2]["error"] and "first (compiling) step did not finish" in got[2]["error"]
    assert "code 3" in got[3]["error"] and "Segmentation fault" in got[3]["error"]
    assert "RESOURCE_EXHAUSTED" in got[4]["error"]
    assert "SIGKILL" in got[5]["error"] and "not an OOM kill" in got[5]["error"]
    assert "invalid result" in got[6]["error"]
    assert got[1]["throughput_sps"] == 8.0 and got[1]["threads"]["intra_op"] >= 1


def test_sigkill_is_oom_only_when_the_kernel_says_so(tmp_path, monkeypatch):
    counts = iter([5, 6])  # the cgroup's oom_kill count rose during the launch
    monkeypatch.setattr(runner.launcher, "cgroup_oom_kills", lambda: next(counts))
    rec = runner.run_config(cfg(b=5), "r", "abc", fake_cmd({5: "killed"}))
    assert rec["status"] == "oom" and "OOM killer" in rec["error"]


def test_finished_result_wins_over_slow_teardown(tmp_path):
    """A worker that wrote its result but then hangs is ok, and is not waited for."""
    t0 = time.monotonic()
    rec = runner.run_config(cfg(b=1, budget=30.0), "r", "abc", fake_cmd({1: "teardown"}))
    assert rec["status"] == "ok" and rec["throughput_sps"] == 8.0
    assert time.monotonic() - t0 < 10


def test_timeout_row_says_how_long_its_steps_took(tmp_path):
    rec = runner.run_config(cfg(b=1, budget=2.0), "r", "abc", fake_cmd({1: "partial"}))
    assert rec["status"] == "timeout"
    assert "first (compiling) step 1.5 s, 2 more steps of 2.00-2.50 s" in rec["error"]
    partial = rec["notes"]["partial"]
    assert {k: partial[k] for k in ("compile_s", "step_s")} == {"compile_s": 1.5, "step_s": [2.0, 2.5]}
    # the step still running was killed at the budget: it had run ~2 s, less the slack
    assert 0.5 < partial["running_step_s_min"] <= 2.0 - runner.RUNNING_STEP_SLACK_S


def test_a_step_still_running_at_the_budget_proves_larger_batches_cannot_fit(tmp_path):
    """B 1 compiled at once, then its next step outlived the 4 s budget: it took
    at least ~3 s, 3 steps > 4 s, so B 2 is skipped. Compiled late (3 s in),
    the bound is too small to prove anything and B 2 runs."""
    runner.run_study([cfg(b=1, budget=4.0), cfg(b=2, budget=4.0)], tmp_path / "a",
                     worker_cmd=fake_cmd({1: "compiled", 2: "ok"}), progress=False, commit="abc")
    recs = records.read(tmp_path / "a" / "records.jsonl")
    assert [r["status"] for r in recs] == ["timeout", "skipped"], recs
    assert "B=1 of this impl took at least" in recs[1]["error"]
    assert "the step running when the budget ran out had taken" in recs[0]["error"]
    runner.run_study([cfg(b=1, budget=4.0), cfg(b=2, budget=4.0)], tmp_path / "b",
                     worker_cmd=fake_cmd({1: "compiled:2.8", 2: "ok"}), progress=False, commit="abc")
    assert [r["status"] for r in records.read(tmp_path / "b" / "records.jsonl")] == ["timeout", "ok"]


def test_smaller_batch_proves_larger_cannot_fit(tmp_path):
    """Series: B 1 ok at 10 s/step (3 steps > 20 s budget) -> B 2, 4 skipped with
    the proof; a fast series is not skipped; an OOM series skips its larger batches."""
    modes = {1: "ok:10", 2: "ok", 4: "ok"}
    slow = [cfg(b=b) for b in (1, 2, 4)]
    fast = [cfg(impl="fastclip", b=b) for b in (2, 4)]
    runner.run_study(slow + fast, tmp_path / "a", worker_cmd=fake_cmd(modes), progress=False, commit="abc")
    recs = records.read(tmp_path / "a" / "records.jsonl")
    by = [(r["batch_size"], r["status"]) for r in recs]
    assert by.count((2, "skipped")) == 1 and by.count((4, "skipped")) == 1
    assert [r["status"] for r in recs if r["impl"] == "fastclip"] == ["ok", "ok"]
    skipped = [r for r in recs if r["status"] == "skipped"]
    assert all("B=1 of this impl measured 10.00 s per step" in r["error"] for r in skipped), skipped
    assert all(r["elapsed_s"] == 0.0 for r in skipped)
    # a series that fits is never skipped
    modes = {1: "ok:5", 2: "ok"}
    runner.run_study([cfg(b=1), cfg(b=2)], tmp_path / "b", worker_cmd=fake_cmd(modes), progress=False, commit="abc")
    assert [r["status"] for r in records.read(tmp_path / "b" / "records.jsonl")] == ["ok", "ok"]
    # out of memory at B 1: B 2 is skipped, citing it
    runner.run_study([cfg(b=1), cfg(b=2)], tmp_path / "c", worker_cmd=fake_cmd({1: "oom", 2: "ok"}), progress=False,
                     commit="abc")
    recs = records.read(tmp_path / "c" / "records.jsonl")
    assert [r["status"] for r in recs] == ["oom", "skipped"] and "ran out of memory" in recs[1]["error"]


def test_resume_continues_without_rerunning_recorded(tmp_path):
    modes = {1: "ok", 3: "crash"}
    configs = [cfg(b=1), cfg(b=3, seed=3)]
    runner.run_study(configs, tmp_path, worker_cmd=fake_cmd(modes), progress=False, commit="abc")
    configs.append(cfg(b=5, seed=5))
    again = runner.run_study(configs, tmp_path, resume=True, worker_cmd=fake_cmd({5: "ok"}), progress=False,
                             commit="abc")
    assert [r["batch_size"] for r in again] == [5]
    recs = records.read(tmp_path / "records.jsonl")
    assert [(r["batch_size"], r["status"]) for r in recs] == [(1, "ok"), (3, "error"), (5, "ok")]


def test_resume_refuses_other_settings(tmp_path):
    runner.run_study([cfg(b=1)], tmp_path, worker_cmd=fake_cmd({1: "ok"}), progress=False, commit="abc")
    for other, what in [(cfg(b=1, budget=99.0), "budget_s"), (cfg(b=1, timing=Timing(repeats=9)), "timing"),
                        (cfg(b=1, threads=1), "threads")]:
        with pytest.raises(ValueError, match=f"other settings.*{what}"):
            runner.run_study([other], tmp_path, resume=True, worker_cmd=fake_cmd({1: "ok"}), progress=False,
                             commit="abc")
    with pytest.raises(ValueError, match="git_commit"):
        runner.run_study([cfg(b=1)], tmp_path, resume=True, worker_cmd=fake_cmd({1: "ok"}), progress=False,
                         commit="def")


def test_corrupt_record_lines_are_counted_and_skipped(tmp_path, capsys):
    path = tmp_path / "records.jsonl"
    runner.run_study([cfg(b=1)], tmp_path, worker_cmd=fake_cmd({1: "ok"}), progress=False, commit="abc")
    good = path.read_bytes()
    path.write_bytes(b"null\n" + b"\xff\xfe not utf-8\n" + b"{\"half\": \n" + b"[1, 2]\n" + good + b"{\"torn")
    recs, bad = records.read_counted(path)
    assert len(recs) == 1 and bad == 5
    assert len(records.read(path)) == 1 and "skipped 5 unreadable or invalid lines" in capsys.readouterr().err
    # --resume on that file continues, and the next append starts on a fresh line
    runner.run_study([cfg(b=1), cfg(b=2, seed=2)], tmp_path, resume=True, worker_cmd=fake_cmd({2: "ok"}),
                     progress=False, commit="abc")
    assert [r["batch_size"] for r in records.read(path)] == [1, 2]


SIGINT_SCRIPT = """
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from tests.common.harness.test_runner import cfg, fake_cmd
from common.harness import runner
# A user's terminal delivers Ctrl-C; a test started in the background inherits
# SIGINT ignored (POSIX shells do that to & jobs), so restore Python's handler.
signal.signal(signal.SIGINT, signal.default_int_handler)
try:
    runner.run_study([cfg(b=1), cfg(b=2, seed=2), cfg(b=3, seed=3)], Path(sys.argv[1]),
                     worker_cmd=fake_cmd({1: "ok", 2: "sleep", 3: "ok"}), progress=False, commit="abc")
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_sigint_stops_at_once_keeps_records_and_resume_finishes(tmp_path):
    out, pidfile = tmp_path / "run", tmp_path / "worker.pid"
    env = dict(os.environ, PYTHONPATH=str(ROOT), DPBENCH_FAKE_PIDFILE=str(pidfile))
    p = subprocess.Popen([sys.executable, "-c", SIGINT_SCRIPT, str(out)], cwd=ROOT, env=env)
    deadline = time.monotonic() + 30
    while not pidfile.exists() and time.monotonic() < deadline:  # the sleeping worker of B 2 is running
        time.sleep(0.05)
    assert pidfile.exists()
    time.sleep(0.5)  # the runner is in its wait loop (not between Popen and the guarded wait)
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=10) == 130
    worker_pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(worker_pid, 0)  # the worker's process group was killed with the runner
    assert [r["batch_size"] for r in records.read(out / "records.jsonl")] == [1]
    again = runner.run_study([cfg(b=1), cfg(b=2, seed=2), cfg(b=3, seed=3)], out, resume=True,
                             worker_cmd=fake_cmd({2: "ok", 3: "ok"}), progress=False, commit="abc")
    assert [r["batch_size"] for r in again] == [2, 3]


def test_worker_reports_adapter_failures(monkeypatch):
    """In-process worker: exceptions are classified, never raised."""
    for exc, status in [(MemoryError(), "oom"), (RuntimeError("CUDA out of memory. Tried"), "oom"),
                        (ValueError("opacus: unsupported module"), "error")]:
        monkeypatch.setattr(worker.adapter_mod, "load", lambda fw, e=exc: fakes.SleepAdapter(fail=e))
        out = worker.run(cfg(), 0.0)
        assert out["status"] == status and out["error"]


def test_worker_measures_fake_step_and_memory(monkeypatch):
    import time
    monkeypatch.setattr(worker.adapter_mod, "load", lambda fw: fakes.SleepAdapter(0.005, 0.1, alloc_mb=200))
    c = cfg(timing=Timing(warmup_steps=1, repeats=2, window_s=0.05))
    rec = runner.base_record(c, "r", None, {})
    rec.update(worker.run(c, time.monotonic()))
    records.validate(rec)
    assert rec["compile_s"] >= 0.1 and 0.005 <= rec["step_s_median"] < 0.01
    assert rec["throughput_sps"] == pytest.approx(8 / rec["step_s_median"])
    # the known 200 MiB allocation shows in the peak above baseline
    assert 195 * 2**20 <= rec["peak_mem_bytes"] < 260 * 2**20
    assert rec["mem_source"] == "rss_steady_peak_above_baseline"
    # what the protocol did and how noisy the machine was while it did it
    assert rec["notes"]["warmup_timed"] is False and 0.0 <= rec["notes"]["cpu_steal_share"] <= 1.0


def test_cpu_steal_reads_proc_stat(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 800 6 0 3 250 0 0\ncpu0 1 2 3\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: real_open(stat if p == "/proc/stat" else p, *a, **k))
    assert worker.cpu_steal_s() == 250 / os.sysconf("SC_CLK_TCK")


def test_worker_separates_compile_peak_from_steady_peak(monkeypatch):
    """A working set only the first (compiling) step touches is in the compile
    peak, not in the steady-state peak; memory kept from it is in both."""
    import time
    monkeypatch.setattr(worker.adapter_mod, "load",
                        lambda fw: fakes.SleepAdapter(0.005, 0.1, alloc_mb=100, transient_mb=300))
    c = cfg(timing=Timing(warmup_steps=1, repeats=2, window_s=0.05))
    rec = worker.run(c, time.monotonic())
    assert rec["status"] == "ok"
    assert 95 * 2**20 <= rec["peak_mem_bytes"] < 160 * 2**20
    assert rec["notes"]["compile_peak_mem_bytes"] >= 395 * 2**20


def test_parity_models_default_to_small_where_the_run_has_it():
    small, medium = cfg(b=1), dataclasses.replace(cfg(b=1), model="medium")
    assert runner.parity_models([small, medium]) == ["small"]
    assert runner.parity_models([medium]) == ["medium"]
    assert runner.parity_models([small], ["small", "medium"]) == ["small", "medium"]
    with pytest.raises(ValueError):
        runner.parity_models([small], ["huge"])


def test_retry_stolen_reruns_until_clean_and_keeps_every_record(tmp_path):
    """B 1 is stolen twice then clean, B 2 clean at once, B 3 stolen every time:
    with --retry-stolen 2, B 1 and B 3 run 3 times, B 2 once; the report's pick
    (records.latest) is B 1's clean record and B 3's last stolen one."""
    plans = {1: ["stolen:0.3", "stolen:0.2", "ok"], 2: ["ok"], 3: ["stolen:0.3"] * 3}
    calls = {b: 0 for b in plans}

    def cmd(c, cfg_path, result):
        mode = plans[c.batch_size][calls[c.batch_size]]
        calls[c.batch_size] += 1
        return [sys.executable, FAKES, mode, cfg_path, result]

    configs = [dataclasses.replace(cfg(b=b), clip_norm=float(b)) for b in plans]  # distinct series
    runner.run_study(configs, tmp_path, worker_cmd=cmd, progress=False, commit="abc", retry_stolen=2)
    assert calls == {1: 3, 2: 1, 3: 3}
    recs = records.read(tmp_path / "records.jsonl")
    assert len(recs) == 7
    pick = {r["batch_size"]: r for r in records.latest(recs)}
    assert not records.stolen(pick[1]) and not records.stolen(pick[2]) and records.stolen(pick[3])
    # by default a stolen row runs once more (contamination handled without a flag); 0 turns it off
    calls.update({b: 0 for b in plans})
    runner.run_study(configs, tmp_path / "b", worker_cmd=cmd, progress=False, commit="abc")
    assert calls == {1: 2, 2: 1, 3: 2}
    calls.update({b: 0 for b in plans})
    runner.run_study(configs, tmp_path / "c", worker_cmd=cmd, progress=False, commit="abc", retry_stolen=0)
    assert calls == {1: 1, 2: 1, 3: 1}


def test_negative_retry_stolen_is_refused(tmp_path, capsys):
    assert runner.main(["--frameworks", "jax", "--preset", "tiny", "--retry-stolen", "-1",
                        "--out", str(tmp_path / "x"), "--dry-run"]) == 2
    assert "--retry-stolen must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
