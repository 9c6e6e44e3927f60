"""WRN-16-4 (GroupNorm, strided and 1x1 convs, residual adds, global average
pool) in flax: parameter count, forward and jax-privacy's clipped sum against
the float64 reference, fastclip's truthful ``unsupported``."""
import jax
import numpy as np
import pytest

from common.harness.adapter import Unsupported
from common.reference import float64 as R
from common.reference.spec import get_model
from frameworks.jax import ADAPTER
from frameworks.jax.models import CNN, param_count

pytestmark = pytest.mark.jax
SPEC = get_model("wrn16_4")
B = 2  # the median clip norm then lies between the two norms: one clipped, one not
# float32 through 16 convs and 13 GroupNorms (B 3, seed 0): forward measured
# 5.0e-7 relative, the clipped sum 5.4e-6 (jax-privacy's default) and 5.9e-6
# (microbatch 1); 5e-5 keeps ~10x headroom, and a clip norm 1 % off moves the
# sum by 1.2e-2 (the negative control below).
FWD_TOL, TOL = 1e-5, 5e-5


@pytest.fixture(scope="module")
def case():
    c = R.clip_case("wrn16_4", B, seed=0)  # no max-pools: no near-tie to avoid
    assert (c.norms > c.clip).any() and (c.norms < c.clip).any()
    return c


def test_param_count():
    params = CNN(SPEC).init(jax.random.key(0), np.zeros((1, *SPEC.input_shape), np.float32))["params"]
    assert param_count(params) == SPEC.expected_params == 2_748_890
    assert {f"{m}/{leaf}" for m, leaves in params.items() for leaf in leaves} == set(SPEC.param_shapes())


def test_forward_matches_reference(case):
    got = ADAPTER.forward("wrn16_4", case.weights, case.x)
    want = R.forward(SPEC, case.weights, case.x)
    assert np.abs(got - want).max() / np.abs(want).max() < FWD_TOL


def test_jax_privacy_clipped_sum_matches_reference(case):
    """The library's default (one vmap); its microbatch loop is the parity table's
    (common/harness/verify.py), as for small: compiling it here costs ~40 s."""
    got = ADAPTER.clipped_sum("jax_privacy", "wrn16_4", case.weights, case.x, case.y, case.clip)
    assert R.max_rel_error(got, case.want) < TOL


def test_jax_privacy_clipping_is_active(case):
    got = ADAPTER.clipped_sum("jax_privacy", "wrn16_4", case.weights, case.x, case.y, case.clip * 1.01)
    assert R.max_rel_error(got, case.want) > 10 * TOL


def test_fastclip_is_unsupported_not_wrong(case):
    with pytest.raises(Unsupported, match="no GroupNorm/residual plan"):
        ADAPTER.clipped_sum("fastclip", "wrn16_4", case.weights, case.x, case.y, case.clip)
