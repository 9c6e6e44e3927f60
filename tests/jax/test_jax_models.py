"""JAX models: every spec builds with the exchange format's keys, shapes and
parameter count; forward parity with the float64 reference; exchange round trip."""
import jax
import numpy as np
import pytest

from common.reference import float64 as R
from common.reference.exchange import init_weights, make_batch
from common.reference.spec import INPUT, MODELS, ModelSpec, Node
from frameworks.jax import ADAPTER
from frameworks.jax.models import CNN, param_count, params_from_exchange, params_to_exchange

pytestmark = pytest.mark.jax


@pytest.mark.parametrize("name", list(MODELS))
def test_param_count_and_exchange_layout(name):
    """flax's own parameters (shapes only: ``eval_shape`` traces init, computes
    nothing) are the exchange format's keys and shapes, and the spec's count."""
    spec = MODELS[name]
    x = np.zeros((1, *spec.input_shape), np.float32)
    params = jax.eval_shape(CNN(spec).init, jax.random.key(0), x)["params"]
    assert param_count(params) == spec.expected_params
    assert {f"{m}/{leaf}": v.shape for m, leaves in params.items() for leaf, v in leaves.items()} == spec.param_shapes()


@pytest.mark.parametrize("name", ["small", "medium", "vit_tiny"])
def test_forward_matches_float64_reference(name):
    spec = MODELS[name]
    w = init_weights(spec, 1)
    x, _ = make_batch(spec, 3, 1)
    want = R.forward(spec, w, x)
    got = ADAPTER.forward(name, w, x)
    # CNNs: measured ~1e-6 (float32 sums over <= 16384 terms); vit_tiny 1.0e-6
    # (B 4, seed 0: float32 through attention, LayerNorm, erf); 1e-5 leaves 10x headroom
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-5


def test_exchange_round_trip():
    """Exchange -> flax tree -> exchange gives the same arrays (the ViT's
    embedding tables and LayerNorm scales included)."""
    spec = MODELS["vit_tiny"]
    w = init_weights(spec, 1)
    back = params_to_exchange(params_from_exchange(w))
    assert set(back) == set(w)
    for k in w:
        assert back[k].dtype == w[k].dtype and np.array_equal(back[k], w[k]), k


def test_unknown_op_raises():
    """Op dispatch is explicit: an op the builder lacks is an error, not an add."""
    rogue = Node("act", "relu", ("dense",))
    object.__setattr__(rogue, "op", "softplus")  # past Node's check: an op the spec may gain, the builder lacks
    bad = ModelSpec("bad", (2, 2, 1), (Node("flatten", "flatten", (INPUT,)), Node("dense", "dense", ("flatten",), 3),
                                       rogue), 15)
    with pytest.raises(ValueError, match="no op 'softplus'"):
        jax.eval_shape(CNN(bad).init, jax.random.key(0), np.zeros((1, 2, 2, 1), np.float32))
