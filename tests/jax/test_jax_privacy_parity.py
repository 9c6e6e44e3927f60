"""jax-privacy's clipped sum (noise 0) equals the float64 per-example reference."""
import numpy as np
import pytest

from common import reference as R
from common.exchange import init_weights, make_batch
from common.spec import MODELS
from frameworks.jax import ADAPTER

pytestmark = pytest.mark.jax
SPEC = MODELS["small"]
B = 6


@pytest.fixture(scope="module")
def case():
    w = init_weights(SPEC, 2)
    x, y = make_batch(SPEC, B, 2)
    grads = R.per_example_grads(SPEC, w, x, y)
    norms = R.per_example_norms(grads)
    clip = float(np.median(norms))  # half the examples above the clip norm, half below
    assert (norms > clip).any() and (norms < clip).any()
    return w, x, y, clip, R.clipped_sum(SPEC, w, x, y, clip)


@pytest.mark.parametrize("microbatch", [B, 3, 2, 1])
def test_clipped_sum_matches_reference(case, microbatch):
    w, x, y, clip, want = case
    got = ADAPTER.clipped_sum("jax_privacy", "small", w, x, y, clip, microbatch)
    # measured 5e-7..1.5e-6 in float32; 1e-5 is ~10x that
    assert R.max_rel_error(got, want) < 1e-5


def test_standard_is_plain_sum(case):
    w, x, y, _, _ = case
    got = ADAPTER.clipped_sum("standard", "small", w, x, y, 1.0)
    assert R.max_rel_error(got, R.clipped_sum(SPEC, w, x, y, np.inf)) < 1e-5


def test_clipping_is_active(case):
    """A wrong clip norm must be detected: the test can fail."""
    w, x, y, clip, want = case
    got = ADAPTER.clipped_sum("jax_privacy", "small", w, x, y, clip * 1.01, B)
    assert R.max_rel_error(got, want) > 1e-4
