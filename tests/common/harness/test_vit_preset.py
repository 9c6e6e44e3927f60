"""The ``vit`` preset: the ViT at B 32 and 64 with every row, and the sequence-length sweep
(patches 8 and 2) at B 32 for the rows whose cost depends on T; its own parity cases."""
from common.harness.config import PRESETS, expand
from common.harness.verify import CASES, TOLERANCE


def test_vit_preset_rows():
    configs = expand(["jax", "torch", "tf"], "vit")
    cells = {(c.model, c.batch_size) for c in configs}
    assert cells == {("vit", 32), ("vit", 64), ("vit_p8", 32), ("vit_p2", 32)}
    full = {(c.framework, c.impl, c.variant) for c in configs if c.model == "vit" and c.batch_size == 32}
    assert {"jax_privacy", "opacus_hooks", "opacus_functorch", "opacus_ew", "opacus_ghost", "tfp_dpmodel",
            "tfp_vectorized", "fastclip"} <= {impl for _, impl, _ in full}
    for m in ("vit_p8", "vit_p2"):
        sweep = {(c.framework, c.impl, c.variant) for c in configs if c.model == m}
        assert sweep == {("jax", "standard", ""), ("jax", "jax_privacy", ""), ("jax", "fastclip", ""),
                         ("torch", "standard", ""), ("torch", "opacus_ghost", ""), ("torch", "fastclip", ""),
                         ("tf", "standard", "graph"), ("tf", "tfp_dpmodel", "graph"), ("tf", "fastclip", "graph")}
    ab = {(c.model, c.batch_size) for c in configs if c.variant == "xla-default"}
    assert ab == {("vit", 64)}
    assert PRESETS["vit"].rounds >= 2 and {c.microbatch_size for c in configs if c.impl == "jax_privacy"} == {None}


def test_an_explicit_impls_list_overrides_the_sweeps_rows():
    configs = expand(["torch"], "vit", impls=["opacus_hooks"])
    assert {c.model for c in configs} == {"vit", "vit_p8", "vit_p2"}


def test_parity_has_the_vits_cases():
    for m in ("vit", "vit_p8", "vit_p2"):
        assert CASES[m][0] >= 2 and TOLERANCE[m] <= 2e-4
