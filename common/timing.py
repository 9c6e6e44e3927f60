"""The one timing protocol (DESIGN.md §4) every adapter's step goes through.

``measure(step, sync)``: the first step (with its sync) is ``compile_s``;
warm-up steps are run untimed but estimate the step time; then R windows of S
steps, S chosen so a window lasts about ``window_s`` (>= ``min_steps``) and
shrunk so the windows fit the remaining budget. Each window ends by
synchronising on the real output of its last step.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

from common.config import Timing


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _quantile(xs: list[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default), stdlib only."""
    s = sorted(xs)
    pos = (len(s) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarize(compile_s: float, warmup_step_s: float, steps: int, windows: list[float]) -> TimingResult:
    per_step = [w / steps for w in windows]
    mean = statistics.fmean(per_step)
    cv = statistics.pstdev(per_step) / mean if mean > 0 else 0.0
    return TimingResult(compile_s, warmup_step_s, steps, windows, statistics.median(per_step),
                        min(per_step), max(per_step), _quantile(per_step, 0.1), _quantile(per_step, 0.9), cv)


def measure(step: Callable[[], Any], sync: Callable[[Any], Any], timing: Timing,
            budget_s: float = math.inf, clock: Callable[[], float] = time.perf_counter,
            on_compiled: Callable[[], None] | None = None) -> TimingResult:
    """Time ``step`` under the protocol; ``sync(out)`` must block on ``out``.
    ``on_compiled()`` runs after the first step, outside every timed span."""
    start = clock()
    sync(step())
    compile_s = clock() - start
    if on_compiled is not None:
        on_compiled()
        start = clock() - compile_s  # the budget still counts the first step

    t0 = clock()
    out = None
    for _ in range(timing.warmup_steps):
        out = step()
    if out is not None:
        sync(out)
    n_warm = timing.warmup_steps
    if n_warm == 0:  # still need an estimate of the steady step time
        t0 = clock()
        sync(step())
        n_warm = 1
    warm_step = max((clock() - t0) / n_warm, 1e-9)

    # Leave 20 % of what is left of the budget as margin for teardown.
    left = (budget_s - (clock() - start)) * 0.8
    window = min(timing.window_s, left / timing.repeats) if math.isfinite(left) else timing.window_s
    steps = max(timing.min_steps, int(window / warm_step))

    windows: list[float] = []
    for _ in range(timing.repeats):
        w0 = clock()
        for _ in range(steps):
            out = step()
        sync(out)
        windows.append(clock() - w0)
    return summarize(compile_s, warm_step, steps, windows)
