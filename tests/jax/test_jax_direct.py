"""The direct-use row (frameworks/jax/direct.py): jax-privacy used the way its
docs show, independent of frameworks/jax/steps.py, must build, train, and take
the very same step as the study's ``jax_privacy`` row at its default
``microbatch_size=None`` -- that is what makes it a check of the harness. On
the small CNN and on the tests' ViT (vit_tiny)."""
import functools
import time

import jax
import numpy as np
import pytest

from common.harness import worker
from common.harness.config import PRESETS, RunConfig
from common.reference import float64 as R
from frameworks.jax import ADAPTER, direct
from frameworks.jax.models import params_to_exchange

pytestmark = pytest.mark.jax

TINY = PRESETS["tiny"]
B = 4
# One lr=1 step, float32 both sides: max |direct - study| / max |update| per
# leaf measured 0.0 (bit-identical) with noise 0 and 1 on this CPU (small and
# vit_tiny); 1e-5 leaves room for another XLA fusion order, and a 1 % clip
# change gives 1e-2 (both models).
TOL = 1e-5


def cfg(impl, mb=None, model="small", **kw):
    base = dict(timing=TINY.timing, budget_s=TINY.budget_s)
    base.update(kw)
    return RunConfig("jax", impl, model, B, mb, **base).validate()


def params_of(state) -> dict[str, np.ndarray]:
    return params_to_exchange(jax.tree.map(np.asarray, state[0]))


@functools.cache
def one_step(c) -> dict[str, np.ndarray]:
    """Parameters after one step of ``c`` from the initial weights (cached: a
    configuration two tests compare against is built and compiled once)."""
    bench = ADAPTER.build(c)
    return params_of(bench.sync(bench.step()))


def rel_diff(a: dict, b: dict, start: dict, model: str) -> float:
    """Max over leaves of |a - b| relative to the leaf's largest update (a
    ViT's key bias, whose gradient is zero, relative to its kernel's: float64.NULL_REL)."""
    assert set(a) == set(b) == set(start)
    return R.max_rel_error({k: a[k] - start[k] for k in a}, {k: b[k] - start[k] for k in a})


@functools.cache
def initial(model: str = "small") -> dict[str, np.ndarray]:
    _, args = direct.make(cfg("direct_jax_privacy", model=model))
    return params_to_exchange(jax.tree.map(np.asarray, args[0]))


def test_catalogue_row():
    info = RunConfig("jax", "direct_jax_privacy", "small", B).impl_info
    assert info.kind == "direct" and info.direct_of == ("jax_privacy", "", None)
    assert direct.DIRECT == ("direct_jax_privacy",)


def test_builds_and_trains_two_steps():
    start = initial()
    bench = ADAPTER.build(cfg("direct_jax_privacy"))
    assert bench.phases == {} and bench.notes["direct_of"] == ["jax_privacy", "", None]
    first = params_of(bench.sync(bench.step()))
    second = params_of(bench.sync(bench.step()))
    for k in start:
        assert np.isfinite(second[k]).all()
        assert not np.array_equal(first[k], start[k]) and not np.array_equal(second[k], first[k]), k


# The ViT at noise 0 only (its clipped mean; ~12 s of compiles): the noise
# draws are the model's business no more than the small CNN's, and whether the
# comparison can fail is the next test's (on vit_tiny, a 1 % larger clip norm
# measured 1.0e-2, checked once).
@pytest.mark.parametrize("model,noise", [("small", 0.0), ("small", 1.0), ("vit_tiny", 0.0)])
def test_same_step_as_the_study_row(model, noise):
    """noise 0, lr 1: the update is the clipped mean; noise 1: the same key
    gives the same draws (noise on the normalised sum with std sigma C / B is
    the study's noise on the sum, then / B)."""
    kw = dict(noise_multiplier=noise, learning_rate=1.0, clip_norm=0.5, model=model)
    got = one_step(cfg("direct_jax_privacy", **kw))
    want = one_step(cfg("jax_privacy", None, **kw))
    assert rel_diff(got, want, initial(model), model) < TOL


def test_a_different_step_is_detected():
    """The comparison can fail: a 1 % larger clip norm moves the update by ~1 %."""
    kw = dict(noise_multiplier=0.0, learning_rate=1.0)
    got = one_step(cfg("direct_jax_privacy", clip_norm=0.505, **kw))
    want = one_step(cfg("jax_privacy", None, clip_norm=0.5, **kw))
    assert rel_diff(got, want, initial(), "small") > 1e-3


def test_xla_default_variant_refuses_the_study_flag(monkeypatch):
    """A/B rows must be what they say: the xla-default variant never runs with the study's flag."""
    from common.harness.threads import JAX_XLA_FLAGS
    c = cfg("standard", variant="xla-default")
    monkeypatch.setenv("XLA_FLAGS", JAX_XLA_FLAGS)
    with pytest.raises(ValueError, match="default flags"):
        ADAPTER.build(c)
    monkeypatch.setenv("XLA_FLAGS", "")
    assert ADAPTER.build(c).notes["jit"]  # builds (the flags are read at backend start; this checks the label)


def test_worker_times_the_direct_row():
    out = worker.run(cfg("direct_jax_privacy"), time.monotonic())
    assert out["status"] == "ok", out["error"]
    assert out["throughput_sps"] > 0 and out["notes"]["normalize_by"] == B
    assert out["dp_library_version"] == "2.0.0"
