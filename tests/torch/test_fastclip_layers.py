"""frameworks/torch/fastclip_layers.py: per-layer timings of the plan the study row runs;
the "standard" each layer is timed against is the layer's own gradient."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from common.harness.layer_timing import TIMED_KINDS  # noqa: E402
from common.reference import fastclip_plan  # noqa: E402
from common.reference.exchange import init_weights, make_batch  # noqa: E402
from common.reference.spec import ModelSpec, get_model, wide_resnet  # noqa: E402
from frameworks.torch import fastclip, fastclip_layers  # noqa: E402
from tests.layer_timing_checks import check_vit_tiny_rows  # noqa: E402
from frameworks.torch.models import labels, make_model, nchw  # noqa: E402

# A WRN small enough for a unit test (8x8 input, one block per stage, width 1): its GroupNorms.
WRN_TINY = wide_resnet("wrn10_1", 10, 1, 4, expected_params=77_850, input_shape=(8, 8, 3))
# Measured (B 2, seed 0, vit_tiny and WRN_TINY): the standard gradients equal autograd's
# parameter grads bit for bit (the same aten kernels autograd's backward runs). 1e-5 of
# each tensor's largest entry, float32 rounding's room should a kernel's summation order
# differ with the thread count; a gradient 1 % off is 1e-2: the negative control.
STD_TOL = 1e-5


def test_measures_every_conv_with_every_method_and_the_chosen_plan():
    res = fastclip_layers.measure("small", 8, rounds=1)
    assert res["status"] == "ok" and res["framework"] == "torch"
    assert [r["layer"] for r in res["layers"]] == ["conv0", "conv1"]
    for r in res["layers"]:
        assert set(r["measured_s"]) == {"standard", *fastclip_plan.METHODS}
        assert r["chosen"] in fastclip_plan.METHODS and r["chunk"] == r["chunks"][r["chosen"]] >= 1
    # The timings are real: conv0's ghost norm (T = 1024: two T x T Grams, ~2T^2(d+p)
    # = 120M FLOPs per example against 2Tdp = 1.8M to instantiate) is the slower one.
    # (A ratio, not a speed target: one round on a shared CPU.)
    conv0 = res["layers"][0]["measured_s"]
    assert conv0["ghost"] > conv0["instantiate"] > 0, conv0


def test_times_the_vits_token_dense_layers_by_both_methods_and_its_one_method_layers():
    res = fastclip_layers.measure("vit_tiny", 2, rounds=1)
    assert res["status"] == "ok"
    check_vit_tiny_rows(res["layers"], res["single_layers"])
    assert all(r["chunk"] == r["chunks"][r["chosen"]] >= 1 for r in res["layers"])


def standard_vs_autograd(spec: ModelSpec, batch: int = 2) -> tuple[dict[str, float], set[str]]:
    """Per timed layer and parameter: |STANDARD - autograd's grad of the summed loss|, over the
    layer's largest grad entry (a key projection's bias grad is 0 up to rounding: softmax
    ignores a shift shared by every key); and the timed layers' kinds."""
    net = make_model(spec, init_weights(spec, 0), torch.device("cpu"))
    xn, yn = make_batch(spec, batch, 0)
    x, y = nchw(xn, torch.device("cpu")), labels(yn, torch.device("cpu"))
    clip = fastclip.FastClip(net, 1.0)
    plans, (a, g) = clip.plans(x), clip.taps(x, y)
    fastclip.summed_cross_entropy(net(x), y).backward()
    err, kinds = {}, set()
    with torch.no_grad():
        for name, (rule, m) in clip.layers.items():
            if plans[name].kind not in TIMED_KINDS:
                continue
            kinds.add(plans[name].kind)
            out = fastclip_layers.STANDARD[type(rule)](m, a[name])(g[name])
            got = [t for t in (out if isinstance(out, tuple) else (out,)) if t is not None]  # aten: None for dx
            want = [p.grad for p in m.parameters()]  # weight, then bias
            assert [t.shape for t in got] == [t.shape for t in want], name
            scale = max(float(w.abs().max()) for w in want)
            err |= {f"{name}/{i}": float((u - w).abs().max()) / scale for i, (u, w) in enumerate(zip(got, want))}
    return err, kinds


@pytest.mark.parametrize("spec", [get_model("vit_tiny"), WRN_TINY], ids=["vit_tiny", "wrn10_1"])
def test_standard_is_the_layers_own_gradient(spec):
    err, kinds = standard_vs_autograd(spec)
    assert kinds == ({"seq_dense", "embed", "layernorm"} if spec.name == "vit_tiny" else {"conv", "gn"})
    assert max(err.values()) < STD_TOL, err


def test_bad_model_is_an_error_row(capsys):
    assert fastclip_layers.main(["--model", "huge", "--batch-size", "2"]) == 0
    assert '"status": "error"' in capsys.readouterr().out
