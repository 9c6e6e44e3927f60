"""WRN-16-4 (GroupNorm, strided and 1x1 convs, residual adds, global average
pool) in PyTorch: parameter count, forward and every Opacus mode's clipped sum
against the float64 reference, which per-sample rule each mode uses (on the
ViT's layer types too), and fastclip's clipped sum and per-layer norms against
the reference by every plan."""
import numpy as np
import pytest
import torch

from common.reference import fastclip_plan
from common.reference import float64 as R
from common.reference.exchange import init_weights, make_batch
from common.reference.spec import get_model
from frameworks.torch import ADAPTER, steps
from frameworks.torch.fastclip import FastClip
from frameworks.torch.models import GraphNet, labels, load_exchange, make_model, nchw, to_exchange

pytestmark = pytest.mark.torch
SPEC = get_model("wrn16_4")
OPACUS = ["opacus_hooks", "opacus_functorch", "opacus_ew", "opacus_ghost"]
CPU = torch.device("cpu")
# Measured (B 2, seed 0): forward 3.7e-7; standard 1.9e-6; every Opacus mode
# 2.9e-5, the same in all four: the per-sample norms are float32 Tensor.norm
# sums without cascade summation over 2.7M parameters (as for medium's
# dense0, common/harness/verify.py), which moves the clipped example's factor.
# 2e-4 leaves ~7x headroom; a clip norm 1 % off moves the sum by 1.4e-2.
FWD_TOL, TOL = 1e-5, 2e-4


@pytest.fixture(scope="module")
def case():
    # seed 63 (float64.tie_free_case) since 2026-12-03: seed 0 has a ReLU input 3.4e-8 of its layer's
    # largest from 0, which one CPU's float32 flipped (1e-2); the measurements quoted above were at seed 0.
    c = R.tie_free_case("wrn16_4", 2)  # median clip: one clipped, one not
    assert (c.norms > c.clip).any() and (c.norms < c.clip).any()
    return c


def test_param_count_and_names():
    net = GraphNet(SPEC)
    assert sum(p.numel() for p in net.parameters()) == SPEC.expected_params == 2_748_890
    assert set(to_exchange(dict(net.named_parameters()), SPEC)) == set(SPEC.param_shapes())


def test_exchange_round_trip(case):
    net = GraphNet(SPEC)
    load_exchange(net, case.weights)
    back = to_exchange(dict(net.named_parameters()), SPEC)
    assert all(np.array_equal(back[k], case.weights[k]) for k in case.weights)


def test_forward_matches_reference(case):
    got = ADAPTER.forward("wrn16_4", case.weights, case.x)
    want = R.forward(SPEC, case.weights, case.x)
    assert np.abs(got - want).max() / np.abs(want).max() < FWD_TOL


@pytest.mark.parametrize("impl", OPACUS)
def test_opacus_clipped_sum_matches_reference(case, impl):
    got = ADAPTER.clipped_sum(impl, "wrn16_4", case.weights, case.x, case.y, case.clip)
    assert R.max_rel_error(got, case.want) < TOL


@pytest.mark.parametrize("impl", ["opacus_hooks", "opacus_ghost"])
def test_opacus_clipping_is_active(case, impl):
    got = ADAPTER.clipped_sum(impl, "wrn16_4", case.weights, case.x, case.y, case.clip * 1.01)
    assert R.max_rel_error(got, case.want) > 10 * TOL


# Opacus 1.6: grad samplers for Conv2d, Linear, GroupNorm, LayerNorm, Embedding
# (opacus/grad_sample/conv.py, linear.py, group_norm.py, layer_norm.py,
# embedding.py), norm samplers for Linear and Embedding only (linear.py,
# embedding.py); ExpandedWeights rules for conv2d, linear, group_norm,
# layer_norm and embedding (torch/nn/utils/_expanded_weights/). No layer of
# WRN or the ViT falls back to functorch in hooks or ghost mode; ghost mode
# instantiates the per-sample gradients of the layers without a norm sampler
# (Conv2d, GroupNorm, LayerNorm) in its first backward, to take their norms.
WANT_RULES = {
    "opacus_hooks": dict.fromkeys(("conv", "gn", "dense", "layernorm", "embed"), "grad_sampler"),
    "opacus_functorch": dict.fromkeys(("conv", "gn", "dense", "layernorm", "embed"), "functorch"),
    "opacus_ew": dict.fromkeys(("conv", "gn", "dense", "layernorm", "embed"), "expanded_weights"),
    "opacus_ghost": {"conv": "grad_sampler", "gn": "grad_sampler", "layernorm": "grad_sampler",
                     "dense": "ghost_norm", "embed": "ghost_norm"},
}


@pytest.mark.parametrize("model", ["wrn16_4", "vit_tiny"])
@pytest.mark.parametrize("impl", OPACUS)
def test_per_sample_rule_of_every_layer(impl, model):
    """Read from the wrapper Opacus built for the model (steps.per_sample_rules)."""
    spec = get_model(model)
    xn, yn = make_batch(spec, 2)
    rules = steps.make_trainer(impl, spec, init_weights(spec), nchw(xn, CPU), labels(yn, CPU),
                               lr=0.0).notes["per_sample_rule"]
    ops = {n.name: n.op for n in spec.nodes}
    assert rules == {name: WANT_RULES[impl][ops[name]] for name in rules}
    assert set(rules) == {k.split("/")[0] for k in spec.param_shapes()}


# fastclip, measured (B 2, seed 0, torch 2.13 CPU) against float64: the cost
# model's plan (stage 0-1 convs instantiated, stage 2 ghost) 9.3e-7, every conv
# ghost 1.6e-6, every conv instantiated 9.3e-7; per-layer squared norms 3.5e-7,
# their sum 3.1e-8 of ||g_i||^2. Its norms are torch.sum (pairwise), not
# Opacus's Tensor.norm, so it needs none of TOL: FASTCLIP_TOL = 1e-5 is 6x the
# worst, and a clip norm 1 % off moves the sum by 1.4e-2 (1400x).
FASTCLIP_TOL = 1e-5


def _clipper(case, clip: float, methods=None, **kw) -> FastClip:
    return FastClip(make_model(SPEC, case.weights, CPU), clip, methods=methods, **kw)


def _xy(case) -> tuple[torch.Tensor, torch.Tensor]:
    return nchw(case.x, CPU), labels(case.y, CPU)


def test_fastclip_plans_are_the_cost_models(case):
    """Shapes read from the torch layers (strided convs' output positions, GroupNorms) give
    the spec's plans; at B 2 the model mixes both methods, so the parity below covers both."""
    got = _clipper(case, case.clip).plans(_xy(case)[0])
    assert got == fastclip_plan.plan_model(SPEC.layers(), 2)
    assert {p.method for p in got.values()} == {"instantiate", "ghost", "gn", "dense"}


def test_fastclip_clipped_sum_matches_reference(case):
    """Through the adapter (the trainer's backward, the timed step's path), the cost model's plan."""
    got = ADAPTER.clipped_sum("fastclip", "wrn16_4", case.weights, case.x, case.y, case.clip)
    assert R.max_rel_error(got, case.want) < FASTCLIP_TOL


@pytest.mark.parametrize("method", ["ghost", "instantiate"])
def test_fastclip_forced_method_matches_reference(case, method):
    clipper = _clipper(case, case.clip, method)
    x, y = _xy(case)
    assert {p.method for p in clipper.plans(x).values() if p.kind == "conv"} == {method}
    assert R.max_rel_error(to_exchange(clipper.clipped_sum(x, y), SPEC), case.want) < FASTCLIP_TOL


def test_fastclip_clipping_is_active(case):
    got = ADAPTER.clipped_sum("fastclip", "wrn16_4", case.weights, case.x, case.y, case.clip * 1.01)
    assert R.max_rel_error(got, case.want) > 10 * FASTCLIP_TOL


def test_fastclip_per_layer_sq_norms_match_reference(case):
    sq = {k: v.numpy() for k, v in _clipper(case, case.clip).per_layer_sq_norms(*_xy(case)).items()}
    assert R.sq_rel_error(sq, case.layer_sq) < FASTCLIP_TOL  # every layer, GroupNorms included
    total = sum(sq.values())
    assert np.abs(total - case.norms ** 2).max() < FASTCLIP_TOL * (case.norms ** 2).max()


def test_fastclip_calibrated_plan_matches_reference(case):
    """Calibration times strided convs' candidates on the batch's own A and G, and
    whatever it picks keeps the clipped sum."""
    clipper = _clipper(case, case.clip)
    x, y = _xy(case)
    notes = clipper.calibrate(x, y, budget_s=1.0, repeats=1)
    assert set(notes["layers"]) == {n for n, p in clipper.plans(x).items() if p.kind == "conv"}
    assert R.max_rel_error(to_exchange(clipper.clipped_sum(x, y), SPEC), case.want) < FASTCLIP_TOL
