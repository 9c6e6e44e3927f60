"""frameworks/torch/analysis.py: the profiler's answers for the study's own steps."""
import pytest

from common.harness.config import RunConfig

pytestmark = pytest.mark.torch

pytest.importorskip("opacus")
from frameworks.torch import analysis  # noqa: E402


def _analyze(impl):
    a = analysis.analyze(RunConfig("torch", impl, "small", 4, threads=2))
    assert a["status"] == "ok" and a["framework"] == "torch" and a["impl"] == impl
    return a["summary"]


def test_standard_makes_weight_grads_in_the_conv_backward_and_nothing_per_example():
    s = _analyze("standard")
    ops = {w["op"] for w in s["weight_grad_ops"]}
    assert "convolution_backward" in ops and not any(w["per_example"] for w in s["weight_grad_ops"])
    assert s["per_example_grads"]["materialised"] is False
    assert s["top_ops"] and 0 < s["profiled_step_s"]
    assert sum(o["share"] for o in s["top_ops"]) <= 1.0 + 1e-9


def test_opacus_hooks_keeps_per_example_grads_built_by_batched_products():
    s = _analyze("opacus_hooks")
    assert s["per_example_grads"]["materialised"] and s["per_example_grads"]["bytes"] > 0
    assert any(w["per_example"] for w in s["weight_grad_ops"])  # Opacus's einsums over the batch


def test_a_failed_configuration_is_an_error_row(capsys):
    assert analysis.main(["--impl", "no_such_impl"]) == 0
    assert '"status": "error"' in capsys.readouterr().out
