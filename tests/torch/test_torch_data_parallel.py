"""Data-parallel PyTorch (frameworks/torch/data_parallel.py): 2 ranks on gloo,
one CPU thread each, spawned as the study's 2-device worker spawns them.

- The clipped sum over ranks (noise 0, reduced as the step reduces it) is
  the float64 reference's clipped sum of the whole global batch, for
  standard (DDP), every Opacus mode that runs data-parallel (DPDDP) and
  fastclip; tolerance 1e-4 as the parity table's small model (float32).
- The noise is drawn once: one 2-rank step at learning rate 1 gives the
  step's total noise as -G (p1 - p0) - S (G the global batch, S the noise-0
  clipped sum); over the small model's 1.07M coordinates its variance is
  (sigma C)^2 to a relative standard error sqrt(2/n) = 0.14 %: 2 % tells
  one draw (ratio 1) from one per rank (ratio 2). The ranks are seeded
  differently, so per-rank draws could not cancel or coincide. Every rank
  ends the step with rank 0's parameters.
"""
import numpy as np
import pytest

from common.reference import float64 as reference
from frameworks.torch import ADAPTER, data_parallel
from frameworks.torch.steps import OPACUS_MODES

pytestmark = pytest.mark.torch

TOL = 1e-4
NOISE_TOL = 0.02
DP_IMPLS = [*OPACUS_MODES, "fastclip"]  # every Opacus mode runs data-parallel (DPDDP)


@pytest.fixture(scope="module")
def case():
    batch = 6  # 3 per rank; seed without max-pool near-ties (reference.tie_free_seed)
    return reference.clip_case("small", batch, reference.tie_free_seed("small", batch))


@pytest.fixture(scope="module")
def sums(case):
    """Every impl's data-parallel sum from one launch of the two ranks (standard unclipped)."""
    clips = {"standard": float("inf"), **{impl: case.clip for impl in DP_IMPLS}}
    return data_parallel.clipped_sums(clips, "small", case.weights, case.x, case.y, world=2)


def test_standard_sum_over_ranks_is_the_global_sum(case, sums):
    want = reference.clipped_sum(case.spec, case.weights, case.x, case.y, float("inf"))
    assert reference.max_rel_error(sums["standard"], want) < TOL


@pytest.mark.parametrize("impl", DP_IMPLS)
def test_clipped_sum_over_ranks_is_the_global_clipped_sum(case, sums, impl):
    assert reference.max_rel_error(sums[impl], case.want) < TOL


def test_the_adapters_two_device_sum_is_the_data_parallel_one(case, sums):
    """The adapter's devices=2 path (what the run-time parity stage calls) launches the same ranks."""
    got = ADAPTER.clipped_sum("fastclip", "small", case.weights, case.x, case.y, case.clip, devices=2)
    assert reference.max_rel_error(got, sums["fastclip"]) < 1e-6


@pytest.mark.parametrize("impl", ["fastclip", "opacus_hooks"])
def test_noise_is_drawn_once_per_step(impl):
    sigma, clip, batch = 1.0, 1.0, 3
    r = data_parallel.step_noise(impl, "small", batch, sigma, clip, world=2)
    g = 2 * batch
    noise = np.concatenate([(-g * (r["p1"][k].astype(np.float64) - r["p0"][k]) - r["sum"][k]).ravel()
                            for k in r["p0"]])
    assert abs(noise.var() / (sigma * clip) ** 2 - 1.0) < NOISE_TOL
    assert r["rank_spread"] == 0.0
