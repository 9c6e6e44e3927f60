"""Phases of the TF steps (RunConfig.phases): the documented prefixes, in
order, run on the tiny config and update nothing."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from common.harness import runner
from common.harness.adapter import FULL_STEP_PHASE
from common.harness.config import expand
from common.reference.exchange import init_weights, make_batch
from common.reference.spec import get_model

pytestmark = pytest.mark.tf

pytest.importorskip("tensorflow_privacy")
from frameworks.tf import ADAPTER  # noqa: E402
from frameworks.tf.steps import compile_phases, compile_step, make_train  # noqa: E402
from tests.phase_checks import check_phase_times  # noqa: E402

NAMES = {
    "standard": ["forward", "backward"],
    "tfp_microbatch": ["forward", "backward", "clip+noise"],
    "tfp_microbatch_mean": ["forward", "backward", "clip+noise"],
    "tfp_vectorized": ["forward", "backward", "clip+noise"],
    "tfp_dpmodel": ["forward", "backward+clip", "noise"],
    "fastclip": ["forward", "backward+clip", "noise"],
}
# One config per impl (graph), plus one xla optimizer, the xla dpmodel and
# xla fastclip: every kind of phase function, compiled both ways.
TINY = [dataclasses.replace(c, phases=True) for c in expand(["tf"], "tiny")]
CONFIGS = [c for c in TINY if (c.impl, c.variant, c.microbatch_size) in {
    ("standard", "graph", None), ("tfp_microbatch", "graph", 1), ("tfp_microbatch_mean", "graph", 4),
    ("tfp_vectorized", "xla", 1), ("tfp_dpmodel", "graph", None), ("tfp_dpmodel", "xla", None),
    ("fastclip", "graph", None), ("fastclip", "xla", None)}]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.impl}-{c.variant}-mb{c.microbatch_size}")
def test_phases_run_in_order_and_update_nothing(cfg):
    spec = get_model(cfg.model)
    x, y = (tf.constant(a) for a in make_batch(spec, cfg.batch_size, cfg.seed))
    t = make_train(cfg.impl, cfg.variant, spec, init_weights(spec, cfg.seed), cfg.batch_size, cfg.microbatch_size,
                   cfg.clip_norm, cfg.noise_multiplier, cfg.learning_rate)
    step, phases = compile_step(t, x, y), compile_phases(t, x, y, cfg.variant == "xla")
    assert list(phases) == NAMES[cfg.impl]
    step().numpy()
    before = [v.numpy().copy() for v in t.model.trainable_variables]
    outs = {name: fn().numpy() for name, fn in phases.items()}
    assert all(o.shape == () and np.isfinite(o) for o in outs.values()) and outs["forward"] > 0  # mean loss
    assert all(np.array_equal(v.numpy(), b) for v, b in zip(t.model.trainable_variables, before))
    step().numpy()
    assert not np.array_equal(t.model.trainable_variables[-1].numpy(), before[-1])


def test_adapter_phases_keep_the_steps_notes():
    cfg = next(c for c in CONFIGS if c.impl == "tfp_vectorized")
    bench = ADAPTER.build(cfg)
    assert list(bench.phases) == NAMES[cfg.impl]
    first = np.array(bench.sync(bench.step()))
    notes = dict(bench.notes)
    for _ in range(2):
        for fn in bench.phases.values():
            assert np.isfinite(bench.sync(fn()))
    assert bench.notes == notes  # the jacobian's pfor fallbacks are not counted into the step's
    assert not np.array_equal(first, np.array(bench.sync(bench.step())))


def test_no_phases_by_default():
    assert ADAPTER.build(dataclasses.replace(CONFIGS[0], phases=False)).phases == {}


def test_runner_records_the_breakdown(tmp_path):
    """End to end: a worker process (TF's thread settings must precede its
    start, so not in this one) writes the breakdown into the record."""
    cfg = next(c for c in CONFIGS if c.impl == "standard")
    (rec,) = runner.run_study([cfg], tmp_path, progress=False)
    assert rec["status"] == "ok", rec["error"]
    notes = rec["notes"]
    assert list(notes["phases_s"]) == NAMES["standard"] + [FULL_STEP_PHASE]
    assert list(notes["phase_breakdown_s"]) == NAMES["standard"] + [FULL_STEP_PHASE]
    check_phase_times(rec)
