"""The study's own fast per-example clipping for flax models (docs/design.md §7).

One forward pass records every parametrised layer's input A, one backward
pass with respect to zero probes added to every layer's output gives each
layer's output gradient G (the probe gradient of the *summed* loss is each
example's own output gradient: examples do not interact). From A and G, per
layer (plan from :mod:`common.reference.fastclip_plan`):

- dense: norm_i^2 = (|a_i|^2 + 1) |g_i|^2; clipped sum A^T (s * G), s @ G;
- conv, ``instantiate``: per-example grads A_i^T G_i in chunks of examples
  (unfold with the conv's strides and padding + batched matmul), their
  squared norms, and later their weighted sum sum_i s_i A_i^T G_i;
- conv, ``ghost``: <A_i A_i^T, G_i G_i^T> in chunks, then one standard-shaped
  weight-gradient product (the conv's kernel VJP at A with cotangent s * G);
- GroupNorm: per-example dscale_i = sum_hw G_i * xhat_i and dbias_i = sum_hw G_i
  (xhat = A normalised by flax's own GroupNorm with scale and shift off, so
  groups, statistics and epsilon are flax's), 2C floats per example, kept
  for their weighted sum;
- dense on a (B, T, d) token sequence (``seq_dense``, the ViT's): a 1x1 conv
  with T positions, the conv's instantiate / ghost code (``_TokenRule``) with
  nothing to unfold; the ghost clipped sum is A^T (s * G) over all tokens;
- LayerNorm: as GroupNorm, summed over the tokens (xhat by flax's own
  LayerNorm with scale and shift off: its epsilon and variance formula);
- Embed: example i's table grad is the scatter-add of its G_i rows into the
  rows its indices looked up (repeats add), its norm from that transient
  per-example table; the clipped sum one scatter-add of s * G.
Chunks go through ``lax.map`` (a remainder chunk is vectorised), so only one
chunk's unfolded input is live; on XLA:CPU this measured 2-3x faster per layer
than one batched matmul over the whole batch (cache-resident working set, small
temporaries). Conv bias grads (where a conv has a bias) are sum_t G_i. The
scales s_i = min(1, C / ||g_i||) use the norm over all layers. No second
backward pass, no Python loop over examples. Residual adds, ReLU, pools are
parameter-free: autodiff carries G through them as in standard training.

Layers are found by intercepting ``nn.Conv`` / ``nn.Dense`` / ``nn.GroupNorm`` /
``nn.LayerNorm`` / ``nn.Embed`` calls, so any flax model built from them works
(the chain CNNs, WRN-16-4, the ViTs: attention, GELU, concat and the class-token
pick are parameter-free and autodiff carries G through them).
Each kind is one :class:`Rule` (its checks, cost-model inputs, norms and share
of the clipped sum) registered in :data:`RULES` for its module class; everything
else dispatches through that table alone, so a new kind is one new rule
(``ConvRule``, ``GroupNormRule``, ``DenseRule``, ``LayerNormRule``, ``EmbedRule``).
Supported (the plans' rules, ``fastclip_plan.check_*``): 2-D convs of any
kernel and stride with symmetric zero padding (explicit, VALID, or SAME where
it is symmetric: stride 1, odd kernel), undilated, ungrouped, bias or none;
dense layers with bias on (B, d) or (B, T, d); GroupNorms and LayerNorms
(over the last axis) with scale and shift and per-example statistics;
embedding lookups at integer indices. Anything else that is parametrised (SAME at stride 2 pads (0, 1),
which the unfold does not do; a GroupNorm without scale or shift, whose
per-example grads the plan does not describe) raises ``ValueError("fastclip:
unsupported layer ...")`` rather than clip wrongly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.linear import canonicalize_padding
from jax import lax

from common.reference import fastclip_plan
from common.reference.fastclip_plan import LayerPlan
from common.reference.spec import Layer
from frameworks.jax.models import cross_entropy

Methods = str | Mapping[str, str] | None
Chunks = int | Mapping[str, int] | None

_CONV_DIMS = ("NHWC", "HWIO", "NHWC")


class Rule:
    """How fastclip clips one kind of flax layer, registered for its module class in
    :data:`RULES` (``fastclip_plan.Registry``). Everything dispatches only through
    these methods (at trace time: nothing of this runs per step), so a new kind is
    one new rule here (its plan, checks and kept bytes: ``common.reference.fastclip_plan``).
    The PyTorch and TF ports have the same rules by the same names."""

    kind = ""  # the plan's kind (fastclip_plan.plan_layer)
    api = ""  # the module class as messages name it

    def check(self, name: str, mod: nn.Module, x, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Raise ``fastclip_plan.unsupported`` unless the plans cover ``mod`` called on
        ``x``; else its :class:`Tap` fields beyond shapes (``leaves`` first)."""
        raise NotImplementedError

    def spec_layer(self, t: Tap) -> Layer:
        """The tapped layer as ``common.reference.spec.Layer`` (HWIO kernel), what the cost model plans."""
        raise NotImplementedError

    def norms(self, t: Tap, plan: LayerPlan, a, g) -> tuple[jnp.ndarray, Any]:
        """(squared norms (B,), state for :meth:`clipped_sum`) from the layer's input A and output gradient G."""
        raise NotImplementedError

    def clipped_sum(self, t: Tap, a, g, state, s) -> dict[str, jnp.ndarray]:
        """The layer's clipped sum, ``{leaf: array}`` for ``t.leaves``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


RULES = fastclip_plan.Registry()  # module class -> its Rule
# The spec ops this port's rules cover (steps.py asks fastclip_plan.model_gap with them).
SUPPORTED_OPS = fastclip_plan.SUPPORTED_OPS | fastclip_plan.VIT_OPS
register = RULES.register


@dataclass(frozen=True)
class Tap:
    """One parametrised layer found in a model (static shapes only)."""

    name: str  # '/'-joined module path, e.g. 'conv0'
    path: tuple[str, ...]
    rule: Rule  # its kind's (RULES)
    kernel_shape: tuple[int, ...]  # HWIO, (in, out), or a GroupNorm's scale (C,)
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    leaves: tuple[str, ...] = ("kernel", "bias")  # its parameters, the clipped sum's keys
    strides: tuple[int, ...] = (1, 1)  # conv
    padding: tuple[int, ...] = (0, 0)  # conv: zeros on both sides, per spatial dim
    # gn, layernorm: A -> xhat, flax's own norm layer without scale and shift
    normalize: Callable[[jnp.ndarray], jnp.ndarray] | None = field(default=None, compare=False, repr=False)

    @property
    def kind(self) -> str:
        """The plan's kind (a dense layer on tokens is ``seq_dense``)."""
        return self.rule.spec_layer(self).kind

    @property
    def fan_in(self) -> int:
        n = 1
        for s in self.kernel_shape[:-1]:
            n *= s
        return n

    @property
    def features(self) -> int:
        return self.kernel_shape[-1]

    @property
    def has_bias(self) -> bool:
        return "bias" in self.leaves


def _tuple(v, n: int) -> tuple[int, ...]:
    """A flax size argument (None = 1, int, or sequence) as an ``n``-tuple."""
    v = 1 if v is None else v
    return (int(v),) * n if isinstance(v, int) else tuple(int(t) for t in v)


def _subtree(tree, path):
    for p in path:
        tree = tree[p]
    return tree


def _owns_params(params, path) -> bool:
    try:
        sub = _subtree(params, path)
    except (KeyError, TypeError):
        return False
    return isinstance(sub, Mapping) and any(not isinstance(v, Mapping) for v in sub.values())


def _conv_padding(padding, kernel_size: tuple[int, ...], strides: tuple[int, ...]) -> tuple[int, ...] | None:
    """nn.Conv's padding as symmetric zeros per spatial dim; None where it is not that."""
    try:
        pads = canonicalize_padding(padding, len(kernel_size))
    except ValueError:
        return None
    if isinstance(pads, str):
        if pads.upper() == "SAME":
            return fastclip_plan.same_padding(kernel_size, strides)
        return (0,) * len(kernel_size) if pads.upper() == "VALID" else None  # CIRCULAR, REFLECT, CAUSAL
    pads = [tuple(int(v) for v in pad) for pad in pads]
    return tuple(lo for lo, _ in pads) if all(lo == hi for lo, hi in pads) else None


def _describe(mod: nn.Module, x, kwargs) -> dict[str, Any]:
    """``mod``'s rule, checked; its Tap fields beyond shapes."""
    name = "/".join(mod.path)
    rule = RULES.of(name, mod)
    return {"rule": rule, **rule.check(name, mod, x, kwargs)}


def _call_input(args, kwargs):
    if args:
        return args[0]
    return kwargs["inputs"] if "inputs" in kwargs else kwargs["x"]  # nn.Conv/Dense: inputs; nn.GroupNorm: x


def find_layers(model: nn.Module, params, x) -> list[Tap]:
    """Every parametrised layer of ``model`` (abstract trace, no compute).

    Raises ``ValueError('fastclip: unsupported layer ...')`` for a module that
    owns parameters and has no rule in :data:`RULES`, for one of a registered
    class that its rule does not support (parameters or none: a GroupNorm
    without scale and shift), for a layer called
    twice (shared weights), or for parameters no such layer uses (e.g. a bias
    leaf of a conv built with use_bias=False).
    """
    found: dict[str, Tap] = {}
    kinds = tuple(RULES)  # checked with parameters or without (a GroupNorm without scale and shift)

    def interceptor(next_fun, args, kwargs, ctx):
        out = next_fun(*args, **kwargs)
        mod = ctx.module
        if ctx.method_name == "__call__" and mod.path and (
                isinstance(mod, kinds) or _owns_params(params, mod.path)):
            inp = _call_input(args, kwargs)
            info = _describe(mod, inp, kwargs)
            name = "/".join(mod.path)
            if name in found:
                raise fastclip_plan.shared_weights(name)
            kernel = _subtree(params, mod.path)[info["leaves"][0]]
            found[name] = Tap(name, tuple(mod.path), kernel_shape=tuple(kernel.shape), in_shape=tuple(inp.shape),
                              out_shape=tuple(out.shape), **info)
        return out

    def run(p, xx):
        with nn.intercept_methods(interceptor):
            return model.apply({"params": p}, xx)

    jax.eval_shape(run, params, x)
    covered = {t.path + (leaf,) for t in found.values() for leaf in t.leaves}
    leaves = [tuple(str(getattr(e, "key", e)) for e in path)
              for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    stray = ["/".join(names) for names in leaves if names not in covered]
    if stray:
        raise fastclip_plan.stray_weights(stray)
    return list(found.values())


def layer_taps(model: nn.Module, params, x, y) -> tuple[list[Tap], dict, dict]:
    """One forward + one backward pass w.r.t. zero probes: (layers, A, G).

    ``A[name]`` is the layer's input, ``G[name]`` the gradient of each
    example's own loss w.r.t. the layer's output (pre-activation).
    """
    layers = find_layers(model, params, x)
    probes = {t.name: jnp.zeros(t.out_shape, x.dtype) for t in layers}

    def summed_loss(pr):
        inputs = {}

        def interceptor(next_fun, args, kwargs, ctx):
            out = next_fun(*args, **kwargs)
            name = "/".join(ctx.module.path)
            if ctx.method_name == "__call__" and name in pr:
                inputs[name] = _call_input(args, kwargs)
                out = out + pr[name]
            return out

        with nn.intercept_methods(interceptor):
            logits = model.apply({"params": params}, x)
        return cross_entropy(logits, y).sum(), inputs

    g, a = jax.grad(summed_loss, has_aux=True)(probes)
    return layers, a, g


def make_plans(layers: list[Tap], batch: int, methods: Methods = None, chunks: Chunks = None) -> dict[str, LayerPlan]:
    """The cost model's per-layer choice (``common.reference.fastclip_plan.plan_model``);
    ``methods``/``chunks`` override it (one value for every conv, or
    ``{layer name: value}``)."""
    return fastclip_plan.plan_model([t.rule.spec_layer(t) for t in layers], batch, methods, chunks)


def _chunked(body: Callable, k: int, *xs):
    """``body`` over chunks of ``k`` examples (lax.map), remainder vectorised."""
    b = xs[0].shape[0]
    full, rest = fastclip_plan.chunk_split(b, k)
    k = min(k, b)
    if k == b:
        return body(*xs)
    parts = []
    if full:
        head = tuple((x if full == b else x[:full]).reshape(full // k, k, *x.shape[1:]) for x in xs)
        out = lax.map(lambda c: body(*c), head)
        parts.append(jax.tree.map(lambda o: o.reshape(full, *o.shape[2:]), out))
    if rest:
        parts.append(body(*(x[full:] for x in xs)))
    return parts[0] if len(parts) == 1 else jax.tree.map(lambda *o: jnp.concatenate(o), *parts)


def _unfold(ap, ksize: tuple[int, int], hw: tuple[int, int], strides: tuple[int, int]):
    """Pre-padded (n, Hp, Wp, C) -> (n, H*W, kh*kw*C) for an (H, W) output at
    ``strides``, patch order (kh, kw, c) = HWIO."""
    (kh, kw), (h, w), (sh, sw) = ksize, hw, strides
    n, c = ap.shape[0], ap.shape[-1]
    cols = [ap[:, i:i + (h - 1) * sh + 1:sh, j:j + (w - 1) * sw + 1:sw, :] for i in range(kh) for j in range(kw)]
    return jnp.concatenate(cols, axis=-1).reshape(n, h * w, kh * kw * c)


def _wide(v):
    """``v`` in at least float32 (norms of half-precision grads; float64 stays)."""
    return v.astype(jnp.promote_types(v.dtype, jnp.float32))


def _sq(v, axes):
    v = _wide(v)
    return jnp.sum(v * v, axis=axes)


def kernel_grad(t: Tap, a, g):
    """The conv's standard weight-gradient product: its kernel VJP at input
    ``a`` with output cotangent ``g`` (the conv's strides and padding)."""
    def conv(k):
        return lax.conv_general_dilated(a, k, t.strides, [(p, p) for p in t.padding], dimension_numbers=_CONV_DIMS)
    _, vjp = jax.vjp(conv, jnp.zeros(t.kernel_shape, a.dtype))
    return vjp(g)[0]


def _weighted(s, per_example):
    """sum_i s_i x_i over the leading axis."""
    return jnp.tensordot(s.astype(per_example.dtype), per_example, axes=1)


def _norm_parts(model, params, x, y, methods, chunks):
    layers, a, g = layer_taps(model, params, x, y)
    plans = make_plans(layers, x.shape[0], methods, chunks)
    parts = {t.name: t.rule.norms(t, plans[t.name], a[t.name], g[t.name]) for t in layers}
    return layers, a, g, parts


def per_layer_sq_norms(model: nn.Module, methods: Methods = None, chunks: Chunks = None
                       ) -> Callable[[Any, jnp.ndarray, jnp.ndarray], dict[str, jnp.ndarray]]:
    """``(params, x, y) -> {layer name: (B,) squared norm of that layer's
    parameter grads}`` (kernel + bias, a GroupNorm's scale + bias)."""
    def fn(params, x, y):
        layers, _, _, parts = _norm_parts(model, params, x, y, methods, chunks)
        return {t.name: parts[t.name][0] for t in layers}
    return fn


def fastclip_grad(model: nn.Module, clip_norm: float, methods: Methods = None, chunks: Chunks = None
                  ) -> Callable[..., dict]:
    """``(params, x, y, is_padding_example=None) -> sum_i clip(g_i, C)`` (noise
    0), same tree as ``params``.

    ``methods``: None (cost model), "instantiate" / "ghost" for every conv, or
    ``{layer name: method}``; ``chunks`` likewise forces examples per chunk.
    ``is_padding_example``: optional (B,) bool, True where a slot of a padded
    physical batch holds no real example (DP-SGD as trained, docs/design.md
    §8); such an example's clip factor is 0, so it adds nothing to any
    layer's sum (jax-privacy's ``clipped_grad`` keyword, same meaning). None:
    every example is real (the study's fixed batch, unchanged).
    """
    def fn(params, x, y, is_padding_example=None):
        layers, a, g, parts = _norm_parts(model, params, x, y, methods, chunks)
        total = sum(sq for sq, _ in parts.values())
        s = fastclip_plan.clip_factor(total, clip_norm, sqrt=jnp.sqrt, floor=jnp.maximum, cap=jnp.minimum)
        if is_padding_example is not None:  # padding slots hold a real example (deployed.py), finite; factor 0
            s = jnp.where(is_padding_example, jnp.zeros_like(s), s)
        out: dict = {}
        for t in layers:
            node = out
            for p in t.path[:-1]:
                node = node.setdefault(p, {})
            node[t.path[-1]] = t.rule.clipped_sum(t, a[t.name], g[t.name], parts[t.name][1], s)
        return out
    return fn


def plans_for(model: nn.Module, params, x, methods: Methods = None, chunks: Chunks = None) -> dict[str, LayerPlan]:
    """The per-layer plans ``fastclip_grad`` would use for this batch (for records/reports)."""
    return make_plans(find_layers(model, params, x), x.shape[0], methods, chunks)


# --- the layer kinds: one registered rule each ------------------------------------------------

class _TokenRule(Rule):
    """A layer that is one matmul per output position, kernel (d, p) on T
    positions: a conv (d = kh*kw*Cin after unfolding) or a dense layer on a
    (B, T, d) token sequence (a 1x1 conv, nothing to unfold). Norms by the
    plan's method, in chunks of examples: ``instantiate`` keeps the per-example
    A_i^T G_i for their weighted sum; ``ghost`` takes <A_i A_i^T, G_i G_i^T>
    and later one standard-shaped kernel gradient at cotangent s * G
    (:meth:`book`). Bias grads (where there is a bias) are sum_t G_i. The two
    differ only in :meth:`chunk_input`, :meth:`tokens` and :meth:`book`."""

    def chunk_input(self, t: Tap, a):
        """What is split into chunks of examples (a conv's zero-padded input)."""
        return a

    def tokens(self, t: Tap, ac):
        """A chunk of :meth:`chunk_input` as (n, T, d) rows of A."""
        return ac

    def book(self, t: Tap, a, sg):
        """The standard kernel gradient at input ``a`` and output cotangent ``sg``."""
        raise NotImplementedError

    def norms(self, t: Tap, plan: LayerPlan, a, g):
        b = a.shape[0]
        gt = g.reshape(b, -1, t.features)
        if plan.method == "instantiate":
            def body(ac, gc):
                pe = jnp.einsum("btd,btp->bdp", self.tokens(t, ac), gc)
                return _sq(pe, (1, 2)), pe
            sq, pe = _chunked(body, plan.chunk, self.chunk_input(t, a), gt)
        elif plan.method == "ghost":
            def body(ac, gc):
                u = self.tokens(t, ac)
                aa = jnp.einsum("btd,bsd->bts", u, u)
                gg = jnp.einsum("btp,bsp->bts", gc, gc)
                return jnp.sum(_wide(aa * gg), axis=(1, 2))
            sq, pe = _chunked(body, plan.chunk, self.chunk_input(t, a), gt), None
        else:
            raise ValueError(f"fastclip: unknown method {plan.method!r} for {t.name}")
        if not t.has_bias:
            return sq, (None, pe)
        bias = gt.sum(axis=1)  # per-example bias grads (B, p)
        return sq + _sq(bias, 1), (bias, pe)

    def clipped_sum(self, t: Tap, a, g, state, s) -> dict[str, jnp.ndarray]:
        bias, pe = state
        if pe is not None:  # instantiated: weighted sum of the per-example grads
            kernel = _weighted(s, pe).reshape(t.kernel_shape)
        else:  # book-keeping: one weight-gradient product with per-example scaled G
            kernel = self.book(t, a, g * s.astype(g.dtype).reshape((-1,) + (1,) * (g.ndim - 1)))
        return {"kernel": kernel} | ({"bias": _weighted(s, bias)} if t.has_bias else {})


@register(nn.Conv)
class ConvRule(_TokenRule):
    """``nn.Conv``: per-example kernel grads instantiated or ghost norms, in chunks, by the plan."""

    kind, api = "conv", "nn.Conv"

    def check(self, name: str, mod: nn.Conv, x, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        ksize = _tuple(mod.kernel_size, 1)
        strides = _tuple(mod.strides, len(ksize))
        padding = _conv_padding(mod.padding, ksize, strides)
        other = ("unmasked only" if mod.mask is not None else "on NHWC inputs only" if x.ndim != 4
                 else "with lax.conv_general_dilated only"
                 if getattr(mod, "conv_general_dilated", None) or getattr(mod, "conv_general_dilated_cls", None) else None)
        fastclip_plan.check_conv(name, self.api, kernel_size=ksize, strides=strides, padding=padding,
                                 dilations=_tuple(mod.input_dilation, len(ksize)) + _tuple(mod.kernel_dilation, len(ksize)),
                                 groups=mod.feature_group_count, other=other)
        return {"leaves": ("kernel", "bias") if mod.use_bias else ("kernel",), "strides": strides, "padding": padding}

    def spec_layer(self, t: Tap) -> Layer:
        return Layer(t.name, self.kind, t.kernel_shape, relu=False, out_hw=tuple(t.out_shape[1:3]), bias=t.has_bias)

    def chunk_input(self, t: Tap, a):
        return jnp.pad(a, ((0, 0), *((p, p) for p in t.padding), (0, 0)))

    def tokens(self, t: Tap, ac):
        return _unfold(ac, t.kernel_shape[:2], t.out_shape[1:3], t.strides)

    def book(self, t: Tap, a, sg):
        return kernel_grad(t, a, sg)


@register(nn.GroupNorm)
class GroupNormRule(Rule):
    """``nn.GroupNorm`` with scale and shift: per-example (dscale, dbias), 2C floats, always instantiated."""

    kind, api = "gn", "nn.GroupNorm"

    def check(self, name: str, mod: nn.GroupNorm, x, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        # Statistics over each example's own (H, W, group) only: a batch axis,
        # a mask or a device axis would make examples interact (or not be flax's default).
        axes = mod.reduction_axes
        other = ("on NHWC inputs only" if x.ndim != 4
                 else "default reduction axes only" if axes is not None and
                 sorted(int(a) % x.ndim for a in _tuple(axes, 1)) != [1, 2, 3]
                 else "without axis_name only" if mod.axis_name is not None
                 else "unmasked only" if kwargs.get("mask") is not None else None)
        fastclip_plan.check_gn(name, self.api, affine=mod.use_scale and mod.use_bias, other=other)
        plain = mod.clone(parent=None, use_scale=False, use_bias=False)
        return {"leaves": ("scale", "bias"), "normalize": lambda a: plain.apply({}, a)}

    def spec_layer(self, t: Tap) -> Layer:
        return Layer(t.name, self.kind, t.kernel_shape, relu=False, out_hw=tuple(t.out_shape[1:3]), bias=t.has_bias)

    def norms(self, t: Tap, plan: LayerPlan, a, g):
        """Per-example (dscale, dbias) = (sum_hw G * xhat, sum_hw G): (B, C) each."""
        dscale = jnp.sum(g * t.normalize(a), axis=(1, 2))
        dbias = jnp.sum(g, axis=(1, 2))
        return _sq(dscale, 1) + _sq(dbias, 1), (dscale, dbias)

    def clipped_sum(self, t: Tap, a, g, state, s) -> dict[str, jnp.ndarray]:
        return dict(zip(("scale", "bias"), (_weighted(s, v) for v in state)))


def _tokens_hw(shape: tuple[int, ...]) -> tuple[int, int]:
    """A (B, ..., F) array's positions per example as a Layer's out_hw, (T, 1)."""
    n = 1
    for v in shape[1:-1]:
        n *= v
    return (n, 1)


@register(nn.LayerNorm)
class LayerNormRule(Rule):
    """``nn.LayerNorm`` over the features with scale and shift: per-example
    dscale_i = sum_t G_i * xhat_i and dbias_i = sum_t G_i (2C floats), as a GroupNorm's."""

    kind, api = "layernorm", "nn.LayerNorm"

    def check(self, name: str, mod: nn.LayerNorm, x, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        # Statistics over each token's own features only (flax's defaults): other
        # reduction or feature axes, a device axis or a mask change what xhat is.
        last = [x.ndim - 1]
        other = ("on (batch, ..., features) inputs only" if x.ndim < 2
                 else "reduction and feature axes -1 only"
                 if sorted(int(v) % x.ndim for v in _tuple(mod.reduction_axes, 1)) != last
                 or sorted(int(v) % x.ndim for v in _tuple(mod.feature_axes, 1)) != last
                 else "without axis_name only" if mod.axis_name is not None
                 else "unmasked only" if kwargs.get("mask") is not None else None)
        if not (mod.use_scale and mod.use_bias) or other:
            raise fastclip_plan.unsupported(f"{name!r} ({self.api}): only with a learned per-feature scale and "
                                            "shift" + (f"; {other}" if other else ""))
        # xhat by flax's own LayerNorm without scale and shift: its epsilon and
        # variance formula (use_fast_variance) are the layer's.
        plain = mod.clone(parent=None, use_scale=False, use_bias=False)
        return {"leaves": ("scale", "bias"), "normalize": lambda a: plain.apply({}, a)}

    def spec_layer(self, t: Tap) -> Layer:
        return Layer(t.name, self.kind, t.kernel_shape, relu=False, out_hw=_tokens_hw(t.out_shape), bias=True)

    def norms(self, t: Tap, plan: LayerPlan, a, g):
        """Per-example (dscale, dbias) = (sum_t G * xhat, sum_t G): (B, C) each."""
        axes = tuple(range(1, g.ndim - 1))
        dscale = jnp.sum(g * t.normalize(a), axis=axes)
        dbias = jnp.sum(g, axis=axes)
        return _sq(dscale, 1) + _sq(dbias, 1), (dscale, dbias)

    def clipped_sum(self, t: Tap, a, g, state, s) -> dict[str, jnp.ndarray]:
        return dict(zip(("scale", "bias"), (_weighted(s, v) for v in state)))


@register(nn.Embed)
class EmbedRule(Rule):
    """``nn.Embed`` (``__call__``, a lookup): example i's table gradient is the
    scatter-add of its output-gradient rows G_i into the rows its indices looked
    up (a row looked up twice gets both). Its squared norm from that per-example
    table (B x rows x features floats, transient); the clipped sum is one
    scatter-add of s * G over every example's indices."""

    kind, api = "embed", "nn.Embed"

    def check(self, name: str, mod: nn.Embed, x, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        if x.ndim < 1 or not jnp.issubdtype(x.dtype, jnp.integer):
            raise fastclip_plan.unsupported(f"{name!r} ({self.api}): only a lookup at (batch, ...) integer indices")
        return {"leaves": ("embedding",)}

    def spec_layer(self, t: Tap) -> Layer:
        return Layer(t.name, self.kind, t.kernel_shape, relu=False, out_hw=_tokens_hw(t.out_shape), bias=False)

    def _rows(self, t: Tap, a, g):
        """Indices (B, n) and output-gradient rows (B, n, features)."""
        return a.reshape(a.shape[0], -1), g.reshape(g.shape[0], -1, t.features)

    def norms(self, t: Tap, plan: LayerPlan, a, g):
        idx, rows = self._rows(t, a, g)
        table = jnp.zeros(t.kernel_shape, g.dtype)
        per_example = jax.vmap(lambda i, r: table.at[i].add(r))(idx, rows)
        return _sq(per_example, (1, 2)), None

    def clipped_sum(self, t: Tap, a, g, state, s) -> dict[str, jnp.ndarray]:
        idx, rows = self._rows(t, a, g)
        sg = rows * s.astype(g.dtype)[:, None, None]
        return {"embedding": jnp.zeros(t.kernel_shape, g.dtype).at[idx.reshape(-1)].add(sg.reshape(-1, t.features))}


@register(nn.Dense)
class DenseRule(_TokenRule):
    """``nn.Dense`` with bias. On (batch, features): norm^2 (|a_i|^2 + 1) |g_i|^2,
    sum A^T (s * G), s @ G. On a (batch, T, features) token sequence (the plan's
    ``seq_dense``, a 1x1 conv with T positions): the conv's ghost/instantiate maths."""

    kind, api = "dense", "nn.Dense"

    def check(self, name: str, mod: nn.Dense, x, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        fastclip_plan.check_dense(name, self.api, has_bias=mod.use_bias, input_rank=x.ndim, sequences=True)
        return {"leaves": ("kernel", "bias")}

    def spec_layer(self, t: Tap) -> Layer:
        if len(t.in_shape) == 3:
            return Layer(t.name, "seq_dense", t.kernel_shape, relu=False, out_hw=(t.in_shape[1], 1), bias=t.has_bias)
        return Layer(t.name, self.kind, t.kernel_shape, relu=False, out_hw=(1, 1), bias=t.has_bias)

    def book(self, t: Tap, a, sg):
        return jnp.einsum("btd,btp->dp", a, sg)

    def norms(self, t: Tap, plan: LayerPlan, a, g):
        if plan.method == "dense":  # a vector per example: T = 1, state None
            return fastclip_plan.dense_sq_norm(_sq(a, -1), _sq(g, -1)), None
        return super().norms(t, plan, a, g)

    def clipped_sum(self, t: Tap, a, g, state, s) -> dict[str, jnp.ndarray]:
        if state is not None:
            return super().clipped_sum(t, a, g, state, s)
        sg = g * s.astype(g.dtype)[:, None]
        return {"kernel": a.T @ sg, "bias": sg.sum(0)}
