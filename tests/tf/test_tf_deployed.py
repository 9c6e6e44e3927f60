"""DP-SGD as it is trained in TF (frameworks/tf/deployed.py): tfp/variable and
fastclip/pad on the small model, N = 300, L = 12, P = 4.

Seed 7: its first logical batches have 15, 10, 15, 10 examples (the first:
4 physical batches, the last with 3 real examples and 1 padding slot), and
the first one's max-pool windows no near-tie (gap 3.2e-6 >
``reference.MIN_POOL_GAP``, asserted; tests/tf/test_tf_fastclip.py says why
that matters). The clip norm is the median per-example norm of that batch,
so clipping is active.

Tolerances. Sums: float32 against the float64 reference, read off the weights
after one lr = 1 step or off the accumulators: measured 4.1e-7 .. 5.3e-7
(both rows), TOL = 1e-5 as tests/tf/test_tf_parity.py (its 5e-7 .. 1.1e-6). Noise: the step's noise per coordinate, (p0 - p1) L / lr -
the float64 clipped sum, has variance (sigma C)^2 if drawn once; over the
small model's n = 1,070,794 coordinates the sample variance's relative
standard error is sqrt(2/n) = 1.4e-3: 5 of those is the tolerance, while k =
4 draws (one per physical batch) is 3x off, ~2000 standard errors (measured
0.14 and 0.70 standard errors off with one draw).
"""
from __future__ import annotations

import math

import numpy as np
import pytest

pytestmark = pytest.mark.tf

tf = pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_privacy")

from common.harness.config import Timing  # noqa: E402
from common.harness.deployed import DeployedConfig, measure  # noqa: E402
from common.reference import float64 as reference  # noqa: E402
from common.reference.exchange import init_weights, make_batch  # noqa: E402
from common.reference.sampling import PAD, Plan, split_padded  # noqa: E402
from common.reference.spec import get_model  # noqa: E402
from frameworks.tf import ADAPTER  # noqa: E402
from frameworks.tf.adapter import full_float32  # noqa: E402
from frameworks.tf.deployed import Deployed, build  # noqa: E402
from frameworks.tf.models import export_weights  # noqa: E402


def physical_count(size: int, physical: int, padded: bool) -> int:
    """Physical batches of a logical batch of ``size``: padded, at least one."""
    return max(1, math.ceil(size / physical)) if padded else math.ceil(size / physical)


MODEL, N, L, P, SEED = "small", 300, 12, 4, 7
TOL = 1e-5  # measured <= 5.3e-7: see the module docstring
ROWS = [("tfp", "variable"), ("fastclip", "pad")]
LR = 1.0


class Data:
    """The dataset, initial weights and the first logical batch with its
    float64 per-example gradients."""

    def __init__(self) -> None:
        self.spec = get_model(MODEL)
        self.weights = init_weights(self.spec, SEED)
        self.x, self.y = make_batch(self.spec, N, SEED)
        self.first = Plan(N, L / N, P).logical_batches(1, SEED)[0]
        xb = self.x[self.first]
        assert reference.min_pool_gap(self.spec, self.weights, xb) > reference.MIN_POOL_GAP
        grads = reference.per_example_grads(self.spec, self.weights, xb, self.y[self.first])
        norms = reference.per_example_norms(grads)
        self.clip = float(np.median(norms))
        assert (norms > self.clip).any() and (norms < self.clip).any()

    def clipped_sum(self, idx: np.ndarray, weights=None) -> dict[str, np.ndarray]:
        return reference.clipped_sum(self.spec, weights or self.weights, self.x[idx], self.y[idx], self.clip)


@pytest.fixture(scope="module")
def data() -> Data:
    return Data()


def config(impl: str, strategy: str, clip: float, sigma: float = 0.0, **kw) -> DeployedConfig:
    return DeployedConfig("tf", impl, strategy, model=MODEL, dataset_size=N, logical_batch=L, physical_batch=P,
                          seed=SEED, clip_norm=clip, noise_multiplier=sigma, learning_rate=LR, **kw).validate()


def weights(d: Deployed) -> dict[str, np.ndarray]:
    return {k: v.astype(np.float64) for k, v in export_weights(d.model, d.spec).items()}


def accumulated(d: Deployed) -> dict[str, np.ndarray]:
    """The accumulators by exchange key (Keras names its variables layer/weight:0)."""
    return {v.name.split(":")[0]: a.numpy().astype(np.float64) for v, a in zip(d.variables, d.acc)}


def first_step(d: Deployed, data: Data) -> tuple[dict, dict]:
    """(p0, p1) around the first logical step, which is ``data.first``."""
    p0 = weights(d)
    with full_float32():
        d.step().numpy()
    np.testing.assert_array_equal(d.last_batch, data.first)
    assert len(d.last_physical) == 4 and sum(int((b != PAD).sum()) for b in d.last_physical) == 15
    return p0, weights(d)


def test_padding_contributes_nothing(data):
    """fastclip/pad, noise 0: the accumulated clipped sum of the first logical
    batch's padded physical batches, then of batches with padding anywhere
    and of an all-padding batch, is the float64 clipped sum of the real
    examples only (the accumulators hold it / L: 1/L is folded in)."""
    d = Deployed(config("fastclip", "pad", data.clip))
    with full_float32():
        batches = split_padded(data.first, P)
        assert (batches[-1] == PAD).sum() == 1
        for b in batches:
            d.run_physical(b)
        got = {k: v * L for k, v in accumulated(d).items()}
        assert reference.max_rel_error(got, data.clipped_sum(data.first)) < TOL
        d.reset()
        i = data.first
        mixed = [np.array([PAD, i[0], PAD, i[1]]), np.array([i[2], PAD, PAD, PAD]), np.full(P, PAD)]
        for b in mixed:
            d.run_physical(b)
        got = {k: v * L for k, v in accumulated(d).items()}
        assert reference.max_rel_error(got, data.clipped_sum(i[:3])) < TOL
    assert d.counters()["padded_examples"] == 1 + 2 + 3 + P


@pytest.mark.parametrize("impl,strategy", ROWS)
def test_accumulation_is_one_big_step(data, impl, strategy):
    """Noise 0: one logical step over 4 physical batches moves the weights by
    -lr (float64 clipped sum over its 15 real examples) / L."""
    d = Deployed(config(impl, strategy, data.clip))
    p0, p1 = first_step(d, data)
    got = {k: (p0[k] - p1[k]) * L / LR for k in p0}
    assert reference.max_rel_error(got, data.clipped_sum(data.first)) < TOL


@pytest.mark.parametrize("impl,strategy", ROWS)
def test_noise_once_per_logical_step(data, impl, strategy):
    """sigma 1: the step's noise, (p0 - p1) L / lr - float64 clipped sum, has
    per-coordinate variance (sigma C)^2 (one draw), not 4x (one per physical
    batch); its mean is 0."""
    sigma = 1.0
    d = Deployed(config(impl, strategy, data.clip, sigma))
    p0, p1 = first_step(d, data)
    want = data.clipped_sum(data.first)
    z = np.concatenate([((p0[k] - p1[k]) * L / LR - want[k]).ravel() for k in want])
    n, expected = z.size, (sigma * data.clip) ** 2
    assert n > 1_000_000
    assert abs(z.var() / expected - 1) < 5 * math.sqrt(2 / n), z.var() / expected
    assert abs(z.mean()) < 5 * math.sqrt(expected / n)
    assert d.counters()["noise_draws"] == 1


@pytest.mark.parametrize("impl,strategy", ROWS)
def test_counters(data, impl, strategy):
    """Four logical steps: the sampler is the study's seeded stream; counters
    match the batches; noise once per logical step; one trace per
    tf.function, not growing with the sizes (15, 10, 15, 10: last physical
    batches of 3 and 2)."""
    d = Deployed(config(impl, strategy, data.clip))
    padded = strategy == "pad"
    assert d.counters() == {"logical_steps": 0, "real_examples": 0, "padded_examples": 0, "physical_steps": 0,
                            "noise_draws": 0, "compiles": 0}
    with full_float32():
        d.step().numpy()
        after_first = d.counters()
        for _ in range(3):
            d.step().numpy()
    c = d.counters()
    sizes = d.sizes()
    assert sizes == [len(b) for b in Plan(N, L / N, P).logical_batches(4, SEED)] == [15, 10, 15, 10]
    phys = [physical_count(s, P, padded) for s in sizes]
    assert c["logical_steps"] == 4 and c["noise_draws"] == 4
    assert c["real_examples"] == sum(sizes)
    assert c["physical_steps"] == sum(phys) == 14
    assert c["padded_examples"] == (sum(phys) * P - sum(sizes) if padded else 0)
    assert after_first["compiles"] == c["compiles"] == 2


@pytest.mark.parametrize("impl,strategy", ROWS)
def test_measure_smoke(impl, strategy):
    """The whole measurement on a tiny config, paired with the adapter's fixed step."""
    cfg = DeployedConfig("tf", impl, strategy, model=MODEL, dataset_size=N, logical_batch=L, physical_batch=P,
                         seed=SEED, cycle=2, budget_s=120,  # a cap (see tests/jax/test_jax_deployed.py)
                         timing=Timing(warmup_steps=1, repeats=2, window_s=0.05, min_steps=1)).validate()
    out = measure(cfg, build, ADAPTER.build)
    assert out["real_examples_per_s"] > 0 and out["paired"].get("error") is None
    assert out["paired_standard"]["ratios"] and out["standard_examples_per_s"] > 0
    assert out["noise_draws_per_logical"] == 1
    assert out["compiles"] == 2 and out["steady_compiles"] == 0
    assert out["notes"]["sampler"].startswith("dpbench")
