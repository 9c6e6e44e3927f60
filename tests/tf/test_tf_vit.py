"""The ViT on TF-Privacy's fast-clipping path and the rows it cannot run.

DPModel with the study's registry (frameworks/tf/steps.py ``layer_registry``:
Dense, Embedding, LayerNormalization) takes the fast path on vit_tiny: every
registry function's per-example norm of its own layer equals float64's (Dense
on (B, T, D) sequences and on the head's vector, Embedding on the (B, rows)
indices, LayerNormalization); the library's default registry sends the same
model to the per-example fallback because of the LayerNorms alone. The
clipped sums of every path: tests/tf/test_tf_parity.py (which also checks
that the compared DPModel step traced the fast path). fastclip has no ViT
plan yet: an ``Unsupported`` row with fastclip_plan's reason. The fast
path's timed step and its phases: the last test.
"""
from __future__ import annotations

import numpy as np
import pytest

from common.reference import fastclip_plan
from common.reference import float64 as R
from common.reference.spec import get_model

pytestmark = pytest.mark.tf
tf = pytest.importorskip("tensorflow")
tfp = pytest.importorskip("tensorflow_privacy")
from tensorflow_privacy.privacy.fast_gradient_clipping import clip_grads  # noqa: E402
from tensorflow_privacy.privacy.fast_gradient_clipping import layer_registry as tfp_registry  # noqa: E402

from common.harness.adapter import Unsupported  # noqa: E402
from common.harness.config import RunConfig  # noqa: E402
from frameworks.tf import ADAPTER, steps  # noqa: E402
from frameworks.tf.models import build_model  # noqa: E402
from tests.tf.test_tf_build import check_noise_sampler  # noqa: E402
from tests.tf.test_tf_phases import NAMES  # noqa: E402

MODEL = "vit_tiny"
SPEC = get_model(MODEL)
# Measured (B 2, seed 0): the registry functions' per-layer squared norms vs
# float64 at most 4.4e-7 of each layer's largest (b0_q; float32 rounding of
# one batched forward and backward); 1e-5: 20x margin. A layer's squared norm
# 1 % off is 1e-2: the negative control.
SQ_TOL = 1e-5


@pytest.fixture(scope="module")
def case() -> R.ClipCase:
    return R.tie_free_case(MODEL, 2)


@pytest.fixture(scope="module")
def dp_model(case):
    """The study's tfp_dpmodel row's model (graph), built as the step builds it."""
    return steps.make_train("tfp_dpmodel", "graph", SPEC, case.weights, 2, None, case.clip, 0.0, 1.0)


def test_every_trainable_layer_is_registered(dp_model):
    notes = dp_model.notes
    assert notes["tfp_dpmodel_path"] == "fast_gradient_clipping" and notes["unregistered_trainable_layers"] == []
    assert notes["noise_call"] == steps.NOISE_CALLS["DPSequential_fast"]
    kinds = {type(l).__name__ for l in dp_model.model.layers if l.trainable_variables}
    assert kinds == {"Dense", "Embedding", "LayerNormalization"}


def test_the_default_registry_falls_back_because_of_layer_norm(case):
    """With the library's default registry (Dense, Embedding) the LayerNorms
    are the only unregistered trainable layers, and the fast path is all or
    nothing (gradient_clipping_utils.all_trainable_layers_are_registered):
    DPModel falls back to per-example gradients for the whole model."""
    model = build_model(SPEC, case.weights, tfp.DPModel, l2_norm_clip=1.0, noise_multiplier=0.0,
                        layer_registry=tfp_registry.make_default_layer_registry(), use_xla=False)
    registry = tfp_registry.make_default_layer_registry()
    assert [l.name for l in model.layers if l.trainable_variables and not registry.is_elem(l)] == \
        ["b0_ln0", "b0_ln1", "final_ln"]
    assert not model._enable_fast_peg_computation  # pylint: disable=protected-access


def library_layer_sq_norms(model: tf.keras.Model, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Each layer's per-example squared gradient norm as TF-Privacy's fast path
    computes it: ``compute_gradient_norms`` restricted to that layer's
    variables (its ``trainable_vars``), i.e. that layer's registry function."""
    out = {}
    for layer in model.layers:
        if layer.trainable_variables:
            norms = clip_grads.compute_gradient_norms(model, steps.layer_registry(), tf.constant(x), tf.constant(y),
                                                      trainable_vars=layer.trainable_variables)
            out[layer.name] = norms.numpy().astype(np.float64) ** 2
    return out


def test_registry_functions_give_float64_per_layer_norms(case, dp_model):
    """Dense on (B, T, D) (its einsum '...b,bc->...c' sums over tokens: the
    ghost norm of a sequence), Dense on the head's vector, Embedding on the
    (B, rows) indices of EmbedIndices, LayerNormalization (per-example gamma,
    beta): each equals float64's per-layer squared norms; the parameter-free
    layers (patches, concat, attention, GELU, token, the indices) pass
    through. Negative control: one layer 1 % off fails."""
    got = library_layer_sq_norms(dp_model.model, case.x, case.y)
    assert set(got) == set(case.layer_sq)
    assert R.sq_rel_error(got, case.layer_sq) < SQ_TOL
    off = dict(got, b0_ln1=got["b0_ln1"] * 1.01)
    assert R.sq_rel_error(off, case.layer_sq) > 10 * SQ_TOL


def test_fastclip_is_an_unsupported_row_with_the_plans_reason():
    gap = fastclip_plan.model_gap(SPEC)
    assert gap and "attention" in gap and "layernorm" in gap
    cfg = RunConfig(framework="tf", impl="fastclip", model=MODEL, batch_size=2, variant="graph")
    with pytest.raises(Unsupported, match="fastclip has no plan for") as err:
        ADAPTER.build(cfg)
    assert str(err.value) == gap


def test_dpmodel_fast_path_step_and_phases(monkeypatch):
    """The timed row as the adapter builds it, noise 1 (add_aggregate_noise's
    tf.random.normal, which parity at noise 0 skips): two steps update the
    model and nothing in the step is pfor-vectorized (the fallback's
    vectorized_map is not traced). Its phases (the fallback's names, here the
    fast path's library calls) run, in order, and update nothing."""
    from frameworks.tf import adapter
    built = []
    monkeypatch.setattr(adapter, "make_train", lambda *a, **k: built.append(steps.make_train(*a, **k)) or built[-1])
    cfg = RunConfig(framework="tf", impl="tfp_dpmodel", model=MODEL, batch_size=2, variant="graph", phases=True)
    bench = ADAPTER.build(cfg)
    first = np.array(bench.sync(bench.step()))
    variables = built[0].model.trainable_variables
    before = [v.numpy().copy() for v in variables]
    outs = {name: float(bench.sync(fn())) for name, fn in bench.phases.items()}
    assert list(outs) == NAMES["tfp_dpmodel"] and all(np.isfinite(list(outs.values()))) and outs["forward"] > 0
    assert all(np.array_equal(v.numpy(), b) for v, b in zip(variables, before))
    second = np.array(bench.sync(bench.step()))
    assert np.isfinite(second).all() and not np.array_equal(first, second)
    assert bench.notes["tfp_dpmodel_path"] == "fast_gradient_clipping"
    assert bench.notes["pfor_while_loop_fallbacks"] == 0
    check_noise_sampler(bench)
