"""Paired measurement: a DP row's windows alternated with its reference's in one process.

A DP row's "% of standard" is a ratio of two throughputs. Measured minutes
apart in two processes, the machine's drift (up to 2x within a day on the
study's VMs, steal from other guests) lands in the ratio as if it were DP's
cost. Here the worker that times a DP row (the *subject*) also builds its
reference (the framework's standard row of the same cell; for a direct-use
row, the study row it checks) and times the two in alternating windows,
ABBA order (ref, subject | subject, ref | ref, subject ...), so that drift
hits both arms of every pair alike and a linear drift cancels over two pairs.
Each pair gives one ratio (ref step time / subject step time = subject
throughput / reference throughput, same batch); the report takes the median
over pairs and rounds and a bootstrap interval (common/report/intervals.py).

Contamination: the hypervisor's steal is read around every window; a pair
with a window timed while more than ``STOLEN_SHARE`` of the CPUs were stolen
is dropped and replaced by one more pair while the budget allows (at most as
many extra pairs as were asked for). The record keeps every dropped pair
with its steal share.

Memory: the subject's peak is read (``before_ref``) after its warm-up and
before the reference is built, so the reference's buffers never count in it.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Callable

from common.harness.config import Timing
from common.harness.timing import (MIN_TIMED_STEPS, STOLEN_SHARE, WINDOW_SHARE, TimingResult, first_steps,
                                   summarize, time_window, timed_windows)
# The reference's window is as long as the subject's (equal exposure to drift),
# but never longer than this many protocol windows: a subject at 3 % of its
# standard needs no 60-step reference window to be located.
REF_WINDOW_CAP = 2.0


@dataclass
class PairPlan:
    pairs: int
    subject_steps: int
    ref_steps: int


def plan_pairs(timing: Timing, subject_s: float, ref_s: float, left_s: float) -> PairPlan | None:
    """``timing.repeats`` pairs of windows of about ``timing.window_s`` (the
    reference's as long as the subject's, capped) when they fit in what is left
    of the budget; else fewer steps per window, then fewer pairs (down to
    ``MIN_TIMED_STEPS``); None when not even that fits."""
    s_steps = max(timing.min_steps, int(timing.window_s / subject_s))
    ref_target = min(s_steps * subject_s, REF_WINDOW_CAP * timing.window_s)
    r_steps = max(timing.min_steps, int(round(ref_target / ref_s)))
    # An even count: a linear drift cancels over each ABBA block of two pairs.
    pairs = max(MIN_TIMED_STEPS, timing.repeats + timing.repeats % 2)
    room = left_s * WINDOW_SHARE if math.isfinite(left_s) else math.inf

    def cost(p: int, s: int, r: int) -> float:
        return p * (s * subject_s + r * ref_s)

    while cost(pairs, s_steps, r_steps) > room and (s_steps > 1 or r_steps > 1):
        s_steps, r_steps = max(1, s_steps // 2), max(1, r_steps // 2)
    while cost(pairs, s_steps, r_steps) > room and pairs > MIN_TIMED_STEPS:
        pairs -= 2 if pairs - 2 >= MIN_TIMED_STEPS else 1
    if cost(pairs, s_steps, r_steps) > room:
        return None
    return PairPlan(pairs, s_steps, r_steps)


def pair_ratios(paired: dict[str, Any] | None) -> list[float]:
    """Per-pair ratios (subject throughput / reference throughput) of a record's
    ``paired`` field, dropped pairs excluded; [] where there is none."""
    if not paired:
        return []
    return [float(r) for r in paired.get("ratios") or []]


def median_ratio(paired: dict[str, Any] | None) -> float | None:
    rs = pair_ratios(paired)
    return statistics.median(rs) if rs else None


def measure_paired(step: Callable[[], Any], sync: Callable[[Any], Any], ref_factory: Callable[[], Any],
                   timing: Timing, budget_s: float = math.inf, *, clock: Callable[[], float],
                   steal: Callable[[], float | None] = lambda: None, ncpu: int = 1,
                   on_compiled: Callable[[], None] | None = None,
                   before_ref: Callable[[], None] | None = None,
                   on_progress: Callable[[dict[str, Any]], None] | None = None,
                   ref_desc: dict[str, Any] | None = None,
                   subject_work: Callable[[], float] | None = None,
                   ref_work: float = 1.0) -> tuple[TimingResult, dict[str, Any]]:
    """Time the subject ``step`` in pairs with the reference built by ``ref_factory()``
    (a ``Bench``-like object with ``step`` and ``sync``).

    Where a subject step does a varying amount of work (a deployed DP-SGD
    step's real examples, common/harness/deployed.py), ``subject_work()``
    reads the subject's cumulative work and ``ref_work`` is one reference
    step's: each pair's ratio is then work per second over work per second,
    and the pair keeps its ``subject_work``. Without it both arms do the same
    work per step and the ratio is of step times.

    Returns the subject's TimingResult (its compile, warm-up and the subject
    windows of the kept pairs) and the record's ``paired`` field. Where the
    reference cannot be built or no two pairs fit the budget, the subject is
    timed alone (``paired["error"]`` says why) so that the row keeps its number."""
    # At least one warm-up step: the pairs are planned from it.
    compile_s, warm, partial, left = first_steps(step, sync, max(1, timing.warmup_steps), budget_s, clock,
                                                 on_compiled, on_progress)
    subject_s = max(statistics.median(warm), 1e-9)

    def alone() -> TimingResult:
        """No pairs: the subject timed as ``timing.measure`` would with what is left,
        so that the row keeps its number (its steal is the record's cpu_steal_share)."""
        return timed_windows(step, sync, timing, compile_s, warm, partial, left, clock, on_progress)

    if before_ref is not None:
        before_ref()
    paired: dict[str, Any] = {"ref": ref_desc, "ratios": [], "pairs": [], "dropped": [], "error": None}
    # The reference's build and compile are not known in advance: it is started only where
    # the subject's first step (an upper bound on a compile of the cheaper standard step)
    # and two pairs of one-step windows fit, so that the subject keeps its own number.
    need = compile_s + 2 * 2 * subject_s
    if need > left() * WINDOW_SHARE:
        paired["error"] = f"budget: {left():.1f} s left, the reference and two pairs need about {need / WINDOW_SHARE:.1f} s"
        return alone(), paired
    try:
        ref = ref_factory()
        t0 = clock()
        ref.sync(ref.step())
        paired["ref_compile_s"] = clock() - t0
        t0 = clock()
        ref.sync(ref.step())
        ref_s = max(clock() - t0, 1e-9)
    except Exception as exc:  # noqa: BLE001 - the subject's own number stands
        paired["error"] = f"reference could not be built or stepped: {type(exc).__name__}: {exc}"[:500]
        return alone(), paired
    plan = plan_pairs(timing, subject_s, ref_s, left())
    if plan is None:
        paired["error"] = (f"budget: {left():.1f} s left, two pairs of one-step windows need "
                           f"{2 * (subject_s + ref_s) / WINDOW_SHARE:.1f} s")
        return alone(), paired
    paired.update(subject_steps=plan.subject_steps, ref_steps=plan.ref_steps, pairs_asked=plan.pairs)

    kept_subject: list[float] = []
    pair_cost = plan.subject_steps * subject_s + plan.ref_steps * ref_s
    # ABBA: every other pair starts with the subject; a dropped pair is replaced by one
    # in its own order, so the kept pairs stay balanced.
    orders = ["ref" if k % 2 == 0 else "subject" for k in range(plan.pairs)]
    extra_left = plan.pairs  # replacements for dropped pairs
    i = 0
    while i < len(orders):
        if i >= plan.pairs and (extra_left <= 0 or pair_cost > left() * WINDOW_SHARE):
            break
        if i >= plan.pairs:
            extra_left -= 1
        arms = [("ref", ref.step, ref.sync, plan.ref_steps), ("subject", step, sync, plan.subject_steps)]
        if orders[i] == "subject":
            arms.reverse()
        got: dict[str, tuple[float, float | None]] = {}
        done = 0.0
        for name, fn, sync_fn, n in arms:
            w0 = subject_work() if subject_work is not None and name == "subject" else 0.0
            got[name] = time_window(fn, sync_fn, n, clock, steal, ncpu)
            if subject_work is not None and name == "subject":
                done = subject_work() - w0
        s_step = got["subject"][0] / plan.subject_steps
        r_step = got["ref"][0] / plan.ref_steps
        shares = [s for _, s in got.values() if s is not None]
        worst = max(shares) if shares else None
        entry = {"subject_step_s": s_step, "ref_step_s": r_step, "first": arms[0][0],
                 "steal_share": None if worst is None else round(worst, 4)}
        # Work per step of each arm: equal (1) unless the subject's varies.
        scale = 1.0
        if subject_work is not None:
            entry.update(subject_work=done, subject_steps=plan.subject_steps)
            scale = done / plan.subject_steps / ref_work
        if worst is not None and worst > STOLEN_SHARE:
            paired["dropped"].append(dict(entry, why=f"steal {worst:.0%} > {STOLEN_SHARE:.0%} of the CPUs"))
            orders.append(orders[i])
        else:
            paired["pairs"].append(entry)
            paired["ratios"].append(r_step / s_step * scale)
            kept_subject.append(got["subject"][0])
        partial["step_s"].append(s_step)
        if on_progress is not None:
            on_progress(partial)
        i += 1
    if not kept_subject:
        paired["error"] = f"every pair was dropped ({len(paired['dropped'])}): steal above {STOLEN_SHARE:.0%}"
        return alone(), paired
    return summarize(compile_s, subject_s, plan.subject_steps, kept_subject), paired
