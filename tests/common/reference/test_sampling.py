"""Poisson sampling, padding and the accounting of sampled plans (common/reference/sampling.py)."""
from __future__ import annotations

import numpy as np
import pytest

from common.reference import sampling as S

N, Q = 50_000, 256 / 50_000


def test_sizes_follow_binomial():
    """400 logical batches of a CIFAR-size plan: the chi-square fit against
    Binomial(N, q) is not rejected at 1e-3 (a fixed seed: the test is
    deterministic; a correct sampler fails it with probability 1e-3 per seed)."""
    sizes = [b.size for b in S.Plan(N, Q, 64).logical_batches(400, seed=0)]
    assert S.binomial_fit_pvalue(sizes, N, Q) > 1e-3
    assert abs(np.mean(sizes) - N * Q) < 4 * np.sqrt(N * Q * (1 - Q) / 400)


@pytest.mark.parametrize("wrong", ["fixed", "rate 5 % high", "shuffled epoch"])
def test_the_fit_rejects_what_is_not_poisson(wrong):
    rng = np.random.default_rng(1)
    if wrong == "fixed":
        sizes = np.full(400, 256)
    elif wrong == "rate 5 % high":
        sizes = rng.binomial(N, Q * 1.05, 400)
    else:  # sampling without replacement in equal parts: sizes barely vary
        sizes = rng.integers(255, 258, 400)
    assert S.binomial_fit_pvalue(sizes, N, Q) < 1e-6


def test_indices_are_distinct_and_in_range_and_truncation_caps():
    rng = np.random.default_rng(0)
    idx = S.poisson_indices(1000, 0.5, rng)
    assert len(set(idx.tolist())) == idx.size and idx.min() >= 0 and idx.max() < 1000
    capped = S.poisson_indices(1000, 0.5, rng, cap=100)
    assert capped.size == 100 and len(set(capped.tolist())) == 100
    assert S.poisson_indices(10, 0.01, np.random.default_rng(3)).size == 0  # an empty batch is a batch


def test_split_padded_keeps_every_index_once_and_pads_the_end():
    idx = np.arange(10)
    parts = S.split_padded(idx, 4)
    assert [p.tolist() for p in parts] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, S.PAD, S.PAD]]
    assert [p.tolist() for p in S.split_padded(np.arange(0), 4)] == [[S.PAD] * 4]
    assert len(S.split_padded(np.arange(8), 4)) == 2  # no all-padding batch after a full one
    with pytest.raises(ValueError):
        S.split_padded(idx, 0)


def test_padding_share():
    assert S.padding_share([10], 4) == pytest.approx(2 / 12)
    assert S.padding_share([8, 0], 4) == pytest.approx(4 / 12)
    assert S.padding_share([256] * 3, 64) == 0.0


def test_epsilon_untruncated_is_the_poisson_accounting_and_a_far_cap_changes_little():
    plan = S.Plan(N, Q, 64)
    eps = S.epsilon(plan, 1.0, 1000, 1e-5)
    import dp_accounting
    want = dp_accounting.pld.PLDAccountant().compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(Q, dp_accounting.GaussianDpEvent(1.0)), 1000)).get_epsilon(1e-5)
    assert eps == pytest.approx(want)
    far = S.epsilon(S.Plan(N, Q, 64, cap=512), 1.0, 1000, 1e-5)  # 512 is 16 sd above L = 256
    assert far == pytest.approx(eps, rel=0.02)
    tight = S.epsilon(S.Plan(N, Q, 64, cap=256), 1.0, 1000, 1e-5)  # half the batches truncated
    assert tight != pytest.approx(eps, rel=0.02)


def test_plan_refuses_bad_input():
    for bad in (S.Plan(0, Q, 64), S.Plan(N, 0.0, 64), S.Plan(N, Q, 0), S.Plan(N, Q, 64, cap=32)):
        with pytest.raises(ValueError):
            bad.validate()
