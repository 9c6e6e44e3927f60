"""Keras models: parameter counts and forward parity with the float64 reference."""
import numpy as np
import pytest

from common.reference import float64 as reference
from common.reference.exchange import init_weights, make_batch
from common.reference.spec import MODELS, get_model

pytestmark = pytest.mark.tf

tf_models = pytest.importorskip("frameworks.tf.models")
from frameworks.tf import ADAPTER  # noqa: E402

# Measured max relative logit error vs float64 on CPU: 7.6e-7 (small),
# 6.7e-7 (medium): float32 rounding through 4-5 layers. 10x margin.
FORWARD_TOL = 1e-5


@pytest.mark.parametrize("name", list(MODELS))
def test_param_count(name):
    spec = get_model(name)
    model = tf_models.build_model(spec)
    assert tf_models.param_count(model) == spec.expected_params


@pytest.mark.parametrize("name", list(MODELS))
def test_forward_matches_reference(name):
    spec = get_model(name)
    weights = init_weights(spec, seed=3)
    x, _ = make_batch(spec, 3, seed=3)
    got = ADAPTER.forward(name, weights, x)
    assert got.shape == (3, spec.num_classes)
    err = reference.max_rel_error({"logits": got}, {"logits": reference.forward(spec, weights, x)})
    assert err < FORWARD_TOL


def test_weights_round_trip():
    spec = get_model("small")
    weights = init_weights(spec, seed=5)
    model = tf_models.build_model(spec, weights)
    back = tf_models.export_weights(model, spec)
    assert all(np.array_equal(back[k], weights[k]) for k in weights)
