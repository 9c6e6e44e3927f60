"""The ViT in PyTorch beyond what the shared parity, forward and step tests
(tests/torch/test_torch_adapter.py, test_torch_phases.py, test_torch_wrn.py's
per-sample rules) check on vit_tiny: Opacus accepts the model as built, the
embeddings see batched indices, an op without a torch rule is refused, and
fastclip gives an honest unsupported row."""
from __future__ import annotations

import time

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

from opacus.validators import ModuleValidator  # noqa: E402

from common.harness import worker  # noqa: E402
from common.harness.adapter import Unsupported  # noqa: E402
from common.harness.config import PRESETS, RunConfig  # noqa: E402
from common.reference import fastclip_plan  # noqa: E402
from common.reference.exchange import init_weights, make_batch  # noqa: E402
from common.reference.spec import OPS, get_model  # noqa: E402
from frameworks.torch import ADAPTER, models  # noqa: E402
from frameworks.torch.models import GraphNet, nchw  # noqa: E402

pytestmark = pytest.mark.torch  # warning filters: tests/torch/conftest.py
SPEC = get_model("vit_tiny")


def test_module_validator_accepts_the_vit():
    """What make_private runs first (PrivacyEngine.validate, strict): no module
    it refuses. Attention is Linears around scaled_dot_product_attention, not
    nn.MultiheadAttention, which it does refuse (the control)."""
    assert ModuleValidator.validate(GraphNet(SPEC), strict=True) == []
    assert ModuleValidator.validate(torch.nn.MultiheadAttention(16, 2), strict=False)


def test_embeddings_look_up_batched_contiguous_indices():
    """Opacus reads B off the index tensor's first axis (grad and norm samplers,
    ExpandedWeights), and its norm sampler .view()s the indices."""
    net = GraphNet(SPEC)
    seen = {}
    for name in ("cls", "pos"):
        getattr(net, name).register_forward_pre_hook(lambda m, args, name=name: seen.setdefault(name, args[0]))
    xn, _ = make_batch(SPEC, 3)
    net(nchw(xn, torch.device("cpu")))
    for name, idx in seen.items():
        rows = SPEC.node(name).rows
        assert idx.shape == (3, rows) and idx.is_contiguous()
        assert torch.equal(idx, torch.arange(rows).expand(3, rows))


def test_every_op_has_a_torch_rule_and_a_missing_one_is_refused(monkeypatch):
    assert set(models.LAYERS) | set(models.FUNCTIONS) == set(OPS)
    monkeypatch.delitem(models.FUNCTIONS, "gelu")
    with pytest.raises(ValueError, match="b0_gelu: torch has no rule for op 'gelu'"):
        GraphNet(SPEC)


def test_fastclip_is_an_unsupported_row_with_the_plans_reason():
    """fastclip on the ViT is wave 2's: until its ports tap the ViT's ops,
    ``fastclip_plan.model_gap`` says why, and the worker records that as an
    ``unsupported`` row, not an error or a wrong sum."""
    gap = fastclip_plan.model_gap(SPEC)
    assert gap and "attention" in gap
    tiny = PRESETS["tiny"]
    cfg = RunConfig("torch", "fastclip", "vit_tiny", tiny.batch_sizes[0], threads=2, timing=tiny.timing).validate()
    out = worker.run(cfg, time.monotonic())
    assert (out["status"], out["error"]) == ("unsupported", f"Unsupported: {gap}")
    xn, yn = make_batch(SPEC, 2)
    with pytest.raises(Unsupported, match="fastclip has no plan for"):
        ADAPTER.clipped_sum("fastclip", "vit_tiny", init_weights(SPEC), xn, yn, 1.0)
