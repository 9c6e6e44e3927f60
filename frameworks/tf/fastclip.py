"""The study's own fast per-example clipping for Keras models (docs/design.md §7),
a port of frameworks/jax/fastclip.py.

One forward pass re-runs the model's graph layer call by layer call, the
weighted layers by their functional ops with the layers' own variables (conv
/ matmul, + bias_add where the layer has a bias; a GroupNorm by its own
call), and keeps each weighted layer's input A and pre-activation
output Z; one ``tf.GradientTape`` that watches only the Zs gives G =
d(summed loss)/dZ for every layer (each example's own output gradient:
examples do not interact), and no weight gradient is ever built. From A and
G, per layer (plan from :mod:`common.reference.fastclip_plan`, the same cost
model as JAX):

- dense: norm_i^2 = (|a_i|^2 + 1) |g_i|^2; clipped sum A^T (s * G), sum(s * G);
- conv, ``instantiate``: per-example grads A_i^T G_i (unfold at the layer's
  stride and padding + one batched matmul), their squared norms, later their
  weighted sum sum_i s_i A_i^T G_i (a (1, B) x (B, d*p) product);
- conv, ``ghost``: <A_i A_i^T, G_i G_i^T>, then one standard-shaped weight
  gradient (Conv2DBackpropFilter, the layer's strides and padding) of G
  scaled per example (book-keeping);
- GroupNorm (``gn``): A is the layer's normalised input xhat, Z = gamma *
  xhat + beta; per example dgamma_i = sum_{h,w} G_i * xhat_i and dbeta_i =
  sum_{h,w} G_i (2C floats each, always kept), their weighted sums;
- a Dense layer on a (B, T, d) token sequence (``seq_dense``): a 1x1 conv with T
  positions and nothing to unfold, by the same two methods and the same code
  (:func:`_token_products`; ghost's book-keeping is one (B*T, d)^T (B*T, p) matmul);
- LayerNormalization (``layernorm``): as GroupNorm, xhat over the last axis
  recomputed with the layer's epsilon, sums over the tokens;
- Embedding (``embed``): example i's table grad is G_i's rows scatter-added
  (``unsorted_segment_sum``) into the rows its recorded ids looked up, kept
  (B, rows, p), its squared norm, the clipped sum its s-weighted sum.
Conv bias grads (where there is a bias) are sum_t G_i. The scales s_i =
min(1, C / ||g_i||) use the norm over all layers. No second backward pass,
no Python loop over examples.

The forward is Keras' own, bit for bit (the same ops in the same order: a
conv is ``tf.nn.convolution`` + ``bias_add``, a GroupNorm the layer's own
call), so a ReLU input that float32 rounds
to the other side of 0 than float64 does rounds the same way here as in the
standard step: fastclip's gradient is the one TF's own per-example
gradients of the same model give (tests/tf/test_tf_wrn.py).

What is fast differs from JAX's XLA:CPU, and is a measurement, not a
docstring: the unfold (B*T*d floats written, read again) is the overhead, and
which unfold is faster (slices or gather) depends on the executor
(:func:`unfold_method`); chunking (``tf.map_fn`` over ``plan.chunk``
examples) was slower per step than one whole-batch product when it was
measured, so by default the whole batch is one product and the plan's chunk
is only recorded. Memory: the largest unfolded input (B*T*d floats) plus the
kept per-example grads (sum of B*d*p).

Supported: Keras ``Sequential`` and functional models (a graph of layer
calls on one input to one output: residual adds and any other weightless
layer are called as they are: the ViT's Patches, EmbedIndices, HeadAttention,
Token, Concatenate, GELU and adds alike) whose weighted layers are ``Conv2D`` (2-D,
undilated, ungrouped, channels_last, any stride, 'same' at stride 1 with an
odd kernel or 'valid' -- padding other than that is a ``ZeroPadding2D``
before a 'valid' conv -- with or without bias), ``Dense`` (with bias, on
(batch, features) or (batch, tokens, features) inputs), ``GroupNormalization``
(channels_last, on (batch, H, W, C) inputs, with its learned scale and shift),
``LayerNormalization`` (over the last axis, with scale and shift) and
``Embedding`` (a plain lookup of (batch, lookups) ids), each called once. Anything else with weights (a shared layer, a 'same' conv at stride 2,
which pads (0, 1), a GroupNorm without center or scale, a nested model, ...)
raises ``ValueError("fastclip: unsupported layer ...")``: the plans cover
exactly these (``fastclip_plan.check_conv`` / ``check_dense`` / ``check_gn``).

Each kind is one :class:`Rule` (its checks, variables, forward, cost-model
inputs, norms and share of the clipped sum) registered in :data:`RULES` for its
layer class; ``FastClip`` dispatches through that table alone, so a new kind is
one new rule (``ConvRule``, ``GroupNormRule``, ``DenseRule``, ``LayerNormRule``,
``EmbeddingRule`` are the examples).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import tensorflow as tf

from common.reference import fastclip_plan
from common.reference.fastclip_plan import LayerPlan
from common.reference.spec import Layer, conv_out_size
from frameworks.tf.models import CenteredGroupNormalization, cross_entropy

Methods = str | Mapping[str, str] | None
Chunks = int | Mapping[str, int] | None

# Whether convs run chunk by chunk (tf.map_fn) by default (module docstring).
CHUNKED = False


class Rule:
    """How fastclip clips one kind of Keras layer, registered for its layer class in
    :data:`RULES` (``fastclip_plan.Registry``, as TF-Privacy registers a registry
    function per layer class). ``FastClip`` dispatches only through these methods (at
    trace time: nothing of this runs per step of a ``tf.function``), so a new kind is
    one new rule here (its plan, checks and kept bytes: ``common.reference.fastclip_plan``).
    The JAX and PyTorch ports have the same rules by the same names."""

    kind = ""  # the plan's kind (fastclip_plan.plan_layer)

    def check(self, layer: tf.keras.layers.Layer, shapes: tuple[tuple[int, ...], tuple[int, ...]]) -> dict:
        """Raise ``fastclip_plan.unsupported`` unless the plans cover ``layer`` with these
        (input, output) shapes (batch dimension off); else its :class:`Tap` fields beyond them."""
        raise NotImplementedError

    def variables(self, layer: tf.keras.layers.Layer) -> tuple[tf.Variable, ...]:
        """The layer's weights in the clipped sum's order (the layer's own): the kernel
        (or scale) first, then its bias (or shift) where it has one."""
        return (layer.kernel, layer.bias) if layer.use_bias else (layer.kernel,)

    def spec_layer(self, t: Tap) -> Layer:
        """The layer as ``common.reference.spec.Layer`` (HWIO kernel), what the cost model plans."""
        raise NotImplementedError

    def forward(self, t: Tap, a: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(Z, what the norms read as A) of the layer on its input ``a``: the layer's own
        ops in its own order, so the forward is Keras' bit for bit."""
        raise NotImplementedError

    def activate(self, t: Tap, z: tf.Tensor) -> tf.Tensor:
        """The layer's output from its pre-activation Z (after the tape watches Z)."""
        return z if t.layer.activation is None else t.layer.activation(z)

    def norms(self, t: Tap, plan: LayerPlan, a: tf.Tensor, g: tf.Tensor, fc: FastClip) -> tuple[tf.Tensor, Any]:
        """(squared norms (B,), state for :meth:`clipped_sum`); ``fc``: the settings it runs under."""
        raise NotImplementedError

    def clipped_sum(self, t: Tap, a: tf.Tensor, g: tf.Tensor, state: Any, s: tf.Tensor) -> list[tf.Tensor]:
        """The layer's clipped sum, one tensor per :meth:`variables` entry."""
        raise NotImplementedError

    def note(self, t: Tap, plan: LayerPlan, fc: FastClip) -> dict:
        """What ``FastClip.notes`` records for the layer beyond its plan."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


RULES = fastclip_plan.Registry()  # layer class -> its Rule
# The spec ops this port's rules cover (steps.py asks fastclip_plan.model_gap with them).
SUPPORTED_OPS = fastclip_plan.SUPPORTED_OPS | fastclip_plan.VIT_OPS
register = RULES.register


@dataclass(frozen=True)
class Tap:
    """One weighted layer of the model, with its static shapes and, for a
    conv, its strides and symmetric zero padding (per spatial dim)."""

    layer: tf.keras.layers.Layer
    rule: Rule  # its kind's (RULES)
    in_shape: tuple[int, ...]  # without the batch dimension
    out_shape: tuple[int, ...]
    strides: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)

    @property
    def name(self) -> str:
        return self.layer.name

    @property
    def kind(self) -> str:
        return self.rule.kind

    @property
    def variables(self) -> tuple[tf.Variable, ...]:
        """The layer's weights in the clipped sum's order (``Rule.variables``)."""
        return self.rule.variables(self.layer)

    @property
    def has_bias(self) -> bool:
        """Whether it has a bias (a GroupNorm's shift): a second variable."""
        return len(self.variables) > 1

    @property
    def kernel_shape(self) -> tuple[int, ...]:
        """HWIO for convs, (in, out) for dense, (C,) (gamma's) for gn."""
        return tuple(self.variables[0].shape)


def _conv_padding(layer: tf.keras.layers.Conv2D) -> tuple[int, ...] | None:
    """The symmetric zero padding of a Keras Conv2D (None: not symmetric)."""
    if layer.padding == "valid":
        return (0, 0)
    if layer.padding == "same":
        return fastclip_plan.same_padding(tuple(layer.kernel_size), tuple(layer.strides))
    return None


# Keras' GroupNormalization and the study's centred form of it (same weights,
# same normalisation up to rounding: frameworks/tf/models.py says why).
GROUP_NORMS = (tf.keras.layers.GroupNormalization, CenteredGroupNormalization)


def _tap(layer: tf.keras.layers.Layer) -> Tap:
    """The layer's Tap by its rule, checked."""
    if not layer.trainable:
        raise fastclip_plan.unsupported(f"{layer.name!r} ({type(layer).__name__}): frozen (non-trainable) weights")
    shapes = tuple(layer.input_shape[1:]), tuple(layer.output_shape[1:])
    rule = RULES.of(layer.name, layer)
    return Tap(layer, rule, *shapes, **rule.check(layer, shapes))


def graph_nodes(model: tf.keras.Model) -> list:
    """The model's layer calls (Keras ``Node``s, inputs excluded) in the order
    Keras itself runs them (``Functional._run_internal_graph``: by decreasing
    depth, so every call's inputs are computed before it). A ``Sequential``
    started with an ``Input`` is such a graph too."""
    if not getattr(model, "_is_graph_network", False):
        if isinstance(model, tf.keras.Sequential):
            raise ValueError("fastclip: the model must be built (start it with an Input)")
        raise ValueError(f"fastclip: only Sequential or functional Keras models (a graph of layer calls), "
                         f"got {type(model).__name__}")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(f"fastclip: only models of one input and one output, got {len(model.inputs)} "
                         f"and {len(model.outputs)}")
    by_depth = model._nodes_by_depth  # pylint: disable=protected-access
    return [n for d in sorted(by_depth, reverse=True) for n in by_depth[d] if not n.is_input]


def find_layers(model: tf.keras.Model) -> list[Tap]:
    """The model's weighted layers, in ``model.layers`` order; ValueError for
    anything fastclip cannot handle (see the module docstring)."""
    calls: dict[int, int] = {}
    for node in graph_nodes(model):
        calls[id(node.layer)] = calls.get(id(node.layer), 0) + 1
    taps = []
    for layer in model.layers:
        if not layer.weights or id(layer) not in calls:
            continue
        if calls[id(layer)] > 1:
            raise fastclip_plan.shared_weights(layer.name)
        taps.append(_tap(layer))
    covered = {id(v) for t in taps for v in t.variables}
    stray = [v.name for v in model.trainable_variables if id(v) not in covered]
    if stray:
        raise fastclip_plan.stray_weights(stray)
    return taps


def make_plans(taps: list[Tap], batch: int, methods: Methods = None, chunks: Chunks = None) -> dict[str, LayerPlan]:
    """The cost model's per-layer choice (``common.reference.fastclip_plan.plan_model``);
    ``methods``/``chunks`` override it (one value for every conv, or
    ``{layer name: value}``)."""
    return fastclip_plan.plan_model([t.rule.spec_layer(t) for t in taps], batch, methods, chunks)


def _chunked(body: Callable, k: int, outputs: int, *xs: tf.Tensor) -> tuple[tf.Tensor, ...]:
    """``body`` over chunks of ``k`` examples (tf.map_fn), remainder in one
    call; ``body`` maps (n, ...) tensors to ``outputs`` (n, ...) tensors."""
    b = xs[0].shape[0]
    if b is None:
        raise ValueError("fastclip: chunking needs a static batch size")
    if k >= b:
        return body(*xs)
    full, rest = fastclip_plan.chunk_split(b, k)
    parts = []
    if full:
        head = tuple(tf.reshape(x[:full], [full // k, k, *x.shape[1:]]) for x in xs)
        out = tf.map_fn(lambda c: body(*c), head, fn_output_signature=(tf.float32,) * outputs)
        parts.append(tuple(tf.reshape(o, [full, *o.shape[2:]]) for o in out))
    if rest:
        parts.append(body(*(x[full:] for x in xs)))
    return parts[0] if len(parts) == 1 else tuple(tf.concat(o, 0) for o in zip(*parts))


def _unfold_slices(a: tf.Tensor, kh: int, kw: int, strides: tuple[int, int], padding: tuple[int, int]) -> tf.Tensor:
    """(n, H, W, C) -> *transposed* patches (n, kh*kw*C, Ho*Wo) of a conv at
    ``strides`` over the input zero-padded by ``padding`` on both sides,
    patch order (kh, kw, c) = the HWIO kernel's: kh*kw strided slices of the
    padded input in (n, C, H, W) layout, stacked (XLA fuses them into one
    pass). The layout makes the per-example product (d x T)(T x p), which XLA
    ran 10-20 % faster than (T x d)^T (T x p)."""
    _, h, w, c = a.shape
    (sh, sw), (ph, pw) = strides, padding
    ho, wo = conv_out_size(h, kh, sh, ph), conv_out_size(w, kw, sw, pw)
    at = tf.transpose(a, [0, 3, 1, 2])
    if ph or pw:
        at = tf.pad(at, [[0, 0], [0, 0], [ph, ph], [pw, pw]])
    cols = [at[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw] for i in range(kh) for j in range(kw)]
    return tf.reshape(tf.stack(cols, axis=1), [-1, kh * kw * c, ho * wo])


def _unfold_gather(a: tf.Tensor, kh: int, kw: int, strides: tuple[int, int], padding: tuple[int, int]) -> tf.Tensor:
    """(n, H, W, C) -> patches (n, Ho*Wo, kh*kw*C) of a conv at ``strides``
    over the input zero-padded by ``padding``, patch order (kh, kw, c), by
    one gather of C-float rows of the padded input (one pass)."""
    _, h, w, c = a.shape
    (sh, sw), (ph, pw) = strides, padding
    ho, wo = conv_out_size(h, kh, sh, ph), conv_out_size(w, kw, sw, pw)
    hp, wp = h + 2 * ph, w + 2 * pw
    ap = tf.pad(a, [[0, 0], [ph, ph], [pw, pw], [0, 0]]) if ph or pw else a
    rows = np.array([(sh * y + i) * wp + sw * x + j for y in range(ho) for x in range(wo)
                     for i in range(kh) for j in range(kw)], np.int32)
    flat = tf.reshape(ap, [-1, hp * wp, c])
    return tf.reshape(tf.gather(flat, rows, axis=1), [-1, ho * wo, kh * kw * c])


# name -> (unfold, whether it returns the transposed (n, d, T) layout)
UNFOLDS = {"slices": (_unfold_slices, True), "gather": (_unfold_gather, False)}


def unfold_method(t: Tap, xla: bool) -> str:
    """The faster unfold, measured per layer on the study's CPU (B=64): XLA
    fuses the slices; TF's executor copies each slice, and its gather moves
    C-float rows, so the gather wins where rows are long (C >= 16: 1.1-1.2x
    per layer) and the slices where they are short (the 3-channel input
    layers: gather 1.3-1.4x slower)."""
    return "gather" if not xla and t.kernel_shape[2] >= 16 else "slices"


def weight_grad(t: Tap, a: tf.Tensor, g: tf.Tensor) -> tf.Tensor:
    """A conv's kernel gradient over the batch as the standard step's backward
    computes it (Conv2DBackpropFilter at the layer's strides and padding)."""
    return tf.raw_ops.Conv2DBackpropFilter(input=a, filter_sizes=t.kernel_shape, out_backprop=g,
                                           strides=[1, *t.strides, 1], padding=t.layer.padding.upper())


def _group_norm(layer: tf.keras.layers.GroupNormalization, a: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(Z, xhat) of a GroupNormalization on (n, H, W, C): Z is the layer's own
    call, so the forward is the model's bit for bit whichever of
    :data:`GROUP_NORMS` it is (a ReLU input near zero then lands on the same
    side in fastclip as in the standard step); xhat = (x - mean) *
    rsqrt(var + epsilon) per example and group, Z = gamma * xhat + beta."""
    c = a.shape[-1]
    shape = tf.shape(a)
    xg = tf.reshape(a, tf.concat([shape[:-1], [layer.groups, c // layer.groups]], 0))
    mean, var = tf.nn.moments(xg, axes=[1, 2, 4], keepdims=True)
    xhat = (xg - mean) * tf.math.rsqrt(var + layer.epsilon)
    return layer(a), tf.reshape(xhat, shape)


def _sq(v: tf.Tensor, axes) -> tf.Tensor:
    return tf.reduce_sum(tf.square(v), axis=axes)


def _token_products(t: Tap, plan: LayerPlan, unfold: Callable[[tf.Tensor], tf.Tensor], transposed: bool,
                    a: tf.Tensor, gt: tf.Tensor, k: int | None) -> tuple[tf.Tensor, tf.Tensor | None]:
    """(per-example squared kernel-grad norms (B,), the kept per-example kernel grads
    (B, d, p) or None) of a layer whose example i has inputs U_i = ``unfold``(A_i)
    ((T, d), or (d, T) where ``transposed``) and output gradients ``gt`` (B, T, p), by
    the plan's method: a conv's unfolded windows, or a dense layer's token sequence as
    it is (a 1x1 conv, nothing to unfold). ``instantiate``: U_i^T G_i (one batched
    matmul), kept; ``ghost``: <U_i U_i^T, G_i G_i^T> (T x T Grams). ``k``: examples per
    chunk (tf.map_fn), None: the whole batch as one product."""

    if plan.method == "instantiate":
        def body(ac, gc):
            u = unfold(ac)
            pe = tf.matmul(u, gc) if transposed else tf.matmul(u, gc, transpose_a=True)  # (n, d, p)
            return _sq(pe, [1, 2]), pe
        return _chunked(body, k, 2, a, gt) if k else body(a, gt)
    if plan.method == "ghost":
        def body(ac, gc):
            u = unfold(ac)
            aa = tf.matmul(u, u, transpose_a=transposed, transpose_b=not transposed)  # (n, T, T)
            gg = tf.matmul(gc, gc, transpose_b=True)
            return (tf.reduce_sum(aa * gg, axis=[1, 2]),)
        (sq,) = _chunked(body, k, 1, a, gt) if k else body(a, gt)
        return sq, None
    raise ValueError(f"fastclip: unknown method {plan.method!r} for {t.name}")


def _token_clipped_sum(t: Tap, state: tuple[tf.Tensor | None, tf.Tensor | None], s: tf.Tensor,
                       book_keeping: Callable[[], tf.Tensor]) -> list[tf.Tensor]:
    """The clipped sum of a :func:`_token_products` layer from its state (per-example
    bias grads or None, kept kernel grads or None): instantiated, the s-weighted sum of
    the kept grads (a (1, B) x (B, d*p) product); ghost, ``book_keeping()`` (one
    standard-shaped weight-gradient product of the per-example scaled G); the bias
    sum_i s_i bias_i."""
    bias, pe = state
    if pe is not None:
        kernel = tf.reshape(tf.linalg.matvec(tf.reshape(pe, [pe.shape[0], -1]), s, transpose_a=True), t.kernel_shape)
    else:
        kernel = book_keeping()
    return [kernel] if bias is None else [kernel, tf.linalg.matvec(bias, s, transpose_a=True)]


class FastClip:
    """Fast clipping for one built Sequential or functional ``model`` at one batch size.

    ``methods``: None (the cost model), "instantiate" / "ghost" for every
    conv, or ``{layer name: method}``; ``chunks`` likewise forces examples
    per chunk; ``chunked``: run convs chunk by chunk (``tf.map_fn``) rather
    than as one whole-batch product (default :data:`CHUNKED`). ``xla``:
    whether the caller compiles with XLA (it picks the unfold, see
    :func:`unfold_method`; ``unfold`` forces one of :data:`UNFOLDS`).
    """

    def __init__(self, model: tf.keras.Model, batch_size: int, clip_norm: float,
                 methods: Methods = None, chunks: Chunks = None, chunked: bool | None = None,
                 xla: bool = False, unfold: str | None = None) -> None:
        self.model = model
        self.clip_norm = clip_norm
        self.taps = find_layers(model)
        self.nodes = graph_nodes(model)
        self.plans = make_plans(self.taps, batch_size, methods, chunks)
        self.chunked = CHUNKED if chunked is None else chunked
        if unfold is not None and unfold not in UNFOLDS:
            raise ValueError(f"fastclip: unknown unfold {unfold!r}; choose from {', '.join(UNFOLDS)}")
        self.xla, self.unfold = xla, unfold
        # The clipped sum's order: each layer's variables (Tap.variables).
        self.variables = [v for t in self.taps for v in t.variables]

    def logits(self, x: tf.Tensor, tape: tf.GradientTape | None = None):
        """Forward pass: (logits, {name: A}, {name: Z}); ``tape`` watches each
        Z. A is a conv/dense layer's input, a GroupNorm's xhat."""
        taps = {id(t.layer): t for t in self.taps}
        vals = {id(self.model.inputs[0]): x}  # Keras symbolic tensor -> its value here
        a_in, z_out = {}, {}
        for node in self.nodes:
            layer, t = node.layer, taps.get(id(node.layer))
            if t is None:
                args, kwargs = tf.nest.map_structure(lambda k: vals.get(id(k), k), (node.call_args, node.call_kwargs))
                out = layer(*args, **{"training": True, **kwargs})
            else:
                z, a_in[t.name] = t.rule.forward(t, vals[id(node.keras_inputs[0])])
                if tape is not None:
                    tape.watch(z)
                z_out[t.name] = z
                out = t.rule.activate(t, z)
            for k, v in zip(tf.nest.flatten(node.outputs), tf.nest.flatten(out)):
                vals[id(k)] = v
        return vals[id(self.model.outputs[0])], a_in, z_out

    def mean_loss(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        return tf.reduce_mean(cross_entropy(y, self.logits(x)[0]))

    def taps_and_grads(self, x: tf.Tensor, y: tf.Tensor) -> tuple[dict, dict]:
        """One forward + one backward pass: ({name: A}, {name: G}), G the
        gradient of each example's own loss w.r.t. the layer's pre-activation."""
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            logits, a, z = self.logits(x, tape)
            loss = tf.reduce_sum(cross_entropy(y, logits))
        g = tape.gradient(loss, z)
        return a, g

    def _norms(self, x: tf.Tensor, y: tf.Tensor):
        a, g = self.taps_and_grads(x, y)
        parts = {t.name: t.rule.norms(t, self.plans[t.name], a[t.name], g[t.name], self) for t in self.taps}
        return a, g, parts

    def per_layer_sq_norms(self, x: tf.Tensor, y: tf.Tensor) -> dict[str, tf.Tensor]:
        """{layer name: (B,) squared norm of that layer's gradient (kernel +
        bias; GroupNorm: gamma + beta)}."""
        return {name: sq for name, (sq, _) in self._norms(x, y)[2].items()}

    def clipped_sum(self, x: tf.Tensor, y: tf.Tensor, scale: float | tf.Tensor = 1.0,
                    mask: tf.Tensor | None = None) -> list[tf.Tensor]:
        """``scale`` * sum_i mask_i clip(g_i, C), one tensor per ``self.variables``
        entry (a step's 1/B folds into the per-example scales for free).
        ``mask`` (B,) float, 0 for a padding example (a deployed step's padded
        physical batch, frameworks/tf/deployed.py): its clip factor is 0, so
        it adds nothing to any sum (its own gradient is computed, and finite:
        padding gathers a real example). None: every example counts."""
        a, g, parts = self._norms(x, y)
        total = tf.add_n([sq for sq, _ in parts.values()])
        s = scale * fastclip_plan.clip_factor(total, self.clip_norm, sqrt=tf.sqrt, floor=tf.maximum, cap=tf.minimum)
        if mask is not None:
            s = s * mask
        out: list[tf.Tensor] = []
        for t in self.taps:
            out += t.rule.clipped_sum(t, a[t.name], g[t.name], parts[t.name][1], s)
        return out

    def notes(self) -> dict[str, dict]:
        """Per-layer plan, for the record."""
        out = {}
        for t in self.taps:
            p = self.plans[t.name]
            out[t.name] = {"method": p.method, "chunk": p.batch, "plan_chunk": p.chunk, "reason": p.reason,
                           **t.rule.note(t, p, self)}
        return out


# --- the layer kinds: one registered rule each ------------------------------------------------

def _bias_add(layer: tf.keras.layers.Layer, z: tf.Tensor) -> tf.Tensor:
    """``z`` + the layer's bias where it has one, as Keras' own call adds it."""
    return tf.nn.bias_add(z, layer.bias) if layer.use_bias else z


@register(tf.keras.layers.Conv2D)
class ConvRule(Rule):
    """``Conv2D``: per-example kernel grads instantiated or ghost norms, by the plan."""

    kind = "conv"

    def check(self, layer: tf.keras.layers.Conv2D, shapes: tuple[tuple[int, ...], tuple[int, ...]]) -> dict:
        padding = _conv_padding(layer)
        fastclip_plan.check_conv(layer.name, type(layer).__name__, kernel_size=tuple(layer.kernel_size),
                                 strides=tuple(layer.strides), padding=padding, dilations=tuple(layer.dilation_rate),
                                 groups=layer.groups,
                                 other="channels_last only" if layer.data_format != "channels_last" else None)
        return {"strides": tuple(layer.strides), "padding": padding}

    def spec_layer(self, t: Tap) -> Layer:
        return Layer(t.name, self.kind, t.kernel_shape, relu=False, bias=t.has_bias, out_hw=tuple(t.out_shape[:2]))

    def forward(self, t: Tap, a: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        z = tf.nn.convolution(a, t.layer.kernel, strides=list(t.strides), padding=t.layer.padding.upper())
        return _bias_add(t.layer, z), a

    def unfold(self, t: Tap, fc: FastClip) -> str:
        """The unfold the layer runs with under ``fc``: the forced one, else :func:`unfold_method`'s."""
        return fc.unfold or unfold_method(t, fc.xla)

    def norms(self, t: Tap, plan: LayerPlan, a: tf.Tensor, g: tf.Tensor, fc: FastClip):
        kh, kw, _, p = t.kernel_shape
        gt = tf.reshape(g, [-1, t.out_shape[0] * t.out_shape[1], p])
        bias = tf.reduce_sum(gt, axis=1) if t.has_bias else None  # per-example bias grads (B, p)
        fn, dt = UNFOLDS[self.unfold(t, fc)]  # dt: u is (n, d, T), else (n, T, d)
        sq, pe = _token_products(t, plan, lambda ac: fn(ac, kh, kw, t.strides, t.padding), dt, a, gt,
                                 plan.chunk if fc.chunked else None)
        return (sq if bias is None else sq + _sq(bias, 1)), (bias, pe)

    def clipped_sum(self, t: Tap, a: tf.Tensor, g: tf.Tensor, state: Any, s: tf.Tensor) -> list[tf.Tensor]:
        # book-keeping (ghost): one weight-gradient product with per-example scaled G
        return _token_clipped_sum(t, state, s, lambda: weight_grad(t, a, g * s[:, None, None, None]))

    def note(self, t: Tap, plan: LayerPlan, fc: FastClip) -> dict:
        return {"chunk": plan.chunk if fc.chunked else plan.batch, "unfold": self.unfold(t, fc)}


@register(*GROUP_NORMS)
class GroupNormRule(Rule):
    """``GroupNormalization`` with scale and shift: A is xhat; per-example (dgamma, dbeta), 2C floats, kept."""

    kind = "gn"

    def check(self, layer: tf.keras.layers.GroupNormalization,
              shapes: tuple[tuple[int, ...], tuple[int, ...]]) -> dict:
        layout = len(shapes[0]) == 3 and layer.axis in (-1, 3)
        fastclip_plan.check_gn(layer.name, type(layer).__name__, affine=layer.center and layer.scale,
                               other=None if layout else "channels_last (axis -1) on (batch, H, W, C) inputs only")
        return {}

    def variables(self, layer: tf.keras.layers.GroupNormalization) -> tuple[tf.Variable, ...]:
        return layer.gamma, layer.beta

    def spec_layer(self, t: Tap) -> Layer:
        return Layer(t.name, self.kind, t.kernel_shape, relu=False, bias=t.has_bias, out_hw=tuple(t.out_shape[:2]))

    def forward(self, t: Tap, a: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return _group_norm(t.layer, a)

    def activate(self, t: Tap, z: tf.Tensor) -> tf.Tensor:
        return z

    def norms(self, t: Tap, plan: LayerPlan, a: tf.Tensor, g: tf.Tensor, fc: FastClip):
        pe = tf.reduce_sum(g * a, axis=[1, 2]), tf.reduce_sum(g, axis=[1, 2])  # per-example (dgamma, dbeta), (B, C)
        return _sq(pe[0], 1) + _sq(pe[1], 1), pe

    def clipped_sum(self, t: Tap, a: tf.Tensor, g: tf.Tensor, state: Any, s: tf.Tensor) -> list[tf.Tensor]:
        return [tf.linalg.matvec(pe, s, transpose_a=True) for pe in state]


@register(tf.keras.layers.Dense)
class DenseRule(Rule):
    """``Dense`` with bias. On (batch, features): norm^2 (|a_i|^2 + 1) |g_i|^2, sum
    A^T (s * G), sum(s * G). On a token sequence (batch, T, features): a 1x1 conv with T
    positions (the plan's ``seq_dense``), so the conv's ghost / instantiate products
    (:func:`_token_products`) on A_i as it is; bias grads sum_t G_i."""

    kind = "dense"

    def check(self, layer: tf.keras.layers.Dense, shapes: tuple[tuple[int, ...], tuple[int, ...]]) -> dict:
        fastclip_plan.check_dense(layer.name, type(layer).__name__, has_bias=layer.use_bias,
                                  input_rank=1 + len(shapes[0]), sequences=True)
        return {}

    def spec_layer(self, t: Tap) -> Layer:
        if len(t.in_shape) == 2:
            return Layer(t.name, "seq_dense", t.kernel_shape, relu=False, bias=t.has_bias, out_hw=(t.out_shape[0], 1))
        return Layer(t.name, self.kind, t.kernel_shape, relu=False, bias=t.has_bias, out_hw=(1, 1))

    def forward(self, t: Tap, a: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        # Keras' Dense.call: a matmul on (batch, features), a tensordot over the last axis above
        z = tf.matmul(a, t.layer.kernel) if a.shape.rank == 2 else tf.tensordot(a, t.layer.kernel, [[2], [0]])
        return _bias_add(t.layer, z), a

    def norms(self, t: Tap, plan: LayerPlan, a: tf.Tensor, g: tf.Tensor, fc: FastClip):
        if a.shape.rank == 2:
            return fastclip_plan.dense_sq_norm(_sq(a, -1), _sq(g, -1)), None
        bias = tf.reduce_sum(g, axis=1)  # (B, p)
        sq, pe = _token_products(t, plan, lambda ac: ac, False, a, g, plan.chunk if fc.chunked else None)
        return sq + _sq(bias, 1), (bias, pe)

    def clipped_sum(self, t: Tap, a: tf.Tensor, g: tf.Tensor, state: Any, s: tf.Tensor) -> list[tf.Tensor]:
        if state is None:  # (batch, features)
            sg = g * s[:, None]
            return [tf.matmul(a, sg, transpose_a=True), tf.reduce_sum(sg, axis=0)]
        d, p = t.kernel_shape
        return _token_clipped_sum(t, state, s, lambda: tf.matmul(
            tf.reshape(a, [-1, d]), tf.reshape(g * s[:, None, None], [-1, p]), transpose_a=True))

    def note(self, t: Tap, plan: LayerPlan, fc: FastClip) -> dict:
        return {"chunk": plan.chunk if fc.chunked else plan.batch} if plan.kind == "seq_dense" else {}


@register(tf.keras.layers.LayerNormalization)
class LayerNormRule(Rule):
    """``LayerNormalization`` over the last axis with scale and shift: like GroupNorm, A is
    xhat and the per-example (dgamma, dbeta) = (sum_t G_i * xhat_i, sum_t G_i), 2C floats,
    exact, kept."""

    kind = "layernorm"

    def check(self, layer: tf.keras.layers.LayerNormalization,
              shapes: tuple[tuple[int, ...], tuple[int, ...]]) -> dict:
        rank = 1 + len(shapes[0])
        if not (layer.center and layer.scale) or list(layer.axis) != [rank - 1] or rank not in (2, 3):
            raise fastclip_plan.unsupported(f"{layer.name!r} ({type(layer).__name__}): only over the last axis "
                                            "with scale and shift, on (batch, features) or (batch, tokens, features)")
        return {}

    def variables(self, layer: tf.keras.layers.LayerNormalization) -> tuple[tf.Variable, ...]:
        return layer.gamma, layer.beta

    def spec_layer(self, t: Tap) -> Layer:
        hw = (t.in_shape[0], 1) if len(t.in_shape) == 2 else (1, 1)
        return Layer(t.name, self.kind, t.kernel_shape, relu=False, bias=True, out_hw=hw)

    def forward(self, t: Tap, a: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Z is the layer's own call (Keras' forward bit for bit); xhat = (x - mean) *
        rsqrt(var + epsilon) over the last axis, recomputed with the layer's epsilon."""
        mean, var = tf.nn.moments(a, axes=[-1], keepdims=True)
        return t.layer(a), (a - mean) * tf.math.rsqrt(var + t.layer.epsilon)

    def activate(self, t: Tap, z: tf.Tensor) -> tf.Tensor:
        return z

    def norms(self, t: Tap, plan: LayerPlan, a: tf.Tensor, g: tf.Tensor, fc: FastClip):
        axes = list(range(1, a.shape.rank - 1))  # the tokens (none on (batch, features))
        pe = tf.reduce_sum(g * a, axis=axes), tf.reduce_sum(g, axis=axes)  # (B, C) each
        return _sq(pe[0], 1) + _sq(pe[1], 1), pe

    clipped_sum = GroupNormRule.clipped_sum  # s @ dgamma, s @ dbeta


@register(tf.keras.layers.Embedding)
class EmbeddingRule(Rule):
    """``Embedding`` (a plain dense lookup on (batch, lookups) int ids): example i's table
    grad is its output-gradient rows scatter-added into the rows it looked up (a row
    looked up twice gets both), kept (B, rows, p); norms from it, the clipped sum its
    s-weighted sum. Exact; in the ViT each example looks up rows 0..rows-1 once, so it is
    G_i itself. A is the recorded ids."""

    kind = "embed"

    def check(self, layer: tf.keras.layers.Embedding, shapes: tuple[tuple[int, ...], tuple[int, ...]]) -> dict:
        # sparse outputs and the mask (which the replayed graph would not pass on) change the layer
        if layer.sparse or layer.mask_zero or len(shapes[0]) != 1:
            raise fastclip_plan.unsupported(f"{layer.name!r} ({type(layer).__name__}): only a plain lookup "
                                            "(no sparse, no mask_zero) of (batch, lookups) ids")
        return {}

    def variables(self, layer: tf.keras.layers.Embedding) -> tuple[tf.Variable, ...]:
        return (layer.embeddings,)

    def spec_layer(self, t: Tap) -> Layer:
        return Layer(t.name, self.kind, t.kernel_shape, relu=False, bias=False, out_hw=(t.in_shape[0], 1))

    def forward(self, t: Tap, a: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return t.layer(a), a

    def activate(self, t: Tap, z: tf.Tensor) -> tf.Tensor:
        return z

    def norms(self, t: Tap, plan: LayerPlan, a: tf.Tensor, g: tf.Tensor, fc: FastClip):
        rows, p = t.kernel_shape
        b, lookups = g.shape[0], g.shape[1]
        # scatter-add: lookup (i, l) adds G[i, l] to row i * rows + ids[i, l] of a (B * rows, p) table
        ids = tf.cast(a, tf.int32) + rows * tf.range(b, dtype=tf.int32)[:, None]
        pe = tf.reshape(tf.math.unsorted_segment_sum(tf.reshape(g, [b * lookups, p]), tf.reshape(ids, [-1]),
                                                     b * rows), [b, rows, p])
        return _sq(pe, [1, 2]), pe

    def clipped_sum(self, t: Tap, a: tf.Tensor, g: tf.Tensor, state: Any, s: tf.Tensor) -> list[tf.Tensor]:
        return [tf.reshape(tf.linalg.matvec(tf.reshape(state, [state.shape[0], -1]), s, transpose_a=True),
                           t.kernel_shape)]
