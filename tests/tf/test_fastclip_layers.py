"""frameworks/tf/fastclip_layers.py: per-layer timings in both TF variants carry the plan's choice."""
from __future__ import annotations

import pytest

pytest.importorskip("tensorflow")
from common.reference import fastclip_plan  # noqa: E402
from frameworks.tf import fastclip_layers  # noqa: E402

pytestmark = pytest.mark.tf


def test_measures_every_conv_with_every_method_in_both_variants():
    res = fastclip_layers.measure("small", 2, rounds=1)
    assert res["status"] == "ok" and res["framework"] == "tf"
    assert [(r["variant"], r["layer"]) for r in res["layers"]] == [
        ("graph", "conv0"), ("graph", "conv1"), ("xla", "conv0"), ("xla", "conv1")]
    for r in res["layers"]:
        assert set(r["measured_s"]) == {"standard", *fastclip_plan.METHODS}
        assert r["chosen"] in fastclip_plan.METHODS and r["unfold"]
    # The timings are real: conv0's ghost norm (T = 1024, T^2 = 1M products per
    # example against T*d*p = 0.9M) is far slower than instantiating.
    conv0 = res["layers"][0]["measured_s"]
    assert conv0["ghost"] > 3 * conv0["instantiate"], conv0


def test_bad_model_is_an_error_row(capsys):
    assert fastclip_layers.main(["--model", "huge", "--batch-size", "2"]) == 0
    assert '"status": "error"' in capsys.readouterr().out
