"""Every TF impl's clipped sum (noise 0, the timed code path) equals the
float64 reference: per-example clipping for tfp_microbatch / tfp_vectorized /
tfp_dpmodel, clipped microbatch means for tfp_microbatch_mean, the plain sum
for standard; on a CNN (``small``) and the ViT (``vit_tiny``), whose
tfp_dpmodel row takes TF-Privacy's fast-clipping path (checked here on the
step that is compared)."""
import functools

import numpy as np
import pytest

from common.reference import float64 as reference
from common.reference.exchange import init_weights, make_batch
from common.reference.spec import get_model

pytestmark = pytest.mark.tf

tfp = pytest.importorskip("tensorflow_privacy")
from tensorflow_privacy.privacy.fast_gradient_clipping import clip_grads  # noqa: E402

from frameworks.tf import ADAPTER  # noqa: E402

# Examples per model (the ViT kept small: TF compiles each step on 2 cores).
BATCH = {"small": 6, "vit_tiny": 4}
PER_EXAMPLE = [("tfp_microbatch", "graph"), ("tfp_microbatch", "xla"), ("tfp_vectorized", "graph"),
               ("tfp_vectorized", "xla"), ("tfp_dpmodel", "graph"), ("tfp_dpmodel", "xla")]
# Measured max relative error vs float64 on CPU (``float64.max_rel_error``; a ViT's
# zero key bias at its layer's scale): small 5e-7 .. 1.1e-6 over all impls and variants (the sum is read off float32 weights
# after one lr=1 step, which adds ~eps*|w|/|update| to the float32 rounding);
# vit_tiny (B 4) 4.3e-7 .. 6.9e-7. 10x margin.
TOL = 1e-5
# TF-Privacy's DP model path per model: the ViT's trainable layers are all
# Dense, Embedding or LayerNormalization (frameworks/tf/steps.py layer_registry),
# the CNN's convs have no registry function.
DPMODEL_PATH = {"small": "vectorized", "vit_tiny": "fast"}


@functools.lru_cache(maxsize=None)
def case(model: str) -> tuple:
    """BATCH examples, clip norm = median per-example norm: half clipped, half not."""
    spec = get_model(model)
    weights = init_weights(spec, seed=0)
    x, y = make_batch(spec, BATCH[model], seed=1)
    grads = reference.per_example_grads(spec, weights, x, y)
    norms = reference.per_example_norms(grads)
    clip = float(np.median(norms))
    assert (norms > clip).any() and (norms < clip).any()
    return model, spec, weights, x, y, grads, clip


@pytest.fixture
def dpmodel_path(monkeypatch):
    """Records which of DPModel's two clipping paths a step traced: ``fast``
    (clip_grads.compute_gradient_norms, the registry functions' norms) or
    ``vectorized`` (_compute_per_example_grads under tf.vectorized_map)."""
    seen = []
    norms = clip_grads.compute_gradient_norms

    def fast(*args, **kwargs):
        seen.append("fast")
        return norms(*args, **kwargs)

    monkeypatch.setattr(clip_grads, "compute_gradient_norms", fast)
    for cls in (tfp.DPModel, tfp.DPSequential):
        per_example = cls._compute_per_example_grads

        def vectorized(self, data, per_example=per_example):
            seen.append("vectorized")
            return per_example(self, data)

        monkeypatch.setattr(cls, "_compute_per_example_grads", vectorized)
    return seen


# On the ViT, the rows whose clipping sees its layers: DPModel's registry (fast) path in both
# variants, and one generic per-example path. Its per-example loops (tfp_microbatch, and
# tfp_vectorized under XLA) are the small model's code paths on other layers, and the vit
# preset's run-time parity stage checks every row it measures on vit (all of them, B 2) at each run
# (runner.parity_rows), so the suite leaves them to it (~15 s of compiling here).
VIT_ROWS = [("tfp_vectorized", "graph"), ("tfp_dpmodel", "graph"), ("tfp_dpmodel", "xla")]
CASES = [("small", *c) for c in PER_EXAMPLE] + [("vit_tiny", *c) for c in VIT_ROWS]


@pytest.mark.parametrize("model,impl,variant", CASES)
def test_per_example_clipped_sum(model, impl, variant, dpmodel_path):
    _, spec, weights, x, y, _, clip = case(model)
    mb = None if impl == "tfp_dpmodel" else 1
    got = ADAPTER.clipped_sum(impl, model, weights, x, y, clip, mb, variant)
    assert reference.max_rel_error(got, reference.clipped_sum(spec, weights, x, y, clip)) < TOL
    assert set(dpmodel_path) == ({DPMODEL_PATH[model]} if impl == "tfp_dpmodel" else set())


@pytest.mark.parametrize("model,impl,mb", [("small", "tfp_vectorized", 1), ("small", "tfp_dpmodel", None),
                                            ("small", "fastclip", None), ("vit_tiny", "tfp_dpmodel", None)])
def test_clipping_is_active(model, impl, mb):
    """The comparison can fail: a clip norm 1 % off is caught (as in JAX and
    torch; the ViT on DPModel's fast path, the one ViT path whose clipping is
    not the CNN's code)."""
    _, spec, weights, x, y, _, clip = case(model)
    got = ADAPTER.clipped_sum(impl, model, weights, x, y, clip * 1.01, mb, "graph")
    assert reference.max_rel_error(got, reference.clipped_sum(spec, weights, x, y, clip)) > 10 * TOL


@pytest.mark.parametrize("model", list(BATCH))
@pytest.mark.parametrize("variant", ["graph", "xla"])
def test_standard_is_plain_sum(model, variant):
    _, _, weights, x, y, grads, clip = case(model)
    got = ADAPTER.clipped_sum("standard", model, weights, x, y, clip, None, variant)
    assert reference.max_rel_error(got, {k: v.sum(0) for k, v in grads.items()}) < TOL


@pytest.mark.parametrize("model,batch,num_microbatches", [("small", 8, 4), ("small", 8, 1), ("vit_tiny", 4, 1)])
def test_microbatch_mean_clipped_sum(model, batch, num_microbatches):
    """Clip below the median (several microbatches: some clipped, some not)
    or half the only norm (1 microbatch), so clipping is active."""
    spec = get_model(model)
    weights = init_weights(spec, seed=0)
    x, y = make_batch(spec, batch, seed=2)
    grads = reference.per_example_grads(spec, weights, x, y)
    means = {k: v.reshape(num_microbatches, -1, *v.shape[1:]).mean(1) for k, v in grads.items()}
    norms = reference.per_example_norms(means)
    clip = float(np.median(norms)) if num_microbatches > 1 else float(norms[0]) / 2
    assert (norms > clip).any()
    want = reference.microbatch_mean_clipped_sum(spec, weights, x, y, clip, num_microbatches)
    got = ADAPTER.clipped_sum("tfp_microbatch_mean", model, weights, x, y, clip, batch // num_microbatches, "graph")
    assert reference.max_rel_error(got, want) < TOL
