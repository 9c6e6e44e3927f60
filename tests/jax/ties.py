"""Max-pool near-ties in the float64 reference cases.

A 2x2 max-pool sends the gradient to its window's maximum. Where the two
largest pre-activations of a window are within float32 rounding of each other
(relative gap ~1e-7 or less), two correct float32 convolutions (XLA:CPU with or
without its YNNPACK fusions, oneDNN, the reference's float64) may disagree on
which one wins, and every implementation, standard included, is then ~1e-2 off
the reference: a tie-break, not a wrong gradient. The medium model at seed 0
(B=3) has one (gap 3.4e-8; measured off by 9.9e-3 with XLA's default flags,
5e-7 with the study's flag, which happens to break it the reference's way).
Parity cases are therefore seeded so that no window is closer than
``MIN_POOL_GAP`` of the layer's largest pre-activation (tests/tf does the same).
"""
from __future__ import annotations


from common.reference import float64 as reference

MIN_POOL_GAP = reference.MIN_POOL_GAP
# (model, batch) -> seed of common.reference.float64.clip_case; min pool gaps 3.6e-6, 1.2e-6, 2.0e-6, 2.7e-6;
# the ViT has no max-pool (gap inf: any seed)
SEEDS = {("small", 1): 0, ("small", 7): 4, ("medium", 3): 14, ("small", 6): 1, ("vit_tiny", 3): 0}


min_pool_gap = reference.min_pool_gap  # shared with the other frameworks' parity seeds


def tie_free_case(model: str, batch: int) -> reference.ClipCase:
    """``reference.clip_case`` at the seed of ``SEEDS``, its gap asserted."""
    case = reference.clip_case(model, batch, SEEDS[(model, batch)])
    assert min_pool_gap(case.spec, case.weights, case.x) > MIN_POOL_GAP, (model, batch)
    return case
