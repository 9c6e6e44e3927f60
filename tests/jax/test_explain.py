"""The automatic JAXPR/HLO analysis (issue 7) finds what the seed found by hand."""
import json

import pytest

from common.report import explain as common_explain
from common.harness import threads
from common.reference.spec import MODELS
from frameworks.jax import explain

pytestmark = pytest.mark.jax

B = 4
LAYERS = ["conv0", "conv1", "dense0", "dense1"]


@pytest.fixture(scope="module")
def standard():
    return explain.analyze("standard", "small", B)


@pytest.fixture(scope="module")
def vmapped():
    """jax_privacy with microbatch = B: the whole batch vmapped at once."""
    return explain.analyze("jax_privacy", "small", B, B)


@pytest.fixture(scope="module")
def default_mb():
    """jax_privacy at its default microbatch_size None: one vmap, no loop."""
    return explain.analyze("jax_privacy", "small", B, None)


@pytest.fixture(scope="module")
def looped():
    """jax_privacy with microbatch 1: one example per loop iteration (JAXPR only)."""
    return explain.analyze("jax_privacy", "small", B, 1, hlo=False)


def test_kernel_forms():
    k = (3, 3, 32, 64)
    assert explain.kernel_form((3, 3, 32, 64), k) == ("kernel", 1)
    assert explain.kernel_form((64, 3, 32, 3), k) == ("kernel", 1)
    assert explain.kernel_form((8, 3, 3, 32, 64), k) == ("batched", 8)
    assert explain.kernel_form((3, 3, 32, 8, 64), k) == ("batched", 8)
    assert explain.kernel_form((8, 288, 64), k) == ("flat", 8)
    assert explain.kernel_form((64, 256, 4096), (4096, 256)) == ("batched", 64)  # (k, out, in)
    assert explain.kernel_form((64, 256, 4096), (4096, 256), max_k=32) is None  # k counts examples <= B
    # fastclip's unfolded conv0 input (chunk 32, T=1024, d=27) is not 1024 conv0 (27 x 32) gradients
    assert explain.kernel_form((32, 1024, 27), (3, 3, 3, 32), max_k=64) is None
    # the seed's feature_group_count=2 output: only a grouped conv's output counts as folded
    assert explain.kernel_form((3, 3, 32, 128), k, groups=2) == ("folded", 2)
    assert explain.kernel_form((3, 3, 32, 128), k) is None
    assert explain.kernel_form((3, 3, 32, 128), k, groups=4) is None
    # medium: conv2's folded grad (3,3,128,256*2) is not conv1's (3,3,64,128) folded 8 times
    medium = MODELS["medium"].layers()
    assert explain.match_layer((3, 3, 128, 512), medium, groups=2)[:3:2] == (medium[2], 2)
    assert explain.match_layer((3, 3, 128, 512), medium) is None
    # activations of the small model are never mistaken for kernel gradients
    layers = MODELS["small"].layers()
    for act in [(B, 32, 32, 32), (B, 16, 16, 64), (B, 8, 8, 64), (B, 4096), (B, 256), (B, 10)]:
        assert explain.match_layer(act, layers, groups=B) is None, act


def test_standard_materialises_no_per_example_gradient(standard):
    j = standard["jaxpr"]
    assert standard["status"] == "ok" and standard["mode"] == "standard"
    assert not any(e["materialised"] for e in j["per_example"].values())
    assert j["per_example_bytes_at_once"] == 0
    wc = j["weight_grad_convs"]
    # the seed's standard JAXPR: one conv per layer, batch summed inside the op
    assert wc == {"count": 2, "feature_group_counts": [1], "batch_group_counts": [1], "contracted": [B]}
    assert {c["layer"] for c in j["convs"] if c["role"] == "weight_grad"} == {"conv0", "conv1"}
    assert j["loops"] == []


def test_vmapped_jax_privacy_materialises_per_example_gradients(vmapped):
    j = vmapped["jaxpr"]
    assert vmapped["status"] == "ok" and vmapped["microbatch_size"] == B
    for name in LAYERS:
        e = j["per_example"][name]
        assert e["materialised"] and e["examples_at_once"] == B, (name, e)
        assert e["bytes"] == B * e["kernel_bytes"]
        assert e["examples_per_step"] == B
    # the seed's clipped JAXPR: conv weight grads with feature_group_count = batch
    wc = j["weight_grad_convs"]
    assert wc["count"] == 2 and wc["feature_group_counts"] == [B] and wc["contracted"] == [1]
    conv1 = next(c for c in j["convs"] if c.get("layer") == "conv1")
    assert conv1["out"] == [3, 3, 32, 64 * B] and conv1["form"] == "folded" and conv1["k"] == B
    dense0 = next(d for d in j["dots"] if d.get("layer") == "dense0")
    assert sorted(dense0["out"]) == sorted([B, 4096, 256])
    # the largest intermediate is the per-example dense0 gradient
    assert j["largest"][0]["bytes"] == B * 4096 * 256 * 4
    # XLA keeps the grouped convolutions
    hlo = [c for c in vmapped["xla"]["convs"] if c["role"] == "weight_grad"]
    assert len(hlo) == 2 and {c["feature_group_count"] * c["batch_group_count"] for c in hlo} == {B}


def test_default_microbatch_is_one_vmap_without_a_loop(default_mb, vmapped):
    j, v = default_mb["jaxpr"], vmapped["jaxpr"]
    assert default_mb["status"] == "ok" and default_mb["microbatch_size"] is None
    assert j["loops"] == []
    # microbatch_size = B is the same vmap inside optax's one-trip fori_loop
    assert [lp["trips"] for lp in v["loops"] if lp["primitive"] == "while"] == [1]
    for name in LAYERS:
        e = j["per_example"][name]
        assert e["materialised"] and e["examples_at_once"] == B and e["examples_per_step"] == B, (name, e)
    assert j["weight_grad_convs"] == v["weight_grad_convs"]
    assert j["conv_dot_flops"] == v["conv_dot_flops"]


def test_eigen_layout():
    assert explain.eigen_layout("b01f_01io->b01f") and explain.eigen_layout("b0f_0io->b0f")
    for labels in ("f01b_i01o->01bf", "b01f_01oi->b01f", "b10f_10io->b10f", "bf01_oi01->bf01", None):
        assert not explain.eigen_layout(labels), labels


def test_one_trip_loop_keeps_the_weight_grad_convs_out_of_eigen(default_mb, vmapped):
    """Why mb = B is slower than the default on XLA:CPU: ConvCanonicalization
    walks only the entry computation; with the loop the backward convs are in
    its body then (the loop goes later), so they keep a non-Eigen layout."""
    if default_mb["device"] != "cpu":
        pytest.skip("XLA:CPU's pass")
    assert all(c["eigen_layout"] for c in default_mb["xla"]["convs"])
    assert default_mb["xla"]["ops"]["convolution_not_eigen_layout"] == 0
    off = [c for c in vmapped["xla"]["convs"] if not c["eigen_layout"]]
    assert {c["layer"] for c in off if c["role"] == "weight_grad"} == {"conv0", "conv1"}
    assert vmapped["xla"]["ops"]["convolution_not_eigen_layout"] == len(off) >= 2


def test_direct_row_is_analysed_like_the_default():
    a = explain.analyze("direct_jax_privacy", "small", B, hlo=False)
    assert a["status"] == "ok" and a["mode"] == "dp" and a["jaxpr"]["loops"] == []
    assert all(a["jaxpr"]["per_example"][n]["examples_at_once"] == B for n in LAYERS)


def test_looped_jax_privacy_one_example_per_iteration(looped):
    j = looped["jaxpr"]
    assert [lp["trips"] for lp in j["loops"] if lp["primitive"] == "while"] == [B]
    e = j["per_example"]["conv1"]
    assert e["materialised"] and e["examples_at_once"] == 1 and e["examples_per_step"] == B
    assert e["per_step_bytes"] == B * e["kernel_bytes"]
    assert j["weight_grad_convs"]["contracted"] == [1]
    assert "xla" not in looped


def test_same_conv_dot_flops_but_dp_does_more_in_xla(standard, vmapped, looped):
    s, v = standard["xla"], vmapped["xla"]
    assert s["cost"]["flops"] > 0 and v["cost"]["flops"] > 0 and s["cost"]["bytes accessed"] > 0
    assert s["memory"]["temp_size"] > 0
    assert v["memory"]["temp_size"] > s["memory"]["temp_size"]
    # per-example or not, the convs and dots do the same arithmetic (loop-weighted)
    flops = [a["jaxpr"]["conv_dot_flops"] for a in (standard, vmapped, looped)]
    assert max(flops) / min(flops) < 1.01, flops
    json.dumps([standard, vmapped, looped])  # plain JSON


def test_render_states_the_facts(standard, vmapped, looped):
    err = {"framework": "jax", "impl": "fastclip", "model": "small", "batch_size": B, "microbatch_size": None,
           "status": "error", "error": "ImportError: no fastclip"}
    md = common_explain.render_jax([standard, vmapped, looped, err])
    rows = {ln.split("|")[1].strip() + " " + ln.split("|")[2].strip(): ln for ln in md.splitlines()
            if ln.startswith("| ") and not ln.startswith("| impl")}
    assert "| none |" in rows["standard -"] and "fgc 1, sums 4 ex." in rows["standard -"]
    assert "fgc 4, sums 1 ex." in rows["jax_privacy 4"]
    assert f"conv0, conv1, dense0, dense1: {B} ex. at once" in rows["jax_privacy 4"]
    assert "1 ↻4" in "".join(rows)  # the looped row names its trip count
    assert "error: ImportError: no fastclip" in rows["fastclip -"]
    assert "**jax_privacy mb=4** materialises per-example kernel gradients for conv0, conv1, dense0, dense1" in md
    assert "**standard** materialises no per-example weight gradient" in md
    assert "counts a loop body" in md and "↻" in md


def test_cli_runs_in_the_jax_env():
    a = common_explain.run_one("jax", "standard", "", "small", 2)
    assert a["status"] == "ok", a
    assert threads.jax_xla_flags() in a["xla_flags"] and a["xla"]["cost"]["flops"] > 0  # the workers' flags
    assert not any(e["materialised"] for e in a["jaxpr"]["per_example"].values())
    # the seam's summary: standard's weight grads sum the batch inside each op, nothing per example
    s = a["summary"]
    assert s["per_example_grads"] == {"materialised": False, "bytes": None}
    assert not any(w["per_example"] for w in s["weight_grad_ops"])
    assert {w["op"].split("→ ")[1].split()[0] for w in s["weight_grad_ops"]} == set(LAYERS)  # every layer's


def test_summary_of_the_vmapped_default_names_its_per_example_grads(vmapped):
    from frameworks.jax.analysis import summary
    s = summary(vmapped)
    assert s["per_example_grads"]["materialised"] and s["per_example_grads"]["bytes"] > 0
    assert any(w["per_example"] for w in s["weight_grad_ops"])
    assert s["top_ops"][0]["flops"] == max(o["flops"] for o in s["top_ops"])
