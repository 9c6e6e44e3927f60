"""jax-privacy's clipped sum (noise 0) equals the float64 per-example reference."""
import numpy as np
import pytest

from common.reference import float64 as R
from common.reference.spec import MODELS
from frameworks.jax import ADAPTER
from tests.jax.ties import tie_free_case

pytestmark = pytest.mark.jax
SPEC = MODELS["small"]
B = 6


@pytest.fixture(scope="module")
def case():
    c = tie_free_case("small", B)  # no max-pool near-tie (ties.py)
    assert (c.norms > c.clip).any() and (c.norms < c.clip).any()  # median clip: half clipped, half not
    return c.weights, c.x, c.y, c.clip, c.want


@pytest.mark.parametrize("microbatch", [None, B, 3, 2, 1])  # None: jax-privacy's default, one vmap
def test_clipped_sum_matches_reference(case, microbatch):
    w, x, y, clip, want = case
    got = ADAPTER.clipped_sum("jax_privacy", "small", w, x, y, clip, microbatch)
    # measured 5.8e-7 (None) .. 1.2e-6 (mb 1) in float32 (seed 1); 1e-5 is ~8x that
    assert R.max_rel_error(got, want) < 1e-5


def test_standard_is_plain_sum(case):
    w, x, y, _, _ = case
    got = ADAPTER.clipped_sum("standard", "small", w, x, y, 1.0)
    assert R.max_rel_error(got, R.clipped_sum(SPEC, w, x, y, np.inf)) < 1e-5


@pytest.mark.parametrize("microbatch", [None, B])
def test_clipping_is_active(case, microbatch):
    """A wrong clip norm must be detected: the test can fail."""
    w, x, y, clip, want = case
    got = ADAPTER.clipped_sum("jax_privacy", "small", w, x, y, clip * 1.01, microbatch)
    assert R.max_rel_error(got, want) > 1e-4


def test_direct_rows_have_no_clipped_sum(case):
    w, x, y, clip, _ = case
    with pytest.raises(NotImplementedError, match="direct-use"):
        ADAPTER.clipped_sum("direct_jax_privacy", "small", w, x, y, clip)
