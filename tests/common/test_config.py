"""The catalogue and presets: what a study run contains."""
from common.config import IMPLS, XLA_DEFAULT, expand, microbatch_sizes


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
    for model in ("small", "medium"):
        sizes = [c.batch_size for c in configs if c.model == model]
        assert sizes == sorted(sizes) and set(sizes) == {32, 64, 256}
    ab = {(c.model, c.batch_size) for c in configs if c.variant == XLA_DEFAULT}
    assert ab == {("small", 64)}
    assert {c.impl for c in configs if c.variant == XLA_DEFAULT} == {"standard", "jax_privacy", "fastclip"}
    assert {"graph", "xla"} <= {c.variant for c in configs if c.impl == "tfp_dpmodel"}
