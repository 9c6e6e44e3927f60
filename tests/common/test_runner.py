"""Faults become records, the run goes on, --resume skips what is done."""
import sys
from pathlib import Path

import pytest

from common import records, runner, worker
from common.config import RunConfig, Timing
from tests.common import fakes

FAKES = str(Path(fakes.__file__))


def cfg(impl="standard", b=8, budget=20.0, **kw):
    return RunConfig("jax", impl, "small", b, budget_s=budget, **kw)


def fake_cmd(modes):
    """Worker command whose behaviour is chosen per batch size."""
    return lambda c, cfg_path, result: [sys.executable, FAKES, modes[c.batch_size], cfg_path, result]


def test_faults_become_records_and_run_continues(tmp_path):
    modes = {1: "ok", 2: "sleep", 3: "crash", 4: "oom", 5: "killed", 6: "ok"}
    configs = [cfg(b=b, budget=3.0 if modes[b] == "sleep" else 20.0) for b in modes]
    runner.run_study(configs, tmp_path, worker_cmd=fake_cmd(modes), progress=False)
    recs = records.read(tmp_path / "records.jsonl")
    got = {r["batch_size"]: r for r in recs}
    assert [got[b]["status"] for b in sorted(got)] == ["ok", "timeout", "error", "oom", "oom", "ok"]
    assert "budget of 3 s" in got[2]["error"]
    assert "code 3" in got[3]["error"] and "Segmentation fault" in got[3]["error"]
    assert "RESOURCE_EXHAUSTED" in got[4]["error"]
    assert "SIGKILL" in got[5]["error"]
    assert got[1]["throughput_sps"] == 8.0 and got[1]["threads"]["intra_op"] >= 1


def test_resume_skips_ok_configs_only(tmp_path):
    modes = {1: "ok", 3: "crash"}
    configs = [cfg(b=1), cfg(b=3)]
    runner.run_study(configs, tmp_path, worker_cmd=fake_cmd(modes), progress=False)
    modes[3] = "ok"
    again = runner.run_study(configs, tmp_path, resume=True, worker_cmd=fake_cmd(modes), progress=False)
    assert [r["batch_size"] for r in again] == [3]
    recs = records.read(tmp_path / "records.jsonl")
    assert [(r["batch_size"], r["status"]) for r in recs] == [(1, "ok"), (3, "error"), (3, "ok")]
    assert {r["batch_size"]: r["status"] for r in records.latest(recs)} == {1: "ok", 3: "ok"}


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
