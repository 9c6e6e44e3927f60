"""The ``vit`` preset: the ViT at B 32 and 64 with every row, and the sequence-length sweep
(patches 8 and 2) at B 32 for the rows whose cost depends on T; its own parity cases."""
import subprocess
import sys
from pathlib import Path

from common.harness.config import PRESETS, analysis_plan, expand
from common.harness.verify import CASES, TOLERANCE


SWEEP = {("jax", "standard", ""), ("jax", "jax_privacy", ""), ("jax", "fastclip", ""),
         ("torch", "standard", ""), ("torch", "opacus_ghost", ""), ("torch", "fastclip", ""),
         ("tf", "standard", "graph"), ("tf", "tfp_dpmodel", "graph"), ("tf", "fastclip", "graph")}


def test_vit_preset_rows():
    configs = expand(["jax", "torch", "tf"], "vit")
    cells = {(c.model, c.batch_size) for c in configs}
    assert cells == {("vit", 32), ("vit", 64), ("vit_p8", 32), ("vit_p2", 32)}
    full = {(c.framework, c.impl, c.variant) for c in configs if c.model == "vit" and c.batch_size == 64}
    assert {"jax_privacy", "opacus_hooks", "opacus_functorch", "opacus_ew", "opacus_ghost", "tfp_dpmodel",
            "tfp_vectorized", "tfp_microbatch", "tfp_microbatch_mean", "fastclip"} <= {impl for _, impl, _ in full}
    # the sweep: the same rows at the three points of T, at B 32
    for cell in (("vit_p8", 32), ("vit", 32), ("vit_p2", 32)):
        assert {(c.framework, c.impl, c.variant) for c in configs if (c.model, c.batch_size) == cell} == SWEEP, cell
    ab = {(c.model, c.batch_size) for c in configs if c.variant == "xla-default"}
    assert ab == {("vit", 64)}
    assert len(configs) == 21 + 3 + 3 * 9
    assert PRESETS["vit"].rounds >= 2 and {c.microbatch_size for c in configs if c.impl == "jax_privacy"} == {None}


def test_an_explicit_impls_list_overrides_the_sweeps_rows():
    configs = expand(["torch"], "vit", impls=["opacus_hooks"])
    assert {c.model for c in configs} == {"vit", "vit_p8", "vit_p2"}


def test_parity_has_the_vits_cases():
    for m in ("vit", "vit_p8", "vit_p2"):
        assert CASES[m][0] >= 2 and TOLERANCE[m] <= 2e-4


def test_vit_analyses_are_per_layer_on_the_three_points_of_t():
    """run_all.sh after a vit run: fastclip's per-layer timings at the sweep's three points of T
    (B 32) and on vit at B 64, no "why"; other presets unchanged (each model at B 64)."""
    assert analysis_plan("vit") == {"models": ["vit", "vit_p8", "vit_p2"], "explain": False,
                                    "layer_cells": ["vit_p8:32", "vit:32", "vit_p2:32", "vit:64"]}
    assert analysis_plan("full") == {"models": ["small"], "explain": True, "layer_cells": ["small:64"]}
    assert analysis_plan("wrn")["layer_cells"] == ["wrn16_4:64"]
    # run_all.sh --models narrows or widens them, at B 64
    assert analysis_plan("vit", ["vit_p2"])["layer_cells"] == ["vit_p2:64"]


def test_run_all_reads_the_analysis_plan_from_config():
    """run_all.sh's lines that read analysis_plan, run as they are, for the vit preset."""
    root = Path(__file__).resolve().parents[3]
    script = ("set -euo pipefail; preset=vit; runner_args=(--rounds 1); study_py=" + sys.executable + "\n"
              + subprocess.run(["sed", "-n", r"/^models_given=\"\"/,/read -r models explain cells/p", "run_all.sh"],
                               cwd=root, capture_output=True, text=True, check=True).stdout
              + 'echo "$models|$explain|$cells"\n')
    out = subprocess.run(["bash", "-c", script], cwd=root, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "vit,vit_p8,vit_p2|0|vit_p8:32,vit:32,vit_p2:32,vit:64"
