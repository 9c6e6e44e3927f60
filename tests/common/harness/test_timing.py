"""The timing protocol, on a fake step that advances a fake clock (exact
arithmetic, no sleeps), plus one check that the default clock is real time."""
import math
import time

import pytest

from common.harness.config import Timing
from common.harness.timing import _quantile, measure, plan_windows, summarize


def test_compile_separated_and_steady_state_measured():
    clock = FakeClock()
    step, calls = fake_step(clock, 0.25, 1 / 64)  # exact in binary
    synced = []
    t = measure(step, synced.append, Timing(warmup_steps=2, repeats=4, window_s=0.125, min_steps=2), clock=clock)
    assert t.compile_s == 0.25 and t.warmup_step_s == 1 / 64
    assert t.step_s_median == t.step_s_min == t.step_s_max == 1 / 64 and t.step_s_cv == 0.0
    assert len(t.window_s) == 4 and t.steps_per_window == 8  # 0.125 s / (1/64) s
    assert len(calls) == 1 + 2 + 4 * 8
    # each window ends by syncing on the output of its last step (warm-up steps are synced one by one)
    assert synced == [1, 2, 3] + [3 + 8 * (i + 1) for i in range(4)]


def test_slow_step_runs_min_steps_and_fits_budget():
    clock = FakeClock()
    step, _ = fake_step(clock, 0.0, 1 / 16)
    t = measure(step, lambda o: o, Timing(warmup_steps=1, repeats=2, window_s=0.01, min_steps=2), budget_s=10,
                clock=clock)
    assert t.steps_per_window == 2  # a window shorter than a step still takes min_steps
    clock = FakeClock()
    step, _ = fake_step(clock, 0.0, 1 / 64)
    t = measure(step, lambda o: o, Timing(warmup_steps=1, repeats=3, window_s=5.0, min_steps=2), budget_s=1.0,
                clock=clock)
    # 320 steps per window would not fit: 16 do (3 x 16/64 = 0.75 s <= 0.8 x what was left)
    assert t.steps_per_window == 16 and len(t.window_s) == 3 and clock.t <= 1.0


def test_default_clock_is_real_time():
    def step():
        time.sleep(0.002)

    t = measure(step, lambda o: o, Timing(warmup_steps=1, repeats=2, window_s=0.01, min_steps=2))
    assert t.step_s_min >= 0.002  # sleep never returns early


def test_spread_statistics():
    t = summarize(1.0, 0.1, 2, [0.2, 0.4, 0.6, 0.8])
    assert t.step_s_median == pytest.approx(0.25)
    assert t.step_s_min == pytest.approx(0.1) and t.step_s_max == pytest.approx(0.4)
    assert t.step_s_cv == pytest.approx(0.4472135955, rel=1e-6)
    assert _quantile([1, 2, 3, 4, 5], 0.1) == pytest.approx(1.4)


class FakeClock:
    """A clock that only the fake step advances: the protocol's arithmetic, exactly."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def fake_step(clock: FakeClock, compile_s: float, step_s: float):
    calls = []

    def step():
        clock.t += compile_s if not calls else step_s
        calls.append(1)
        return len(calls)

    return step, calls


def test_fast_step_gets_the_full_protocol():
    clock = FakeClock()
    step, calls = fake_step(clock, 1.0, 0.125)  # exact in binary
    t = measure(step, lambda o: o, Timing(warmup_steps=1, repeats=3, window_s=1.0, min_steps=2), budget_s=100,
                clock=clock)
    assert t.compile_s == 1.0 and t.steps_per_window == 8 and len(t.window_s) == 3
    assert t.step_s_median == pytest.approx(0.125)


def test_slow_step_gets_fewer_windows_but_a_number_within_budget():
    """3 s steps, 10 s budget: one warm-up, after which 6 s are left, but two
    one-step windows need more than the 80 % of it the windows may use: the
    warm-up becomes window one, one more follows (2 windows of 1 step, not
    3 x 2), ending inside the budget; the achieved protocol is what the result says."""
    clock = FakeClock()
    step, calls = fake_step(clock, 1.0, 3.0)
    progress = []
    t = measure(step, lambda o: o, Timing(warmup_steps=1, repeats=3, window_s=1.0, min_steps=2), budget_s=10,
                clock=clock, on_progress=lambda p: progress.append(dict(p, step_s=list(p["step_s"]))))
    assert (len(t.window_s), t.steps_per_window) == (2, 1)
    assert t.step_s_median == pytest.approx(3.0) and clock.t <= 10
    assert progress[0] == {"compile_s": 1.0, "step_s": []}
    assert t.warmup_timed and clock.t == 7.0
    assert progress[-1]["step_s"] == [3.0, 3.0]  # warm-up + 1 window: what a timeout row would report


def test_warmup_is_cut_when_it_would_eat_the_timed_steps():
    clock = FakeClock()
    step, calls = fake_step(clock, 1.0, 3.0)
    t = measure(step, lambda o: o, Timing(warmup_steps=3, repeats=3, window_s=1.0, min_steps=2), budget_s=12,
                clock=clock)
    assert len(calls) == 1 + 1 + 2  # compile, one warm-up (not three), two timed steps
    assert len(t.window_s) == 2 and clock.t <= 12


def test_plan_windows():
    tm = Timing(warmup_steps=1, repeats=5, window_s=1.0, min_steps=2)
    assert plan_windows(tm, 0.01, 100) == (5, 100)
    assert plan_windows(tm, 1.0, 100) == (5, 2)
    assert plan_windows(tm, 1.0, 6.25) == (5, 1)  # room 5 s: 5 windows of 1 step
    assert plan_windows(tm, 1.0, 3.0) == (2, 1)   # room 2.4 s: the floor of 2 timed steps
    assert plan_windows(tm, 1.0, math.inf) == (5, 2)


def test_warmup_step_is_the_first_window_when_only_one_more_step_fits():
    """compile 1 s, steps 1 s, budget 3.6 s: after compile and warm-up 1.6 s are
    left, room for one step, not two: the warm-up is timed as window one."""
    timing = Timing(warmup_steps=1, repeats=3, window_s=0.5, min_steps=1)
    clock = FakeClock()
    step, calls = fake_step(clock, 1.0, 1.0)
    t = measure(step, lambda o: o, timing, budget_s=3.6, clock=clock)
    assert t.warmup_timed and t.window_s == [1.0, 1.0] and t.steps_per_window == 1
    assert len(calls) == 3 and clock.t <= 3.6
    # with room for the protocol, the warm-up stays untimed
    clock = FakeClock()
    step, calls = fake_step(clock, 1.0, 1.0)
    t = measure(step, lambda o: o, timing, budget_s=10.0, clock=clock)
    assert not t.warmup_timed and len(t.window_s) == 3 and len(calls) == 1 + 1 + 3


class WindowSteal:
    """Cumulative stolen CPU seconds as ``measure`` reads them: readings 2w and
    2w+1 bracket the w-th timed window (warm-up and compile read nothing).
    ``heavy``: {window index: CPU seconds stolen during it}."""

    def __init__(self, heavy):
        self.heavy, self.reads, self.total = heavy, 0, 0.0

    def __call__(self):
        w, after = divmod(self.reads, 2)
        self.reads += 1
        if after:
            self.total += self.heavy.get(w, 0.0)
        return self.total


STEAL_TIMING = Timing(warmup_steps=1, repeats=3, window_s=0.25, min_steps=2)  # 3 windows of 2 x 0.125 s


def test_stolen_window_is_dropped_and_replaced():
    """Window 1 (0.25 s on 2 CPUs) is 40 % stolen: it is dropped with its share
    and one more window is timed, so the result still has the protocol's 3."""
    clock = FakeClock()
    step, calls = fake_step(clock, 1.0, 0.125)
    steal = WindowSteal({1: 0.4 * 0.25 * 2})
    t = measure(step, lambda o: o, STEAL_TIMING, budget_s=100, clock=clock, steal=steal, ncpu=2)
    assert t.window_s == [0.25] * 3 and t.steps_per_window == 2
    assert t.dropped_windows == [{"step_s": 0.125, "steal_share": 0.4}]
    assert len(calls) == 1 + 1 + 4 * 2 and steal.reads == 2 * 4


def test_steal_share_is_of_all_cpus_and_at_most_the_threshold_is_kept():
    """0.02 CPU s stolen in a 0.25 s window: 8 % of one CPU (dropped), 2 % of
    four (kept); no steal reading (None) drops nothing."""
    for ncpu, dropped in ((1, 1), (4, 0)):
        clock = FakeClock()
        step, _ = fake_step(clock, 1.0, 0.125)
        t = measure(step, lambda o: o, STEAL_TIMING, budget_s=100, clock=clock, steal=WindowSteal({0: 0.02}),
                    ncpu=ncpu)
        assert len(t.dropped_windows) == dropped and len(t.window_s) == 3
    clock = FakeClock()
    step, _ = fake_step(clock, 1.0, 0.125)
    t = measure(step, lambda o: o, STEAL_TIMING, budget_s=100, clock=clock, steal=lambda: None)
    assert t.dropped_windows == [] and len(t.window_s) == 3


def test_stolen_window_without_budget_for_a_replacement_keeps_what_it_has():
    """Budget 2.125 s: compile 1 s and warm-up 0.125 s leave 1 s, room (80 %)
    for the 3 windows of 0.25 s; after them 0.25 s are left, 0.2 s of room:
    no replacement fits, so the result has the 2 clean windows and says which
    one was dropped, and the budget is kept."""
    clock = FakeClock()
    step, calls = fake_step(clock, 1.0, 0.125)
    t = measure(step, lambda o: o, STEAL_TIMING, budget_s=2.125, clock=clock, steal=WindowSteal({1: 0.1}))
    assert t.window_s == [0.25, 0.25] and len(t.dropped_windows) == 1
    assert t.dropped_windows[0] == {"step_s": 0.125, "steal_share": 0.4} and clock.t <= 2.125
    assert len(calls) == 1 + 1 + 3 * 2
