"""frameworks/tf/analysis.py: TF's profiler op statistics for the study's own steps."""
import pytest

from common.harness.config import RunConfig
from common.reference.spec import get_model

pytestmark = pytest.mark.tf

pytest.importorskip("tensorflow_privacy")
from frameworks.tf import analysis  # noqa: E402


def _analyze(impl, mb=None):
    a = analysis.analyze(RunConfig("tf", impl, "small", 4, mb, "graph", threads=2))
    assert a["status"] == "ok" and a["framework"] == "tf"
    return a


def test_standard_profiles_its_filter_gradients():
    a = _analyze("standard")
    s = a["summary"]
    # two convs, one filter gradient each per step (oneDNN runs it fused with the bias gradient)
    convs = [w for w in s["weight_grad_ops"] if w["op"].startswith("Conv2DBackpropFilter")]
    assert sum(w["calls"] for w in convs) == 2 and sum(w["in_graph"] for w in convs) >= 2
    assert s["per_example_grads"] == {"materialised": False, "bytes": None}
    assert s["top_ops"] and s["profiled_step_s"] > 0


def test_vectorized_optimizer_holds_every_examples_gradient():
    s = _analyze("tfp_vectorized", 1)["summary"]
    spec = get_model("small")
    params = spec.expected_params
    assert s["per_example_grads"] == {"materialised": True, "bytes": 4 * params * 4}
