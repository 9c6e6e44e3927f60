"""The analysis seam's rendering: every framework's record, one shape, one table."""
from common.report import analysis


def rec(fw, impl, mode="dp", variant="", materialised=False, nbytes=None, top=None, status="ok", **kw):
    r = {"framework": fw, "impl": impl, "variant": variant, "mode": mode, "model": "small", "batch_size": 64,
         "microbatch_size": kw.get("mb"), "status": status, "error": kw.get("error")}
    if status == "ok":
        r["summary"] = {"weight_grad_ops": kw.get("wgrad", []), "top_ops": top or [],
                        "per_example_grads": {"materialised": materialised, "bytes": nbytes},
                        "top_by": kw.get("top_by", "self time")}
    return r


def test_render_has_a_table_per_framework_and_names_each_dp_rows_top_cost():
    rows = [
        rec("torch", "opacus_hooks", materialised=True, nbytes=261 * 2**20,
            top=[{"op": "bmm", "self_s": 0.0421, "share": 0.38, "calls": 4}],
            wgrad=[{"op": "bmm", "shapes": [[64, 288, 256]], "calls": 2, "per_example": True}]),
        rec("torch", "standard", mode="standard", top=[{"op": "convolution_backward", "self_s": 0.01, "share": 0.5}]),
        rec("tf", "tfp_vectorized", variant="graph", materialised=True, nbytes=3 * 2**30,
            top=[{"op": "Conv2DBackpropFilter", "self_s": 0.5, "share": 0.61}]),
        rec("jax", "jax_privacy", mb=16, top=[{"op": "conv_general_dilated", "flops": 2.5e9, "share": 0.4}],
            top_by="FLOPs"),
        rec("tf", "fastclip", variant="xla", status="timeout", error="ran past 900 s"),
    ]
    md = analysis.render(rows)
    assert md.index("### PyTorch") < md.index("### TensorFlow") < md.index("### JAX")
    hooks = next(ln for ln in md.splitlines() if ln.startswith("| small | 64 | opacus_hooks |"))
    assert "1 kinds, 1 per example: bmm 64x288x256 ×2" in hooks and "| yes, 261.0 MiB |" in hooks
    assert "bmm (42.1 ms, 38 %)" in hooks
    assert "| small | 64 | fastclip (xla) | timeout: ran past 900 s |" in md
    assert "**tfp_vectorized (graph)** (small, B 64): top cost Conv2DBackpropFilter (500.0 ms, 61 %); " \
           "per-example grads yes, 3.0 GiB." in md
    assert "**jax_privacy mb=16** (small, B 64): top cost conv_general_dilated (2.50 GFLOP, 40 %)" in md
    assert "**standard**" not in md  # the sentences are for DP rows
    assert "Top ops by FLOPs." in md and "Top ops by self time." in md


def test_cells_for_missing_answers():
    assert analysis.per_example_cell({"per_example_grads": {"materialised": None}}) == "?"
    assert analysis.per_example_cell({"per_example_grads": {"materialised": False, "bytes": None}}) == "no"
    assert analysis.wgrad_cell({}) == "-" and analysis.top_cell({}) == "-"
    assert analysis.fmt_bytes(None) == "?" and analysis.fmt_bytes(512) == "512 B"


def test_schema_1_analyses_without_a_summary_render_nothing_here():
    old = {"framework": "jax", "impl": "standard", "variant": "", "model": "small", "batch_size": 64,
           "microbatch_size": None, "status": "ok", "jaxpr": {}}
    assert analysis.render([old]) == ""
