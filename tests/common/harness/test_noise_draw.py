"""The worker times a DP row's noise draw alone (Bench.noise_draw) after the main timing."""
import time

import pytest

from common.harness import timing, worker
from common.harness.adapter import Bench
from tests.common.harness.test_phases import FakeClock, PhasedAdapter, cfg, run_worker

DRAW_S = 0.02


class NoisyAdapter(PhasedAdapter):
    """The phased fake step, with a noise draw that sleeps ``draw_s`` (or raises),
    on ``clock`` (a FakeClock; None: real sleeps)."""

    def __init__(self, draw_s=DRAW_S, fail_draw=False, clock=None):
        super().__init__(clock=clock)
        self.draw_s, self.fail_draw, self.draws = draw_s, fail_draw, 0

    def build(self, c) -> Bench:
        bench = super().build(c)

        def draw():
            if self.fail_draw:
                raise RuntimeError("sampler broke")
            self.draws += 1
            self.sleep(self.draw_s)
            return self.draws
        bench.noise_draw = draw
        return bench


def test_noise_draw_is_timed_into_the_notes(monkeypatch):
    a = NoisyAdapter(clock=FakeClock())  # the draw takes exactly DRAW_S, however loaded the machine
    rec = run_worker(monkeypatch, a, cfg())
    assert rec["status"] == "ok", rec["error"]
    assert rec["notes"]["noise_draw_s"] == pytest.approx(DRAW_S)
    assert rec["step_s_median"] == pytest.approx(0.050)  # the step's time, not the draw's
    # the first call, a warm-up draw, then 3 windows of ~0.1 s (several draws each)
    assert a.draws >= 2 + 3 * 3


def test_noise_draw_on_the_real_clock(monkeypatch):
    """Real sleeps: a draw is never timed shorter than it sleeps."""
    a = NoisyAdapter()
    rec = run_worker(monkeypatch, a, cfg())
    assert rec["status"] == "ok", rec["error"]
    assert rec["notes"]["noise_draw_s"] >= DRAW_S and a.draws >= 2 + 3 * 3


def test_failing_noise_draw_keeps_the_record(monkeypatch):
    rec = run_worker(monkeypatch, NoisyAdapter(fail_draw=True, clock=FakeClock()), cfg())
    assert rec["status"] == "ok" and rec["step_s_median"] > 0
    assert rec["notes"]["noise_draw_error"] == "RuntimeError: sampler broke"
    assert "noise_draw_s" not in rec["notes"]


def test_no_noise_keys_without_a_draw(monkeypatch):
    rec = run_worker(monkeypatch, PhasedAdapter(clock=FakeClock()), cfg())
    assert not any(k.startswith("noise_draw") for k in rec["notes"])


def test_noise_draw_skipped_when_budget_is_short():
    c = cfg()
    step = timing.summarize(0.5, 0.2, 2, [0.4, 0.4])
    bench = Bench(step=lambda: None, sync=lambda o: o, noise_draw=lambda: pytest.fail("must not run"))
    # room for the compile allowance and three steps' worth, but not twice that
    started = time.monotonic() - (c.budget_s - 1.5 * (worker.NOISE_COMPILE_S + 3 * 0.2))
    notes = worker.measure_noise(bench, c, step, started)
    assert notes["noise_draw_skipped"].startswith("budget:")
