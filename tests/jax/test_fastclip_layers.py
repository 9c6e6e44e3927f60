"""frameworks/jax/fastclip_layers.py: per-layer timings carry the plan's choice."""
from __future__ import annotations

import pytest

pytest.importorskip("jax")
from common import fastclip_plan  # noqa: E402
from frameworks.jax import fastclip_layers  # noqa: E402

pytestmark = pytest.mark.jax


def test_measures_every_conv_with_every_method():
    res = fastclip_layers.measure("small", 2, rounds=1)
    assert res["status"] == "ok"
    assert [r["layer"] for r in res["layers"]] == ["conv0", "conv1"]
    for r in res["layers"]:
        assert set(r["measured_s"]) == {"standard", *fastclip_plan.METHODS}
        assert all(t > 0 for t in r["measured_s"].values())
        assert r["chosen"] in fastclip_plan.METHODS and r["chunk"] >= 1


def test_bad_model_is_an_error_row(capsys):
    assert fastclip_layers.main(["--model", "huge", "--batch-size", "2"]) == 0
    assert '"status": "error"' in capsys.readouterr().out
