"""frameworks/tf/fastclip_layers.py: per-layer timings in both TF variants carry the plan's choice.

The timing case runs the module's command line in a child process: TF's thread
pools are fixed once TF starts, and the other TF tests set them themselves."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from common.reference import fastclip_plan

pytestmark = pytest.mark.tf


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


def test_bad_model_is_an_error_row(capsys):
    """In this process (a child spent ~13 s starting TF to fail): an unknown
    model fails in get_model, before any TF op, so no thread pool is touched."""
    from frameworks.tf import fastclip_layers
    assert fastclip_layers.main(["--model", "huge", "--batch-size", "2"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (res["status"], res["framework"], res["model"]) == ("error", "tf", "huge"), res
    assert res["error"].startswith("ValueError: unknown model"), res
