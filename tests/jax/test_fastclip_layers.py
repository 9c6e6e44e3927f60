"""frameworks/jax/fastclip_layers.py: per-layer timings carry the plan's choice; the
"standard" each layer is timed against is the layer's own gradient."""
from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from common.harness.layer_timing import TIMED_KINDS  # noqa: E402
from common.reference import fastclip_plan  # noqa: E402
from common.reference.exchange import init_weights, make_batch  # noqa: E402
from common.reference.spec import ModelSpec, get_model, wide_resnet  # noqa: E402
from frameworks.jax import fastclip, fastclip_layers  # noqa: E402
from tests.layer_timing_checks import check_vit_tiny_rows  # noqa: E402
from frameworks.jax.models import CNN, cross_entropy, params_from_exchange  # noqa: E402

pytestmark = pytest.mark.jax

# A WRN small enough for a unit test (8x8 input, one block per stage, width 1): its GroupNorms.
WRN_TINY = wide_resnet("wrn10_1", 10, 1, 4, expected_params=77_850, input_shape=(8, 8, 3))
# Measured (B 2, seed 0): the standard gradients vs jax.grad at most 1.8e-7 (vit_tiny)
# and 3.0e-7 (WRN_TINY) of the layer's largest gradient entry (float32, the same products
# summed in another order); 1e-5: 33x margin. A gradient 1 % off is 1e-2: the negative control.
STD_TOL = 1e-5


def test_measures_every_conv_with_every_method():
    res = fastclip_layers.measure("small", 2, rounds=1)
    assert res["status"] == "ok"
    assert [r["layer"] for r in res["layers"]] == ["conv0", "conv1"]
    for r in res["layers"]:
        assert set(r["measured_s"]) == {"standard", *fastclip_plan.METHODS}
        assert r["chosen"] in fastclip_plan.METHODS and r["chunk"] >= 1
    # The timings are real: conv0's ghost norm (T = 1024 positions, T^2 = 1M
    # products per example against T*d*p = 0.9M) is far slower than instantiating.
    conv0 = res["layers"][0]["measured_s"]
    assert conv0["ghost"] > 3 * conv0["instantiate"], conv0
    assert res["single_layers"] == []  # the small CNN has no one-method layer


def test_times_the_vits_token_dense_layers_by_both_methods_and_its_one_method_layers():
    res = fastclip_layers.measure("vit_tiny", 2, rounds=1)
    assert res["status"] == "ok"
    check_vit_tiny_rows(res["layers"], res["single_layers"])
    assert all(set(r["estimated_s"]) == set(fastclip_plan.METHODS) for r in res["layers"])


def standard_vs_autodiff(spec: ModelSpec, batch: int = 2) -> tuple[dict[str, float], set[str]]:
    """Per timed layer and leaf: |STANDARD - jax.grad of the summed loss|, over the layer's
    largest gradient entry (a key projection's bias gradient is 0 up to rounding: softmax
    ignores a shift shared by every key); and the timed layers' kinds."""
    net, params = CNN(spec), params_from_exchange(init_weights(spec, 0))
    x, y = (jnp.asarray(v) for v in make_batch(spec, batch, 0))
    layers = [t for t in fastclip.find_layers(net, params, x) if t.kind in TIMED_KINDS]

    def both(p):
        _, a, g = fastclip.layer_taps(net, p, x, y)
        got = {t.name: fastclip_layers.STANDARD[type(t.rule)](t, a[t.name], g[t.name]) for t in layers}
        want = jax.grad(lambda q: cross_entropy(net.apply({"params": q}, x), y).sum())(p)
        return got, {t.name: fastclip._subtree(want, t.path) for t in layers}

    got, want = jax.jit(both)(params)
    assert {n: set(v) for n, v in got.items()} == {n: set(v) for n, v in want.items()}
    scale = {n: max(float(np.max(np.abs(v))) for v in want[n].values()) for n in want}
    return ({f"{n}/{k}": float(np.max(np.abs(got[n][k] - want[n][k]))) / scale[n] for n in got for k in got[n]},
            {t.kind for t in layers})


@pytest.mark.parametrize("spec", [get_model("vit_tiny"), WRN_TINY], ids=["vit_tiny", "wrn10_1"])
def test_standard_is_the_layers_own_gradient(spec):
    err, kinds = standard_vs_autodiff(spec)
    assert kinds == ({"seq_dense", "embed", "layernorm"} if spec.name == "vit_tiny" else {"conv", "gn"})
    assert max(err.values()) < STD_TOL, err


def test_bad_model_is_an_error_row(capsys):
    assert fastclip_layers.main(["--model", "huge", "--batch-size", "2"]) == 0
    assert '"status": "error"' in capsys.readouterr().out
