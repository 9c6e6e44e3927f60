"""Paired, interleaved measurement (common/harness/pairing.py) on fake steps
that advance a fake clock: exact arithmetic where the clock is linear, no
sleeps, no framework."""
import math
import statistics

import pytest

from common.harness.config import Timing
from common.harness.pairing import REF_WINDOW_CAP, measure_paired, median_ratio, pair_ratios, plan_pairs
from common.harness.timing import STOLEN_SHARE

SUBJECT_S, REF_S = 1 / 16, 1 / 64  # exact in binary: the true ratio is 0.25
SUBJECT_COMPILE_S, REF_COMPILE_S = 0.5, 0.125
# 4 pairs; the subject's window is min_steps (4) x 1/16 = 0.25 s, the reference's is
# capped at REF_WINDOW_CAP x window_s = 1/16 s (4 steps): the two windows differ in
# length, so a subject result built from reference windows would show.
TIMING = Timing(warmup_steps=1, repeats=4, window_s=1 / 32, min_steps=4)


class Clock:
    """A fake clock only the fake steps advance. ``drift`` k: a step that
    takes ``s`` at time 0 takes ``s * (1 + k t)`` at time t (a machine slowing
    down linearly, alike for every step)."""

    def __init__(self, drift: float = 0.0) -> None:
        self.t = 0.0
        self.drift = drift

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s * (1 + self.drift * self.t)


class Arm:
    """One bench (subject or reference): ``step`` advances the clock (the first
    call by ``compile_s``), ``sync`` logs the arm's name in the shared ``log``."""

    def __init__(self, name: str, clock: Clock, compile_s: float, step_s: float, log: list) -> None:
        self.name, self.clock, self.compile_s, self.step_s, self.log = name, clock, compile_s, step_s, log
        self.calls = 0

    def step(self):
        self.clock.advance(self.compile_s if self.calls == 0 else self.step_s)
        self.calls += 1
        return self.calls

    def sync(self, out):
        self.log.append(self.name)
        return out


def setup(drift: float = 0.0, timing: Timing = TIMING, ref_fails: Exception | None = None):
    clock, log = Clock(drift), []
    subj = Arm("subj", clock, SUBJECT_COMPILE_S, SUBJECT_S, log)
    ref = Arm("ref", clock, REF_COMPILE_S, REF_S, log)

    def factory():
        log.append("factory")
        if ref_fails is not None:
            raise ref_fails
        return ref

    return clock, log, subj, ref, factory


def test_ratios_abba_order_memory_hook_and_subject_result():
    """Ratio = reference step / subject step (0.25 here, every pair); the windows
    alternate ABBA; the subject's memory is read before the reference exists; the
    first subject step is compile_s; the subject's result holds subject windows only."""
    clock, log, subj, ref, factory = setup()
    t, paired = measure_paired(subj.step, subj.sync, factory, TIMING, clock=clock,
                               before_ref=lambda: log.append("before_ref"), ref_desc={"impl": "standard"})
    assert paired["ratios"] == [0.25] * 4 and paired["error"] is None and paired["dropped"] == []
    assert (paired["pairs_asked"], paired["subject_steps"], paired["ref_steps"]) == (4, 4, 4)
    assert paired["ref"] == {"impl": "standard"} and paired["ref_compile_s"] == REF_COMPILE_S
    assert [p["first"] for p in paired["pairs"]] == ["ref", "subject", "ref", "subject"]
    # compile, warm-up, then the memory hook, then the reference is built (compile + estimate), then ABBA
    assert log[:6] == ["subj", "subj", "before_ref", "factory", "ref", "ref"]
    assert log[6:] == ["ref", "subj", "subj", "ref", "ref", "subj", "subj", "ref"]
    assert t.compile_s == SUBJECT_COMPILE_S and t.warmup_step_s == SUBJECT_S
    assert t.steps_per_window == 4 and t.window_s == [4 * SUBJECT_S] * 4  # not the reference's 4 x 1/64 s
    assert t.step_s_median == t.step_s_min == t.step_s_max == SUBJECT_S
    assert subj.calls == 1 + 1 + 4 * 4 and ref.calls == 2 + 4 * 4
    assert pair_ratios(paired) == [0.25] * 4 and median_ratio(paired) == 0.25


def naive_ratios(drift: float, pairs: int, s_steps: int, r_steps: int) -> list[float]:
    """The same windows as measure_paired's, timed all reference windows first,
    then all subject windows (what two separate processes amount to), on the
    same drifting clock: ratio of the i-th reference window to the i-th subject window."""
    clock, log, subj, ref, _ = setup(drift)
    for arm in (subj, subj, ref, ref):  # compile and warm-up / estimate, as measure_paired
        arm.step()

    def windows(arm: Arm, n: int) -> list[float]:
        out = []
        for _ in range(pairs):
            t0 = clock()
            for _ in range(n):
                arm.step()
            out.append((clock() - t0) / n)
        return out

    r = windows(ref, r_steps)
    s = windows(subj, s_steps)
    return [a / b for a, b in zip(r, s)]


def test_linear_drift_cancels_in_abba_but_biases_the_naive_order():
    """Every step slows down alike, by (1 + k t): ~45 % slower steps by the end
    of the run; at any instant the true ratio is 0.25. ABBA's median ratio stays
    within 0.5 % of it (a second-order residue); timing all reference windows
    before all subject windows, on the same clock, is off by more than 10 %.
    (An even number of pairs: with an odd one the median is a ref-first pair's
    ratio and keeps a first-order residue, ~2 % here.)"""
    timing = Timing(warmup_steps=1, repeats=6, window_s=1 / 32, min_steps=4)
    k = 0.15
    clock, _, subj, _, factory = setup(drift=k, timing=timing)
    _, paired = measure_paired(subj.step, subj.sync, factory, timing, clock=clock)
    assert len(paired["ratios"]) == 6
    assert 0.4 < k * clock() < 0.5  # the drift is large
    abba = median_ratio(paired)
    naive = statistics.median(naive_ratios(k, 6, paired["subject_steps"], paired["ref_steps"]))
    assert abba == pytest.approx(0.25, rel=5e-3)
    assert abs(naive / 0.25 - 1) > 0.10, naive
    assert abs(abba - 0.25) < abs(naive - 0.25) / 20
    # the pairs themselves do see the drift, in opposite directions by order
    firsts = {p["first"]: [] for p in paired["pairs"]}
    for p, r in zip(paired["pairs"], paired["ratios"]):
        firsts[p["first"]].append(r)
    assert max(firsts["ref"]) < 0.25 < min(firsts["subject"])


class Steal:
    """Cumulative stolen CPU seconds, read twice around each window: reading
    2w and 2w+1 bracket the w-th window measure_paired times. ``heavy``:
    {window index: CPU seconds stolen during it}."""

    def __init__(self, heavy: dict[int, float]) -> None:
        self.heavy, self.reads, self.total = heavy, 0, 0.0

    def __call__(self) -> float:
        w, after = divmod(self.reads, 2)
        self.reads += 1
        if after:
            self.total += self.heavy.get(w, 0.0)
        return self.total


def test_stolen_pair_is_dropped_recorded_and_replaced():
    """Pair 1 (subject first: windows 2 and 3) has its reference window
    (1/16 s on 2 CPUs) 30 % stolen: it is dropped with its share, one more pair
    runs, and the row still has the pairs it asked for."""
    clock, log, subj, ref, factory = setup()
    steal = Steal({3: 0.3 * (4 * REF_S) * 2})
    t, paired = measure_paired(subj.step, subj.sync, factory, TIMING, clock=clock, steal=steal, ncpu=2)
    assert len(paired["ratios"]) == paired["pairs_asked"] == 4 and len(paired["pairs"]) == 4
    assert len(paired["dropped"]) == 1
    d = paired["dropped"][0]
    assert d["first"] == "subject" and d["steal_share"] == pytest.approx(0.3) and "steal" in d["why"]
    assert all(p["steal_share"] == 0.0 for p in paired["pairs"])
    assert steal.reads == 2 * 2 * 5  # five pairs were timed
    assert paired["error"] is None and len(t.window_s) == 4  # the kept pairs' subject windows


def test_steal_below_the_threshold_keeps_the_pair():
    """A share at most STOLEN_SHARE is the machine's: nothing dropped (and the
    share is of all ``ncpu`` CPUs: the same stolen seconds on one CPU would drop it)."""
    stolen = 0.8 * STOLEN_SHARE * (4 * REF_S) * 2
    clock, _, subj, _, factory = setup()
    _, paired = measure_paired(subj.step, subj.sync, factory, TIMING, clock=clock, steal=Steal({3: stolen}),
                               ncpu=2)
    assert paired["dropped"] == [] and len(paired["ratios"]) == 4
    clock, _, subj, _, factory = setup()
    _, paired = measure_paired(subj.step, subj.sync, factory, TIMING, clock=clock, steal=Steal({3: stolen}),
                               ncpu=1)
    assert len(paired["dropped"]) == 1


def test_every_pair_stolen_falls_back_to_the_subject_alone():
    """At most as many replacement pairs as were asked; when every pair is
    stolen the row says so and the subject is still timed."""
    clock, _, subj, _, factory = setup()
    steal = Steal({w: 1.0 for w in range(100)})
    t, paired = measure_paired(subj.step, subj.sync, factory, TIMING, clock=clock, steal=steal)
    assert paired["ratios"] == [] and len(paired["dropped"]) == 2 * 4
    assert "every pair was dropped" in paired["error"]
    assert t.step_s_median == SUBJECT_S and len(t.window_s) == TIMING.repeats


def test_reference_that_cannot_be_built_leaves_the_subject_its_number():
    clock, log, subj, ref, factory = setup(ref_fails=RuntimeError("no standard for you"))
    t, paired = measure_paired(subj.step, subj.sync, factory, TIMING, clock=clock,
                               before_ref=lambda: log.append("before_ref"))
    assert "reference could not be built" in paired["error"] and "RuntimeError: no standard" in paired["error"]
    assert paired["ratios"] == [] and ref.calls == 0
    assert t.compile_s == SUBJECT_COMPILE_S and t.step_s_median == SUBJECT_S
    assert len(t.window_s) == TIMING.repeats and t.steps_per_window == 4
    assert log[:3] == ["subj", "subj", "before_ref"]


def test_budget_without_room_for_two_pairs_times_the_subject_alone():
    """After the subject's compile and warm-up (0.5625 s) 0.290625 s are left;
    the reference is started only where the subject's compile (its bound) and
    two pairs fit in 80 % of it, which they do not: no reference step runs, the
    error says budget, and the subject gets its timed steps alone, inside the budget."""
    clock, _, subj, ref, factory = setup()
    budget = SUBJECT_COMPILE_S + SUBJECT_S + REF_COMPILE_S + REF_S + 0.15
    t, paired = measure_paired(subj.step, subj.sync, factory, TIMING, budget_s=budget, clock=clock)
    assert paired["error"].startswith("budget") and paired["ratios"] == [] and "pairs_asked" not in paired
    assert ref.calls == 0
    assert sum(t.window_s) / SUBJECT_S >= 2 and t.step_s_median == SUBJECT_S
    assert clock() <= budget


def test_a_slow_reference_compile_never_costs_the_subject_its_number():
    """Subject: compile 1 s, steps 3 s; reference: compile 3 s, step 1 s; 10 s
    budget. ``timing.measure`` alone ends at 7 s with two timed steps (the
    warm-up as window one); paired, the reference must not be started (its
    build would push the row past its budget, a timeout that loses the row)."""
    clock, log = Clock(), []
    subj = Arm("subj", clock, 1.0, 3.0, log)
    ref = Arm("ref", clock, 3.0, 1.0, log)
    timing = Timing(warmup_steps=1, repeats=3, window_s=1.0, min_steps=2)
    t, paired = measure_paired(subj.step, subj.sync, lambda: ref, timing, budget_s=10, clock=clock)
    assert clock() <= 10 and paired["error"].startswith("budget") and ref.calls == 0
    assert t.warmup_timed and t.window_s == [3.0, 3.0]


def test_pairs_are_even_and_a_dropped_pair_is_replaced_in_its_own_order():
    """ABBA blocks need an even count (3 asked: 4 run); a stolen pair's
    replacement starts with the same arm, so kept pairs stay balanced."""
    clock, log, subj, ref, factory = setup(timing=Timing(warmup_steps=1, repeats=3, window_s=1 / 32, min_steps=4))
    stolen = {"n": 0}

    def steal():  # read before and after each window: heavy steal in the 2nd pair's first window only
        stolen["n"] += 1
        return 0.0 if stolen["n"] <= 5 else 1e3

    t, paired = measure_paired(subj.step, subj.sync, factory, Timing(warmup_steps=1, repeats=3, window_s=1 / 32,
                               min_steps=4), clock=clock, steal=steal, ncpu=2)
    firsts = [p["first"] for p in paired["pairs"]]
    assert len(paired["ratios"]) == 4 and firsts.count("ref") == firsts.count("subject") == 2
    assert [d["first"] for d in paired["dropped"]] == ["subject"]


def test_plan_pairs_caps_the_reference_window_and_shrinks_to_the_budget():
    tm = Timing(warmup_steps=1, repeats=5, window_s=1.0, min_steps=2)
    p = plan_pairs(tm, 0.01, 0.01, math.inf)
    assert (p.pairs, p.subject_steps, p.ref_steps) == (6, 100, 100)  # 5 asked: an even count
    # a subject 150x slower than its reference: its window is 2 x 1.5 s, the reference's capped at 2 s
    p = plan_pairs(tm, 1.5, 0.01, math.inf)
    assert (p.subject_steps, p.ref_steps) == (2, round(REF_WINDOW_CAP * tm.window_s / 0.01))
    # little budget: fewer steps per window, then fewer pairs (down to 2), then None
    p = plan_pairs(tm, 1.0, 1.0, 10.0)  # room 8 s: 5 pairs of one-step windows need 10 s, 4 fit
    assert (p.pairs, p.subject_steps, p.ref_steps) == (4, 1, 1)
    assert plan_pairs(tm, 1.0, 1.0, 4.9) is None  # room 3.92 s < 2 pairs x 2 s


def test_pair_ratios_of_missing_or_empty_paired():
    assert pair_ratios(None) == [] and pair_ratios({"ratios": []}) == [] and median_ratio({"error": "x"}) is None
    assert median_ratio({"ratios": [0.2, 0.4, 0.9]}) == 0.4
