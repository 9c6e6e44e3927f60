"""Phases of the PyTorch/Opacus steps (RunConfig.phases): the documented
prefixes, in order, run on the tiny config, update nothing and leave Opacus
ready for the timed step."""
from __future__ import annotations

import time

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

from common.harness import worker  # noqa: E402
from common.harness.adapter import FULL_STEP_PHASE  # noqa: E402
from common.harness.config import PRESETS, RunConfig  # noqa: E402
from frameworks.torch import ADAPTER  # noqa: E402
from common.reference.exchange import init_weights, make_batch  # noqa: E402
from common.reference.spec import get_model  # noqa: E402
from frameworks.torch import steps  # noqa: E402
from frameworks.torch.models import labels, nchw  # noqa: E402
from frameworks.torch.steps import IMPLS  # noqa: E402
from tests.phase_checks import check_phase_times  # noqa: E402

pytestmark = pytest.mark.torch  # warning filters: tests/torch/conftest.py

TINY = PRESETS["tiny"]
NAMES = {
    "standard": ["forward", "backward"],
    "opacus_hooks": ["forward", "backward", "clip", "noise"],
    "opacus_functorch": ["forward", "backward", "clip", "noise"],
    "opacus_ew": ["forward", "backward", "clip", "noise"],
    "opacus_ghost": ["forward", "backward+clip", "noise"],
    "fastclip": ["forward", "backward+clip", "noise"],
}


def cfg(impl, model=TINY.models[0], **kw):
    return RunConfig("torch", impl, model, TINY.batch_sizes[0], threads=2, timing=TINY.timing,
                     **kw).validate()


def snapshot(params):
    return {n: p.detach().clone() for n, p in params.items()}


# The tiny config's model and the ViT, with every impl.
@pytest.mark.parametrize("model, impl", [*((TINY.models[0], i) for i in IMPLS), *(("vit_tiny", i) for i in IMPLS)])
def test_phases_run_in_order_and_update_nothing(model, impl):
    bench = ADAPTER.build(cfg(impl, model, phases=True))
    assert list(bench.phases) == NAMES[impl]
    params = bench.step()
    bench.sync(params)
    before = snapshot(params)
    for _ in range(2):  # twice: a forward without backward must leave no Opacus state behind
        for fn in bench.phases.values():
            out = fn()
            bench.sync(out)
            assert out is params
    assert all(torch.equal(p, before[n]) for n, p in params.items())
    bench.sync(bench.step())  # the timed step still runs after every phase, and updates
    assert not any(torch.equal(p, before[n]) for n, p in params.items())


@pytest.mark.parametrize("impl", ["opacus_hooks", "opacus_ghost"])
def test_forward_phase_drops_what_opacus_hooks_captured(impl):
    spec = get_model(TINY.models[0])
    xn, yn = make_batch(spec, 4, 0)
    x, y = nchw(xn, torch.device("cpu")), labels(yn, torch.device("cpu"))
    trainer = steps.make_trainer(impl, spec, init_weights(spec, 0), x, y, lr=0.1, noise_multiplier=0.0)
    phases = trainer.phases(x, y)
    phases["forward"]()
    assert all(not getattr(m, "activations", None) for m in trainer.model.modules())
    assert all(p._forward_counter == 0 for p in trainer.net.parameters())
    # with noise 0, the clipped sum the noise phase leaves in p.grad is the parity tests' one
    phases["noise"]()
    got = {n: p.grad.clone() for n, p in trainer.net.named_parameters()}
    want = steps.gradient_sum(trainer, x, y)
    assert all(torch.allclose(got[n], want[n], rtol=1e-5, atol=1e-7) for n in want)


def test_no_phases_by_default():
    assert ADAPTER.build(cfg("standard")).phases == {}


def test_worker_records_the_breakdown():
    out = worker.run(cfg("opacus_hooks", phases=True), time.monotonic())
    assert out["status"] == "ok", out["error"]
    notes = out["notes"]
    assert list(notes["phases_s"]) == NAMES["opacus_hooks"] + [FULL_STEP_PHASE]
    assert list(notes["phase_breakdown_s"]) == NAMES["opacus_hooks"] + [FULL_STEP_PHASE]
    check_phase_times(out)
