"""What every port's per-layer timing record must hold on ``vit_tiny`` (shared by
tests/{jax,torch,tf}/test_fastclip_layers.py, so the three ports are held to one check)."""
from __future__ import annotations

from typing import Any, Sequence

from common.reference import fastclip_plan


def check_vit_tiny_rows(seq: Sequence[dict[str, Any]], single: Sequence[dict[str, Any]]) -> None:
    """``seq``: one variant's choice rows; ``single``: its one-method rows. Every dense layer on the
    token sequence (patch_embed, q, k, v, o, fc1, fc2) timed by the standard gradient and both
    methods with the method chosen; the class-token and position embeddings and the three
    LayerNorms timed as one-method rows."""
    assert [r["kind"] for r in seq] == ["seq_dense"] * 7
    for r in seq:
        assert set(r["measured_s"]) == {"standard", *fastclip_plan.METHODS} and min(r["measured_s"].values()) > 0
        assert r["chosen"] in fastclip_plan.METHODS
    assert seq[1]["positions"] == 17  # 16 patches + the class token
    assert sorted((r["kind"], r["layer"]) for r in single) == [
        ("embed", "cls"), ("embed", "pos"), ("layernorm", "b0_ln0"), ("layernorm", "b0_ln1"), ("layernorm", "final_ln")]
    assert all(set(r["measured_s"]) == {"standard", "fastclip"} for r in single)
