"""The ports' shared half of fastclip's per-layer timing (common/harness/layer_timing.py):
what is timed per layer kind, and the record's layout."""
from common.harness import layer_timing as harness
from common.reference.fastclip_plan import plan_layer


def test_time_layer_times_each_method_at_its_plan_and_an_exact_kind_once():
    seq = plan_layer("b0_q", "seq_dense", 65, 128, 128, 4, method="ghost", chunk=2)
    calls = []

    def clip(p):
        return lambda: calls.append((p.method, p.chunk))

    def forced(m):
        return plan_layer("b0_q", "seq_dense", 65, 128, 128, 4, method=m, chunk=1)
    secs = harness.time_layer(seq, lambda: None, clip, 1, lambda _: None, forced=forced)
    assert set(secs) == {"standard", "instantiate", "ghost"}
    assert set(calls) == {("instantiate", 1), ("ghost", 2)}  # its own method at its plan, the other forced
    ln = plan_layer("b0_ln0", "layernorm", 65, 128, 128, 4)
    assert set(harness.time_layer(ln, lambda: None, clip, 1, lambda _: None)) == {"standard", "fastclip"}
    # a method a port cannot time (clip gives None) is left out, not timed as something else
    assert set(harness.time_layer(seq, lambda: None, lambda p: None if p.method == "ghost" else clip(p), 1,
                                  lambda _: None, forced=forced)) == {"standard", "instantiate"}
    rec = harness.record("jax", "vit", 4, 1, [harness.row(seq, secs), harness.row(ln, {"standard": 1.0})])
    assert [r["layer"] for r in rec["layers"]] == ["b0_q"] and [r["layer"] for r in rec["single_layers"]] == ["b0_ln0"]
    assert rec["layers"][0]["chosen"] == "ghost" and "chosen" not in rec["single_layers"][0]


def test_shared_compiles_once_per_key():
    compiled = []
    shared = harness.Shared(lambda fn: compiled.append(fn) or fn)
    f, g = (lambda: 1), (lambda: 2)
    assert shared.get(("q", "ghost"), f) is f and shared.get(("q", "ghost"), g) is f  # the same key: f again
    assert shared.get(("fc1", "ghost"), g) is g and compiled == [f, g]
