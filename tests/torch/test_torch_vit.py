"""The ViT in PyTorch beyond what the shared parity, forward and step tests
(tests/torch/test_torch_adapter.py, test_torch_phases.py, test_torch_wrn.py's
per-sample rules) check on vit_tiny: Opacus accepts the model as built, the
embeddings see batched indices, an op without a torch rule is refused, and
fastclip runs it and matches the float64 reference."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

from opacus.validators import ModuleValidator  # noqa: E402

from common.reference import fastclip_plan  # noqa: E402
from common.reference import float64 as reference  # noqa: E402
from common.reference.exchange import make_batch  # noqa: E402
from common.reference.spec import OPS, get_model  # noqa: E402
from frameworks.torch import ADAPTER, fastclip, models  # noqa: E402
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


# fastclip against float64 on vit_tiny B 2 (seed 0, torch 2.13 CPU): measured 6.6e-7 (the B 3
# cases of test_torch_fastclip.py: 6.0e-7); 1e-5 (that file's TOL) is ~15x that, and a clip
# norm 1 % off moves the sum by 8.2e-3.
FASTCLIP_TOL = 1e-5


def test_fastclip_runs_the_vit_and_matches_the_reference():
    """fastclip on the ViT (issue 37): torch's rules cover every ViT op (the common
    plan's gap, asked with torch's SUPPORTED_OPS, is empty, while the ops every port
    covers still lack attention's), and through the adapter (the timed step's
    path) its clipped sum is the float64 reference's; a clip norm 1 % off is not."""
    assert fastclip_plan.model_gap(SPEC, fastclip.SUPPORTED_OPS) is None
    assert "attention" in fastclip_plan.model_gap(SPEC)
    case = reference.clip_case("vit_tiny", 2)
    got = ADAPTER.clipped_sum("fastclip", "vit_tiny", case.weights, case.x, case.y, case.clip)
    assert reference.max_rel_error(got, case.want) < FASTCLIP_TOL
    off = ADAPTER.clipped_sum("fastclip", "vit_tiny", case.weights, case.x, case.y, case.clip * 1.01)
    assert reference.max_rel_error(off, case.want) > 10 * FASTCLIP_TOL
