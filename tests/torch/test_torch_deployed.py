"""DP-SGD as it is trained in PyTorch (frameworks/torch/deployed.py):
``opacus/variable`` (make_private(poisson_sampling=True) + BatchMemoryManager)
and ``fastclip/variable`` (DPDataLoader's batches, fastclip's sums over chunks).

Nothing is padded in eager PyTorch, so the padded-batch test of the other
frameworks becomes its variable-size analogue: a logical batch whose last
physical batch is short still gives the float64 clipped sum of all of it.

Tolerances. An update is compared as max_rel_error (per tensor, max |got -
want| / max |want|) of p1 - p0 against -lr S / L, S the float64 clipped sum
(common/reference/float64.py) over the logical batch's examples: fastclip's
clipped sums are within 1.1e-6 of it (test_torch_fastclip.py: TOL 1e-5),
Opacus' within 1.0e-5 on the small model (its float32 ``Tensor.norm``:
OPACUS_TOL 1e-4 there); the float32 subtraction p1 - p0 adds at most
|p| 6e-8 / |lr S / L| (< 1e-6 at lr 1: the clip norm is the median
per-example norm, ~70 at the exchange weights). Measured on CPU (torch
2.13, opacus 1.6): fastclip <= 7.2e-7, Opacus <= 7.4e-6; TOL is >= 13x those.

Noise: with sigma > 0 one logical step over k >= 3 physical batches moves the
parameters by -lr (S + Z) / L; Z's per-coordinate variance over the small
model's 1.07M coordinates is (sigma C)^2 to a relative standard error
sqrt(2/n) = 0.14 %, so 2 % tells one draw (ratio 1) from one per physical
batch (ratio k >= 3); measured within 0.2 % of 1 (4 or 5 physical batches).
The noiseless part is the float64 reference's: the accumulation test shows it
equal to the noiseless step to 1e-4 of |S|, and a max-pool near-tie that
float32 breaks the other way moves it by at most 2C/L in norm, nothing next to
the noise's ~1000 sigma C / L (so the noise test takes batches with ties too).
"""
from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from common.harness.config import Timing  # noqa: E402
from common.harness.deployed import COUNTERS, DeployedConfig, measure  # noqa: E402
from common.reference import float64 as reference  # noqa: E402
from common.reference.exchange import make_batch  # noqa: E402
from common.reference.sampling import binomial_fit_pvalue  # noqa: E402
from common.reference.spec import get_model  # noqa: E402
from frameworks.torch import ADAPTER, deployed  # noqa: E402
from frameworks.torch.models import to_exchange  # noqa: E402

pytestmark = pytest.mark.torch  # warning filters: tests/torch/conftest.py

IMPLS = ["opacus", "fastclip"]
TOL = {"fastclip": 1e-5, "opacus": 1e-4}  # see the module docstring
NOISE_TOL = 0.02
SPEC = get_model("small")
P = 4
SEED = 0


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The machine's cores are shared: one intra-op thread keeps each test a few seconds."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def clip() -> float:
    """The median per-example norm of the dataset's first 16 examples at the exchange
    weights: some examples of a logical batch are clipped, some are not."""
    from common.reference.exchange import init_weights
    x, y = make_batch(SPEC, 16, SEED)
    return float(np.median(reference.per_example_norms(
        reference.per_example_grads(SPEC, init_weights(SPEC, SEED), x, y))))


def config(impl: str, n: int, logical: int, *, clip: float = 1.0, sigma: float = 0.0, lr: float = 1.0,
           seed: int = SEED, **kw) -> DeployedConfig:
    return DeployedConfig("torch", impl, "variable", model="small", dataset_size=n, logical_batch=logical,
                          physical_batch=P, seed=seed, clip_norm=clip, noise_multiplier=sigma, learning_rate=lr,
                          **kw)


def snapshot(runner) -> dict[str, torch.Tensor]:
    return {n: p.detach().double().clone() for n, p in runner.params.items()}


def step_until(runner, min_size: int, tries: int = 20, tie_free: bool = True):
    """Logical steps until one of at least ``min_size`` examples (>= 3 physical
    batches at P 4), not L of them (so that dividing by its size, not L, would
    show), with ``tie_free`` without a max-pool near-tie (``reference.min_pool_gap``:
    float32 may break one either way; the noise test does not need it); returns the parameters before it, its example
    indices and the physical batches it ran. A step that does not qualify is
    undone (SGD without momentum keeps no state), so that the chosen one starts
    at the exchange weights, where the clip norm is the median norm."""
    x, _ = make_batch(SPEC, runner.cfg.dataset_size, runner.cfg.seed)
    for _ in range(tries):
        before, ran = snapshot(runner), runner.count["physical_steps"]
        runner.step()
        idx = np.asarray(runner.last_indices)
        if (len(idx) >= min_size and len(idx) != runner.cfg.logical_batch
                and (not tie_free or reference.min_pool_gap(SPEC, to_exchange(before, SPEC), x[idx]) > reference.MIN_POOL_GAP)):
            return before, idx, runner.count["physical_steps"] - ran
        with torch.no_grad():
            for n, p in runner.params.items():
                p.copy_(before[n])
    raise AssertionError(f"no tie-free logical batch of >= {min_size} examples (not L) in {tries} steps")


def reference_update(cfg: DeployedConfig, before: dict[str, torch.Tensor], idx: np.ndarray,
                     tie_free: bool = True) -> dict[str, np.ndarray]:
    """-lr S / L, S the float64 clipped sum at the weights ``before`` over examples ``idx``."""
    x, y = make_batch(SPEC, cfg.dataset_size, cfg.seed)
    weights = to_exchange(before, SPEC)
    assert not tie_free or reference.min_pool_gap(SPEC, weights, x[idx]) > reference.MIN_POOL_GAP  # no max-pool near-tie
    norms = reference.per_example_norms(reference.per_example_grads(SPEC, weights, x[idx], y[idx]))
    assert (norms > cfg.clip_norm).any() and (norms < cfg.clip_norm).any()  # both sides of the clip
    s = reference.clipped_sum(SPEC, weights, x[idx], y[idx], cfg.clip_norm)
    return {k: -cfg.learning_rate * v / cfg.logical_batch for k, v in s.items()}


def update(runner, before: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return to_exchange({n: p.detach().double() - before[n] for n, p in runner.params.items()}, SPEC)


@pytest.mark.parametrize("impl", IMPLS)
def test_accumulated_step_is_one_big_step(impl, clip):
    """Noise 0, N 250 (L 16 does not divide it: Opacus alone would sample at 1/16 and
    divide by 15): one logical step over >= 3 physical batches moves the parameters
    by -lr S / L, S the float64 clipped sum over exactly its examples."""
    cfg = config(impl, 250, 16, clip=clip)
    runner = deployed.make(cfg)
    before, idx, ran = step_until(runner, 2 * P + 1)
    assert ran == math.ceil(len(idx) / P) >= 3 and len(set(idx.tolist())) == len(idx)
    err = reference.max_rel_error(update(runner, before), reference_update(cfg, before, idx))
    print(f'{impl} max_rel_error {err:.2e}')
    assert err < TOL[impl], err


@pytest.mark.parametrize("impl", IMPLS)
def test_short_last_physical_batch_counts_every_example(impl):
    """The unpadded analogue of 'padding contributes nothing': q = 1 over 13
    examples is one logical batch of all 13, run as 4 physical batches at P 4
    (fastclip 4+4+4+1, Opacus' array_split 4+3+3+3); the update is the float64
    clipped sum over all 13 (``clip_case``: clip norm their median norm, a
    seed without max-pool near-ties), / L."""
    seed = reference.tie_free_seed("small", 13)
    case = reference.clip_case("small", 13, seed)
    cfg = config(impl, 13, 13, clip=case.clip, seed=seed)
    runner = deployed.make(cfg)
    before = snapshot(runner)
    runner.step()
    want = {k: -cfg.learning_rate * v / cfg.logical_batch for k, v in case.want.items()}
    err = reference.max_rel_error(update(runner, before), want)
    print(f'{impl} max_rel_error {err:.2e}')
    assert err < TOL[impl], err
    assert sorted(runner.last_indices) == list(range(13)) and runner.logical_sizes == [13]
    assert runner.count["physical_steps"] == 4


@pytest.mark.parametrize("impl", IMPLS)
def test_noise_is_drawn_once_per_logical_step(impl, clip):
    sigma = 1.0
    cfg = config(impl, 250, 16, clip=clip, sigma=sigma)
    runner = deployed.make(cfg)
    before, idx, ran = step_until(runner, 2 * P + 1, tie_free=False)
    assert ran >= 3
    want = reference_update(cfg, before, idx, tie_free=False)  # the noiseless update, same batch
    got = update(runner, before)
    noise = np.concatenate([(got[k] - want[k]).ravel() for k in want])
    ratio = noise.var() / (cfg.learning_rate * sigma * clip / cfg.logical_batch) ** 2
    print(f"{impl} noise variance ratio {ratio:.4f} over {ran} physical batches")
    assert abs(ratio - 1.0) < NOISE_TOL, ratio
    assert runner.count["noise_draws"] == runner.count["logical_steps"]


def expected_physical(impl: str, sizes: list[int]) -> int:
    """Opacus runs an empty logical batch as one empty physical batch (its
    BatchSplittingSampler yields []); fastclip runs none (noise only)."""
    return sum(max(1 if impl == "opacus" else 0, math.ceil(s / P)) for s in sizes)


@pytest.mark.parametrize("impl", IMPLS)
def test_counters(impl):
    runner = deployed.make(config(impl, 256, 16, sigma=1.0))
    bench = runner.bench()
    assert bench.counters() == dict.fromkeys(COUNTERS, 0)
    for _ in range(5):
        bench.step()
    c, sizes = bench.counters(), bench.sizes()
    assert set(c) == set(COUNTERS) and len(sizes) == 5
    assert c["logical_steps"] == c["noise_draws"] == 5
    assert c["real_examples"] == sum(sizes) and c["padded_examples"] == 0 and c["compiles"] == 0
    assert c["physical_steps"] == expected_physical(impl, sizes) > 5
    assert len(set(sizes)) > 1  # variable sizes, nothing recompiled


def test_both_rows_draw_the_same_logical_batches():
    """Both rows sample with Opacus' DPDataLoader on the loader's own seeded generator:
    one seed gives the same logical batches (so the two rows time the same work),
    whatever the global generator (the noise, the reference's reseeding) does."""
    runs = {}
    for impl in IMPLS:
        runner = deployed.make(config(impl, 256, 16, sigma=1.0))
        drawn = []
        for i in range(4):
            torch.manual_seed(1000 + i) if impl == "fastclip" else None  # disturb one row's global generator
            runner.step()
            drawn.append(sorted(runner.last_indices))
        runs[impl] = drawn
    assert runs["opacus"] == runs["fastclip"]


@pytest.mark.parametrize("impl", IMPLS)
def test_empty_batches_and_new_epochs(impl):
    """N 16, L 2: q = 1/8, so an epoch is 8 logical batches and ~12 % of them are
    empty; 24 steps cross two epoch ends (the loader re-iterated) and meet empty
    batches, each still one noise draw and one update."""
    runner = deployed.make(config(impl, 16, 2, sigma=1.0))
    before = snapshot(runner)
    for _ in range(24):
        runner.step()
    c, sizes = runner.count, runner.logical_sizes
    assert 0 in sizes and len(sizes) == 24
    assert c["logical_steps"] == c["noise_draws"] == 24 and c["real_examples"] == sum(sizes)
    assert c["physical_steps"] == expected_physical(impl, sizes)
    assert all(np.isfinite(p.detach().numpy()).all() for p in runner.params.values())
    assert any((p.detach().double() != before[n]).any() for n, p in runner.params.items())


def _sizes(batch_sampler, count: int) -> list[int]:
    out: list[int] = []
    while len(out) < count:
        out.extend(len(b) for b in batch_sampler)  # one epoch per pass
    return out[:count]


@pytest.mark.parametrize("n", [400, 250])
@pytest.mark.parametrize("impl", IMPLS)
def test_logical_batch_sizes_are_binomial(impl, n):
    """The strategy's own sampler (Opacus' UniformWithReplacementSampler in the
    DPDataLoader it steps with), 300 logical batches, indices only: sizes fit
    Binomial(N, L/N) at p > 1e-3 (the rule of tests/common/reference/test_sampling.py),
    at N 400 (L divides N: Opacus' own rate) and N 250 (the rate rebuilt to L/N);
    a fixed-size DataLoader's batches do not fit."""
    logical, k = 16, 300
    runner = deployed.make(config(impl, n, logical))
    sampler = runner.dp_loader.batch_sampler
    assert sampler.sample_rate == logical / n
    assert binomial_fit_pvalue(_sizes(sampler, k), n, logical / n) > 1e-3
    fixed = DataLoader(TensorDataset(torch.arange(n)), batch_size=logical).batch_sampler
    assert binomial_fit_pvalue(_sizes(fixed, k), n, logical / n) < 1e-3


def test_opacus_divides_by_the_plans_logical_batch():
    """make_private would take q = 1/ceil(N/L) and divide by int(N q); the row runs
    at the plan's q = L/N and divides by L (the notes keep Opacus' own choice)."""
    runner = deployed.make(config("opacus", 250, 16))
    assert runner.optimizer.expected_batch_size == 16 and runner.optimizer.loss_reduction == "mean"
    assert runner.notes["opacus_sample_rate"] == 1 / 16 and runner.notes["opacus_expected_batch_size"] == 15
    assert runner.notes["sample_rate_rebuilt"] is True


@pytest.mark.parametrize("impl", IMPLS)
def test_measure_smoke(impl):
    cfg = config(impl, 256, 16, sigma=1.0, lr=0.1, cycle=2, budget_s=120.0,  # a cap (see tests/jax/test_jax_deployed.py)
                 timing=Timing(warmup_steps=1, repeats=2, window_s=0.05, min_steps=1))
    out = measure(cfg, deployed.build, ADAPTER.build)
    assert out["real_examples_per_s"] > 0
    assert out["paired"]["ratios"] and out["paired_standard"]["ratios"] and out["standard_examples_per_s"] > 0
    assert out["noise_draws_per_logical"] == 1
    assert out["compiles"] == 0 and out["steady_compiles"] == 0 and out["padding_share"] == 0
    assert len(out["sizes"]) == out["first_cycle"]["logical_steps"] + out["steady"]["logical_steps"]
