"""The timing protocol on a fake step that sleeps a known time."""
import time

import pytest

from common.config import Timing
from common.timing import _quantile, measure, summarize


def sleeper(compile_s: float, step_s: float):
    calls = []

    def step():
        time.sleep(compile_s if not calls else step_s)
        calls.append(1)
        return len(calls)

    synced = []
    return step, (lambda out: synced.append(out)), calls, synced


def test_compile_separated_and_steady_state_measured():
    step, sync, calls, synced = sleeper(0.3, 0.01)
    t = measure(step, sync, Timing(warmup_steps=2, repeats=4, window_s=0.1, min_steps=2))
    assert 0.3 <= t.compile_s < 0.45
    assert 0.01 <= t.step_s_median < 0.016  # sleep overshoots by < 6 ms here
    assert t.step_s_min <= t.step_s_p10 <= t.step_s_median <= t.step_s_p90 <= t.step_s_max
    assert len(t.window_s) == 4 and t.steps_per_window >= 5  # ~0.1 s / 0.01 s
    assert len(calls) == 1 + 2 + 4 * t.steps_per_window
    # each window ends by syncing on the output of its last step
    assert synced[-1] == len(calls) and len(synced) == 1 + 1 + 4


def test_slow_step_runs_min_steps_and_fits_budget():
    step, sync, calls, _ = sleeper(0.0, 0.05)
    t = measure(step, sync, Timing(warmup_steps=1, repeats=2, window_s=0.01, min_steps=2), budget_s=10)
    assert t.steps_per_window == 2
    step, sync, calls, _ = sleeper(0.0, 0.01)
    start = time.perf_counter()
    measure(step, sync, Timing(warmup_steps=1, repeats=3, window_s=5.0, min_steps=2), budget_s=1.0)
    assert time.perf_counter() - start < 1.0  # windows shrunk to the budget


def test_spread_statistics():
    t = summarize(1.0, 0.1, 2, [0.2, 0.4, 0.6, 0.8])
    assert t.step_s_median == pytest.approx(0.25)
    assert t.step_s_min == pytest.approx(0.1) and t.step_s_max == pytest.approx(0.4)
    assert t.step_s_cv == pytest.approx(0.4472135955, rel=1e-6)
    assert _quantile([1, 2, 3, 4, 5], 0.1) == pytest.approx(1.4)
