"""``build`` for every catalogued study (impl, variant, microbatch size) of the
tiny preset steps twice; the notes say which path TF-Privacy took and which
noise sampler every DP row used (the direct-use rows: tests/tf/test_tf_direct.py)."""
import dataclasses

import numpy as np
import pytest

from common.harness.config import expand

pytestmark = pytest.mark.tf

pytest.importorskip("tensorflow_privacy")
import tensorflow as tf  # noqa: E402

from frameworks.tf import ADAPTER, adapter, analysis, steps  # noqa: E402

CONFIGS = [c for c in expand(["tf"], "tiny") if c.impl_info.kind == "study"]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.impl}-{c.variant}-mb{c.microbatch_size}")
def test_build_steps_twice(cfg, monkeypatch):
    """The rows of test_tf_phases.CONFIGS are built with phases, and their
    phases checked between the two steps (one trace of the step for both)."""
    from tests.tf.test_tf_phases import PHASED, check_phases
    phased = (cfg.impl, cfg.variant, cfg.microbatch_size) in PHASED
    built = []
    monkeypatch.setattr(adapter, "make_train", lambda *a, **k: built.append(steps.make_train(*a, **k)) or built[-1])
    bench = ADAPTER.build(dataclasses.replace(cfg, phases=phased))
    first = np.array(bench.sync(bench.step()))
    if phased:
        check_phases(bench, built[0].model.trainable_variables, cfg.impl)
    second = np.array(bench.sync(bench.step()))
    assert first.shape == (10,) and np.isfinite(second).all()
    assert not np.array_equal(first, second)  # the step really updates the model
    # The allocator's peak on a GPU; on the CPU None: the worker measures resident memory instead.
    assert (bench.peak_memory() is None) == (not tf.config.list_physical_devices("GPU"))
    if cfg.mode == "dp":
        # The DP Keras model's vectorized_map falls back to a while loop for some
        # ops (counted while the step traces); the optimizers' and fastclip's do not.
        fallbacks = bench.notes["pfor_while_loop_fallbacks"]
        assert fallbacks > 0 if cfg.impl == "tfp_dpmodel" else fallbacks == 0, fallbacks
        check_noise_sampler(bench)
    if cfg.impl == "tfp_dpmodel":
        check_dpmodel_path(bench.notes)
        check_dpmodel_xla(bench, cfg.variant)
    if cfg.impl == "fastclip":
        check_fastclip_notes(bench.notes, cfg.variant)


def step_op_types(bench) -> set[str]:
    """Op types of the traced step, nested functions included (the analysis seam's counter)."""
    return set(analysis.graph_op_counts(bench))


def check_noise_sampler(bench):
    """Every DP row (noise 1 in the tiny preset) names tf.random.normal, and
    its step really draws from it (RandomStandardNormal) and from no uniform
    sampler (the op a Box-Muller / inverse-CDF sampler would start from)."""
    assert bench.notes["noise_sampler"] == "tf.random.normal" and bench.notes["noise_call"]
    ops = step_op_types(bench)
    assert "RandomStandardNormal" in ops
    assert not ops & {"RandomUniform", "StatelessRandomUniformV2", "RandomUniformInt"}


def check_dpmodel_xla(bench, variant):
    """``xla``: DPSequential(use_xla=True) wraps its train_step in
    tf.function(experimental_compile=True), a nested function marked
    _XlaMustCompile; ``graph`` (use_xla=False): nothing in the step is."""
    assert bench.notes["use_xla"] == (variant == "xla")
    library = bench.step.get_concrete_function().graph.as_graph_def().library.function
    xla = [f.signature.name for f in library if f.attr["_XlaMustCompile"].b]
    assert bool(xla) == (variant == "xla"), xla


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


def test_fastclip_noise_draw_has_the_steps_scale():
    """``Bench.noise_draw`` (timed alone by the worker) is the step's noise, added to
    the variables and summed: sum(draw) - sum(variables) ~ N(0, n (sigma C / B)^2)
    (the step folds 1/B into the noise); drawn with tf.random.normal. 200 draws:
    the sample std's relative sd is 5 %; a lost or doubled 1/B, sigma or C is off 30 %+."""
    from common.harness.config import RunConfig
    clip, sigma, b = 0.7, 1.3, 4
    base = dict(framework="tf", impl="fastclip", model="small", batch_size=b, variant="graph", clip_norm=clip)
    bench = ADAPTER.build(RunConfig(noise_multiplier=sigma, **base))
    graph = bench.noise_draw.get_concrete_function().graph
    assert "RandomStandardNormal" in {op.type for op in graph.get_operations()}
    variables = sum(float(tf.reduce_sum(v)) for v in bench.noise_draw.get_concrete_function().graph.variables)
    n = sum(int(np.prod(v.shape)) for v in graph.variables)
    sums = np.array([float(bench.sync(bench.noise_draw())) for _ in range(200)]) - variables
    assert abs(sums.std() / (sigma * clip / b * np.sqrt(n)) - 1) < 0.2
    assert ADAPTER.build(RunConfig(impl="standard", **{k: v for k, v in base.items() if k != "impl"})).noise_draw is None
    assert ADAPTER.build(RunConfig(noise_multiplier=0.0, **base)).noise_draw is None
