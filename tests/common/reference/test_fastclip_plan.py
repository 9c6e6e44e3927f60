"""The fast-clipping cost model (common/reference/fastclip_plan.py): plain Python, no framework."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from common.reference import fastclip_plan as fp
from common.reference.spec import MODELS

ROOT = Path(__file__).resolve().parents[3]


def test_imports_no_framework():
    code = ("import sys, common.reference.fastclip_plan; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('jax', 'torch', 'tensorflow')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


@pytest.mark.parametrize("t,d,p,want", [
    (1024, 27, 32, "instantiate"),    # small conv0: 2T^2 = 2.1M > pd = 864
    (256, 288, 64, "instantiate"),    # small conv1
    (256, 1152, 256, "ghost"),        # medium conv2: 2T^2 = 131k <= pd = 295k
    (16, 4608, 512, "ghost"),         # a late, narrow-spatial conv
])
def test_literature_rule(t, d, p, want):
    assert fp.literature_choice(t, d, p) == want


@pytest.mark.parametrize("model", ["medium", "small"])  # the chain CNNs (wrn16_4: test_wrn_plans)
@pytest.mark.parametrize("batch", [1, 7, 64, 256])
def test_study_models_instantiate_every_conv(model, batch):
    plans = fp.plan_model(MODELS[model].layers(), batch)
    for layer in MODELS[model].layers():
        plan = plans[layer.name]
        assert (plan.positions, plan.fan_in, plan.features) == (layer.positions, layer.fan_in, layer.features)
        if layer.kind == "dense":
            assert plan.method == "dense"  # dense layers never instantiate
        else:
            # Instantiated grads double as the clipped sum: fewer FLOPs than
            # ghost + book-keeping, and the estimate says faster, even for
            # medium conv2 where the literature rule says ghost.
            assert plan.method == "instantiate", (layer.name, plan.estimates)
            est = plan.estimates
            assert est["instantiate"].flops < est["ghost"].flops
            assert 1 <= plan.chunk <= batch and plan.chunk & (plan.chunk - 1) == 0


@pytest.mark.parametrize("batch", [64, 256])
def test_measured_chunks(batch):
    # The chunk sizes measured best on the study's CPU (see CHUNK_BYTES).
    small = fp.plan_model(MODELS["small"].layers(), batch)
    medium = fp.plan_model(MODELS["medium"].layers(), batch)
    assert (small["conv0"].chunk, small["conv1"].chunk) == (8, 4)
    assert [medium[f"conv{i}"].chunk for i in range(3)] == [2, 2, 2]
    assert fp.plan_model(MODELS["small"].layers(), 1)["conv0"].chunk == 1


def test_ghost_wins_where_per_example_grads_are_big():
    # 2x2 output positions, 4608 x 512 kernel: T^2 tiny, d*p huge.
    plan = fp.plan_layer("late", "conv", 4, 4608, 512, 64)
    assert plan.method == "ghost"
    assert plan.estimates["ghost"].seconds < plan.estimates["instantiate"].seconds


def test_estimates_formulas():
    est = fp.estimates(positions=256, fan_in=288, features=64, batch=8, chunk=2)
    assert est["instantiate"].flops == 2 * 8 * 256 * 288 * 64 + 4 * 8 * 288 * 64
    assert est["instantiate"].extra_bytes == 8 * 288 * 64 * 4
    assert est["ghost"].flops == 2 * 8 * 256**2 * (288 + 64) + 2 * 8 * 256**2 + 2 * 8 * 256 * 288 * 64
    assert est["ghost"].extra_bytes == 2 * 2 * 256**2 * 4


def test_memory_limit_forces_ghost():
    layer = MODELS["medium"].layers()[2]  # conv2: 256 x 295k floats of per-example grads at B=256
    plan = fp.plan_layer(layer.name, "conv", layer.positions, layer.fan_in, layer.features, 256,
                         memory_limit_bytes=100 * 2**20)
    assert plan.method == "ghost" and "memory" in plan.reason


def test_overrides():
    layers = MODELS["small"].layers()
    plans = fp.plan_model(layers, 64, methods="ghost", chunks={"conv1": 3})
    assert [plans[n].method for n in ("conv0", "conv1", "dense0", "dense1")] == ["ghost", "ghost", "dense", "dense"]
    assert plans["conv1"].chunk == 3 and plans["conv1"].reason == "forced"
    plans = fp.plan_model(layers, 2, methods={"conv0": "ghost"}, chunks=16)
    assert plans["conv0"].method == "ghost" and plans["conv1"].method == "instantiate"
    assert plans["conv0"].chunk == 2  # never more than the batch


def test_bad_overrides():
    layers = MODELS["small"].layers()
    with pytest.raises(ValueError, match="unknown layers"):
        fp.plan_model(layers, 8, methods={"conv9": "ghost"})
    with pytest.raises(ValueError, match="unknown method"):
        fp.plan_model(layers, 8, methods="fast")
    with pytest.raises(ValueError, match="dense layers always"):
        fp.plan_model(layers, 8, methods={"dense0": "instantiate"})
    with pytest.raises(ValueError, match="chunk must be positive"):
        fp.plan_layer("c", "conv", 4, 9, 2, 8, chunk=0)
    with pytest.raises(ValueError, match="kind"):
        fp.plan_layer("c", "lstm", 4, 9, 2, 8)


def test_wrn_plans():
    """WRN-16-4 at B 64: every weighted layer planned (30: 16 convs, 13
    GroupNorms, the head), GroupNorms always per-channel, the strided convs
    planned on their output positions (stride-2 s1b0_conv0: 16 x 16), and the
    8 x 8 stage's wide convs ghost (per-example grads of 2304 x 256 floats)."""
    layers = MODELS["wrn16_4"].layers()
    plans = fp.plan_model(layers, 64)
    assert len(plans) == 30 and sum(la.params for la in layers) == MODELS["wrn16_4"].expected_params
    assert {p.method for p in plans.values() if p.kind == "gn"} == {"gn"}
    assert sum(p.kind == "gn" for p in plans.values()) == 13 and sum(p.kind == "conv" for p in plans.values()) == 16
    conv0 = plans["s1b0_conv0"]
    assert (conv0.positions, conv0.fan_in, conv0.features) == (256, 576, 128)
    assert plans["s2b1_conv1"].method == "ghost" and plans["stem"].method == "instantiate"
    assert fp.plan_model(layers, 64, methods="ghost")["s0b0_gn0"].method == "gn"  # a global method is the convs'
    with pytest.raises(ValueError, match="GroupNorm layers always"):
        fp.plan_model(layers, 8, methods={"s0b0_gn0": "ghost"})


def test_model_gap_names_what_a_port_does_not_handle():
    assert fp.model_gap(MODELS["wrn16_4"]) is None and fp.model_gap(MODELS["small"]) is None
    assert fp.model_gap(MODELS["wrn16_4"], fp.SUPPORTED_OPS - {"gn", "add"}) == \
        "fastclip has no plan for add, gn (model wrn16_4)"
    assert fp.model_gap(MODELS["vit_tiny"], fp.SUPPORTED_OPS | fp.VIT_OPS) is None  # the ViT's ops are VIT_OPS
    assert "attention" in fp.model_gap(MODELS["vit_tiny"])


def test_conv_rule():
    ok = dict(kernel_size=(3, 3), strides=(2, 2), padding=(1, 1), dilations=(1, 1), groups=1)
    fp.check_conv("c", "api", **ok)
    fp.check_conv("c", "api", **{**ok, "kernel_size": (1, 1), "padding": (0, 0)})
    for bad in ({"padding": None}, {"dilations": (2, 2)}, {"groups": 2}, {"kernel_size": (3,)}):
        with pytest.raises(ValueError, match="unsupported layer 'c' \\(api\\)"):
            fp.check_conv("c", "api", **{**ok, **bad})
    with pytest.raises(ValueError, match="NCHW"):
        fp.check_conv("c", "api", **ok, other="NCHW")
    assert fp.same_padding((3, 3), (1, 1)) == (1, 1) and fp.same_padding((1, 1), (1, 1)) == (0, 0)
    assert fp.same_padding((3, 3), (2, 2)) is None and fp.same_padding((2, 2), (1, 1)) is None
    fp.check_gn("g", "api", affine=True)
    with pytest.raises(ValueError, match="per-channel scale and shift"):
        fp.check_gn("g", "api", affine=False)


def test_registry_finds_a_rule_by_exact_class():
    """``register`` puts one instance of a rule under each class it names; a layer
    of another class (a subclass included: its call may differ) is the one-line
    unsupported error."""
    class Layer:
        pass

    class Other(Layer):
        pass

    rules = fp.Registry()

    @rules.register(Layer)
    class Rule:
        pass

    assert isinstance(rules.of("a", Layer()), Rule) and rules.of("a", Layer()) is rules.of("b", Layer())
    with pytest.raises(ValueError) as err:
        rules.of("a/b", Other())
    assert str(err.value) == "fastclip: unsupported layer 'a/b' (Other)"


def test_kept_floats_by_method():
    """What a plan keeps per example: an instantiated conv's kernel grads, a GroupNorm's scale and shift grads."""
    plans = fp.plan_model(MODELS["wrn16_4"].layers(), 4, methods="instantiate")
    got = {p.method: fp.kept_floats(p.method, p.fan_in, p.features) for p in plans.values()
           if p.name in ("stem", "s0b0_gn0", "head")}
    assert got == {"instantiate": 3 * 3 * 3 * 16, "gn": 2 * 16, "dense": 0}
    assert fp.kept_floats("ghost", 27, 16) == 0
    vit = fp.plan_model(MODELS["vit_tiny"].layers(), 4)  # width 16, 17 tokens, pos: 17 rows
    assert {n: fp.kept_floats(vit[n].method, vit[n].fan_in, vit[n].features) for n in ("pos", "cls", "b0_ln0")} == \
        {"pos": 17 * 16, "cls": 16, "b0_ln0": 2 * 16}


# --- calibration ---------------------------------------------------------------

def _conv(batch: int, name: str = "conv1", model: str = "small") -> fp.LayerPlan:
    layer = next(l for l in MODELS[model].layers() if l.name == name)
    return fp.plan_model([layer], batch)[name]


def test_candidates_model_plan_first_then_larger_chunks_within_memory_then_the_other_method():
    plan = _conv(256)  # small conv1: T 256, d 288; cost model chunk 4
    got = [fp.label(c) for c in fp.candidates(plan)]
    assert got[0] == fp.label(plan) == "instantiate/4"
    # 256 * 288 * 4 B = 295 KB per example: chunks up to 113 fit 32 MiB; ghost's
    # estimate is 3.5x instantiation's, beyond CALIBRATION_SLACK: not timed
    est = plan.estimates
    assert est["ghost"].seconds > fp.CALIBRATION_SLACK * est["instantiate"].seconds
    assert got[1:] == ["instantiate/8", "instantiate/16", "instantiate/32", "instantiate/64"]
    assert [fp.label(c) for c in fp.candidates(_conv(6))] == ["instantiate/4", "instantiate/6"]
    # a plan whose other method is estimated faster (forced ghost here) times it
    forced = fp.plan_layer("conv1", "conv", 256, 288, 64, 6, method="ghost", chunk=2)
    assert [fp.label(c) for c in fp.candidates(forced)] == ["ghost/2", "instantiate/4", "instantiate/6",
                                                            "instantiate/2"]
    dense = fp.plan_model([MODELS["small"].layers()[-1]], 8)["dense1"]
    assert fp.candidates(dense) == [dense]


def test_calibrate_picks_the_fastest_and_records_every_timing():
    plan = _conv(64)
    cost = {"instantiate/4": 8.0, "instantiate/8": 5.0, "instantiate/16": 6.0, "instantiate/32": 7.0,
            "instantiate/64": 9.0}
    plans, notes = fp.calibrate({"conv1": plan}, lambda p: cost[fp.label(p)] / 1e3, budget_s=10.0)
    assert fp.label(plans["conv1"]) == "instantiate/8"
    assert plans["conv1"].reason == "calibrated: fastest of 5 timed"
    assert notes["layers"]["conv1"] == {"timed_ms": cost, "model": "instantiate/4", "chosen": "instantiate/8"}
    # the cost model's plan measured fastest: it stays, with its own reason
    cost["instantiate/4"] = 1.0
    plans, _ = fp.calibrate({"conv1": plan}, lambda p: cost[fp.label(p)] / 1e3, budget_s=10.0)
    assert plans["conv1"] == plan


def test_calibrate_stops_at_its_budget_but_always_times_the_model_plan():
    now = [0.0]

    def time_plan(p):  # each timing takes 1 s of the fake clock
        now[0] += 1.0
        return {"instantiate/4": 3.0, "instantiate/8": 2.0}.get(fp.label(p), 0.5)

    plans, notes = fp.calibrate({"conv0": _conv(64, "conv0"), "conv1": _conv(64)}, time_plan, budget_s=1.5,
                                clock=lambda: now[0])
    assert list(notes["layers"]["conv0"]["timed_ms"]) == ["instantiate/8", "instantiate/16"]  # then out of budget
    assert list(notes["layers"]["conv1"]["timed_ms"]) == ["instantiate/4"]  # only the model's plan
    assert fp.label(plans["conv1"]) == "instantiate/4" and notes["took_s"] == 3.0


# --- the ViTs: dense layers on token sequences, LayerNorm, embeddings ----------

def test_vit_plans():
    """ViT (T 65 tokens) at B 64: every weighted layer planned (37: 25 dense
    layers on sequences, 9 LayerNorms, 2 embeddings, the head); sequence
    dense layers choose ghost or instantiate by the conv estimates on their
    T, fan-in and width; LayerNorms and embeddings are always exact."""
    layers = MODELS["vit"].layers()
    plans = fp.plan_model(layers, 64)
    kinds = [p.kind for p in plans.values()]
    assert len(plans) == 37 and sum(la.params for la in layers) == MODELS["vit"].expected_params
    assert (kinds.count("seq_dense"), kinds.count("layernorm"), kinds.count("embed"), kinds.count("dense")) == (25, 9, 2, 1)
    q, pe = plans["b0_q"], plans["patch_embed"]
    assert (q.positions, q.fan_in, q.features) == (65, 128, 128) and (pe.positions, pe.fan_in) == (64, 48)
    assert q.estimates == fp.estimates(65, 128, 128, 64, q.chunk)  # the conv cost model, 1x1 with T tokens
    # A is the layer's input (no unfolded copy besides): per example
    # 4 B * (65*128 + 128*128 + 65*128) = 132 kB; 16 of them fit CHUNK_BYTES (32: 4.2 MB do not)
    assert q.chunk == 16
    assert {p.method for p in plans.values() if p.kind == "layernorm"} == {"layernorm"}
    assert {p.method for p in plans.values() if p.kind == "embed"} == {"embed"} and plans["head"].method == "dense"
    forced = fp.plan_model(layers, 64, methods="instantiate")  # a global method: convs and sequence dense layers
    assert {p.method for p in forced.values() if p.kind == "seq_dense"} == {"instantiate"}
    assert forced["b0_ln0"].method == "layernorm" and forced["pos"].method == "embed"
    with pytest.raises(ValueError, match="LayerNorm layers always"):
        fp.plan_model(layers, 8, methods={"b0_ln0": "ghost"})
    with pytest.raises(ValueError, match="embedding layers always"):
        fp.plan_model(layers, 8, methods={"pos": "instantiate"})


@pytest.mark.parametrize("model,tokens,want", [("vit_p8", 17, "ghost"), ("vit", 65, "ghost"),
                                               ("vit_p2", 257, "instantiate")])
def test_vit_sequence_length_sweep_crosses_the_cost_models_boundary(model, tokens, want):
    """At B 64 the attention projections (d = p = 128) are ghost while T^2 is
    small against d*p and instantiated at T 257 (the ghost norm's 2BT^2(d+p)
    then outgrows instantiation's 2BTdp + kept grads): what the sequence-length
    sweep is for. The estimate says so, layer_timing measures it."""
    plan = fp.plan_model(MODELS[model].layers(), 64)["b1_k"]
    assert plan.positions == tokens and plan.method == want
    other = "instantiate" if want == "ghost" else "ghost"
    assert plan.estimates[want].seconds < plan.estimates[other].seconds


def test_sequence_dense_layers_are_calibrated_like_convs():
    plan = fp.plan_model(MODELS["vit_p2"].layers(), 64)["b0_fc1"]
    cands = [fp.label(c) for c in fp.candidates(plan)]
    assert cands[0] == fp.label(plan) == "instantiate/4" and len(cands) > 1
    plans, notes = fp.calibrate({"b0_fc1": plan, "b0_ln0": fp.plan_model(MODELS["vit_p2"].layers(), 64)["b0_ln0"]},
                                lambda p: 1.0 if p == plan else 0.5, budget_s=10.0)
    assert plans["b0_fc1"] != plan and list(notes["layers"]) == ["b0_fc1"]  # LayerNorm: nothing to choose


def test_model_gap_refuses_the_vit_until_the_ports_tap_its_ops():
    """No port handles the ViT's ops yet: a ViT is a truthful unsupported row."""
    assert fp.model_gap(MODELS["vit_tiny"]) == \
        "fastclip has no plan for attention, concat, embed, gelu, layernorm, patches, token (model vit_tiny)"
