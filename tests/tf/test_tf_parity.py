"""Every TF impl's clipped sum (noise 0, the timed code path) equals the
float64 reference: per-example clipping for tfp_microbatch / tfp_vectorized /
tfp_dpmodel, clipped microbatch means for tfp_microbatch_mean, the plain sum
for standard."""
import numpy as np
import pytest

from common.reference import float64 as reference
from common.reference.exchange import init_weights, make_batch
from common.reference.spec import get_model

pytestmark = pytest.mark.tf

pytest.importorskip("tensorflow_privacy")
from frameworks.tf import ADAPTER  # noqa: E402

MODEL = "small"
# Measured max relative error vs float64 on CPU: 5e-7 .. 1.1e-6 over all impls
# and variants (the sum is read off float32 weights after one lr=1 step, which
# adds ~eps*|w|/|update| to the float32 rounding). 10x margin.
TOL = 1e-5


@pytest.fixture(scope="module")
def case():
    """6 examples, clip norm = median per-example norm: 3 clipped, 3 not."""
    spec = get_model(MODEL)
    weights = init_weights(spec, seed=0)
    x, y = make_batch(spec, 6, seed=1)
    grads = reference.per_example_grads(spec, weights, x, y)
    norms = reference.per_example_norms(grads)
    clip = float(np.median(norms))
    assert (norms > clip).any() and (norms < clip).any()
    return spec, weights, x, y, grads, clip


@pytest.mark.parametrize("impl,variant", [
    ("tfp_microbatch", "graph"), ("tfp_microbatch", "xla"),
    ("tfp_vectorized", "graph"), ("tfp_vectorized", "xla"),
    ("tfp_dpmodel", "graph"), ("tfp_dpmodel", "xla"),
])
def test_per_example_clipped_sum(case, impl, variant):
    spec, weights, x, y, _, clip = case
    mb = None if impl == "tfp_dpmodel" else 1
    got = ADAPTER.clipped_sum(impl, MODEL, weights, x, y, clip, mb, variant)
    assert reference.max_rel_error(got, reference.clipped_sum(spec, weights, x, y, clip)) < TOL


@pytest.mark.parametrize("impl,mb", [("tfp_vectorized", 1), ("tfp_dpmodel", None), ("fastclip", None)])
def test_clipping_is_active(case, impl, mb):
    """The comparison can fail: a clip norm 1 % off is caught (as in JAX and torch)."""
    spec, weights, x, y, _, clip = case
    got = ADAPTER.clipped_sum(impl, MODEL, weights, x, y, clip * 1.01, mb, "graph")
    assert reference.max_rel_error(got, reference.clipped_sum(spec, weights, x, y, clip)) > 10 * TOL


@pytest.mark.parametrize("variant", ["graph", "xla"])
def test_standard_is_plain_sum(case, variant):
    _, weights, x, y, grads, clip = case
    got = ADAPTER.clipped_sum("standard", MODEL, weights, x, y, clip, None, variant)
    assert reference.max_rel_error(got, {k: v.sum(0) for k, v in grads.items()}) < TOL


@pytest.mark.parametrize("num_microbatches", [4, 1])
def test_microbatch_mean_clipped_sum(num_microbatches):
    """8 examples; clip below the median (4 microbatches: 2 clipped, 2 not) or
    half the only norm (1 microbatch), so clipping is active."""
    spec = get_model(MODEL)
    weights = init_weights(spec, seed=0)
    x, y = make_batch(spec, 8, seed=2)
    grads = reference.per_example_grads(spec, weights, x, y)
    means = {k: v.reshape(num_microbatches, -1, *v.shape[1:]).mean(1) for k, v in grads.items()}
    norms = reference.per_example_norms(means)
    clip = float(np.median(norms)) if num_microbatches > 1 else float(norms[0]) / 2
    assert (norms > clip).any()
    want = reference.microbatch_mean_clipped_sum(spec, weights, x, y, clip, num_microbatches)
    got = ADAPTER.clipped_sum("tfp_microbatch_mean", MODEL, weights, x, y, clip, 8 // num_microbatches, "graph")
    assert reference.max_rel_error(got, want) < TOL
