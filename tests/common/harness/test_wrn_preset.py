"""The ``wrn`` preset runs WRN-16-4 alone; the study's presets do not include it."""
from common.harness.config import PRESETS, analysis_models, expand
from common.harness.verify import BATCH, TOLERANCE


def test_wrn_preset_is_wrn16_4_alone():
    p = PRESETS["wrn"]
    assert p.models == ("wrn16_4",) and p.batch_sizes == (32, 64)
    assert p.timing == PRESETS["full"].timing and p.budget_s >= 60
    configs = expand(["jax", "torch", "tf"], "wrn")
    assert {c.model for c in configs} == {"wrn16_4"} and {c.batch_size for c in configs} == {32, 64}
    assert {"jax_privacy", "opacus_ghost", "tfp_dpmodel", "fastclip"} <= {c.impl for c in configs}
    assert {c.microbatch_size for c in configs if c.impl == "jax_privacy"} == {None}  # the default only


def test_study_presets_exclude_wrn():
    for name in ("full", "quick", "tiny"):
        assert "wrn16_4" not in PRESETS[name].models


def test_parity_has_a_wrn_case():
    assert BATCH["wrn16_4"] >= 2 and TOLERANCE["wrn16_4"] <= 1e-3


def test_analyses_cover_the_presets_model():
    """run_all.sh's analyses of a wrn run are of wrn16_4, not of a model it did not run."""
    assert analysis_models("wrn") == ["wrn16_4"]
    assert analysis_models("full") == ["small"] and analysis_models("quick") == ["small"]
