"""The study's own fast per-example clipping for Keras models (docs/design.md §7),
a port of frameworks/jax/fastclip.py.

One forward pass calls every parametrised layer's ops functionally (conv /
matmul + bias_add with the layer's own variables) and keeps its input A and
pre-activation output Z; one ``tf.GradientTape`` that watches only the Zs
gives G = d(summed loss)/dZ for every layer (each example's own output
gradient: examples do not interact), and no weight gradient is ever built.
From A and G, per layer (plan from :mod:`common.reference.fastclip_plan`, the same
cost model as JAX):

- dense: norm_i^2 = (|a_i|^2 + 1) |g_i|^2; clipped sum A^T (s * G), sum(s * G);
- conv, ``instantiate``: per-example grads A_i^T G_i (unfold + one batched
  matmul), their squared norms, later their weighted sum sum_i s_i A_i^T G_i
  (a (1, B) x (B, d*p) product);
- conv, ``ghost``: <A_i A_i^T, G_i G_i^T>, then one standard-shaped weight
  gradient (Conv2DBackpropFilter) of G scaled per example (book-keeping).
Conv bias grads are sum_t G_i. The scales s_i = min(1, C / ||g_i||) use the
norm over all layers. No second backward pass, no Python loop over examples.

What is fast differs from JAX's XLA:CPU, and is a measurement, not a
docstring: the unfold (B*T*d floats written, read again) is the overhead, and
which unfold is faster (slices or gather) depends on the executor
(:func:`unfold_method`); chunking (``tf.map_fn`` over ``plan.chunk``
examples) was slower per step than one whole-batch product when it was
measured, so by default the whole batch is one product and the plan's chunk
is only recorded. Memory: the largest unfolded input (B*T*d floats) plus the
kept per-example grads (sum of B*d*p).

Supported: ``tf.keras.Sequential`` models whose weighted layers are Keras
``Conv2D`` (2-D, odd kernel, stride 1, 'same', undilated, ungrouped,
channels_last, with bias) and ``Dense`` (with bias, on (batch, features)
inputs); any other layer with weights raises
``ValueError("fastclip: unsupported layer ...")``. Layers without weights
(pooling, flatten, ...) are called as they are.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import tensorflow as tf

from common.reference import fastclip_plan
from common.reference.fastclip_plan import LayerPlan
from common.reference.spec import Layer
from frameworks.tf.models import cross_entropy

Methods = str | Mapping[str, str] | None
Chunks = int | Mapping[str, int] | None

# Whether convs run chunk by chunk (tf.map_fn) by default (module docstring).
CHUNKED = False


@dataclass(frozen=True)
class Tap:
    """One weighted layer of the model, with its static shapes."""

    layer: tf.keras.layers.Layer
    kind: str  # conv | dense
    in_shape: tuple[int, ...]  # without the batch dimension
    out_shape: tuple[int, ...]

    @property
    def name(self) -> str:
        return self.layer.name

    @property
    def kernel_shape(self) -> tuple[int, ...]:
        return tuple(self.layer.kernel.shape)

    @property
    def positions(self) -> int:
        return self.out_shape[0] * self.out_shape[1] if self.kind == "conv" else 1


def _tap(layer: tf.keras.layers.Layer) -> Tap:
    api = type(layer).__name__
    if not layer.trainable:
        raise fastclip_plan.unsupported(f"{layer.name!r} ({api}): frozen (non-trainable) weights")
    shapes = tuple(layer.input_shape[1:]), tuple(layer.output_shape[1:])
    if type(layer) is tf.keras.layers.Conv2D:
        fastclip_plan.check_conv(layer.name, api, kernel_size=tuple(layer.kernel_size), strides=tuple(layer.strides),
                                 same_padding=layer.padding == "same", dilations=tuple(layer.dilation_rate),
                                 groups=layer.groups, has_bias=layer.use_bias,
                                 other="channels_last only" if layer.data_format != "channels_last" else None)
        return Tap(layer, "conv", *shapes)
    if type(layer) is tf.keras.layers.Dense:
        fastclip_plan.check_dense(layer.name, api, has_bias=layer.use_bias, input_rank=1 + len(shapes[0]))
        return Tap(layer, "dense", *shapes)
    raise fastclip_plan.unsupported(f"{layer.name!r} ({api})")


def find_layers(model: tf.keras.Model) -> list[Tap]:
    """The model's weighted layers, in call order; ValueError for anything
    fastclip cannot handle (see the module docstring)."""
    if not isinstance(model, tf.keras.Sequential):
        raise ValueError(f"fastclip: only tf.keras.Sequential models, got {type(model).__name__}")
    if not model.built:
        raise ValueError("fastclip: the model must be built (start it with an Input)")
    taps = [_tap(layer) for layer in model.layers if layer.weights]
    seen: set[int] = set()
    for t in taps:
        if id(t.layer) in seen:
            raise fastclip_plan.shared_weights(t.name)
        seen.add(id(t.layer))
    covered = {id(v) for t in taps for v in (t.layer.kernel, t.layer.bias)}
    stray = [v.name for v in model.trainable_variables if id(v) not in covered]
    if stray:
        raise fastclip_plan.stray_weights(stray)
    return taps


def make_plans(taps: list[Tap], batch: int, methods: Methods = None, chunks: Chunks = None) -> dict[str, LayerPlan]:
    """The cost model's per-layer choice (``common.reference.fastclip_plan.plan_model``);
    ``methods``/``chunks`` override it (one value for every conv, or
    ``{layer name: value}``)."""
    layers = [Layer(t.name, t.kind, t.kernel_shape, relu=False,
                    out_hw=tuple(t.out_shape[:2]) if t.kind == "conv" else (1, 1)) for t in taps]
    return fastclip_plan.plan_model(layers, batch, methods, chunks)


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


def _unfold_slices(a: tf.Tensor, kh: int, kw: int) -> tf.Tensor:
    """(n, H, W, C) -> *transposed* 'same' patches (n, kh*kw*C, H*W), patch
    order (kh, kw, c) = the HWIO kernel's: kh*kw shifted slices of the padded
    input in (n, C, H, W) layout, stacked (XLA fuses them into one pass). The
    layout makes the per-example product (d x T)(T x p), which XLA ran 10-20 %
    faster than (T x d)^T (T x p)."""
    _, h, w, c = a.shape
    at = tf.pad(tf.transpose(a, [0, 3, 1, 2]), [[0, 0], [0, 0], [kh // 2, kh // 2], [kw // 2, kw // 2]])
    cols = [at[:, :, i:i + h, j:j + w] for i in range(kh) for j in range(kw)]
    return tf.reshape(tf.stack(cols, axis=1), [-1, kh * kw * c, h * w])


def _unfold_gather(a: tf.Tensor, kh: int, kw: int) -> tf.Tensor:
    """(n, H, W, C) -> 'same' patches (n, H*W, kh*kw*C), patch order (kh, kw,
    c), by one gather of C-float rows of the padded input (one pass)."""
    _, h, w, c = a.shape
    wp = w + kw - 1
    ap = tf.pad(a, [[0, 0], [kh // 2, kh // 2], [kw // 2, kw // 2], [0, 0]])
    rows = np.array([(y + i) * wp + x + j for y in range(h) for x in range(w) for i in range(kh) for j in range(kw)],
                    np.int32)
    flat = tf.reshape(ap, [-1, (h + kh - 1) * wp, c])
    return tf.reshape(tf.gather(flat, rows, axis=1), [-1, h * w, kh * kw * c])


# name -> (unfold, whether it returns the transposed (n, d, T) layout)
UNFOLDS = {"slices": (_unfold_slices, True), "gather": (_unfold_gather, False)}


def unfold_method(t: Tap, xla: bool) -> str:
    """The faster unfold, measured per layer on the study's CPU (B=64): XLA
    fuses the slices; TF's executor copies each slice, and its gather moves
    C-float rows, so the gather wins where rows are long (C >= 16: 1.1-1.2x
    per layer) and the slices where they are short (the 3-channel input
    layers: gather 1.3-1.4x slower)."""
    return "gather" if not xla and t.kernel_shape[2] >= 16 else "slices"


def _sq(v: tf.Tensor, axes) -> tf.Tensor:
    return tf.reduce_sum(tf.square(v), axis=axes)


class FastClip:
    """Fast clipping for one built Sequential ``model`` at one batch size.

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
        self.plans = make_plans(self.taps, batch_size, methods, chunks)
        self.chunked = CHUNKED if chunked is None else chunked
        if unfold is not None and unfold not in UNFOLDS:
            raise ValueError(f"fastclip: unknown unfold {unfold!r}; choose from {', '.join(UNFOLDS)}")
        self.unfolds = {t.name: unfold or unfold_method(t, xla) for t in self.taps if t.kind == "conv"}
        # The clipped sum's order: each layer's (kernel, bias).
        self.variables = [v for t in self.taps for v in (t.layer.kernel, t.layer.bias)]

    def logits(self, x: tf.Tensor, tape: tf.GradientTape | None = None):
        """Forward pass: (logits, {name: A}, {name: Z}); ``tape`` watches each Z."""
        taps = {id(t.layer): t for t in self.taps}
        a_in, z_out = {}, {}
        out = x
        for layer in self.model.layers:
            t = taps.get(id(layer))
            if t is None:
                out = layer(out, training=True)
                continue
            if t.kind == "conv":
                z = tf.nn.conv2d(out, layer.kernel, 1, "SAME")
            else:
                z = tf.matmul(out, layer.kernel)
            z = tf.nn.bias_add(z, layer.bias)
            if tape is not None:
                tape.watch(z)
            a_in[t.name], z_out[t.name] = out, z
            out = layer.activation(z)
        return out, a_in, z_out

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

    def _conv_norms(self, t: Tap, plan: LayerPlan, a: tf.Tensor, g: tf.Tensor):
        kh, kw, _, p = t.kernel_shape
        gt = tf.reshape(g, [-1, t.positions, p])
        bias = tf.reduce_sum(gt, axis=1)  # per-example bias grads (B, p)
        k = plan.chunk if self.chunked else None
        unfold, dt = UNFOLDS[self.unfolds[t.name]]  # dt: u is (n, d, T), else (n, T, d)
        if plan.method == "instantiate":
            def body(ac, gc):
                u = unfold(ac, kh, kw)
                pe = tf.matmul(u, gc) if dt else tf.matmul(u, gc, transpose_a=True)  # (n, d, p)
                return _sq(pe, [1, 2]), pe
            sq, pe = _chunked(body, k, 2, a, gt) if k else body(a, gt)
        elif plan.method == "ghost":
            def body(ac, gc):
                u = unfold(ac, kh, kw)
                aa = tf.matmul(u, u, transpose_a=dt, transpose_b=not dt)  # (n, T, T)
                gg = tf.matmul(gc, gc, transpose_b=True)
                return (tf.reduce_sum(aa * gg, axis=[1, 2]),)
            (sq,), pe = (_chunked(body, k, 1, a, gt) if k else body(a, gt)), None
        else:
            raise ValueError(f"fastclip: unknown method {plan.method!r} for {t.name}")
        return sq + _sq(bias, 1), (bias, pe)

    def _conv_sum(self, t: Tap, a: tf.Tensor, g: tf.Tensor, state, s: tf.Tensor) -> list[tf.Tensor]:
        bias, pe = state
        out_bias = tf.linalg.matvec(bias, s, transpose_a=True)
        if pe is not None:  # instantiated: weighted sum of the per-example grads
            kernel = tf.reshape(tf.linalg.matvec(tf.reshape(pe, [pe.shape[0], -1]), s, transpose_a=True),
                                t.kernel_shape)
        else:  # book-keeping: one weight-gradient product with per-example scaled G
            kernel = tf.raw_ops.Conv2DBackpropFilter(
                input=a, filter_sizes=t.kernel_shape, out_backprop=g * s[:, None, None, None],
                strides=[1, 1, 1, 1], padding="SAME")
        return [kernel, out_bias]

    def _norms(self, x: tf.Tensor, y: tf.Tensor):
        a, g = self.taps_and_grads(x, y)
        parts = {}
        for t in self.taps:
            if t.kind == "dense":
                parts[t.name] = fastclip_plan.dense_sq_norm(_sq(a[t.name], -1), _sq(g[t.name], -1)), None
            else:
                parts[t.name] = self._conv_norms(t, self.plans[t.name], a[t.name], g[t.name])
        return a, g, parts

    def per_layer_sq_norms(self, x: tf.Tensor, y: tf.Tensor) -> dict[str, tf.Tensor]:
        """{layer name: (B,) squared norm of that layer's kernel+bias gradient}."""
        return {name: sq for name, (sq, _) in self._norms(x, y)[2].items()}

    def clipped_sum(self, x: tf.Tensor, y: tf.Tensor, scale: float | tf.Tensor = 1.0) -> list[tf.Tensor]:
        """``scale`` * sum_i clip(g_i, C), one tensor per ``self.variables``
        entry (a step's 1/B folds into the per-example scales for free)."""
        a, g, parts = self._norms(x, y)
        total = tf.add_n([sq for sq, _ in parts.values()])
        s = scale * fastclip_plan.clip_factor(total, self.clip_norm, sqrt=tf.sqrt, floor=tf.maximum, cap=tf.minimum)
        out: list[tf.Tensor] = []
        for t in self.taps:
            at, gt = a[t.name], g[t.name]
            if t.kind == "dense":
                sg = gt * s[:, None]
                out += [tf.matmul(at, sg, transpose_a=True), tf.reduce_sum(sg, axis=0)]
            else:
                out += self._conv_sum(t, at, gt, parts[t.name][1], s)
        return out

    def notes(self) -> dict[str, dict]:
        """Per-layer plan, for the record."""
        out = {}
        for n, p in self.plans.items():
            out[n] = {"method": p.method, "chunk": p.chunk if self.chunked and p.kind == "conv" else p.batch,
                      "plan_chunk": p.chunk, "reason": p.reason}
            if n in self.unfolds:
                out[n]["unfold"] = self.unfolds[n]
        return out
