"""Phases of the TF steps (RunConfig.phases): the documented prefixes, in
order, run on the tiny config and update nothing (``check_phases``, run on
test_tf_build.py's bench of each CONFIGS row: one trace of the step for both)."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from common.harness import runner
from common.harness.adapter import FULL_STEP_PHASE
from common.harness.config import expand

pytestmark = pytest.mark.tf

pytest.importorskip("tensorflow_privacy")
from frameworks.tf import ADAPTER  # noqa: E402
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


PHASED = {(c.impl, c.variant, c.microbatch_size) for c in CONFIGS}


def check_phases(bench, variables: list[tf.Variable], impl: str) -> None:
    """Run after the bench's first step (tests/tf/test_tf_build.py builds each
    CONFIGS row with phases and calls this, so one traced step serves both
    files): the documented phases in order, each a finite scalar (forward: the
    mean loss > 0), run twice, update no variable and leave the step's notes
    as they were (the jacobian's pfor fallbacks are not counted into the step's)."""
    assert list(bench.phases) == NAMES[impl]
    before = [v.numpy().copy() for v in variables]
    notes = dict(bench.notes)
    for _ in range(2):
        outs = {name: np.asarray(bench.sync(fn())) for name, fn in bench.phases.items()}
        assert all(o.shape == () and np.isfinite(o) for o in outs.values()) and outs["forward"] > 0, outs
    assert all(np.array_equal(v.numpy(), b) for v, b in zip(variables, before))
    assert bench.notes == notes
    bench.sync(bench.step())
    assert not np.array_equal(variables[-1].numpy(), before[-1])  # the step itself still updates


def test_every_phased_config_is_built_with_phases():
    """The phase checks run in test_tf_build.py's build of each CONFIGS row: each is a catalogued study row."""
    from tests.tf.test_tf_build import CONFIGS as BUILT
    assert PHASED <= {(c.impl, c.variant, c.microbatch_size) for c in BUILT} and len(PHASED) == 8


def test_no_phases_by_default():
    assert ADAPTER.build(dataclasses.replace(CONFIGS[0], phases=False)).phases == {}


def test_runner_records_the_breakdown(tmp_path):
    """End to end: a worker process (TF's thread settings must precede its
    start, so not in this one) writes the breakdown into the record."""
    cfg = next(c for c in CONFIGS if c.impl == "standard")
    # no retry on steal: beside another suite a window can be stolen, and a retry adds a record
    (rec,) = runner.run_study([cfg], tmp_path, progress=False, retry_stolen=0)
    assert rec["status"] == "ok", rec["error"]
    notes = rec["notes"]
    assert list(notes["phases_s"]) == NAMES["standard"] + [FULL_STEP_PHASE]
    assert list(notes["phase_breakdown_s"]) == NAMES["standard"] + [FULL_STEP_PHASE]
    check_phase_times(rec)
