"""The direct-use rows (frameworks/tf/direct.py): TF-Privacy's tutorial loops
on the study's model, weights and batch, against the study rows they check."""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.tf

tf = pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_privacy")

from common.harness import adapter as adapter_mod  # noqa: E402
from common.reference import float64 as reference  # noqa: E402
from common.harness.config import IMPLS, RunConfig  # noqa: E402
from common.reference.exchange import init_weights, make_batch  # noqa: E402
from common.reference.spec import get_model  # noqa: E402
from frameworks.tf import ADAPTER  # noqa: E402
from frameworks.tf.adapter import full_float32  # noqa: E402
from frameworks.tf.direct import DIRECT_IMPLS, direct_loop  # noqa: E402
from frameworks.tf.models import export_weights  # noqa: E402

BATCH = 6


def test_catalogue_direct_rows_are_the_modules():
    direct = {n for n, i in IMPLS["tf"].items() if i.kind == "direct"}
    assert direct == set(DIRECT_IMPLS)
    assert IMPLS["tf"]["direct_tfp_optimizer"].direct_of == ("tfp_microbatch", "graph", 1)
    assert IMPLS["tf"]["direct_tfp_dpsequential"].direct_of == ("tfp_dpmodel", "xla", None)


@pytest.mark.parametrize("impl", DIRECT_IMPLS)
def test_direct_builds_and_runs_two_steps(impl):
    """Through the adapter, as the worker builds it: step() returns the loss
    of one train_on_batch (a Python float, synchronised already)."""
    bench = adapter_mod.load("tf").build(RunConfig("tf", impl, "small", 4))
    first = bench.sync(bench.step())
    second = bench.sync(bench.step())
    assert isinstance(first, float) and np.isfinite(first) and np.isfinite(second)
    assert first != second  # the first step updated the model
    assert bench.phases == {}
    notes = bench.notes
    assert notes["direct_of"] == list(IMPLS["tf"][impl].direct_of)
    assert notes["noise_sampler"] == "tf.random.normal"
    assert notes["keras_jit_compile"] in (None, False) and notes["keras_run_eagerly"] is False
    if impl == "direct_tfp_dpsequential":
        assert notes["use_xla"] is True and notes["tfp_dpmodel_path"] == "vectorized_map_per_example"
        assert notes["pfor_while_loop_fallbacks"] > 0  # counted while train_on_batch traced
    else:  # the DP optimizer clips microbatch by microbatch: no vectorized_map, no fallback
        assert notes["pfor_while_loop_fallbacks"] == 0
        assert notes["num_microbatches"] == 4


def test_direct_has_no_clipped_sum():
    spec = get_model("small")
    x, y = make_batch(spec, 2, 0)
    with pytest.raises(NotImplementedError, match="direct-use row"):
        ADAPTER.clipped_sum("direct_tfp_optimizer", "small", init_weights(spec, 0), x, y, 1.0)


@pytest.fixture(scope="module")
def clip_case():
    """The direct rows' weights and batch (seed 0, B 6); clip norm = median
    per-example norm, so some examples are clipped and some are not."""
    spec = get_model("small")
    w = init_weights(spec, 0)
    x, y = make_batch(spec, BATCH, 0)
    grads = reference.per_example_grads(spec, w, x, y)
    norms = reference.per_example_norms(grads)
    clip = float(np.median(norms))
    assert (norms > clip).any() and (norms < clip).any()
    scale = reference.clip_factors(norms, clip) / BATCH
    want = {k: np.tensordot(scale, v, axes=1) for k, v in grads.items()}
    return spec, w, x, y, clip, want


@pytest.mark.parametrize("impl", DIRECT_IMPLS)
def test_direct_step_applies_the_study_rows_clipped_mean(clip_case, impl):
    """One direct train_on_batch and the study row's clipped sum (noise 0,
    lr 1, the same weights and batch) move the weights by the same clipped
    mean, which is the float64 reference's.

    Direct vs study, measured on CPU: 0 (bit-identical) for both rows: the
    same library ops on the same float32 weights, batch and loss op (Keras'
    SparseCategoricalCrossentropy calls the same
    sparse_softmax_cross_entropy_with_logits; new vs legacy SGD both compute
    w - 1*g exactly). 1e-6 relative allows a different kernel choice on a
    GPU and is far below what a wrong clip norm, divisor, batch or weight
    shows (>= 1e-2). Against the float64 reference: measured 4.5e-7 (both);
    the bound is tests/tf/test_tf_parity.py's 1e-5."""
    spec, w, x, y, clip, want = clip_case
    study_impl, variant, mb = IMPLS["tf"][impl].direct_of
    cfg = RunConfig("tf", impl, "small", BATCH, clip_norm=clip, noise_multiplier=0.0, learning_rate=1.0).validate()
    with full_float32():
        loop = direct_loop(cfg)
        loop.step()
        after = export_weights(loop.model, spec)
        study = ADAPTER.clipped_sum(study_impl, "small", w, x, y, clip, mb, variant)
    direct = {k: w[k].astype(np.float64) - after[k] for k in w}
    study_mean = {k: v / BATCH for k, v in study.items()}
    assert reference.max_rel_error(direct, study_mean) < 1e-6
    assert reference.max_rel_error(direct, want) < 1e-5
