"""The catalogue and presets: what a study run contains."""
from common.harness.config import IMPLS, PRESETS, XLA_DEFAULT, expand, microbatch_sizes


def test_every_library_has_a_direct_use_row_that_names_a_real_study_row():
    configs = expand(["jax", "torch", "tf"], "tiny")
    direct = {(c.framework, c.impl) for c in configs if c.impl_info.kind == "direct"}
    assert {fw for fw, _ in direct} == {"jax", "torch", "tf"}
    for fw, name in direct:
        impl, variant, mb = IMPLS[fw][name].direct_of
        study = IMPLS[fw][impl]
        assert study.kind == "study" and variant in study.variants
        assert mb in microbatch_sizes(study, 64), (fw, name)


def test_jax_privacy_sweep_starts_with_the_library_default():
    assert microbatch_sizes(IMPLS["jax"]["jax_privacy"], 64) == [None, 64, 16, 1]
    assert microbatch_sizes(IMPLS["jax"]["jax_privacy"], 1) == [None, 1]


def test_full_preset_batch_sizes_run_small_to_large_and_ab_only_where_asked():
    configs = expand(["jax", "torch", "tf"], "full")
    for model, want in (("small", {64, 256}), ("medium", {64})):  # medium B 256 left out (the hour)
        sizes = [c.batch_size for c in configs if c.model == model]
        assert sizes == sorted(sizes) and set(sizes) == want
    ab = {(c.model, c.batch_size) for c in configs if c.variant == XLA_DEFAULT}
    assert ab == {("small", 64)}
    assert {c.impl for c in configs if c.variant == XLA_DEFAULT} == {"standard", "jax_privacy", "fastclip"}
    assert {"graph", "xla"} <= {c.variant for c in configs if c.impl == "tfp_dpmodel"}


def test_full_preset_runs_direct_rows_on_small_at_64_only_unless_asked():
    configs = expand(["jax", "torch", "tf"], "full")
    direct = {(c.model, c.batch_size) for c in configs if c.impl_info.kind == "direct"}
    assert direct == {("small", 64)}
    asked = expand(["torch"], "full", models=["medium"])
    assert {(c.model, c.batch_size) for c in asked if c.impl_info.kind == "direct"} == {("medium", 64)}
    study_256 = [c for c in configs if c.batch_size == 256]
    assert study_256 and all(c.impl_info.kind == "study" for c in study_256)
    # an explicit --batch-sizes gets them wherever asked
    asked = expand(["torch"], "full", batch_sizes=[32])
    assert "direct_opacus" in {c.impl for c in asked}


def test_full_preset_budget_is_per_model_unless_given():
    configs = expand(["jax"], "full")
    assert {c.budget_s for c in configs if c.model == "small"} == {PRESETS["full"].budget_s}
    assert {c.budget_s for c in configs if c.model == "medium"} == {PRESETS["full"].budget_for("medium")}
    assert PRESETS["full"].budget_for("medium") > PRESETS["full"].budget_s
    assert {c.budget_s for c in expand(["jax"], "full", budget_s=7.0)} == {7.0}
