"""Fast clipping in TensorFlow (frameworks/tf/fastclip.py) against the float64
reference and against TF-Privacy's per-example clipping; on a functional
model with WRN's layer kinds (strided and 1x1 bias-less convs after a
ZeroPadding2D, an Add, GroupNorm) against TF's own per-example gradients of
the same model (``OwnGrads``: measured <= 1.9e-7, per-layer squared norms
<= 4.1e-7, graph and xla, every method, unfold and chunking; OWN_TOL 1e-5 is
set by the WRN's measurements, see ``OwnGrads``).

Tolerance: float32 against float64. Measured max relative errors (CPU):
clipped sums 4e-7 .. 1.3e-6 over small B=1/7 and medium B=3, graph and xla,
through the timed step (read off the weights after one lr=1 SGD step) or
FastClip directly; forced ghost 1.6e-6 (the worst), every unfold and chunking
4.6e-7; per-layer squared norms <= 5e-7; fastclip vs tfp_vectorized /
tfp_microbatch <= 7.2e-7 (each of those vs float64 <= 7.1e-7).
TOL = 5e-6, 3x the worst.

Seeds. A 2x2 max-pool sends the gradient to its window's maximum; where two
entries are within float32 rounding of each other (relative gap ~1e-7: the
medium model at seed 0 has one) TF's oneDNN convs and the reference may
disagree on which wins, and every TF impl, standard included, is then off by
~1e-2 in the graph variant. The cases are seeded so that no window has a gap
below 1e-6 of the layer's largest pre-activation (asserted), so the
comparison tests clipping, not tie-breaking.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest

pytestmark = pytest.mark.tf

tf = pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_privacy")
from scipy import stats  # noqa: E402

from common.reference import float64 as reference  # noqa: E402
from common.reference.spec import Layer, get_model  # noqa: E402
from frameworks.tf import ADAPTER, fastclip  # noqa: E402
from frameworks.tf.adapter import full_float32  # noqa: E402
from frameworks.tf.models import build_model, cross_entropy, export_weights  # noqa: E402
from frameworks.tf.steps import compile_step, make_train  # noqa: E402
from tests.rule_checks import quadrupled  # noqa: E402

TOL = 5e-6  # measured <= 1.6e-6, see the module docstring
MIN_POOL_GAP = reference.MIN_POOL_GAP
SEEDS = {("small", 1): 0, ("small", 7): 4, ("medium", 3): 14,  # min pool gaps 3.6e-6, 1.2e-6, 2.0e-6
         ("vit_tiny", 3): 0}  # no max-pool, ReLU or other kink (float64.tie_free_case): any seed


min_pool_gap = reference.min_pool_gap  # shared with the other frameworks' parity seeds


class Case:
    """One model + batch, with the float64 reference computed once."""

    def __init__(self, model: str, batch: int):
        ref = reference.clip_case(model, batch, SEEDS[(model, batch)])
        self.model, self.batch = model, batch
        self.spec, self.weights, self.norms, self.layer_sq = ref.spec, ref.weights, ref.norms, ref.layer_sq
        self.clip, self.want, self.x, self.y = ref.clip, ref.want, ref.x, ref.y
        assert min_pool_gap(self.spec, self.weights, self.x) > MIN_POOL_GAP

    def fastclip(self, xla: bool = False, **kw) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(clipped sum, per-layer squared norms) of FastClip itself, compiled."""
        with full_float32():
            model = build_model(self.spec, self.weights)
            fc = fastclip.FastClip(model, self.batch, kw.pop("clip", self.clip), xla=xla, **kw)
            x, y = tf.constant(self.x), tf.constant(self.y)
            out, sq = tf.function(lambda: (fc.clipped_sum(x, y), fc.per_layer_sq_norms(x, y)), jit_compile=xla)()
        keys = exchange_keys(model, self.spec)
        return {keys[id(v)]: o.numpy() for v, o in zip(fc.variables, out)}, {k: v.numpy() for k, v in sq.items()}


def exchange_keys(model: tf.keras.Model, spec) -> dict[int, str]:
    """``id`` of each of the model's weights -> its exchange key (models.load_weights'
    order: a node's keys are its Keras layer's weights in order; Keras names a
    LayerNormalization's gamma/beta and an Embedding's table otherwise)."""
    out = {}
    for node in spec.nodes:
        keys = [k for k in spec.param_shapes() if k.split("/")[0] == node.name]
        if keys:
            out.update((id(v), k) for k, v in zip(keys, model.get_layer(node.name).weights, strict=True))
    return out


case = functools.lru_cache(maxsize=None)(Case)  # one reference per (model, batch)
sq_error = reference.sq_rel_error


# --- against TF's own per-example gradients (functional models, tests/tf/test_tf_wrn.py) ---

OWN_TOL = 1e-5  # float32 against float32 of the same forward; see OwnGrads


class OwnGrads:
    """TF's own per-example gradients of a Keras ``model`` on one batch: row i
    of the tape's jacobian of the per-example losses (a while loop of B
    backward passes, no pfor) through the model's own layers, in float64,
    by ``id`` of each trainable variable; their per-layer squared norms and
    clipped sums are taken here on the host.

    One forward of the whole batch, as the standard step runs it: fastclip's
    forward is the same ops bit for bit (checked), so a ReLU input that
    float32 rounds to the other side of 0 than float64 does (wrn16_4 seed 0
    has one) is the same here and there, and what is left between the two
    is float32 rounding of the weight-gradient products alone: measured
    <= 1.2e-6 (FastClip, every plan) and 3.4e-6 (the timed step, whose sum
    is read off the weights after an lr-1 step, (w - w')*B loses ~1e-7 of
    |w|). OWN_TOL = 1e-5, 3x the worst."""

    def __init__(self, model: tf.keras.Model, x: np.ndarray, y: np.ndarray):
        xt, yt = tf.constant(x), tf.constant(y)

        @tf.function
        def rows():
            with tf.GradientTape() as tape:
                losses = cross_entropy(yt, model(xt, training=True))
            return tape.jacobian(losses, model.trainable_variables, experimental_use_pfor=False)

        with full_float32():
            self.grads = {id(v): r.numpy().astype(np.float64) for v, r in zip(model.trainable_variables, rows())}
        self.layer_sq: dict[str, np.ndarray] = {}
        for layer in model.layers:
            for v in layer.trainable_variables:
                g = self.grads[id(v)]
                self.layer_sq[layer.name] = self.layer_sq.get(layer.name, 0.0) + (g.reshape(len(g), -1) ** 2).sum(1)
        self.norms = np.sqrt(sum(self.layer_sq.values()))

    def clipped(self, clip: float) -> dict[int, np.ndarray]:
        s = reference.clip_factors(self.norms, clip)
        return {k: np.tensordot(s, g, axes=1) for k, g in self.grads.items()}


def run_fastclip(model: tf.keras.Model, clip: float, x: np.ndarray, y: np.ndarray, xla: bool = False,
                 **kw) -> tuple[dict[int, np.ndarray], dict[str, np.ndarray], dict]:
    """FastClip's (clipped sum by ``id`` of its variables, per-layer squared
    norms, notes), compiled as the study's variants compile it."""
    with full_float32():
        fc = fastclip.FastClip(model, len(y), clip, xla=xla, **kw)
        xt, yt = tf.constant(x), tf.constant(y)
        out, sq = tf.function(lambda: (fc.clipped_sum(xt, yt), fc.per_layer_sq_norms(xt, yt)), jit_compile=xla)()
    return {id(v): o.numpy() for v, o in zip(fc.variables, out)}, {k: v.numpy() for k, v in sq.items()}, fc.notes()


def tiny_functional() -> tf.keras.Model:
    """WRN's layer kinds in a few layers: a SAME conv with bias, a
    ZeroPadding2D + 3x3 stride-2 'valid' conv without bias and a 1x1
    stride-2 conv without bias (on 10 x 8, both drop the last row: windows
    do not tile it), their Add, GroupNorm (epsilon large enough that getting
    it wrong shows), ReLU, global average pool, Dense.

    16 channels, not fewer: TF 2.15's oneDNN filter gradient of a 1x1
    stride-2 conv with 8 or fewer input channels segfaults on an AVX-512 EPYC
    (seen 2026-12-03 with plain tf.nn.conv2d: Cin 3 and 8 crash, 16, 64 and
    128 do not; WRN's shortcuts have 16 and more)."""
    inp = tf.keras.Input((10, 8, 3))
    x = tf.keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="c0")(inp)
    y = tf.keras.layers.ZeroPadding2D(1, name="c1_pad")(x)
    y = tf.keras.layers.Conv2D(16, 3, strides=2, use_bias=False, name="c1")(y)
    s = tf.keras.layers.Conv2D(16, 1, strides=2, use_bias=False, name="short")(x)
    z = tf.keras.layers.Add(name="add")([y, s])
    z = tf.keras.layers.GroupNormalization(4, epsilon=0.05, name="gn")(z)
    z = tf.keras.layers.ReLU(name="relu")(z)
    z = tf.keras.layers.GlobalAveragePooling2D(name="gap")(z)
    model = tf.keras.Model(inp, tf.keras.layers.Dense(10, name="head")(z))
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in model.get_weights()])
    return model


@functools.lru_cache(maxsize=None)
def tiny_case() -> tuple[tf.keras.Model, np.ndarray, np.ndarray, OwnGrads, float]:
    model = tiny_functional()
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (5, 10, 8, 3)).astype(np.float32)
    y = rng.integers(0, 10, 5).astype(np.int32)
    own = OwnGrads(model, x, y)
    clip = float(np.median(own.norms))
    assert (own.norms > clip).any() and (own.norms < clip).any()
    return model, x, y, own, clip


@pytest.mark.parametrize("kw", [
    {"methods": "instantiate", "unfold": "slices"}, {"methods": "instantiate", "unfold": "gather"},
    {"methods": "ghost", "unfold": "slices"}, {"methods": "ghost", "unfold": "gather"},
    {"methods": "instantiate", "chunks": 2, "chunked": True}, {"methods": "ghost", "chunks": 2, "chunked": True},
    {"xla": True, "methods": "instantiate"}, {"xla": True, "methods": "ghost"},
], ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_functional_model_matches_tf_per_example_gradients(kw):
    model, x, y, own, clip = tiny_case()
    got, sq, notes = run_fastclip(model, clip, x, y, **kw)
    assert {n: p["method"] for n, p in notes.items()} == {
        "c0": kw["methods"], "c1": kw["methods"], "short": kw["methods"], "gn": "gn", "head": "dense"}
    # the bias-less convs contribute their kernels only: the sum's variables are the model's
    assert len(got) == len(model.trainable_variables) == 8
    assert reference.max_rel_error(got, own.clipped(clip)) < OWN_TOL
    assert sq_error(sq, own.layer_sq) < OWN_TOL
    assert reference.max_rel_error(got, own.clipped(clip * 1.01)) > 10 * OWN_TOL  # the comparison can fail


def test_functional_forward_is_keras_bit_for_bit():
    model, x, *_ = tiny_case()
    fc = fastclip.FastClip(model, len(x), 1.0)
    for compile_ in (lambda f: f, tf.function):
        ours = compile_(lambda v: fc.logits(v)[0])(tf.constant(x)).numpy()
        keras = compile_(lambda v: model(v, training=True))(tf.constant(x)).numpy()
        assert np.array_equal(ours, keras)


@pytest.mark.parametrize("model,batch,variant", [
    *((m, b, v) for m, b in (("small", 1), ("small", 7), ("medium", 3)) for v in ("graph", "xla")),
    ("vit_tiny", 3, "graph")])  # the ViT under XLA: FastClip itself (test_vit_forced_methods)
def test_timed_step_clipped_sum_matches_reference(model, batch, variant):
    """The adapter's clipped sum is one timed-path step (noise drawn at 0)."""
    c = case(model, batch)
    if batch > 1:
        assert (c.norms > c.clip).any() and (c.norms < c.clip).any()
    else:
        assert c.norms[0] > c.clip
    got = ADAPTER.clipped_sum("fastclip", model, c.weights, c.x, c.y, c.clip, None, variant)
    assert reference.max_rel_error(got, c.want) < TOL


@pytest.mark.parametrize("xla", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("model,batch", [("small", 7), ("medium", 3), ("vit_tiny", 3)])
def test_per_layer_sq_norms_match_reference(model, batch, xla):
    """The cost model's plan (vit_tiny at B 3: every sequence dense layer ghost)."""
    c = case(model, batch)
    got, sq = c.fastclip(xla)
    assert sq_error(sq, c.layer_sq) < TOL
    assert reference.max_rel_error(got, c.want) < TOL


VIT_KINDS = {"cls": "embed", "pos": "embed", "b0_ln0": "layernorm", "b0_ln1": "layernorm", "final_ln": "layernorm",
             "head": "dense"}  # the rest: sequence dense layers, by the method


@pytest.mark.parametrize("kw", [{"methods": "ghost"}, {"methods": "instantiate"},
                                {"methods": "instantiate", "chunks": 2, "chunked": True},
                                {"xla": True, "methods": "instantiate"}],
                         ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_vit_forced_methods(kw):
    """The ViT's rules (sequence dense layers by either method, whole-batch or in
    chunks of 2 of B 3 (one tf.map_fn chunk + a remainder: the conv's _chunked), LayerNorm,
    the embeddings' scatter-add) against float64: clipped sum and per-layer squared norms
    (ghost under XLA: the cost model's plan, test_per_layer_sq_norms_match_reference).
    Measured (CPU, B 3, seed 0): clipped sums 5.6e-7 .. 8.1e-7, per-layer squared norms
    <= 1.13e-6 (graph ghost), graph and xla, either method; TOL (5e-6) is 4x that."""
    c = case("vit_tiny", 3)
    kw = dict(kw)
    xla = kw.pop("xla", False)
    got, sq = c.fastclip(xla, **kw)
    assert reference.max_rel_error(got, c.want) < TOL
    assert sq_error(sq, c.layer_sq) < TOL


def test_vit_plan_and_one_percent_off_clip_fails():
    """Each ViT layer's rule by the plan's kind; a clip norm 1 % off is caught (the
    comparison above can fail)."""
    c = case("vit_tiny", 3)
    assert (c.norms > c.clip).any() and (c.norms < c.clip).any()
    notes = fastclip.FastClip(build_model(c.spec), 3, 1.0).notes()
    assert {n: p["method"] for n, p in notes.items() if n in VIT_KINDS} == VIT_KINDS
    assert {p["method"] for n, p in notes.items() if n not in VIT_KINDS} == {"ghost"}  # B 3: T 16 or 17, d >= 16
    got, _ = c.fastclip(clip=c.clip * 1.01)
    assert reference.max_rel_error(got, c.want) > 10 * TOL


@pytest.mark.parametrize("unfold", sorted(fastclip.UNFOLDS))
@pytest.mark.parametrize("method", ["instantiate", "ghost"])
def test_forced_methods_unfolds_and_chunks(method, unfold):
    """chunks=3 on B=7: two chunks in the tf.map_fn loop plus a remainder of one."""
    c = case("small", 7)
    for kw in ({}, {"chunks": 3, "chunked": True}):
        got, sq = c.fastclip(methods=method, unfold=unfold, **kw)
        assert reference.max_rel_error(got, c.want) < TOL
        assert sq_error(sq, c.layer_sq) < TOL


def test_forced_methods_xla():
    c = case("small", 7)
    for method in ("instantiate", "ghost"):
        got, _ = c.fastclip(True, methods=method, chunks=3, chunked=True)
        assert reference.max_rel_error(got, c.want) < TOL


def test_mixed_methods_medium():
    c = case("medium", 3)
    got, _ = c.fastclip(methods={"conv0": "instantiate", "conv1": "ghost", "conv2": "ghost"})
    assert reference.max_rel_error(got, c.want) < TOL


@pytest.mark.parametrize("impl", ["tfp_vectorized", "tfp_microbatch"])
def test_matches_tf_privacy(impl):
    """Same inputs, TF-Privacy's per-example clipping (1 example per microbatch)."""
    c = case("small", 7)
    tfp = ADAPTER.clipped_sum(impl, "small", c.weights, c.x, c.y, c.clip, 1, "graph")
    assert reference.max_rel_error(tfp, c.want) < TOL  # the library itself agrees
    for variant in ("graph", "xla"):
        got = ADAPTER.clipped_sum("fastclip", "small", c.weights, c.x, c.y, c.clip, None, variant)
        assert reference.max_rel_error(got, tfp) < TOL


@pytest.mark.parametrize("variant", ["graph", "xla"])
def test_step_adds_noise_of_the_right_scale(variant):
    """lr 1, fixed seed: the update minus the clipped mean is the noise,
    N(0, (sigma C / B)^2) per entry, drawn by tf.random.normal (the notes'
    sampler, TF-Privacy's: tests/tf/test_tf_build.py checks the step's ops)."""
    c = case("small", 7)
    sigma = 0.5
    tf.random.set_seed(0)
    with full_float32():
        t = make_train("fastclip", variant, c.spec, c.weights, 7, None, c.clip, sigma, 1.0)
        compile_step(t, tf.constant(c.x), tf.constant(c.y))().numpy()
        after = export_weights(t.model, c.spec)
    assert t.notes["noise_sampler"] == "tf.random.normal"
    std = sigma * c.clip / 7
    noise = np.concatenate([(c.weights[k].astype(np.float64) - after[k] - c.want[k] / 7).ravel() for k in c.want])
    assert noise.size == c.spec.param_count
    assert abs(noise.std() / std - 1) < 0.01  # 1.07M samples: std error 0.07 %
    assert abs(noise.mean()) < 5 * std / np.sqrt(noise.size)
    assert stats.kstest(noise / std, "norm").pvalue > 1e-3


def test_plan_and_notes():
    c = case("small", 7)
    for variant, unfolds in (("graph", ("slices", "gather")), ("xla", ("slices", "slices"))):
        notes = make_train("fastclip", variant, c.spec, c.weights, 64, None, 1.0, 1.0, 0.1).notes
        plan = notes["fastclip_plan"]
        assert {n: p["method"] for n, p in plan.items()} == {
            "conv0": "instantiate", "conv1": "instantiate", "dense0": "dense", "dense1": "dense"}
        assert (plan["conv0"]["unfold"], plan["conv1"]["unfold"]) == unfolds
        assert plan["conv1"]["chunk"] == 64 and plan["conv1"]["plan_chunk"] == 4
        assert notes["jit_compile"] == (variant == "xla")


def _seq(*layers):
    return tf.keras.Sequential([tf.keras.layers.InputLayer(input_shape=(4, 4, 3)), *layers])


def _functional(*layers):
    inp = tf.keras.Input((4, 4, 3))
    out = inp
    for layer in layers:
        out = layer(out)
    return tf.keras.Model(inp, out)


CONV_RULE = "symmetric zero padding"


@pytest.mark.parametrize("make,match", [
    (lambda: _seq(tf.keras.layers.Conv2D(4, 3, padding="same"), tf.keras.layers.BatchNormalization()),
     "BatchNormalization"),
    # Keras' SAME at stride 2 pads (0, 1) here, an even kernel's SAME pads unevenly
    (lambda: _seq(tf.keras.layers.Conv2D(4, 3, strides=2, padding="same")), CONV_RULE),
    (lambda: _functional(tf.keras.layers.Conv2D(4, 3, strides=2, padding="same")), CONV_RULE),
    (lambda: _seq(tf.keras.layers.Conv2D(4, 2, padding="same")), CONV_RULE),
    (lambda: _seq(tf.keras.layers.Conv2D(4, 3, padding="same", dilation_rate=2)), CONV_RULE),
    (lambda: _seq(tf.keras.layers.Conv2D(6, 3, padding="same", groups=3)), CONV_RULE),
    (lambda: _seq(tf.keras.layers.Conv2D(4, 3, data_format="channels_first")), "channels_last only"),
    (lambda: _functional(tf.keras.layers.GroupNormalization(3, center=False)), "scale and shift"),
    (lambda: _functional(tf.keras.layers.GroupNormalization(3, scale=False)), "scale and shift"),
    (lambda: _functional(tf.keras.layers.GroupNormalization(2, axis=1)), "channels_last"),
    (lambda: _seq(tf.keras.layers.Flatten(), tf.keras.layers.Dense(10, use_bias=False)), "with bias"),
    (lambda: _seq(tf.keras.layers.Dense(10)), r"\(batch, features\)"),
    (lambda: _seq(tf.keras.layers.Flatten(), tf.keras.layers.Dense(10, trainable=False)), "frozen"),
    (lambda: _functional(tf.keras.layers.Reshape((16, 3)), tf.keras.layers.LayerNormalization(center=False)),
     "scale and shift"),
    (lambda: _functional(tf.keras.layers.LayerNormalization(axis=1)), "over the last axis"),
    (lambda: _functional(tf.keras.layers.Flatten(), tf.keras.layers.Embedding(8, 4, mask_zero=True)), "plain lookup"),
])
def test_unsupported_layer_raises(make, match):
    with pytest.raises(ValueError, match=f"fastclip: unsupported layer.*{match}"):
        fastclip.FastClip(make(), 2, 1.0)


class _Subclassed(tf.keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = tf.keras.layers.Dense(2)

    def call(self, x):
        return self.dense(x)


def test_unsupported_model_raises():
    """Functional models are graphs fastclip walks; what it refuses is a
    model that is no graph of layer calls, a layer called twice (shared
    weights), a nested model, and more than one input or output."""
    sub = _Subclassed()
    sub(tf.zeros((1, 4)))
    with pytest.raises(ValueError, match="only Sequential or functional"):
        fastclip.FastClip(sub, 2, 1.0)
    with pytest.raises(ValueError, match="must be built"):
        fastclip.FastClip(tf.keras.Sequential([tf.keras.layers.Dense(2)]), 2, 1.0)
    inp = tf.keras.Input((4,))
    shared = tf.keras.layers.Dense(4, name="shared")
    with pytest.raises(ValueError, match="unsupported layer 'shared'.*called more than once"):
        fastclip.FastClip(tf.keras.Model(inp, shared(shared(inp))), 2, 1.0)
    inner = tf.keras.Sequential([tf.keras.layers.InputLayer(input_shape=(4,)), tf.keras.layers.Dense(2)], name="inner")
    with pytest.raises(ValueError, match="unsupported layer 'inner'"):
        fastclip.FastClip(tf.keras.Model(inp, inner(inp)), 2, 1.0)
    with pytest.raises(ValueError, match="one input and one output"):
        fastclip.FastClip(tf.keras.Model(inp, [tf.keras.layers.Dense(2)(inp), tf.keras.layers.Dense(2)(inp)]), 2, 1.0)


def test_unknown_overrides_raise():
    model = build_model(get_model("small"))
    with pytest.raises(ValueError, match="unknown layers"):
        fastclip.FastClip(model, 4, 1.0, methods={"conv7": "ghost"})
    with pytest.raises(ValueError, match="dense layers always"):
        fastclip.FastClip(model, 4, 1.0, methods={"dense0": "instantiate"})
    with pytest.raises(ValueError, match="unknown unfold"):
        fastclip.FastClip(model, 4, 1.0, unfold="im2col")


# --- the registry: a layer kind is its rule in fastclip.RULES, and nothing else -----------------

class _Shift(tf.keras.layers.Layer):
    """y = x + b on (batch, features): a weighted layer no rule covers until a test registers one."""

    def build(self, input_shape):
        self.shift = self.add_weight(name="shift", shape=(input_shape[-1],), initializer="zeros")

    def call(self, x):
        return x + self.shift


class _ShiftRule(fastclip.Rule):
    """Example i's gradient of b is its output gradient G_i: norm^2 |G_i|^2, clipped
    sum s @ G. Planned as a dense layer of fan-in 1 (T = 1, nothing to choose)."""

    kind = "dense"

    def check(self, layer, shapes):
        return {}

    def variables(self, layer):
        return (layer.shift,)

    def spec_layer(self, t):
        return Layer(t.name, self.kind, (1, *t.kernel_shape), relu=False, bias=False)

    def forward(self, t, a):
        return a + t.layer.shift, a  # the layer's own op: the forward stays Keras'

    def activate(self, t, z):
        return z

    def norms(self, t, plan, a, g, fc):
        return tf.reduce_sum(g * g, axis=-1), None

    def clipped_sum(self, t, a, g, state, s):
        return [tf.linalg.matvec(g, s, transpose_a=True)]


def test_a_layer_kind_is_its_registered_rule(monkeypatch):
    """A weighted layer without a rule raises the one-line unsupported error;
    registering one makes FastClip clip it (against TF's own per-example gradients,
    OWN_TOL), by that rule's norms and clipped sum; and the built-in kinds dispatch
    through the same table (a rule swapped in for ``Dense`` is what FastClip then
    computes with)."""
    inp = tf.keras.Input((4, 4, 3))
    h = tf.keras.layers.Dense(6, name="d0")(tf.keras.layers.Flatten(name="flat")(inp))
    model = tf.keras.Model(inp, tf.keras.layers.Dense(10, name="d1")(_Shift(name="shift")(h)))
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in model.get_weights()])
    x = rng.normal(0, 1, (4, 4, 4, 3)).astype(np.float32)
    y = np.array([1, 4, 7, 2], np.int32)
    with pytest.raises(ValueError) as err:
        fastclip.FastClip(model, len(y), 1.0)
    assert str(err.value) == "fastclip: unsupported layer 'shift' (_Shift)"

    monkeypatch.setitem(fastclip.RULES, _Shift, _ShiftRule())  # registered for this test only
    own = OwnGrads(model, x, y)
    clip = float(np.median(own.norms))
    assert (own.norms > clip).any() and (own.norms < clip).any()
    got, sq, notes = run_fastclip(model, clip, x, y)
    assert {n: p["method"] for n, p in notes.items()} == {"d0": "dense", "shift": "dense", "d1": "dense"}
    assert len(got) == len(model.trainable_variables) == 5
    assert reference.max_rel_error(got, own.clipped(clip)) < OWN_TOL
    assert sq_error(sq, own.layer_sq) < OWN_TOL

    monkeypatch.setitem(fastclip.RULES, _Shift, quadrupled(_ShiftRule)())
    monkeypatch.setitem(fastclip.RULES, tf.keras.layers.Dense, quadrupled(fastclip.DenseRule)())
    _, sq, _ = run_fastclip(model, clip, x, y)
    assert sq_error(sq, {k: 4 * v for k, v in own.layer_sq.items()}) < OWN_TOL
