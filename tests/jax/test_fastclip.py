"""Fast clipping in JAX (frameworks/jax/fastclip.py) against the float64 reference.

Tolerances: float32 against float64. Measured max relative errors: clipped
sums 4e-7 (small B=7, medium B=3) and 1.5e-6 (small B=1), per-layer squared
norms <= 9e-7, fastclip vs jax-privacy 2.5e-7, both methods; the ViT
(vit_tiny B=3: sequence dense layers, LayerNorms, embeddings): clipped sums
5.6e-7 (cost model's plan = all ghost; forced ghost, chunks 2: 5.6e-7; forced
instantiate: 5.3e-7), per-layer squared norms <= 9.2e-7; TOL = 1e-5
(>= 7x the worst), while a 1 % larger clip norm is 7.0e-3 off on vit_tiny. The cases are seeded free of max-pool near-ties
(tests/jax/ties.py): with or without XLA:CPU's YNNPACK fusions the parity then
holds; at a near-tie (the medium model at seed 0) a fusion may break the tie
the other way and every impl, standard included, is ~1e-2 off.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax = pytest.importorskip("jax")
import flax.linen as nn  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from common.reference import float64 as reference  # noqa: E402
from common.harness.config import RunConfig  # noqa: E402
from common.reference.spec import Layer  # noqa: E402
from frameworks.jax import fastclip, steps  # noqa: E402
from frameworks.jax.models import CNN, cross_entropy, params_from_exchange, params_to_exchange  # noqa: E402
from tests.jax.ties import tie_free_case  # noqa: E402
from tests.rule_checks import quadrupled  # noqa: E402

pytestmark = pytest.mark.jax

TOL = 1e-5  # measured ~5e-7 (float32 vs float64), see module docstring


class Case:
    """One model + batch, with the float64 reference computed once."""

    def __init__(self, model: str, batch: int):
        ref = tie_free_case(model, batch)
        self.spec, self.weights, self.norms, self.layer_sq = ref.spec, ref.weights, ref.norms, ref.layer_sq
        self.clip, self.want, self.x_np, self.y_np = ref.clip, ref.want, ref.x, ref.y
        self.model = CNN(self.spec)
        self.params = params_from_exchange(self.weights)
        self.x, self.y = jnp.asarray(ref.x), jnp.asarray(ref.y)
        self._memo: dict = {}

    def fastclip(self, **kw) -> dict[str, np.ndarray]:
        key = repr(sorted(kw.items()))
        if key not in self._memo:
            fn = jax.jit(fastclip.fastclip_grad(self.model, self.clip, **kw))
            self._memo[key] = params_to_exchange(fn(self.params, self.x, self.y))
        return self._memo[key]

    def sq_norms(self, **kw) -> dict[str, np.ndarray]:
        out = jax.jit(fastclip.per_layer_sq_norms(self.model, **kw))(self.params, self.x, self.y)
        return {k: np.asarray(v) for k, v in out.items()}


case = functools.lru_cache(maxsize=None)(Case)  # one reference per (model, batch)
sq_error = reference.sq_rel_error


@pytest.mark.parametrize("model,batch", [("small", 1), ("small", 7), ("medium", 3), ("vit_tiny", 3)])
def test_clipped_sum_matches_reference(model, batch):
    c = case(model, batch)
    if batch > 1:
        assert (c.norms > c.clip).any() and (c.norms < c.clip).any()
    else:
        assert c.norms[0] > c.clip
    assert reference.max_rel_error(c.fastclip(), c.want) < TOL


@pytest.mark.parametrize("model,batch", [("small", 7), ("medium", 3), ("vit_tiny", 3)])
def test_per_layer_sq_norms_match_reference(model, batch):
    c = case(model, batch)
    assert sq_error(c.sq_norms(), c.layer_sq) < TOL


@pytest.mark.parametrize("method,model,batch,chunks", [
    ("instantiate", "small", 7, 3), ("ghost", "small", 7, 3),
    # vit_tiny's cost-model plan is ghost in chunks of 2 on every sequence dense
    # layer (test_vit_plans): forcing ghost would recompile the same computation
    ("instantiate", "vit_tiny", 3, 2)])
def test_forced_methods_and_chunks(method, model, batch, chunks):
    # chunks=3 on B=7 (2 on B=3): chunks in the loop plus a remainder of one.
    # On the ViT the method is forced on every sequence dense layer (the convs' choice).
    c = case(model, batch)
    assert reference.max_rel_error(c.fastclip(methods=method, chunks=chunks), c.want) < TOL
    assert sq_error(c.sq_norms(methods=method, chunks=chunks), c.layer_sq) < TOL


def test_vit_clip_norm_one_percent_off_fails():
    """The negative control of the ViT parity: the same fastclip with a 1 % larger
    clip norm is measured 7.0e-3 off the reference (vit_tiny B=3), 700x TOL, so
    TOL tells a right clipped sum from a slightly wrong one."""
    c = case("vit_tiny", 3)
    off = params_to_exchange(jax.jit(fastclip.fastclip_grad(c.model, c.clip * 1.01))(c.params, c.x, c.y))
    assert reference.max_rel_error(off, c.want) > 100 * TOL


def test_vit_plans():
    """vit_tiny's layers as the plans see them: the patch embedding and the
    block's dense layers on T tokens (``seq_dense``, 16 patches, 17 with the class
    token), LayerNorms, embeddings; the head on the class token a vector dense."""
    c = case("vit_tiny", 3)
    plans = fastclip.plans_for(c.model, c.params, c.x)
    kinds = {n: (p.kind, p.positions) for n, p in plans.items()}
    assert kinds == {"patch_embed": ("seq_dense", 16), "cls": ("embed", 1), "pos": ("embed", 17),
                     **{f"b0_{n}": ("seq_dense", 17) for n in ("q", "k", "v", "o", "fc1", "fc2")},
                     "b0_ln0": ("layernorm", 17), "b0_ln1": ("layernorm", 17), "final_ln": ("layernorm", 17),
                     "head": ("dense", 1)}
    assert {t.name: t.kind for t in fastclip.find_layers(c.model, c.params, c.x)} == {n: k for n, (k, _) in kinds.items()}
    assert {(p.method, p.chunk) for p in plans.values() if p.kind == "seq_dense"} == {("ghost", 2)}


def test_mixed_methods_medium():
    c = case("medium", 3)
    methods = {"conv0": "instantiate", "conv1": "ghost", "conv2": "ghost"}
    assert reference.max_rel_error(c.fastclip(methods=methods, chunks=2), c.want) < TOL


def test_ghost_equals_instantiate():
    c = case("small", 7)
    a, b = c.fastclip(methods="instantiate", chunks=3), c.fastclip(methods="ghost", chunks=3)
    assert reference.max_rel_error(a, {k: v.astype(np.float64) for k, v in b.items()}) < TOL


def test_matches_jax_privacy():
    c = case("small", 7)
    jp = jax.jit(steps.clipped_sum_fn("jax_privacy", c.spec, c.clip, None))(c.params, c.x, c.y)
    jp = {k: np.asarray(v, np.float64) for k, v in params_to_exchange(jp).items()}
    assert reference.max_rel_error(jp, c.want) < TOL  # the library itself agrees
    assert reference.max_rel_error(c.fastclip(), jp) < TOL


def test_plans_are_the_cost_models():
    c = case("small", 7)
    plans = fastclip.plans_for(c.model, c.params, c.x)
    assert {n: p.method for n, p in plans.items()} == {
        "conv0": "instantiate", "conv1": "instantiate", "dense0": "dense", "dense1": "dense"}
    assert (plans["conv1"].positions, plans["conv1"].fan_in, plans["conv1"].features) == (256, 288, 64)


def test_dp_step_with_noise_zero_is_sgd_on_the_clipped_mean():
    c = case("small", 7)
    cfg = RunConfig(framework="jax", impl="fastclip", model="small", batch_size=7, clip_norm=c.clip,
                    noise_multiplier=0.0)
    step, init = steps.make_step(cfg, c.spec)
    new = params_to_exchange(step(init(params_from_exchange(c.weights)), c.x, c.y)[0])
    for key, v in new.items():
        expected = c.weights[key] - cfg.learning_rate * c.want[key] / 7
        np.testing.assert_allclose(v, expected, rtol=1e-5, atol=1e-7)


class _LayerNormNet(nn.Module):
    use_scale: bool = True
    reduction_axes: Any = -1

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), padding="SAME")(x)
        x = nn.LayerNorm(use_scale=self.use_scale, reduction_axes=self.reduction_axes)(x)
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


class _ImageDenseNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(nn.Dense(4)(x).reshape(x.shape[0], -1))  # a dense on (B, H, W, C)


class _StridedNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), strides=2, padding="SAME")(x)
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


class _GroupNormNet(nn.Module):
    use_scale: bool = True
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), padding="SAME")(x)
        x = nn.GroupNorm(num_groups=2, use_scale=self.use_scale, use_bias=self.use_bias)(x)
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


class _NoBiasNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(10, use_bias=False)(x.reshape(x.shape[0], -1))


class _SharedNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        d = nn.Dense(12)
        return nn.Dense(10)(d(d(x.reshape(x.shape[0], -1)[:, :12])))


@pytest.mark.parametrize("net,match", [
    (functools.partial(_LayerNormNet, use_scale=False), "LayerNorm.*scale and shift"),
    (functools.partial(_LayerNormNet, reduction_axes=(1, 2, 3)), "LayerNorm.*reduction and feature axes -1"),
    (_ImageDenseNet, "tokens, features"), (_StridedNet, "symmetric zero padding"),  # SAME at stride 2 pads (0, 1)
    (functools.partial(_GroupNormNet, use_scale=False), "GroupNorm.*scale and shift"),
    (functools.partial(_GroupNormNet, use_bias=False), "GroupNorm.*scale and shift"),
    (functools.partial(_GroupNormNet, use_scale=False, use_bias=False), "GroupNorm.*scale and shift"),
    (_NoBiasNet, "with bias"), (_SharedNet, "more than once")])
def test_unsupported_layer_raises(net, match):
    x = jnp.zeros((2, 4, 4, 3))
    y = jnp.zeros((2,), jnp.int32)
    model = net()
    variables = model.init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match=f"fastclip: unsupported layer.*{match}"):
        fastclip.fastclip_grad(model, 1.0)(variables["params"], x, y)


def test_unknown_layer_override_raises():
    c = case("small", 7)
    with pytest.raises(ValueError, match="unknown layers"):
        c.fastclip(methods={"conv7": "ghost"})
    with pytest.raises(ValueError, match="dense layers always"):
        c.fastclip(methods={"dense0": "instantiate"})


class _ResNetLike(nn.Module):
    """WRN-16-4's layer kinds in small: a strided 3x3 conv with explicit padding
    and no bias, a strided 1x1 shortcut, GroupNorms (flax's statistics, a
    non-default epsilon), a SAME conv with bias, a residual add, global
    average pool, dense head. 8x8 input: a stride dropped in an unfold changes
    values, not shapes, and SAME at stride 2 would pad (0, 1), not (1, 1)."""

    @nn.compact
    def __call__(self, x):
        h = nn.Conv(6, (3, 3), strides=2, padding=((1, 1), (1, 1)), use_bias=False, name="down")(x)
        h = nn.relu(nn.GroupNorm(num_groups=2, epsilon=1e-2, name="gn0")(h))
        h = nn.Conv(6, (3, 3), padding="SAME", name="conv")(h)
        h = h + nn.Conv(6, (1, 1), strides=2, padding=0, use_bias=False, name="short")(x)
        h = nn.relu(nn.GroupNorm(num_groups=3, epsilon=1e-2, name="gn1")(h))
        return nn.Dense(4, name="head")(h.mean(axis=(1, 2)))


RESNET_METHODS = ("ghost", "instantiate")


def _autodiff_reference(model: nn.Module, params, x, y) -> tuple[dict[str, np.ndarray], float, dict[str, np.ndarray]]:
    """(per-layer squared norms, the median norm as clip norm, the clipped sum) from
    per-example grads by jax.vmap(jax.grad), the independent reference (float64
    under ``jax.enable_x64``); the clip norm clips some examples and not others."""
    def loss(p, xi, yi):
        return cross_entropy(model.apply({"params": p}, xi[None]), yi[None])[0]
    per_example = params_to_exchange(jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0, 0)))(params, x, y))
    layer_sq = reference.per_layer_sq_norms(per_example)
    norms = np.sqrt(sum(layer_sq.values()))
    clip = float(np.median(norms))
    assert (norms > clip).any() and (norms < clip).any()
    return layer_sq, clip, {k: np.tensordot(reference.clip_factors(norms, clip), v, axes=1)
                            for k, v in per_example.items()}


def _exact_case(model, x, y) -> dict:
    """float64 (call under ``jax.enable_x64``): random params (std 0.5), the per-example
    autodiff reference, and fastclip's clipped sum and per-layer norms for each method in
    RESNET_METHODS at chunks of 2, in one jit."""
    params = jax.jit(lambda x: jax.tree.map(
        lambda v: jax.random.normal(jax.random.PRNGKey(v.size), v.shape, jnp.float64) * 0.5,
        model.init(jax.random.PRNGKey(0), x)["params"]))(x)
    layer_sq, clip, want = _autodiff_reference(model, params, x, y)

    @jax.jit
    def fast(params, x, y):
        return {m: (fastclip.fastclip_grad(model, clip, m, 2)(params, x, y),
                    fastclip.per_layer_sq_norms(model, m, 2)(params, x, y)) for m in RESNET_METHODS}
    got = {m: (params_to_exchange(g), {k: np.asarray(v) for k, v in sq.items()})
           for m, (g, sq) in fast(params, x, y).items()}
    return {"model": model, "params": params, "x": x, "plans": fastclip.plans_for(model, params, x),
            "want": want, "layer_sq": layer_sq, "got": got}


@pytest.fixture(scope="module")
def resnet_case():
    """Tiny ResNet in float64: model, params, batch, clip norm, per-example
    grads by jax.vmap(jax.grad) (the independent reference), and fastclip's
    clipped sum and per-layer squared norms with every conv forced to each
    method, chunks of 2 on B=5 (two chunks in lax.map plus a remainder of
    one). Everything jitted, once: eager flax ops compile one by one."""
    with jax.enable_x64(True):
        model = _ResNetLike()
        x = jax.random.normal(jax.random.PRNGKey(1), (5, 8, 8, 3), jnp.float64)
        y = jnp.array([0, 1, 2, 3, 1])
        return _exact_case(model, x, y)


@pytest.mark.parametrize("method", RESNET_METHODS)
def test_resnet_layers_exact_in_float64(resnet_case, method):
    """Strided/1x1/no-bias convs and GroupNorms against per-example autodiff,
    float64 (measured: clipped sum 3.0e-16, per-layer squared norms 7.3e-16;
    1e-10 leaves room for nothing but rounding)."""
    c = resnet_case
    assert {n: p.kind for n, p in c["plans"].items()} == {
        "down": "conv", "gn0": "gn", "conv": "conv", "short": "conv", "gn1": "gn", "head": "dense"}
    got, sq = c["got"][method]
    assert set(got) == set(c["want"])  # no bias leaf for the bias-free convs
    assert reference.max_rel_error(got, c["want"]) < 1e-10
    assert sq_error(sq, c["layer_sq"]) < 1e-10


def test_stray_bias_of_a_bias_free_conv_raises(resnet_case):
    c = resnet_case
    params = {**c["params"], "down": {**c["params"]["down"], "bias": np.zeros(6)}}
    with jax.enable_x64(True), pytest.raises(ValueError, match=r"unsupported layer weights \['down/bias'\]"):
        fastclip.find_layers(c["model"], params, c["x"])


# --- the registry: a layer kind is its rule in fastclip.RULES, and nothing else -----------------

class _Shift(nn.Module):
    """y = x + b on (batch, features): a parametrised module no rule covers until a test registers one."""

    @nn.compact
    def __call__(self, x):
        return x + self.param("shift", lambda _, shape: jnp.linspace(-1.0, 1.0, shape[0]), (x.shape[-1],))


class _ShiftNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(6, name="d0")(x.reshape(x.shape[0], -1))
        return nn.Dense(10, name="d1")(_Shift(name="shift")(h))


class _ShiftRule(fastclip.Rule):
    """Example i's gradient of b is its output gradient G_i: norm^2 |G_i|^2, clipped
    sum s @ G. Planned as a dense layer of fan-in 1 (T = 1, nothing to choose)."""

    kind, api = "dense", "_Shift"

    def check(self, name, mod, x, kwargs):
        return {"leaves": ("shift",)}

    def spec_layer(self, t):
        return Layer(t.name, self.kind, (1, *t.kernel_shape), relu=False, bias=False)

    def norms(self, t, plan, a, g):
        return jnp.sum(g * g, axis=-1), None

    def clipped_sum(self, t, a, g, state, s):
        return {"shift": s @ g}


def test_a_layer_kind_is_its_registered_rule(monkeypatch):
    """A parametrised module without a rule raises the one-line unsupported error;
    registering one makes fastclip clip it exactly (float64 against per-example
    autodiff, as ``resnet_case``: 1e-10 leaves room for rounding only), by that
    rule's norms and clipped sum; and the built-in kinds dispatch through the same
    table (a rule swapped in for ``nn.Dense`` is what fastclip then computes with)."""
    model = _ShiftNet()
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.PRNGKey(1), (4, 4, 4, 3), jnp.float64)
        y = jnp.array([1, 4, 7, 2])
        params = jax.tree.map(lambda v: jax.random.normal(jax.random.PRNGKey(v.size), v.shape, jnp.float64),
                              model.init(jax.random.PRNGKey(0), x)["params"])
        with pytest.raises(ValueError) as err:
            fastclip.find_layers(model, params, x)
        assert str(err.value) == "fastclip: unsupported layer 'shift' (_Shift)"

        monkeypatch.setitem(fastclip.RULES, _Shift, _ShiftRule())  # registered for this test only
        layer_sq, clip, want = _autodiff_reference(model, params, x, y)
        assert {n: p.method for n, p in fastclip.plans_for(model, params, x).items()} == dict.fromkeys(layer_sq, "dense")
        got = params_to_exchange(jax.jit(fastclip.fastclip_grad(model, clip))(params, x, y))
        sq = {k: np.asarray(v) for k, v in jax.jit(fastclip.per_layer_sq_norms(model))(params, x, y).items()}
        assert set(got) == set(want) and reference.max_rel_error(got, want) < 1e-10
        assert sq_error(sq, layer_sq) < 1e-10

        monkeypatch.setitem(fastclip.RULES, _Shift, quadrupled(_ShiftRule)())
        monkeypatch.setitem(fastclip.RULES, nn.Dense, quadrupled(fastclip.DenseRule)())
        sq = {k: np.asarray(v) for k, v in jax.jit(fastclip.per_layer_sq_norms(model))(params, x, y).items()}
        assert sq_error(sq, {k: 4 * v for k, v in layer_sq.items()}) < 1e-10


# --- the ViT's layer kinds beyond the spec's use of them, float64 ---------------------------------

class _TokenNet(nn.Module):
    """The ViT's layer kinds in their general form: an embedding looked up at
    indices that differ per example and repeat within one (6 lookups into 4 rows:
    the scatter-add must sum a row's G rows), dense layers on (B, T, d) token
    sequences, LayerNorms (a non-default epsilon; one on (B, 2, 3, C), tokens on
    two axes), a dense head on the mean token."""

    @nn.compact
    def __call__(self, x):
        b = x.shape[0]
        idx = (jnp.abs(x[:, :, 0, 0]) * 3).astype(jnp.int32) % 4  # (B, 6), from the data, not differentiated
        h = nn.Embed(4, 5, name="emb")(idx) + nn.Dense(5, name="proj")(x.reshape(b, 6, -1))
        h = jax.nn.gelu(nn.Dense(7, name="fc")(nn.LayerNorm(epsilon=1e-2, name="ln")(h)))
        h = nn.LayerNorm(use_fast_variance=False, name="ln4")(h.reshape(b, 2, 3, 7))
        return nn.Dense(4, name="head")(h.mean(axis=(1, 2)))


@pytest.fixture(scope="module")
def token_case():
    """_TokenNet in float64 (B=5), per-example autodiff reference, fastclip with
    every sequence dense layer forced to each method, chunks of 2 (two chunks in
    lax.map plus a remainder of one); one jit."""
    with jax.enable_x64(True):
        model = _TokenNet()
        x = jax.random.normal(jax.random.PRNGKey(2), (5, 6, 4, 3), jnp.float64)
        y = jnp.array([0, 1, 2, 3, 1])
        idx = np.asarray((jnp.abs(x[:, :, 0, 0]) * 3).astype(jnp.int32) % 4)
        assert all(len(set(r)) < 6 for r in idx) and len({tuple(r) for r in idx}) == 5  # repeats; per example
        return _exact_case(model, x, y)


@pytest.mark.parametrize("method", RESNET_METHODS)
def test_token_layers_exact_in_float64(token_case, method):
    """Repeated-index embeddings, sequence dense layers, LayerNorms against
    per-example autodiff in float64 (measured, both methods: clipped sum 5.8e-16,
    per-layer squared norms <= 2.4e-16; 1e-10 leaves room for nothing but rounding)."""
    c = token_case
    assert {n: p.kind for n, p in c["plans"].items()} == {
        "emb": "embed", "proj": "seq_dense", "ln": "layernorm", "fc": "seq_dense", "ln4": "layernorm", "head": "dense"}
    got, sq = c["got"][method]
    assert reference.max_rel_error(got, c["want"]) < 1e-10
    assert sq_error(sq, c["layer_sq"]) < 1e-10
