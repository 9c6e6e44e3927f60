"""frameworks/torch/fastclip_layers.py: per-layer timings of the plan the study row runs."""
from __future__ import annotations

import pytest

pytest.importorskip("torch")
from common.reference import fastclip_plan  # noqa: E402
from frameworks.torch import fastclip_layers  # noqa: E402


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


def test_bad_model_is_an_error_row(capsys):
    assert fastclip_layers.main(["--model", "huge", "--batch-size", "2"]) == 0
    assert '"status": "error"' in capsys.readouterr().out
