"""JAX models: parameter counts, forward parity with the float64 reference."""
import jax
import numpy as np
import pytest

from common.reference import float64 as R
from common.reference.exchange import init_weights, make_batch
from common.reference.spec import MODELS
from frameworks.jax import ADAPTER
from frameworks.jax.models import CNN, param_count

pytestmark = pytest.mark.jax


@pytest.mark.parametrize("name", ["small", "medium"])
def test_param_count(name):
    spec = MODELS[name]
    x = np.zeros((1, *spec.input_shape), np.float32)
    params = CNN(spec).init(jax.random.key(0), x)["params"]
    assert param_count(params) == spec.expected_params


@pytest.mark.parametrize("name", ["small", "medium"])
def test_forward_matches_float64_reference(name):
    spec = MODELS[name]
    w = init_weights(spec, 1)
    x, _ = make_batch(spec, 3, 1)
    want = R.forward(spec, w, x)
    got = ADAPTER.forward(name, w, x)
    # measured ~1e-6 (float32 sums over <= 16384 terms); 1e-5 leaves 10x headroom
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-5
