"""WRN-16-4 (GroupNorm, strided and 1x1 convs, residual adds, global average
pool) in flax: parameter count, forward, jax-privacy's and fastclip's clipped
sums and fastclip's per-layer norms against the float64 reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.reference import float64 as R
from common.reference.spec import get_model
from frameworks.jax import ADAPTER, fastclip, steps
from frameworks.jax.models import CNN, param_count, params_from_exchange, params_to_exchange

pytestmark = pytest.mark.jax
SPEC = get_model("wrn16_4")
B = 2  # the median clip norm then lies between the two norms: one clipped, one not
# float32 through 16 convs and 13 GroupNorms (B 3, seed 0): forward measured
# 5.0e-7 relative, the clipped sum 5.4e-6 (jax-privacy's default) and 5.9e-6
# (microbatch 1); 5e-5 keeps ~10x headroom, and a clip norm 1 % off moves the
# sum by 1.2e-2 (the negative control below). fastclip (B 2, seed 0) measured
# 1.8e-6 for every plan (the cost model's, all convs ghost, all instantiate;
# the largest on a GroupNorm scale, convs <= 1.8e-6), per-layer squared norms
# 7.0e-7, their sum over layers 1.1e-7 of ||g_i||^2; a clip norm 1 % off
# moves its sum by 1.4e-2 (> 250 TOL).
FWD_TOL, TOL = 1e-5, 5e-5


@pytest.fixture(scope="module")
def case():
    # seed 63 (float64.tie_free_case) since 2026-12-03: seed 0 has a ReLU input 3.4e-8 of its layer's
    # largest from 0, which one CPU's float32 flipped (1e-2); the measurements quoted above were at seed 0.
    c = R.tie_free_case("wrn16_4", B)  # median clip: one clipped, one not
    assert (c.norms > c.clip).any() and (c.norms < c.clip).any()
    return c


def test_param_count():
    # shapes only (jax.eval_shape traces init without running it): the count and
    # names are the test's, and running flax's init eagerly on WRN-16-4 took ~10 s
    params = jax.eval_shape(CNN(SPEC).init, jax.random.key(0), np.zeros((1, *SPEC.input_shape), np.float32))["params"]
    assert param_count(params) == SPEC.expected_params == 2_748_890
    assert {f"{m}/{leaf}" for m, leaves in params.items() for leaf in leaves} == set(SPEC.param_shapes())


def test_forward_matches_reference(case):
    got = ADAPTER.forward("wrn16_4", case.weights, case.x)
    want = R.forward(SPEC, case.weights, case.x)
    assert np.abs(got - want).max() / np.abs(want).max() < FWD_TOL


@pytest.fixture(scope="module")
def jax_privacy_sum():
    """Jitted ``(params, x, y, clip) -> (clipped sum, {})`` (``_run``'s pair): the study's
    ``steps.clipped_sum_fn`` (what ``ADAPTER.clipped_sum`` jits) with the clip
    norm traced, so that the negative control reuses the compile (as
    test_jax_privacy_parity)."""
    return jax.jit(lambda p, x, y, clip: (steps.clipped_sum_fn("jax_privacy", SPEC, clip, None)(p, x, y), {}))


def test_jax_privacy_clipped_sum_matches_reference(case, jax_privacy_sum):
    """The library's default (one vmap); its microbatch loop is the parity table's
    (common/harness/verify.py), as for small: compiling it here costs ~40 s."""
    got, _ = _run(jax_privacy_sum, case, case.clip)
    assert R.max_rel_error(got, case.want) < TOL


def test_jax_privacy_clipping_is_active(case, jax_privacy_sum):
    got, _ = _run(jax_privacy_sum, case, case.clip * 1.01)
    assert R.max_rel_error(got, case.want) > 10 * TOL


def test_fastclip_clipped_sum_matches_reference(case):
    """The study's route (steps.clipped_sum_fn: model_gap, then the cost model's plan)."""
    plans = fastclip.plans_for(CNN(SPEC), params_from_exchange(case.weights), jnp.asarray(case.x))
    # the plan mixes both conv methods (stages 0-1 instantiate, stage 2 ghost) and taps every GroupNorm
    assert {p.method for p in plans.values()} == {"instantiate", "ghost", "gn", "dense"}
    assert sum(p.kind == "gn" for p in plans.values()) == 13
    got = ADAPTER.clipped_sum("fastclip", "wrn16_4", case.weights, case.x, case.y, case.clip)
    assert R.max_rel_error(got, case.want) < TOL


@pytest.fixture(scope="module")
def forced():
    """method -> jitted ``(params, x, y, clip) -> (clipped sum, per-layer squared
    norms)`` with every conv forced to it, compiled once per method (~30 s each);
    the clip norm is an argument so the negative control reuses the compile."""
    model, memo = CNN(SPEC), {}

    def get(method):
        if method not in memo:
            def fn(params, x, y, clip):
                return (fastclip.fastclip_grad(model, clip, methods=method)(params, x, y),
                        fastclip.per_layer_sq_norms(model, methods=method)(params, x, y))
            memo[method] = jax.jit(fn)
        return memo[method]
    return get


def _run(fn, case, clip):
    params, x, y = params_from_exchange(case.weights), jnp.asarray(case.x), jnp.asarray(case.y)
    with jax.default_matmul_precision("highest"):
        got, sq = fn(params, x, y, clip)
    return params_to_exchange(got), {k: np.asarray(v, np.float64) for k, v in sq.items()}


@pytest.mark.parametrize("method", ["ghost", "instantiate"])
def test_fastclip_forced_method_matches_reference(case, forced, method):
    got, sq = _run(forced(method), case, case.clip)
    assert R.max_rel_error(got, case.want) < TOL
    assert R.sq_rel_error(sq, case.layer_sq) < TOL  # 30 layers: 16 convs, 13 GroupNorms, head
    total = sum(sq.values())
    assert np.abs(total - case.norms ** 2).max() / (case.norms ** 2).max() < TOL


def test_fastclip_clipping_is_active(case, forced):
    got, _ = _run(forced("ghost"), case, case.clip * 1.01)
    assert R.max_rel_error(got, case.want) > 10 * TOL
