"""The direct-use row ``direct_opacus`` (frameworks/torch/direct.py): Opacus's README
loop on the study's model, weights and batch, against the study's ``opacus_hooks`` row."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

from common.harness import adapter as adapter_mod  # noqa: E402
from common.reference import float64 as reference  # noqa: E402
from common.harness.config import IMPLS, PRESETS, RunConfig  # noqa: E402
from common.reference.exchange import init_weights, make_batch  # noqa: E402
from common.reference.spec import get_model  # noqa: E402
from frameworks.torch.models import to_exchange  # noqa: E402

pytestmark = pytest.mark.torch  # warning filters: tests/torch/conftest.py

DIRECT = "direct_opacus"
BATCH = 8


def _cfg(impl: str, **kw) -> RunConfig:
    base = dict(framework="torch", impl=impl, model="small", batch_size=BATCH, threads=2,
                timing=PRESETS["tiny"].timing)
    return RunConfig(**{**base, **kw}).validate()


def _update(impl: str, clip: float) -> dict[str, np.ndarray]:
    """What one step (noise 0, lr 1) subtracts from the initial weights: the clipped mean."""
    cfg = _cfg(impl, learning_rate=1.0, noise_multiplier=0.0, clip_norm=clip)
    w0 = init_weights(get_model(cfg.model), cfg.seed)
    bench = adapter_mod.load("torch").build(cfg)
    out = bench.step()
    bench.sync(out)
    after = to_exchange(out, get_model(cfg.model))
    return {k: w0[k].astype(np.float64) - after[k].astype(np.float64) for k in w0}


def test_direct_is_the_catalogue_row_of_opacus_hooks():
    assert IMPLS["torch"][DIRECT].kind == "direct"
    assert IMPLS["torch"][DIRECT].direct_of == ("opacus_hooks", "", None)


def test_direct_step_applies_the_study_rows_clipped_mean():
    """One direct step and one ``opacus_hooks`` step (noise 0, lr 1, clip norm at the
    median per-example norm so that some examples are clipped and some are not) move
    the weights by the same clipped mean, and that is the reference's.

    Both run the same Opacus ops on the same float32 weights and batch (direct's
    ``zero_grad()`` zeroes ``p.grad`` where the study's sets it to None, but Opacus
    overwrites ``p.grad`` with summed_grad + noise either way), so they agree to float32
    rounding of w - g: measured 0 (bit-identical) on CPU. 1e-6 relative allows a
    different kernel choice on a GPU and is far below what a mistake shows (measured:
    clip norm 2C 3.4e-2, another batch 1.25; a divisor B+1 would be 1/B = 0.125).
    Against the float64 reference (measured 3.9e-6): the hooks row's 1e-4
    (tests/torch/test_torch_adapter.py, CLIPPED_TOL_SMALL).
    """
    spec = get_model("small")
    w = init_weights(spec, 0)
    x, y = make_batch(spec, BATCH, 0)
    grads = reference.per_example_grads(spec, w, x, y)
    norms = reference.per_example_norms(grads)
    clip = float(np.median(norms))
    assert (norms > clip).any() and (norms < clip).any()
    scale = reference.clip_factors(norms, clip) / BATCH
    want = {k: np.tensordot(scale, v, axes=1) for k, v in grads.items()}

    direct, study = _update(DIRECT, clip), _update("opacus_hooks", clip)
    assert reference.max_rel_error(direct, study) < 1e-6
    assert reference.max_rel_error(direct, want) < 1e-4


def test_direct_builds_and_runs_two_steps():
    bench = adapter_mod.load("torch").build(RunConfig("torch", DIRECT, "small", 4))
    first = {k: v.detach().clone() for k, v in bench.step().items()}
    out = bench.step()
    bench.sync(out)
    assert all(torch.isfinite(v).all() for v in out.values())
    assert all(not torch.equal(first[k], out[k]) for k in out)  # noise 1: every tensor moves
    notes = bench.notes
    assert notes["gsm_class"] == "GradSampleModule" and notes["optimizer_class"] == "DPOptimizer"
    assert notes["expected_batch_size"] == 4 and notes["loader_batch_size"] == 4
    assert notes["direct_of"] == ["opacus_hooks", "", None]
    assert bench.phases == {}


def test_direct_has_no_clipped_sum():
    spec = get_model("small")
    x, y = make_batch(spec, 2, 0)
    with pytest.raises(NotImplementedError, match="direct-use"):
        adapter_mod.load("torch").clipped_sum(DIRECT, "small", init_weights(spec, 0), x, y, 1.0)
