"""DP-SGD as it is trained in JAX (frameworks/jax/deployed.py, issue 28).

Small model, N = 200, L = 14, P = 4, learning rate L (so that with noise 0 a
step moves the parameters by minus the clipped sum itself: no float32
cancellation against the weights), clip norm the median per-example norm of
the batch (half clipped, half not).

Tolerances: clipped sums against the float64 reference as the parity tests
(test_jax_privacy_parity, test_fastclip: measured <= 1.5e-6 in float32; 1e-5).
The batches are checked free of max-pool near-ties (tests/jax/ties.py): seed 1
of the dataset, whose first logical batch (17 examples, 5 physical batches of
4) and the hand-picked batch below have gaps >= 2.2e-6 > MIN_POOL_GAP.

Noise: (noisy step - noise-free step) * L / lr is the noise added once, whose
variance over the small model's 1.07M coordinates estimates (sigma C)^2 to a
relative standard error sqrt(2/n) = 0.14 %; 2 % (14 SE) tells one draw (ratio
1) from one per physical batch (ratio 5 here) at once, as test_jax_data_parallel.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import pytest

jax = pytest.importorskip("jax")

from common.harness.config import Timing  # noqa: E402
from common.harness.deployed import COUNTERS, DeployedConfig, measure  # noqa: E402
from common.reference import float64 as R  # noqa: E402
from common.reference.exchange import init_weights, make_batch  # noqa: E402
from common.reference.sampling import binomial_fit_pvalue  # noqa: E402
from common.reference.spec import get_model  # noqa: E402
from frameworks.jax import ADAPTER, deployed  # noqa: E402
from frameworks.jax.models import params_to_exchange  # noqa: E402
from tests.jax.ties import MIN_POOL_GAP, min_pool_gap  # noqa: E402

pytestmark = pytest.mark.jax

TOL = 1e-5
NOISE_TOL = 0.02
N, L, P, SEED = 200, 14, 4, 1
SPEC = get_model("small")
PADDED = ("jax_privacy/pad", "jax_privacy/truncate", "fastclip/pad")
ALL = PADDED + ("jax_privacy/recompile",)
# Six real examples (none is example 0, which padding slots read): [a b c d] [e f pad pad].
HAND = np.array([5, 9, 17, 33, 41, 2], dtype=np.int32)


@functools.lru_cache(maxsize=None)
def data():
    w = init_weights(SPEC, SEED)
    x, y = make_batch(SPEC, N, SEED)
    return w, x, y


@functools.lru_cache(maxsize=None)
def median_clip(key: tuple[int, ...]) -> float:
    w, x, y = data()
    idx = np.array(key)
    return float(np.median(R.per_example_norms(R.per_example_grads(SPEC, w, x[idx], y[idx]))))


def config(row: str, clip: float = 1.0, sigma: float = 0.0, **kw) -> DeployedConfig:
    impl, strategy = row.split("/")
    return DeployedConfig("jax", impl, strategy, model="small", dataset_size=N, logical_batch=L, physical_batch=P,
                          seed=SEED, clip_norm=clip, noise_multiplier=sigma, learning_rate=float(L), **kw).validate()


def first_batch() -> np.ndarray:
    return deployed.Sampler(config("jax_privacy/pad"))()


def reference(idx: np.ndarray, clip: float) -> dict[str, np.ndarray]:
    w, x, y = data()
    assert min_pool_gap(SPEC, w, x[idx]) > MIN_POOL_GAP  # no max-pool near-tie among them
    return R.clipped_sum(SPEC, w, x[idx], y[idx], clip)


def moved(bench, steps: int = 1) -> dict[str, np.ndarray]:
    """-(p_after - p0) * L / lr after ``steps`` steps, float64: the clipped sum (+ noise) / 1."""
    w0 = data()[0]
    for _ in range(steps):
        p = bench.sync(bench.step())
    p1 = params_to_exchange(p)
    return {k: -(p1[k].astype(np.float64) - w0[k]) for k in w0}


@functools.lru_cache(maxsize=None)
def sampled_step(row: str, sigma: float) -> tuple[dict[str, np.ndarray], dict[str, int], list[int]]:
    """One logical step of ``row`` on jax-privacy's first sampled batch."""
    bench = deployed.build(config(row, median_clip(tuple(first_batch())), sigma))
    got = moved(bench)
    return got, bench.counters(), bench.sizes()


@pytest.mark.parametrize("row", PADDED)
def test_padding_contributes_nothing(row):
    """A batch of 6 is [4 real] [2 real, 2 padding]; the padding slots read
    example 0, so any leak adds its clipped gradient (norm C). Then an empty
    logical batch: one all-padding physical batch, parameters unchanged."""
    clip = median_clip(tuple(HAND))
    batches = iter([HAND, np.array([], np.int32)])
    bench = deployed.build(config(row, clip), batches=lambda: next(batches))
    want = reference(HAND, clip)
    leak = reference(np.append(HAND, 0), clip)
    assert R.max_rel_error(leak, want) > 100 * TOL  # a leak would be seen
    got = moved(bench)
    assert R.max_rel_error(got, want) < TOL
    c = bench.counters()
    assert (c["physical_steps"], c["real_examples"], c["padded_examples"]) == (2, 6, 2)
    again = moved(bench)
    assert all(np.array_equal(again[k], got[k]) for k in got)  # nothing but padding: no move (noise 0)
    c = bench.counters()
    assert (c["physical_steps"], c["real_examples"], c["padded_examples"], c["logical_steps"]) == (3, 6, 6, 2)


@pytest.mark.parametrize("row", ALL)
def test_accumulation_is_one_big_step(row):
    """One step over jax-privacy's first batch (17 examples: 5 physical
    batches of 4, 3 padding slots; recompile: one of 17) moves the
    parameters by -lr * (float64 clipped sum of those 17) / L."""
    idx = first_batch()
    got, c, sizes = sampled_step(row, 0.0)
    assert sizes == [idx.size] and math.ceil(idx.size / P) >= 3
    want_physical = 1 if row.endswith("recompile") else math.ceil(idx.size / P)
    assert c["physical_steps"] == want_physical and c["real_examples"] == idx.size
    assert R.max_rel_error(got, reference(idx, median_clip(tuple(idx)))) < TOL


@pytest.mark.parametrize("row", ["jax_privacy/pad", "fastclip/pad"])
def test_noise_is_drawn_once_per_logical_step(row):
    sigma = 1.0
    clip = median_clip(tuple(first_batch()))
    clean, _, _ = sampled_step(row, 0.0)
    noisy, c, _ = sampled_step(row, sigma)
    assert c["physical_steps"] >= 3 and c["noise_draws"] == 1
    noise = np.concatenate([(noisy[k] - clean[k]).ravel() for k in clean])
    ratio = noise.var() / (sigma * clip) ** 2
    assert abs(ratio - 1.0) < NOISE_TOL, ratio


def run_steps(row: str, steps: int, sigma: float = 1.0):
    # The counters do not depend on the clip norm; this is the one sampled_step's rows use, so that
    # their ``accumulate`` (the per-example work; the clip norm is a constant of it) is compiled once
    # per session for both (conftest.py's compilation cache).
    bench = deployed.build(config(row, median_clip(tuple(first_batch())), sigma))
    bench.sync(bench.step())
    after_first = bench.counters()
    for _ in range(steps - 1):
        res = bench.step()
    bench.sync(res)
    return bench, after_first, bench.counters()


@pytest.mark.parametrize("row", PADDED)
def test_counters_one_shape(row):
    bench, first, c = run_steps(row, 5)
    sizes = bench.sizes()
    assert set(c) == set(COUNTERS) and len(sizes) == 5
    assert c["logical_steps"] == c["noise_draws"] == 5
    assert c["real_examples"] == sum(sizes)
    assert c["physical_steps"] == sum(max(1, math.ceil(s / P)) for s in sizes)
    assert c["padded_examples"] == c["physical_steps"] * P - sum(sizes)
    assert c["compiles"] == first["compiles"] == 2  # accumulate + finish, once each


def test_counters_recompile_per_size():
    bench, first, c = run_steps("jax_privacy/recompile", 2)  # sizes 17, 11 at seed 1
    sizes = bench.sizes()
    distinct = {s for s in sizes if s}
    assert len(distinct) >= 2  # the test can see growth
    assert first["compiles"] == 2
    assert c["compiles"] == 1 + len(distinct)  # finish once, accumulate once per size
    assert c["logical_steps"] == c["noise_draws"] == 2
    assert c["physical_steps"] == sum(1 for s in sizes if s) and c["padded_examples"] == 0
    assert c["real_examples"] == sum(sizes)


def test_sampler_is_jax_privacys_poisson_across_passes():
    """Seeded; a new pass (ceil(N/L) = 15 batches) continues the generator, so
    passes differ; 600 sizes fit Binomial(N, q); truncate sets the cap."""
    cfg = config("jax_privacy/pad")
    s1, s2 = deployed.Sampler(cfg), deployed.Sampler(cfg)
    a = [s1() for _ in range(600)]
    assert all(np.array_equal(u, s2()) for u in a[:20])  # seeded by cfg.seed
    sizes = [u.size for u in a]
    assert sizes[:15] != sizes[15:30]
    assert all(u.dtype == np.int32 and len(set(u.tolist())) == u.size and (u >= 0).all() and (u < N).all() for u in a)
    assert binomial_fit_pvalue(sizes, N, cfg.sampling_rate) > 1e-3
    assert deployed.Sampler(cfg).strategy.truncated_batch_size is None
    tr = config("jax_privacy/truncate")
    assert deployed.Sampler(tr).strategy.truncated_batch_size == tr.cap == 24


def test_measure_smoke():
    # The budget is a cap (the pairs end after ``repeats``); 20 s ran out under load (the fixed
    # and standard steps' compiles on a 2-core machine shared with other work), leaving no pair.
    cfg = config("jax_privacy/pad", median_clip(tuple(first_batch())), 1.0, cycle=2, budget_s=120.0,  # run_steps'
                 timing=Timing(warmup_steps=1, repeats=2, window_s=0.05, min_steps=1))
    out = measure(cfg, deployed.build, ADAPTER.build)
    assert out["real_examples_per_s"] > 0
    # paired with the fixed DP step and with standard training at B = P
    assert out["paired"]["ratios"] and out["paired_standard"]["ratios"] and out["standard_examples_per_s"] > 0
    assert out["noise_draws_per_logical"] == 1
    assert out["first_cycle"]["noise_draws"] == out["first_cycle"]["logical_steps"] == 2
    assert out["steady_compiles"] == 0
