"""The one timing protocol (docs/design.md §4) every adapter's step goes through.

``measure(step, sync)``: the first step (with its sync) is ``compile_s``;
warm-up steps are run untimed but estimate the step time; then R windows of S
steps, S chosen so a window lasts about ``window_s`` (>= ``min_steps``).
Slow configurations adapt to what is left of the budget (``plan_windows``:
fewer steps per window, then fewer windows, never fewer than two timed
steps; where even two do not fit after the warm-up, the warm-up step is the
first of them, ``warmup_timed``) so that every configuration whose steps fit
gets a number, with the precision it got recorded. Each window ends by synchronising on the real
output of its last step.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from common.harness.config import Timing


@dataclass
class TimingResult:
    compile_s: float
    warmup_step_s: float
    steps_per_window: int
    window_s: list[float]  # raw wall time of each window
    step_s_median: float
    step_s_min: float
    step_s_max: float
    step_s_p10: float
    step_s_p90: float
    step_s_cv: float  # coefficient of variation of per-window step times
    # The warm-up step counted as the first one-step window: after it, the
    # budget held only one more step (the compiling step already ran the step
    # once, so the second execution is past first-touch costs).
    warmup_timed: bool = False
    # Windows timed while the hypervisor took more than STOLEN_SHARE of the
    # CPUs, dropped and replaced where the budget allowed: {"step_s", "steal_share"}.
    dropped_windows: list = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _quantile(xs: list[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default), stdlib only."""
    s = sorted(xs)
    pos = (len(s) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarize(compile_s: float, warmup_step_s: float, steps: int, windows: list[float],
              warmup_timed: bool = False, dropped_windows: list | None = None) -> TimingResult:
    per_step = [w / steps for w in windows]
    mean = statistics.fmean(per_step)
    cv = statistics.pstdev(per_step) / mean if mean > 0 else 0.0
    return TimingResult(compile_s, warmup_step_s, steps, windows, statistics.median(per_step),
                        min(per_step), max(per_step), _quantile(per_step, 0.1), _quantile(per_step, 0.9), cv,
                        warmup_timed, list(dropped_windows or []))


# Share of the budget left after warm-up that the timed windows may use; the
# rest is margin for the sync, writing the result and teardown.
WINDOW_SHARE = 0.8
# Fewest timed steps a number rests on (two windows of one step: a median and a spread).
MIN_TIMED_STEPS = 2


def plan_windows(timing: Timing, step_s: float, left_s: float) -> tuple[int, int]:
    """(windows, steps per window) for a step of ``step_s`` with ``left_s``
    seconds of budget left: the protocol's R windows of ~``window_s`` (at
    least ``min_steps`` steps) when they fit; otherwise fewer steps per window
    (down to 1), then fewer windows (down to 2), so that a slow configuration
    still gets a number with the precision recorded (records.reduced_precision)."""
    steps = max(timing.min_steps, int(timing.window_s / step_s))
    windows = timing.repeats
    if not math.isfinite(left_s):
        return windows, steps
    room = left_s * WINDOW_SHARE
    if windows * steps * step_s > room:
        steps = max(1, min(steps, int(room / (windows * step_s))))
    if windows * steps * step_s > room:
        windows = max(MIN_TIMED_STEPS, min(windows, int(room / step_s)))
    return windows, steps


# A window timed while the hypervisor took more than this share of the CPUs
# is not the machine's: it is dropped and run again while the budget allows.
STOLEN_SHARE = 0.05


def steal_share(s0: float | None, s1: float | None, wall_s: float, ncpu: int) -> float | None:
    """Share of ``ncpu`` CPUs' time over ``wall_s`` that the hypervisor stole,
    from two readings of the cumulative stolen CPU seconds; None where unknown."""
    if s0 is None or s1 is None:
        return None
    return max(0.0, (s1 - s0) / max(wall_s * ncpu, 1e-9))


def first_steps(step: Callable[[], Any], sync: Callable[[Any], Any], warmup_steps: int, budget_s: float,
                clock: Callable[[], float], on_compiled: Callable[[], None] | None,
                on_progress: Callable[[dict[str, Any]], None] | None
                ) -> tuple[float, list[float], dict[str, Any], Callable[[], float]]:
    """The compiling step alone (``compile_s``), then up to ``warmup_steps``
    warm-up steps, cut short when the budget would not leave room for
    ``MIN_TIMED_STEPS`` timed steps after them. Returns (compile_s, warm-up
    step seconds, the partial-progress dict, ``left()``: budget seconds left)."""
    start = clock()
    sync(step())
    compile_s = clock() - start
    partial: dict[str, Any] = {"compile_s": compile_s, "step_s": []}
    if on_progress is not None:
        on_progress(partial)
    if on_compiled is not None:
        on_compiled()
        start = clock() - compile_s  # the budget still counts the first step

    def left() -> float:
        return budget_s - (clock() - start)

    warm: list[float] = []
    for _ in range(warmup_steps):
        est = min(warm) if warm else compile_s  # the first step is an upper bound
        if warm and left() * WINDOW_SHARE < (1 + MIN_TIMED_STEPS) * est:
            break
        t0 = clock()
        sync(step())
        warm.append(clock() - t0)
        partial["step_s"].append(warm[-1])
        if on_progress is not None:
            on_progress(partial)
    return compile_s, warm, partial, left


def measure(step: Callable[[], Any], sync: Callable[[Any], Any], timing: Timing,
            budget_s: float = math.inf, clock: Callable[[], float] = time.perf_counter,
            on_compiled: Callable[[], None] | None = None,
            on_progress: Callable[[dict[str, Any]], None] | None = None,
            steal: Callable[[], float | None] = lambda: None, ncpu: int = 1) -> TimingResult:
    """Time ``step`` under the protocol; ``sync(out)`` must block on ``out``.

    ``on_compiled()`` runs after the first step, outside every timed span.
    ``on_progress(partial)`` gets ``{"compile_s", "step_s": [...]}`` after the
    first step, each warm-up step and each window, so that a configuration
    stopped by its budget still says how long the steps it took were.
    Warm-up is cut short when the budget would not leave room for
    ``MIN_TIMED_STEPS`` timed steps after it."""
    compile_s, warm, partial, left = first_steps(step, sync, timing.warmup_steps, budget_s, clock, on_compiled,
                                                 on_progress)
    return timed_windows(step, sync, timing, compile_s, warm, partial, left, clock, on_progress, steal, ncpu)


def time_window(step: Callable[[], Any], sync: Callable[[Any], Any], steps: int, clock: Callable[[], float],
                steal: Callable[[], float | None], ncpu: int) -> tuple[float, float | None]:
    """One window: ``steps`` steps, synchronised on the last one's output; its
    wall seconds and the share of the CPUs the hypervisor stole meanwhile."""
    s0, w0 = steal(), clock()
    out = None
    for _ in range(steps):
        out = step()
    sync(out)
    w = clock() - w0
    return w, steal_share(s0, steal(), w, ncpu)


def timed_windows(step: Callable[[], Any], sync: Callable[[Any], Any], timing: Timing, compile_s: float,
                  warm: list[float], partial: dict[str, Any], left: Callable[[], float], clock: Callable[[], float],
                  on_progress: Callable[[dict[str, Any]], None] | None,
                  steal: Callable[[], float | None] = lambda: None, ncpu: int = 1) -> TimingResult:
    """The timed windows after ``first_steps``, fitted to what is ``left()`` of
    the budget (``plan_windows``); a window with more than ``STOLEN_SHARE`` of
    the CPUs stolen is dropped and replaced while the budget allows."""
    # No warm-up step: the compiling step is the (pessimistic) estimate.
    warm_step = max(statistics.median(warm) if warm else compile_s, 1e-9)

    windows_n, steps = plan_windows(timing, warm_step, left())
    windows: list[float] = []
    warmup_timed = False
    if warm and steps == 1 and windows_n * warm_step > left() * WINDOW_SHARE:
        # Not even MIN_TIMED_STEPS one-step windows fit after the warm-up: its
        # step becomes the first window, so the configuration still gets its
        # two timed steps where one more step fits (recorded: warmup_timed);
        # where none does, the warm-up step is all it gets, inside its budget.
        windows, warmup_timed = [warm[-1]], True
        windows_n = 1 if warm_step <= left() * WINDOW_SHARE else 0
    dropped: list[dict[str, float]] = []
    while len(windows) < windows_n + warmup_timed:
        if dropped and (len(dropped) > windows_n or steps * warm_step > left() * WINDOW_SHARE):
            break  # no budget (or too many stolen windows) for a replacement
        w, share = time_window(step, sync, steps, clock, steal, ncpu)
        partial["step_s"].append(w / steps)
        if share is not None and share > STOLEN_SHARE:
            dropped.append({"step_s": w / steps, "steal_share": round(share, 4)})
        else:
            windows.append(w)
        if on_progress is not None:
            on_progress(partial)
    if not windows:  # every window stolen: keep them rather than lose the row (the record says so)
        windows = [d["step_s"] * steps for d in dropped]
    return summarize(compile_s, warm_step, steps, windows, warmup_timed, dropped)
