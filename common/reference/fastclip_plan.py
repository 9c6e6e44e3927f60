"""Per-layer plan for the study's fast clipping (docs/design.md §7), framework-neutral.

For a layer with inputs A (B x T x d after unfolding) and output gradients
G (B x T x p) a plan says how each example's gradient norm and the clipped sum
are computed:

- ``dense`` (T = 1, always): norm^2 = |a_i|^2 |g_i|^2 (+ |g_i|^2 for the bias),
  clipped sum = one book-keeping product A^T (s * G). Nothing per example is
  ever instantiated.
- ``instantiate`` (conv): per-example weight gradients A_i^T G_i, computed in
  chunks of ``chunk`` examples (unfold + batched matmul, so only a chunk's
  unfolded input is ever live); kept, so the clipped sum is their weighted sum
  sum_i s_i A_i^T G_i. FLOPs: ~2BTdp (the same as the standard weight
  gradient) + 4Bdp; extra memory: the kept grads, B*d*p floats.
- ``ghost`` (conv): ghost norm <A_i A_i^T, G_i G_i^T>, chunked; the clipped sum
  is one standard-shaped weight-gradient product with G scaled per example
  (book-keeping). FLOPs: ~2BT^2(d+p) + 2BTdp; extra memory: chunk*T^2.
- ``seq_dense`` (a dense layer on a (T, d) token sequence) is a 1x1 conv with
  T positions and nothing to unfold (A is the layer's input): the same two
  methods, chosen by the same estimates.
- ``gn`` and ``layernorm``: per-example scale and shift grads sum_t G*xhat and
  sum_t G (2C floats per example), always instantiated (method = the kind).
- ``embed`` (an embedding looked up at rows 0..rows-1 once per example): the
  per-example grad of the table *is* the output gradient G_i (rows x p), so
  its norm is |G_i| and the clipped sum sum_i s_i G_i: exact, nothing to
  choose (method ``embed``).

Choosing. The literature's rule (:func:`literature_choice`) compares only the
norm costs, ghost when 2T^2 <= pd, because it always pays a book-keeping
product afterwards. Here the instantiated gradients *are* the clipped sum
(weighted sum), so instantiation costs no more FLOPs than the standard weight
gradient and always has fewer FLOPs than ghost + book-keeping. What it costs
instead is memory traffic: B*d*p floats written (and zero-filled, and read
back for the weighted sum). :func:`plan_layer` therefore compares *estimated
times*: FLOPs at the rate each kind of product reaches plus the kept bytes at
an effective bandwidth, constants measured on the study's 2-core CPU with
XLA:CPU (see ``RATES``; the comparison only flips near the boundary, where
both are about as fast). An optional memory limit forces ``ghost`` where the
kept per-example grads would not fit.

Whether the cost model's choice matches measurement on the machine of a run
is the per-layer timing's job (``python -m common.report.layer_timing RUN``,
its ``fastclip_layers.json`` and the report's section): numbers come from
there, never from this docstring. The constants are one CPU's; on another
device re-measure them (and CHUNK_BYTES) before trusting a choice. A port
whose candidates are cheap to time (PyTorch's eager ops) re-chooses at build
time instead (:func:`calibrate`: the cost model's plan, larger chunks and
the other method, each timed on the batch's own layer inputs and output
gradients, the fastest kept); ports that would compile every candidate (JAX,
TF's XLA) keep the model's choice.

The rules every port applies (which layers are supported, the dense-layer
norm, the clip factor, how a batch splits into chunks) are framework-free and
live here too (``check_conv`` ... ``chunk_split``); each port keeps only its
framework's mechanics (finding layers, unfolding, the products).

No framework is imported here: PyTorch and TF ports use the same plans.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping

from common.reference.spec import Layer, ModelSpec

METHODS = ("instantiate", "ghost")
# Layer kinds planned by choosing between METHODS (the rest have one exact way).
CHOICE_KINDS = ("conv", "seq_dense")
# Layer kinds whose per-example grads are always instantiated exactly: (what,
# whose grads, the plan's reason).
EXACT_KINDS = {
    "gn": ("GroupNorm", "per-channel", "GroupNorm: per-channel sum_t g*xhat and sum_t g (2C floats per example)"),
    "layernorm": ("LayerNorm", "per-feature", "LayerNorm: per-feature sum_t g*xhat and sum_t g (2C floats per example)"),
    "embed": ("embedding", "per-row", "embedding: each row looked up once, the per-example grad is the output "
              "gradient (rows x features floats per example)"),
}
BYTES = 4  # float32

# Effective rates on the study's CPU (2-core AMD EPYC, XLA:CPU, float32),
# fitted once to per-layer micro-benchmarks (layer_timing re-checks the choice):
#   per_example: batched per-example matmul A_i^T G_i inside a chunk;
#   ghost: the two T x T Gram products of the ghost norm;
#   book: one standard-shaped weight-gradient product over the whole batch;
#   keep: bytes/s for keeping per-example grads (zero-fill + write + read).
RATES = {"per_example": 110e9, "ghost": 140e9, "book": 170e9, "keep": 3e9}

# A chunk's working set (unfolded inputs + per-example grads + output grads
# + inputs) is kept under CHUNK_BYTES, with at least MIN_CHUNK examples: small
# enough to stay in cache (L2 1 MiB/core, L3 32 MiB here) and to keep XLA's
# temporaries small (large ones are fresh mmaps, page-faulted every step),
# large enough that loop overhead and matmul sizes stay efficient (chosen
# from a sweep of chunk sizes on the JAX clipped-sum function; unchunked, one
# batched matmul over the whole batch, was slower per layer there).
CHUNK_BYTES = 5 * 2**19  # 2.5 MiB
MIN_CHUNK = 2


@dataclass(frozen=True)
class Estimate:
    """Cost of one method for one layer and batch: FLOPs, extra bytes, seconds."""

    flops: float
    extra_bytes: float
    seconds: float


@dataclass(frozen=True)
class LayerPlan:
    name: str
    kind: str  # conv | seq_dense | dense | gn | layernorm | embed
    batch: int
    positions: int  # T
    fan_in: int  # d
    features: int  # p
    method: str  # instantiate | ghost (CHOICE_KINDS) | dense | the kind (EXACT_KINDS)
    chunk: int  # examples per chunk (CHOICE_KINDS); batch for the rest
    reason: str
    estimates: Mapping[str, Estimate] = field(default_factory=dict)


def literature_choice(positions: int, fan_in: int, features: int) -> str:
    """Ghost when 2T^2 <= pd (the rule of the ghost-clipping literature)."""
    return "ghost" if 2 * positions * positions <= features * fan_in else "instantiate"


def estimates(positions: int, fan_in: int, features: int, batch: int, chunk: int = 1) -> dict[str, Estimate]:
    """FLOPs, extra memory and estimated seconds of each conv method (norms + clipped sum)."""
    t, d, p, b = positions, fan_in, features, batch
    pe_flops = 2.0 * b * t * d * p
    keep = float(b * d * p * BYTES)
    inst_flops = pe_flops + 4.0 * b * d * p  # per-example grads, squares, weighted sum
    ghost_norm = 2.0 * b * t * t * (d + p) + 2.0 * b * t * t
    book = 2.0 * b * t * d * p
    return {
        "instantiate": Estimate(inst_flops, keep, inst_flops / RATES["per_example"] + keep / RATES["keep"]),
        "ghost": Estimate(ghost_norm + book, float(2 * chunk * t * t * BYTES),
                          ghost_norm / RATES["ghost"] + book / RATES["book"]),
    }


def chunk_size(positions: int, fan_in: int, features: int, batch: int, in_channels: int | None = None) -> int:
    """Examples per chunk: the largest power of two (>= MIN_CHUNK, <= batch)
    whose working set fits CHUNK_BYTES."""
    t, d, p = positions, fan_in, features
    c = in_channels if in_channels is not None else d
    per_example = BYTES * (t * d + d * p + t * p + t * c)
    k = 1
    while 2 * k <= batch and (2 * k <= MIN_CHUNK or 2 * k * per_example <= CHUNK_BYTES):
        k *= 2
    return k


def plan_layer(name: str, kind: str, positions: int, fan_in: int, features: int, batch: int, *,
               method: str | None = None, chunk: int | None = None, in_channels: int | None = None,
               memory_limit_bytes: float | None = None) -> LayerPlan:
    """How to clip one layer. ``method``/``chunk`` force a choice (tests, timing)."""
    if batch <= 0:
        raise ValueError(f"batch must be positive, got {batch}")
    if kind == "dense":
        if positions != 1:
            raise ValueError(f"{name}: dense layers have T = 1, got {positions}")
        if method not in (None, "dense"):
            raise ValueError(f"{name}: dense layers always use |a|^2|g|^2 + book-keeping, not {method!r}")
        return LayerPlan(name, kind, batch, 1, fan_in, features, "dense", batch, "dense: |a|^2 |g|^2")
    if kind in EXACT_KINDS:
        what, per, reason = EXACT_KINDS[kind]
        if method not in (None, kind):
            raise ValueError(f"{name}: {what} layers always instantiate their {per} grads, not {method!r}")
        return LayerPlan(name, kind, batch, positions, fan_in, features, kind, batch, reason)
    if kind not in CHOICE_KINDS:
        raise ValueError(f"{name}: unknown layer kind {kind!r}")
    if chunk is not None and chunk <= 0:
        raise ValueError(f"{name}: chunk must be positive, got {chunk}")
    k = min(chunk or chunk_size(positions, fan_in, features, batch, in_channels), batch)
    est = estimates(positions, fan_in, features, batch, k)
    if method is not None:
        if method not in METHODS:
            raise ValueError(f"{name}: unknown method {method!r}; choose from {', '.join(METHODS)}")
        choice, reason = method, "forced"
    elif memory_limit_bytes is not None and est["instantiate"].extra_bytes > memory_limit_bytes:
        choice, reason = "ghost", "per-example grads exceed the memory limit"
    else:
        choice = min(METHODS, key=lambda m: est[m].seconds)
        reason = "lower estimated time"
    return LayerPlan(name, kind, batch, positions, fan_in, features, choice, k, reason, est)


def plan_model(layers: Iterable[Layer], batch: int, methods: str | Mapping[str, str] | None = None,
               chunks: int | Mapping[str, int] | None = None,
               memory_limit_bytes: float | None = None) -> dict[str, LayerPlan]:
    """Plans of a spec's layers (``common.reference.spec.Layer``); see :func:`plan_layer`.

    ``methods``: one method for every conv and seq_dense layer, or ``{layer: method}``;
    ``chunks``: likewise for chunk sizes. Naming an unknown layer is an error.
    """
    layers = list(layers)
    names = {layer.name for layer in layers}
    for what, given in (("methods", methods), ("chunks", chunks)):
        if isinstance(given, Mapping) and set(given) - names:
            raise ValueError(f"fastclip: {what} name unknown layers {sorted(set(given) - names)}; "
                             f"layers are {sorted(names)}")
    out = {}
    for layer in layers:
        m = methods.get(layer.name) if isinstance(methods, Mapping) else methods
        if layer.kind not in CHOICE_KINDS and isinstance(methods, str):
            m = None  # a global method applies to the convs and sequence dense layers
        k = chunks.get(layer.name) if isinstance(chunks, Mapping) else chunks
        # a chunk's working set holds a conv's input besides its unfolded A;
        # a sequence dense layer's A is its input (0 more)
        c = layer.kernel_shape[-2] if layer.kind == "conv" else 0 if layer.kind == "seq_dense" else None
        out[layer.name] = plan_layer(layer.name, layer.kind, layer.positions, layer.fan_in, layer.features, batch,
                                     method=m, chunk=k, in_channels=c, memory_limit_bytes=memory_limit_bytes)
    return out



# --- calibration: the plan chosen by measurement on the run's machine ---------

# A candidate chunk's unfolded input (chunk * T * d floats, live while the chunk
# runs) stays under this, so that calibration never trades memory for speed
# beyond what the cost model's chunk already holds.
CALIBRATION_TEMP_BYTES = 32 * 2**20
# The other method is timed only when the cost model puts it within this
# factor of its choice: far from the boundary one timing of it can outlast the
# whole calibration budget (a ghost norm at T = 1024: 0.36 s per call on the study's CPU).
CALIBRATION_SLACK = 3.0


def candidates(plan: LayerPlan) -> list[LayerPlan]:
    """What calibration times for a conv or seq_dense layer, the cost model's plan first:
    then instantiate at each power-of-two multiple of its chunk up to the
    batch (the batch last) while the chunk's unfolded input fits
    ``CALIBRATION_TEMP_BYTES``, then the other method at the cost model's
    chunk if its estimate is within ``CALIBRATION_SLACK`` of the choice's."""
    if plan.kind not in CHOICE_KINDS:
        return [plan]
    out = [plan]
    per_example = plan.positions * plan.fan_in * BYTES
    k = plan.chunk
    while k < plan.batch:
        k = min(2 * k, plan.batch)
        if k * per_example > CALIBRATION_TEMP_BYTES:
            break
        out.append(replace(plan, method="instantiate", chunk=k))
    other = "ghost" if plan.method == "instantiate" else "instantiate"
    est = plan.estimates
    if not est or est[other].seconds <= CALIBRATION_SLACK * est[plan.method].seconds:
        out.append(replace(plan, method=other))
    return out


def label(plan: LayerPlan) -> str:
    return f"{plan.method}/{plan.chunk}"


def calibrate(plans: Mapping[str, LayerPlan], time_plan: Callable[[LayerPlan], float], budget_s: float,
              clock: Callable[[], float] = time.perf_counter) -> tuple[dict[str, LayerPlan], dict[str, Any]]:
    """Per conv or seq_dense layer, the fastest of :func:`candidates` by ``time_plan(plan)``
    (seconds of that layer's norms + clipped sum, timed by the port on the
    real layer inputs and output gradients), within ``budget_s`` for all
    layers together: a candidate is started only while the budget lasts, and
    the cost model's plan is always timed. Returns the plans (the other kinds
    unchanged) and the notes: per layer the timed candidates (ms), the cost
    model's pick and the chosen one."""
    start = clock()
    out, notes = dict(plans), {}
    for name, plan in plans.items():
        if plan.kind not in CHOICE_KINDS:
            continue
        timed: dict[str, float] = {}
        best, best_s = plan, None
        for cand in candidates(plan):
            if timed and clock() - start > budget_s:
                break
            s = time_plan(cand)
            timed[label(cand)] = round(s * 1e3, 3)
            if best_s is None or s < best_s:
                best, best_s = cand, s
        reason = plan.reason if best is plan else f"calibrated: fastest of {len(timed)} timed"
        out[name] = replace(best, reason=reason)
        notes[name] = {"timed_ms": timed, "model": label(plan), "chosen": label(best)}
    return out, {"layers": notes, "budget_s": budget_s, "took_s": round(clock() - start, 3)}


# --- the rules every port applies ---------------------------------------------

# Floor of a gradient norm in the clip factor: C / max(||g||, NORM_FLOOR) keeps
# an all-zero gradient finite (its factor is then 1, as min(1, C / 0+) is).
NORM_FLOOR = 1e-30

CONV_RULE = "only 2-D, undilated, ungrouped, symmetric zero padding (any stride, bias or none)"
DENSE_RULE = "only with bias, on (batch, features) inputs"
SEQ_DENSE_RULE = "only with bias, on (batch, features) or (batch, tokens, features) inputs"
GN_RULE = "only with a learned per-channel scale and shift, on (batch, H, W, C) / (N, C, H, W) inputs"

# The spec ops every port handles (the weighted ones are tapped; the others are
# the framework's own ops, differentiated by its autodiff as in standard training).
SUPPORTED_OPS = frozenset({"conv", "gn", "dense", "relu", "maxpool", "avgpool", "gap", "flatten", "add"})


# The ViT's ops (common/reference/spec.py): a port supports them once it has rules for
# dense layers on token sequences, LayerNorm and embedding lookups.
VIT_OPS = frozenset({"patches", "embed", "concat", "layernorm", "attention", "gelu", "token"})


def model_gap(spec: ModelSpec, supported: frozenset[str] = SUPPORTED_OPS) -> str | None:
    """Why fastclip cannot run ``spec`` (None: it can). Every port asks this
    before tapping a model, with the ops its rules cover (``supported``), so a
    model with an op beyond them is a truthful ``unsupported`` row, not a crash
    or a wrong sum."""
    ops = sorted({n.op for n in spec.nodes} - supported)
    return f"fastclip has no plan for {', '.join(ops)} (model {spec.name})" if ops else None


def unsupported(what: str) -> ValueError:
    """The one error every port raises for a layer fastclip cannot clip."""
    return ValueError(f"fastclip: unsupported layer {what}")


def check_conv(name: str, api: str, *, kernel_size: tuple[int, ...], strides: tuple[int, ...],
               padding: tuple[int, ...] | None, dilations: tuple[int, ...], groups: int,
               other: str | None = None) -> None:
    """Raise ``unsupported`` unless the conv is one the plans cover: a 2-D
    window of any kernel and stride over the input zero-padded by ``padding``
    (per spatial dim, the same on both sides; None: the framework's padding
    is not that, e.g. SAME at stride 2, which pads (0, 1)). Bias or none.
    ``other``: what the framework's own check found wrong besides (layout,
    mask, in-place...)."""
    ok = (len(kernel_size) == 2 and len(strides) == 2 and padding is not None and len(padding) == 2
          and all(int(v) == 1 for v in dilations) and groups == 1)
    if not ok or other:
        raise unsupported(f"{name!r} ({api}): {CONV_RULE}" + (f"; {other}" if other else ""))


def same_padding(kernel_size: tuple[int, ...], strides: tuple[int, ...]) -> tuple[int, ...] | None:
    """The symmetric padding a framework's 'same' padding amounts to: k // 2
    per dim at stride 1 with an odd kernel; None otherwise (SAME at stride 2,
    or an even kernel, pads unevenly)."""
    if all(int(s) == 1 for s in strides) and all(k % 2 == 1 for k in kernel_size):
        return tuple(k // 2 for k in kernel_size)
    return None


def check_gn(name: str, api: str, *, affine: bool, other: str | None = None) -> None:
    """Raise ``unsupported`` unless the GroupNorm has a per-channel scale and shift."""
    if not affine or other:
        raise unsupported(f"{name!r} ({api}): {GN_RULE}" + (f"; {other}" if other else ""))


def check_dense(name: str, api: str, *, has_bias: bool, input_rank: int, sequences: bool = False) -> None:
    """Raise ``unsupported`` unless the dense layer has a bias and (batch, features)
    inputs, or, for a port whose rule clips ``seq_dense`` (``sequences``), (batch, T,
    features) token sequences too (a port without that rule must keep refusing them)."""
    if not has_bias or input_rank not in ((2, 3) if sequences else (2,)):
        raise unsupported(f"{name!r} ({api}): {SEQ_DENSE_RULE if sequences else DENSE_RULE}")


class Registry(dict):
    """A port's layer kinds: its framework's layer class -> the rule that clips
    it (one instance per class; each port's ``Rule`` says what a rule does). A
    layer's rule is found by its exact class (a subclass may change the call),
    and a port dispatches on a layer's kind through its rule alone, so a new
    kind is one ``@RULES.register(LayerClass)`` rule per port, as Opacus
    registers a grad sampler per module class."""

    def register(self, *classes: type) -> Callable[[type], type]:
        """Class decorator: one instance of the rule clips every layer of exactly these classes."""
        def add(rule: type) -> type:
            for cls in classes:
                self[cls] = rule()
            return rule
        return add

    def of(self, name: str, layer: Any) -> Any:
        """``layer``'s rule, else the one-line :func:`unsupported` error."""
        rule = self.get(type(layer))
        if rule is None:
            raise unsupported(f"{name!r} ({type(layer).__name__})")
        return rule


def shared_weights(name: str) -> ValueError:
    return unsupported(f"{name!r}: called more than once (shared weights)")


def stray_weights(names: Iterable[str]) -> ValueError:
    return unsupported(f"weights {sorted(names)} belong to no conv/dense layer")


def dense_sq_norm(a_sq, g_sq):
    """A dense layer's per-example squared gradient norm from |a_i|^2 and
    |g_i|^2 (any array type): kernel a_i g_i^T has |a_i|^2 |g_i|^2, bias g_i has |g_i|^2."""
    return (a_sq + 1.0) * g_sq


# Floats each example keeps between its norms and the clipped sum, by plan
# method (any other keeps none): an instantiated conv's or seq_dense's kernel
# grads (d x p), a GroupNorm's or LayerNorm's scale and shift grads (2C), an
# embedding's table grads (rows x p; its fan_in is rows). What a port reports as
# its per-example grad bytes (B * floats * element size, over the layers).
KEPT_FLOATS: Mapping[str, Callable[[int, int], int]] = {
    "instantiate": lambda fan_in, features: fan_in * features,
    "gn": lambda fan_in, features: 2 * features,
    "layernorm": lambda fan_in, features: 2 * features,
    "embed": lambda fan_in, features: fan_in * features,
}


def kept_floats(method: str, fan_in: int, features: int) -> int:
    """Per-example floats a layer planned with ``method`` keeps (:data:`KEPT_FLOATS`; 0: none)."""
    rule = KEPT_FLOATS.get(method)
    return rule(fan_in, features) if rule else 0


def clip_factor(total_sq, clip_norm: float, *, sqrt, floor, cap):
    """s_i = min(1, C / max(||g_i||, NORM_FLOOR)) from the squared norms over
    all layers, in the framework's ops: ``floor(x, v)`` = max(x, v),
    ``cap(x, v)`` = min(x, v) elementwise."""
    return cap(clip_norm / floor(sqrt(total_sq), NORM_FLOOR), 1.0)


def chunk_split(batch: int, chunk: int) -> tuple[int, int]:
    """(examples in whole chunks of ``chunk``, remainder): the whole chunks
    run in the framework's loop (lax.map, tf.map_fn, a Python loop), the
    remainder as one smaller chunk."""
    if batch <= 0 or chunk <= 0:
        raise ValueError(f"batch and chunk must be positive, got {batch}, {chunk}")
    k = min(chunk, batch)
    full = (batch // k) * k
    return full, batch - full
