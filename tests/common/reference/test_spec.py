from common.reference.spec import MODELS, get_model

import pytest


@pytest.mark.parametrize("name,params", [("small", 1_070_794), ("medium", 17_159_306)])
def test_param_counts_pinned(name, params):
    spec = get_model(name)
    assert spec.param_count == params == spec.expected_params


def test_layers_follow_design():
    small = MODELS["small"].layers()
    assert [(l.name, l.kind, l.kernel_shape) for l in small] == [
        ("conv0", "conv", (3, 3, 3, 32)), ("conv1", "conv", (3, 3, 32, 64)),
        ("dense0", "dense", (4096, 256)), ("dense1", "dense", (256, 10))]
    assert MODELS["medium"].flatten_size == 8 * 8 * 256
    assert [l.positions for l in MODELS["medium"].layers()] == [64 * 64, 32 * 32, 16 * 16, 1, 1]


def test_unknown_model():
    with pytest.raises(ValueError, match="unknown model"):
        get_model("large")
