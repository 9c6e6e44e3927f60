"""frameworks/tf/fastclip_layers.py: per-layer timings in both TF variants carry the plan's
choice; the "standard" each layer is timed against is the layer's own gradient.

Each timing case runs the module's command line in a child process: TF's thread pools
are fixed once TF starts, and the other TF tests set them themselves."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.harness.layer_timing import TIMED_KINDS
from common.reference import fastclip_plan
from common.reference.exchange import init_weights, make_batch
from common.reference.spec import ModelSpec, get_model, wide_resnet
from tests.layer_timing_checks import check_vit_tiny_rows

pytestmark = pytest.mark.tf

# A WRN small enough for a unit test (8x8 input, one block per stage, width 1): its GroupNorms.
WRN_TINY = wide_resnet("wrn10_1", 10, 1, 4, expected_params=77_850, input_shape=(8, 8, 3))
# Measured (B 2, seed 0): the standard gradients vs the tape's gradients of the summed loss
# at most 1.6e-7 (vit_tiny) and 0 (WRN_TINY: the same kernels) of the layer's largest
# gradient entry (float32; a LayerNorm's xhat recomputed by fastclip's forward, the same
# products summed in another order); 1e-5: 60x margin. A gradient 1 % off is 1e-2: the
# negative control.
STD_TOL = 1e-5


def run(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "frameworks.tf.fastclip_layers", *args], capture_output=True,
                         text=True, timeout=600, check=True, cwd=Path(__file__).resolve().parents[2]).stdout
    return json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])


def test_measures_every_conv_with_every_method_in_both_variants():
    res = run("--model", "small", "--batch-size", "8", "--rounds", "1")
    assert res["status"] == "ok" and res["framework"] == "tf"
    assert [(r["variant"], r["layer"]) for r in res["layers"]] == [
        ("graph", "conv0"), ("graph", "conv1"), ("xla", "conv0"), ("xla", "conv1")]
    for r in res["layers"]:
        assert set(r["measured_s"]) == {"standard", *fastclip_plan.METHODS}
        assert r["chosen"] in fastclip_plan.METHODS and r["unfold"]
    # The timings are real: conv0's ghost norm (T = 1024: two T x T Grams, ~2T^2(d+p)
    # = 120M FLOPs per example against 2Tdp = 1.8M to instantiate) is the slower one.
    # (A ratio, not a speed target: one round on a shared CPU.)
    conv0 = res["layers"][0]["measured_s"]
    assert conv0["ghost"] > conv0["instantiate"] > 0, conv0


def test_times_the_vits_token_dense_layers_by_both_methods_and_its_one_method_layers():
    res = run("--model", "vit_tiny", "--batch-size", "2", "--rounds", "1")
    assert res["status"] == "ok"
    for variant in ("graph", "xla"):
        check_vit_tiny_rows([r for r in res["layers"] if r["variant"] == variant],
                            [r for r in res["single_layers"] if r["variant"] == variant])


def standard_vs_tape(spec: ModelSpec, batch: int = 2) -> tuple[dict[str, float], set[str]]:
    """Per timed layer and variable: |STANDARD - the tape's gradient of the summed loss|, over the
    layer's largest gradient entry (a key projection's bias gradient is 0 up to rounding: softmax
    ignores a shift shared by every key); and the timed layers' kinds."""
    tf = pytest.importorskip("tensorflow")
    from frameworks.tf import ADAPTER, fastclip, fastclip_layers
    # TF's thread pools are fixed at its first op in this process: set them as the later tests in this
    # process do (test_tf_analysis: 2 threads), or theirs would fail to be set
    ADAPTER.setup(2)
    from frameworks.tf.models import build_model, cross_entropy

    model = build_model(spec, init_weights(spec, 0))
    x, y = (tf.constant(v) for v in make_batch(spec, batch, 0))
    fc = fastclip.FastClip(model, batch, 1.0)
    a, g = fc.taps_and_grads(x, y)
    taps = [t for t in fc.taps if fc.plans[t.name].kind in TIMED_KINDS]
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(cross_entropy(y, model(x, training=True)))
    want = tape.gradient(loss, [t.variables for t in taps])
    err = {}
    for t, w in zip(taps, want):
        got = fastclip_layers.STANDARD[type(t.rule)](t, a[t.name], g[t.name])
        w = [tf.convert_to_tensor(v).numpy() for v in w]  # an embedding's: IndexedSlices
        assert [u.shape for u in got] == [v.shape for v in w], t.name
        scale = max(np.max(np.abs(v)) for v in w)
        err |= {f"{t.name}/{i}": float(np.max(np.abs(u.numpy() - v)) / scale) for i, (u, v) in enumerate(zip(got, w))}
    return err, {fc.plans[t.name].kind for t in taps}


@pytest.mark.parametrize("spec", [get_model("vit_tiny"), WRN_TINY], ids=["vit_tiny", "wrn10_1"])
def test_standard_is_the_layers_own_gradient(spec):
    err, kinds = standard_vs_tape(spec)
    assert kinds == ({"seq_dense", "embed", "layernorm"} if spec.name == "vit_tiny" else {"conv", "gn"})
    assert max(err.values()) < STD_TOL, err


def test_bad_model_is_an_error_row():
    # in a child, as every case here: run in this process, the port's import started TF's
    # context, and the later tests that set TF's thread pools (test_tf_analysis) then failed
    res = run("--model", "huge", "--batch-size", "2")
    assert (res["status"], res["framework"], res["model"]) == ("error", "tf", "huge"), res
    assert res["error"].startswith("ValueError: unknown model"), res
