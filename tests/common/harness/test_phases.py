"""Phase breakdown: the worker times a fake step's phases that take known
times; the table and plot render fixture records."""
import time

import pytest

from common.harness import pairing, records, runner, timing, worker
from common.report import phases  # the breakdown's table and plot: the report renders what the worker measured
from common.harness.adapter import FULL_STEP_PHASE, Bench
from common.harness.config import RunConfig, Timing
from common.harness.threads import worker_env
from tests.common.harness import fakes

# Cumulative prefixes (seconds) and the full step.
PREFIX_S = {"forward": 0.010, "backward": 0.030, "noise": 0.040}
STEP_S = 0.050


class FakeClock:
    """A clock that moves only when the fake step "sleeps" on it: the worker's
    timings are then exactly the sleeps, however loaded the machine is (a real
    10 ms sleep on a busy 2-core VM may overshoot by more than a phase)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


class PhasedAdapter(fakes.SleepAdapter):
    """SleepAdapter whose step has phases that take ``prefix_s`` (first call: twice that),
    on ``clock`` (a FakeClock; None: real sleeps)."""

    def __init__(self, prefix_s=PREFIX_S, fail_phase=None, clock=None, **kw):
        super().__init__(step_s=STEP_S, compile_s=2 * STEP_S, **kw)
        self.prefix_s, self.fail_phase, self.clock = prefix_s, fail_phase, clock
        self.sleep = time.sleep if clock is None else clock.sleep

    def build(self, cfg) -> Bench:
        bench = super().build(cfg)
        if self.clock is not None:  # SleepAdapter's step, on the fake clock
            steps = [0]

            def step():
                self.sleep(self.compile_s if steps[0] == 0 else self.step_s)
                steps[0] += 1
                return steps[0]
            bench.step = step
        if not cfg.phases:
            return bench

        def phase(name, s):
            calls = [0]

            def run():
                if name == self.fail_phase:
                    raise RuntimeError(f"{name} broke")
                self.sleep(2 * s if calls[0] == 0 else s)
                calls[0] += 1
                return calls[0]
            return run

        bench.phases = {name: phase(name, s) for name, s in self.prefix_s.items()}
        return bench


def cfg(**kw):
    return RunConfig("jax", "jax_privacy", "small", 4, 4, budget_s=60.0,
                     timing=Timing(warmup_steps=1, repeats=2, window_s=0.1), **kw)


def run_worker(monkeypatch, adapter, c):
    """worker.run on ``adapter``; where the adapter has a FakeClock, every timing
    in the worker (the paired main timing, the phases, the noise draw) reads it."""
    monkeypatch.setattr(worker.adapter_mod, "load", lambda fw: adapter)
    clock = getattr(adapter, "clock", None)
    if clock is not None:  # no hypervisor steal either: real steal over fake seconds would drop windows
        fake = {"clock": clock, "steal": lambda: None}
        measure, paired = timing.measure, pairing.measure_paired
        monkeypatch.setattr(timing, "measure", lambda *a, **k: measure(*a, **{**k, **fake}))
        monkeypatch.setattr(pairing, "measure_paired", lambda *a, **k: paired(*a, **{**k, **fake}))
    rec = runner.base_record(c, "r", None, {})
    rec.update(worker.run(c, time.monotonic()))
    return records.validate(rec)


def test_worker_breaks_fake_step_into_its_phases(monkeypatch):
    rec = run_worker(monkeypatch, PhasedAdapter(clock=FakeClock()), cfg(phases=True))
    assert rec["status"] == "ok", rec["error"]
    notes = rec["notes"]
    assert list(notes["phases_s"]) == ["forward", "backward", "noise", FULL_STEP_PHASE]
    for name, s in PREFIX_S.items():  # each prefix's steady step, and its first call apart
        assert notes["phases_s"][name] == pytest.approx(s), (name, notes["phases_s"])
        assert notes["phases_compile_s"][name] == pytest.approx(2 * s), (name, notes["phases_compile_s"])
    assert notes["phases_s"][FULL_STEP_PHASE] == rec["step_s_median"]
    assert rec["step_s_median"] == pytest.approx(STEP_S) and rec["compile_s"] == pytest.approx(2 * STEP_S)
    parts = notes["phase_breakdown_s"]
    assert list(parts) == ["forward", "backward", "noise", FULL_STEP_PHASE]
    want = {"forward": 0.010, "backward": 0.020, "noise": 0.010, FULL_STEP_PHASE: 0.010}
    assert parts == pytest.approx(want), parts
    assert sum(parts.values()) == pytest.approx(rec["step_s_median"])
    assert notes["phases_timing"] == {"warmup_steps": 1, "repeats": 3, "window_s": 0.1, "min_steps": 2}
    assert "phases_skipped" not in notes and "phases_error" not in notes


def test_worker_times_the_phases_on_the_real_clock(monkeypatch):
    """Real sleeps: what holds on any machine, however loaded (a sleep never ends
    early); the exact values are checked on the fake clock above."""
    rec = run_worker(monkeypatch, PhasedAdapter(), cfg(phases=True))
    assert rec["status"] == "ok", rec["error"]
    notes = rec["notes"]
    assert list(notes["phases_s"]) == ["forward", "backward", "noise", FULL_STEP_PHASE]
    for name, s in PREFIX_S.items():
        assert notes["phases_s"][name] >= s and notes["phases_compile_s"][name] >= 2 * s, name
    assert rec["step_s_median"] >= STEP_S and rec["compile_s"] >= 2 * STEP_S
    assert sum(notes["phase_breakdown_s"].values()) == pytest.approx(rec["step_s_median"])


def test_no_phases_unless_asked(monkeypatch):
    rec = run_worker(monkeypatch, PhasedAdapter(clock=FakeClock()), cfg())
    assert rec["status"] == "ok" and not any(k.startswith("phase") for k in rec["notes"])


def test_adapter_without_phases_is_noted(monkeypatch):
    rec = run_worker(monkeypatch, fakes.SleepAdapter(0.005, 0.01), cfg(phases=True))
    assert rec["status"] == "ok" and "no phases" in rec["notes"]["phases_skipped"]
    assert "phase_breakdown_s" not in rec["notes"]


def test_failing_phase_keeps_the_record(monkeypatch):
    rec = run_worker(monkeypatch, PhasedAdapter(fail_phase="backward", clock=FakeClock()), cfg(phases=True))
    assert rec["status"] == "ok" and rec["step_s_median"] > 0
    notes = rec["notes"]
    assert notes["phases_error"] == "backward: RuntimeError: backward broke"
    assert list(notes["phases_s"]) == ["forward"] and "phase_breakdown_s" not in notes


def test_phases_skipped_when_budget_is_short():
    c = cfg(phases=True)
    step = timing.summarize(0.5, 0.2, 2, [0.4, 0.4])
    bench = Bench(step=lambda: None, sync=lambda o: o, phases={"forward": lambda: pytest.fail("must not run")})
    started = time.monotonic() - (c.budget_s - 1.0)  # 1 s left, ~2 s needed
    notes = worker.measure_phases(bench, c, step, started)
    assert notes["phases_skipped"].startswith("budget:") and notes["phases_s"] == {}


def test_breakdown_clamps_and_adds_up():
    parts = worker.breakdown({"forward": 1.0, "backward": 3.0, "clip": 2.5, "noise": 3.5}, 4.0)
    assert parts == {"forward": 1.0, "backward": 2.0, "clip": 0.0, "noise": 0.5, FULL_STEP_PHASE: 0.5}
    assert worker.breakdown({"forward": 1.0}, 0.5) == {"forward": 1.0, FULL_STEP_PHASE: 0.0}


def test_config_round_trip():
    c = cfg(phases=True)
    assert RunConfig.from_dict(c.to_dict()) == c and RunConfig.from_dict({**c.to_dict(), "phases": False}) != c
    assert not cfg().phases


# --- table and plot ---------------------------------------------------------

def rec(framework, impl, b, mb, parts, variant="", status="ok", model="small"):
    r = runner.base_record(RunConfig(framework, impl, model, b, mb, variant), "fixture", "abc", worker_env(2))
    step = sum(parts.values()) if parts else 0.1
    r.update(status=status, framework_version="1", dp_library_version="1" if r["dp_library"] else None,
             device="cpu", compile_s=1.0, step_s_median=step, step_s_min=step, step_s_max=step, step_s_p10=step,
             step_s_p90=step, step_s_cv=0.0, steps_per_window=2, window_s=[2 * step], throughput_sps=b / step,
             peak_mem_bytes=1, mem_source="rss_peak_above_baseline", elapsed_s=3.0)
    if parts:
        cum, prefixes = 0.0, {}
        for k, v in parts.items():
            cum += v
            prefixes[k] = cum
        r["notes"] = {"phases_s": prefixes, "phase_breakdown_s": dict(parts)}
    if status != "ok":
        r.update(throughput_sps=None, step_s_median=None, window_s=None, compile_s=None, error="exceeded the budget")
    return records.validate(r)


FIXTURE = [
    rec("torch", "opacus_hooks", 32, None, {"forward": 0.1, "backward": 0.5, "clip": 0.2, "noise": 0.1, "update": 0.1}),
    rec("jax", "jax_privacy", 32, 8, {"forward": 0.05, "backward+clip": 0.4, "noise": 0.03, "update": 0.02}),
    rec("jax", "standard", 32, None, {"forward": 0.02, "backward": 0.06, "update": 0.02}),
    rec("tf", "tfp_vectorized", 32, 1, {"forward": 0.1, "backward": 1.0, "clip+noise": 0.5, "update": 0.4},
        variant="xla"),
    rec("jax", "standard", 16, None, {"forward": 0.01, "backward": 0.03, "update": 0.01}),
    rec("jax", "fastclip", 32, None, {}),  # timed without --phases: not in the tables
    rec("torch", "standard", 32, None, {}, status="timeout"),
]


def test_table_exact():
    lines = phases.table(FIXTURE)
    head = "| Framework | Implementation | Microbatch | Batch | Step (s) | forward | backward | backward+clip | clip | clip+noise | noise | update |"
    i = lines.index(head)
    assert lines[0] == "### Phase breakdown: small"
    assert lines[i + 2:i + 8] == [
        "| jax | standard | - | 16 | 0.05 | 0.01 (20%) | 0.03 (60%) |  |  |  |  | 0.01 (20%) |",
        "| jax | standard | - | 32 | 0.1 | 0.02 (20%) | 0.06 (60%) |  |  |  |  | 0.02 (20%) |",
        "| jax | jax_privacy | 8 | 32 | 0.5 | 0.05 (10%) |  | 0.4 (80%) |  |  | 0.03 (6%) | 0.02 (4%) |",
        "| tf | tfp_vectorized (xla) | 1 | 32 | 2 | 0.1 (5%) | 1 (50%) |  |  | 0.5 (25%) |  | 0.4 (20%) |",
        "| torch | opacus_hooks | - | 32 | 1 | 0.1 (10%) | 0.5 (50%) |  | 0.2 (20%) |  | 0.1 (10%) | 0.1 (10%) |",
        "",
    ]
    assert len(lines) == i + 8
    assert phases.table(FIXTURE[-2:]) == []


def test_table_per_model_with_its_own_columns():
    medium = rec("jax", "standard", 8, None, {"forward": 1.0, "backward": 2.0, "update": 1.0}, model="medium")
    lines = phases.table(FIXTURE + [medium])
    assert lines[0] == "### Phase breakdown: medium"
    assert "| Framework | Implementation | Microbatch | Batch | Step (s) | forward | backward | update |" in lines
    assert lines[lines.index("### Phase breakdown: medium") + 6] == "| jax | standard | - | 8 | 4 | 1 (25%) | 2 (50%) | 1 (25%) |"
    assert "### Phase breakdown: small" in lines


def test_plot_writes_png(tmp_path):
    path = phases.plot(FIXTURE, tmp_path / "plots" / "phases.png")
    assert path == tmp_path / "plots" / "phases.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    assert phases.plot(FIXTURE, tmp_path / "b16.png", batch_size=16).exists()
    assert phases.plot(FIXTURE[-2:], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
    assert phases.plot(FIXTURE, tmp_path / "b7.png", batch_size=7) is None
