"""Phases of the JAX steps (RunConfig.phases): the documented prefixes, in
order, run on the tiny config without touching the state the step uses."""
import time

import jax
import numpy as np
import pytest

from common.harness import worker
from common.harness.adapter import FULL_STEP_PHASE
from common.harness.config import PRESETS, RunConfig
from frameworks.jax import ADAPTER
from tests.phase_checks import check_phase_times  # noqa: E402

pytestmark = pytest.mark.jax

TINY = PRESETS["tiny"]
NAMES = {"standard": ["forward", "backward"], "dp": ["forward", "backward+clip", "noise"]}


def cfg(impl, mb=None, **kw):
    return RunConfig("jax", impl, TINY.models[0], TINY.batch_sizes[0], mb, timing=TINY.timing, **kw).validate()


def leaves(tree):
    return [np.asarray(a) for a in jax.tree.leaves(tree)]


@pytest.mark.parametrize("impl,mb", [("standard", None), ("jax_privacy", None), ("jax_privacy", 2), ("fastclip", None)])
def test_phases_run_in_order_and_leave_the_state(impl, mb):
    c = cfg(impl, mb, phases=True)
    bench = ADAPTER.build(c)
    assert list(bench.phases) == NAMES[c.mode]
    state = bench.sync(bench.step())
    before = leaves(state[0])
    outs = {name: bench.sync(fn()) for name, fn in bench.phases.items()}
    assert np.isfinite(float(outs["forward"])) and float(outs["forward"]) > 0  # summed cross-entropy
    grad = outs[NAMES[c.mode][1]]
    assert jax.tree.structure(grad) == jax.tree.structure(state[0])
    if c.mode == "dp":  # noise of std sigma C = 1 on top of the clipped sum
        diff = np.concatenate([(a - b).ravel() for a, b in zip(leaves(outs["noise"][0]), leaves(grad))])
        assert 0.99 < diff.std() < 1.01
    # Phases neither donate nor update: the state the next step starts from is intact.
    assert all(np.array_equal(a, b) for a, b in zip(leaves(state[0]), before))
    after = leaves(bench.sync(bench.step())[0])
    assert not np.array_equal(after[0], before[0])


def test_no_phases_by_default():
    assert ADAPTER.build(cfg("standard")).phases == {}


def test_worker_records_the_breakdown():
    c = cfg("standard", phases=True)
    out = worker.run(c, time.monotonic())
    assert out["status"] == "ok", out["error"]
    notes = out["notes"]
    assert list(notes["phases_s"]) == ["forward", "backward", FULL_STEP_PHASE]
    assert list(notes["phase_breakdown_s"]) == ["forward", "backward", FULL_STEP_PHASE]
    check_phase_times(out)
