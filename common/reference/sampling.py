"""DP-SGD as it is trained: Poisson-sampled logical batches split into
fixed-shape physical batches (issue 28; docs/design.md §8). Framework-free.

A deployed DP-SGD step does not see a fixed batch: each of the N examples
joins the logical batch independently with probability q (what the epsilon
beside every row assumes), so its size is Binomial(N, q), around L = qN. A
compiled step needs fixed shapes, so the logical batch is cut into physical
batches of P examples, the last one padded with ``PAD`` indices whose
examples must contribute nothing (jax-privacy's ``split_and_pad_global_batch``
+ ``clipped_grad(is_padding_example=...)``), their clipped gradients summed,
and noise drawn once per logical step. Truncating a logical batch to at most
``cap`` examples bounds the number of physical batches but changes the
accounting (dp-accounting's ``TruncatedSubsampledGaussianDpEvent``, as
jax-privacy's ``DpsgdTrainingAccountant`` composes it).

JAX rows use jax-privacy's own sampler and split; this module is the same
procedure for the rows whose library has none (TF-Privacy, the study's
fastclip), and the accounting and checks every row shares.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

PAD = -1  # the index of a padding example (jax-privacy's convention)


def poisson_indices(n: int, q: float, rng: np.random.Generator, cap: int | None = None) -> np.ndarray:
    """One logical batch: every index of ``range(n)`` independently with
    probability ``q`` (in random order); with ``cap``, a uniformly random
    subset of ``cap`` of them when more were drawn (truncation)."""
    if n <= 0 or not 0 < q <= 1:
        raise ValueError(f"need n > 0 and 0 < q <= 1, got n={n}, q={q}")
    if cap is not None and cap < 0:
        raise ValueError(f"cap must be non-negative, got {cap}")
    idx = rng.permutation(np.flatnonzero(rng.random(n) < q))
    return idx if cap is None or idx.size <= cap else idx[:cap]


def split_padded(indices: np.ndarray, physical: int) -> list[np.ndarray]:
    """``indices`` as physical batches of exactly ``physical`` indices, the
    last one padded with ``PAD`` (an empty logical batch is one all-padding
    physical batch: a step still runs and adds its noise)."""
    if physical <= 0:
        raise ValueError(f"physical batch size must be positive, got {physical}")
    count = max(1, math.ceil(indices.size / physical))
    out = np.full(count * physical, PAD, dtype=np.int64)
    out[:indices.size] = indices
    return list(out.reshape(count, physical))


@dataclass(frozen=True)
class Plan:
    """A deployed DP-SGD configuration: N examples, sampling rate q (expected
    logical batch L = qN), physical batch P, optional truncation ``cap``."""

    dataset_size: int
    sampling_rate: float
    physical: int
    cap: int | None = None

    @property
    def logical(self) -> float:
        """L = qN, the expected logical batch size."""
        return self.sampling_rate * self.dataset_size

    def validate(self) -> "Plan":
        if self.dataset_size <= 0 or not 0 < self.sampling_rate <= 1:
            raise ValueError(f"need N > 0 and 0 < q <= 1, got N={self.dataset_size}, q={self.sampling_rate}")
        if self.physical <= 0:
            raise ValueError(f"physical batch size must be positive, got {self.physical}")
        if self.cap is not None and self.cap < self.physical:
            raise ValueError(f"cap {self.cap} is below the physical batch size {self.physical}")
        return self

    def logical_batches(self, steps: int, seed: int) -> list[np.ndarray]:
        """``steps`` logical batches of indices, seeded."""
        rng = np.random.default_rng(seed)
        return [poisson_indices(self.dataset_size, self.sampling_rate, rng, self.cap) for _ in range(steps)]


def padding_share(sizes: np.ndarray | list[int], physical: int) -> float:
    """Share of the physical slots that hold padding, over logical batches of ``sizes``."""
    sizes = np.asarray(sizes)
    slots = np.maximum(1, np.ceil(sizes / physical)) * physical
    return float(1.0 - sizes.sum() / slots.sum())


def binomial_fit_pvalue(sizes: np.ndarray | list[int], n: int, q: float, min_expected: float = 5.0) -> float:
    """Chi-square goodness-of-fit p-value of ``sizes`` against Binomial(n, q):
    the support cut into bins of at least ``min_expected`` expected counts
    (the tails pooled into the end bins, so that every expected count is at
    least ``min_expected``, the test's usual validity rule)."""
    from scipy import stats

    sizes = np.asarray(sizes)
    k = len(sizes)
    dist = stats.binom(n, q)
    lo, hi = int(dist.ppf(1e-12)), int(dist.isf(1e-12)) + 1
    edges = [lo]  # bin i holds sizes in [edges[i], edges[i+1])
    acc = 0.0
    for v in range(lo, hi):
        acc += k * dist.pmf(v)
        if acc >= min_expected:
            edges.append(v + 1)
            acc = 0.0
    if len(edges) < 3:
        raise ValueError(f"{k} batch sizes are too few for a goodness-of-fit test against Binomial({n}, {q})")
    edges[-1] = hi  # the remainder joins the last bin
    cuts = np.array(edges[1:-1])
    observed = np.bincount(np.searchsorted(cuts, sizes, side="right"), minlength=len(edges) - 1)
    cdf = dist.cdf(np.array(edges[1:-1]) - 1)
    probs = np.diff(np.concatenate([[0.0], cdf, [1.0]]))
    return float(stats.chisquare(observed, k * probs).pvalue)


def dp_event(plan: Plan, noise_multiplier: float, steps: int):
    """The run as a dp-accounting event: Poisson-sampled Gaussian, or its
    truncated form where the plan caps the logical batch."""
    import dp_accounting

    plan.validate()
    if plan.cap is None:
        step = dp_accounting.PoissonSampledDpEvent(plan.sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier))
    else:
        step = dp_accounting.TruncatedSubsampledGaussianDpEvent(
            dataset_size=plan.dataset_size, sampling_probability=plan.sampling_rate,
            truncated_batch_size=plan.cap, noise_multiplier=noise_multiplier)
    return dp_accounting.SelfComposedDpEvent(step, steps)


@functools.lru_cache(maxsize=None)
def epsilon(plan: Plan, noise_multiplier: float, steps: int, delta: float) -> float:
    """Epsilon at ``delta`` from dp-accounting's PLD accountant (the one that
    accounts truncation; pessimistic discretisation, an upper bound). Memoised:
    a pure function of its (hashable) arguments, ~2 s a call on 2 cores, and the
    runner asks it for every record of a deployed row (each round, each --resume
    check) with the same plan."""
    import dp_accounting

    acc = dp_accounting.pld.PLDAccountant()
    return float(acc.compose(dp_event(plan, noise_multiplier, steps)).get_epsilon(delta))
