"""``build`` for every catalogued (impl, variant, microbatch size) of the tiny
preset steps twice; the notes say which path TF-Privacy took."""
import numpy as np
import pytest

from common.config import expand

pytestmark = pytest.mark.tf

pytest.importorskip("tensorflow_privacy")
from frameworks.tf import ADAPTER  # noqa: E402

CONFIGS = expand(["tf"], "tiny")


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.impl}-{c.variant}-mb{c.microbatch_size}")
def test_build_steps_twice(cfg):
    bench = ADAPTER.build(cfg)
    first = np.array(bench.sync(bench.step()))
    second = np.array(bench.sync(bench.step()))
    assert first.shape == (10,) and np.isfinite(second).all()
    assert not np.array_equal(first, second)  # the step really updates the model
    assert bench.peak_memory() is None or bench.peak_memory() > 0
    if cfg.mode == "dp":
        assert bench.notes["pfor_while_loop_fallbacks"] >= 0
    if cfg.impl == "tfp_dpmodel":
        check_dpmodel_path(bench.notes)
    if cfg.impl == "fastclip":
        check_fastclip_notes(bench.notes, cfg.variant)


def check_dpmodel_path(notes):
    """TF-Privacy's default registry has Dense and Embedding only, so the convs
    send DPSequential to its vectorized_map fallback (the library's own
    decision, read off the model), whose per-example Conv2DBackpropFilter
    pfor runs as a while_loop."""
    assert notes["tfp_dpmodel_path"] == "vectorized_map_per_example"
    assert notes["unregistered_trainable_layers"] == ["conv0", "conv1"]
    assert notes["pfor_while_loop_fallbacks"] > 0
    assert "Conv2DBackpropFilter" in notes["pfor_fallback_ops"]


def check_fastclip_notes(notes, variant):
    """The per-layer plan is recorded; fastclip builds no per-example gradient
    by pfor, so nothing falls back to a while_loop."""
    assert set(notes["fastclip_plan"]) == {"conv0", "conv1", "dense0", "dense1"}
    assert notes["jit_compile"] == (variant == "xla")
    assert notes["pfor_while_loop_fallbacks"] == 0


def test_versions_and_device():
    v = ADAPTER.versions()
    assert set(v) == {"tf", "tensorflow-privacy"} and v["tensorflow-privacy"] == "0.9.0"
    assert isinstance(ADAPTER.device(), str)
