"""Medians with two-level bootstrap intervals (common/report/intervals.py)."""
import numpy as np
import pytest

from common.report.intervals import WIDE_REL, Interval, hierarchical, ratio_interval, throughput_interval


def test_constant_values_give_a_point_interval_not_wide():
    iv = hierarchical([[0.8] * 8] * 3)
    assert iv.lo == iv.median == iv.hi == 0.8
    assert not iv.wide and iv.reason is None and (iv.rounds, iv.n) == (3, 24)


def test_rounds_that_disagree_give_an_interval_spanning_both_marked_wide():
    """Each round is tight, but the two rounds (fresh processes) disagree: the
    interval must reach both round medians (resampling only the pairs inside
    the rounds would give a point at 0.6) and say that the rounds disagree."""
    iv = hierarchical([[0.5] * 8, [0.7] * 8])
    assert iv.median == pytest.approx(0.6)
    assert iv.lo == pytest.approx(0.5) and iv.hi == pytest.approx(0.7)
    assert iv.wide and "rounds disagree" in iv.reason and "2 rounds" in iv.reason
    assert (iv.rounds, iv.n) == (2, 16)


def test_one_round_with_spread_is_wide_because_it_is_one_round():
    iv = hierarchical([list(np.linspace(0.5, 1.0, 8))])
    assert iv.rounds == 1 and iv.lo < iv.median < iv.hi
    assert (iv.hi - iv.lo) / 2 > WIDE_REL * iv.median
    assert iv.wide and iv.reason.startswith("one round") and "8 values" in iv.reason


def test_spread_within_agreeing_rounds_is_wide_for_the_spread():
    """Rounds with equal medians but a wide spread each: wide, not for disagreement."""
    vals = [0.4, 0.5, 0.6, 0.7, 0.8]
    iv = hierarchical([vals, vals[::-1], vals])
    assert iv.wide and iv.reason.startswith("values spread")


def test_same_seed_same_interval_other_seed_other_draws():
    """A report rendered twice from the same records is identical: the
    bootstrap is seeded (and the seed is what makes it so: another one draws otherwise)."""
    rng = np.random.default_rng(7)
    groups = [list(rng.normal(1.0, 0.1, 8)) for _ in range(3)]
    assert hierarchical(groups) == hierarchical(groups)
    assert hierarchical(groups, n_boot=100) == hierarchical(groups, n_boot=100)
    draws = {(iv.lo, iv.hi) for iv in (hierarchical(groups, n_boot=100, seed=s) for s in range(5))}
    assert len(draws) > 1


def test_no_values_gives_none_and_empty_rounds_do_not_count():
    assert hierarchical([]) is None and hierarchical([[], []]) is None
    iv = hierarchical([[], [0.5] * 4, []])
    assert (iv.rounds, iv.n, iv.median) == (1, 4, 0.5)


def test_coverage_of_the_true_median():
    """50 simulated studies of 3 rounds x 8 values from N(1, 0.1) (true median
    1.0): the 95 % interval contains it in at least 80 % of them."""
    rng = np.random.default_rng(2024)
    hits = 0
    for _ in range(50):
        groups = [rng.normal(1.0, 0.1, 8) for _ in range(3)]
        iv = hierarchical(groups, n_boot=300)
        assert iv.lo <= iv.median <= iv.hi
        hits += iv.lo <= 1.0 <= iv.hi
    assert hits >= 40, hits


def test_inverted_swaps_bounds():
    """The interval of 1/x: 1/hi becomes the lower bound, 1/lo the upper."""
    iv = Interval(0.5, 0.4, 0.8, rounds=3, n=12, reason="r")
    inv = iv.inverted()
    assert (inv.median, inv.lo, inv.hi) == (2.0, 1.25, 2.5)
    assert inv.lo <= inv.median <= inv.hi and (inv.rounds, inv.n, inv.reason) == (3, 12, "r")
    assert iv.scaled(100) == Interval(50.0, 40.0, 80.0, 3, 12, "r")


def test_overlaps():
    a = Interval(0.5, 0.4, 0.6, 1, 4)
    assert a.overlaps(Interval(0.7, 0.6, 0.8, 1, 4)) and Interval(0.7, 0.6, 0.8, 1, 4).overlaps(a)
    assert not a.overlaps(Interval(0.7, 0.61, 0.8, 1, 4)) and not Interval(0.7, 0.61, 0.8, 1, 4).overlaps(a)
    assert a.overlaps(Interval(0.5, 0.45, 0.55, 1, 4))  # one inside the other


def test_ratio_interval_uses_ok_records_with_pairs_only():
    """One group per ok record with ratios; a timeout's pairs, a record without
    ``paired``, or with an error and no ratios, do not count."""
    recs = [
        {"status": "ok", "paired": {"ratios": [0.5, 0.5, 0.5, 0.5]}},
        {"status": "ok", "paired": {"ratios": [0.5, 0.5, 0.5]}},
        {"status": "timeout", "paired": {"ratios": [0.9, 0.9, 0.9]}},
        {"status": "ok", "paired": None},
        {"status": "ok"},
        {"status": "ok", "paired": {"ratios": [], "error": "reference could not be built"}},
    ]
    iv = ratio_interval(recs)
    assert (iv.median, iv.lo, iv.hi, iv.rounds, iv.n) == (0.5, 0.5, 0.5, 2, 7)
    assert ratio_interval(recs[2:]) is None


def test_throughput_interval_from_windows():
    """Samples/s of each window (global batch x steps / window seconds), one group per ok record."""
    rec = {"status": "ok", "global_batch_size": 8, "steps_per_window": 2, "window_s": [0.5, 0.5, 0.5]}
    iv = throughput_interval([rec, dict(rec), {"status": "error", "window_s": [1.0]}])
    assert (iv.median, iv.lo, iv.hi, iv.rounds, iv.n) == (32.0, 32.0, 32.0, 2, 6)


def test_vectorised_resample_medians_are_the_medians_of_the_same_draws():
    """``boot_medians`` draws every resample at once and takes each row's median
    through a sort with +inf padding; here the same draws are replayed one
    resample at a time and their ``np.median`` taken: the two must be equal,
    rows of odd and even pooled length alike (groups of 3, 4 and 6 values)."""
    from common.report.intervals import boot_medians
    groups = [np.array([0.3, 0.9, 0.5]), np.array([1.0, 0.2, 0.7, 0.4]), np.linspace(0.1, 0.6, 6)]
    n_boot, k, width = 50, 3, 6
    got = boot_medians(groups, n_boot, np.random.default_rng(7))
    rng = np.random.default_rng(7)
    picks, u = rng.integers(0, k, size=(n_boot, k)), rng.random((n_boot, k, width))
    want = [np.median(np.concatenate([groups[i][(u[b, j, :len(groups[i])] * len(groups[i])).astype(int)]
                                      for j, i in enumerate(picks[b])])) for b in range(n_boot)]
    assert np.array_equal(got, np.array(want))
    assert {sum(len(groups[i]) for i in picks[b]) % 2 for b in range(n_boot)} == {0, 1}  # odd and even rows
