"""The study's own fast per-example clipping for PyTorch modules (docs/design.md §7).

The port of ``frameworks/jax/fastclip.py``. One forward pass, with forward
hooks on every parametrised layer, records each layer's input A and output;
one ``torch.autograd.grad`` of the *summed* loss with respect to the outputs
of the layers that start the graph (``_roots``) passes each layer's output
gradient G (row i is example i's own output gradient: examples do not
interact) to a tensor hook on that
layer's output, which takes the layer's norms there, so a G is freed as soon
as its layer no longer needs it. Autograd is asked for no parameter, so it
computes no weight gradient at all. From A and G, per layer (the plan, method
and examples per chunk, comes from the framework-neutral cost model
:mod:`common.reference.fastclip_plan`, as in JAX):

- ``nn.Linear`` (with bias) on (B, d): norm_i^2 = (|a_i|^2 + 1) |g_i|^2; clipped sum (s * G)^T A;
- ``nn.Conv2d``, ``instantiate``: per-example grads U_i G_i^T in chunks of
  examples (unfold + ``torch.bmm``, so only a chunk's unfolded input U is
  live), kept; their squared norms now, their weighted sum once s is known;
- ``nn.Conv2d``, ``ghost``: <U_i^T U_i, G_i^T G_i> in chunks, then one
  standard-shaped weight-gradient product with G scaled per example
  (book-keeping: ``torch.nn.grad.conv2d_weight``);
- ``nn.GroupNorm`` (affine): its parameters act per channel, so each
  example's gradient is small and exact to instantiate: with xhat_i the
  normalised input (recomputed from A), dgamma_i = sum_hw G_i * xhat_i and
  dbeta_i = sum_hw G_i (2C floats per example), clipped sum s @ dgamma, s @ dbeta.
- ``nn.Linear`` on a token sequence (B, T, d) (the ViT's ``seq_dense``): a 1x1
  conv with T positions, so the conv's ``instantiate`` / ``ghost`` products on
  U_i = A_i^T (nothing to unfold), bias grads sum_t G_i; ghost's book-keeping
  is one (s * G)^T A over all tokens;
- ``nn.LayerNorm`` (last axis, scale and shift): as GroupNorm, with xhat over
  each token's features;
- ``nn.Embedding`` (plain lookup): example i's table grad is its output
  gradient rows scatter-added into the rows it looked up, kept (B, rows, p);
  its norm now, its s-weighted sum as the clipped sum.
Convs take any stride and symmetric zero padding (U unfolds the padded input
with the conv's stride, so T is the number of *output* positions); a conv
bias, where there is one, has grads sum_t G_i. ReLU, pools, residual adds and
the global average pool own no parameters (nor do the ViT's patches, concat,
attention, GELU and token pick): autograd differentiates them on the way to
each layer's G, as in standard training, so WRN-16-4 and the ViT are as exact
as the chain CNNs. The scales s_i = min(1, C / ||g_i||) use the norm over all
layers. No second backward pass, no Python loop over examples. Anything else
(dilated, grouped or non-zero-padded convs, asymmetric padding, GroupNorm
without its scale and shift, other parametrised modules, shared weights)
raises ``ValueError('fastclip: unsupported layer ...')`` rather than a wrong sum.

Each layer kind above is one :class:`Rule` (its checks, cost-model inputs, norms
and share of the clipped sum) registered in :data:`RULES` for its module class;
``FastClip`` dispatches through that table alone, so a new kind is one new rule
(``ConvRule``, ``GroupNormRule``, ``DenseRule``, ``LayerNormRule``, ``EmbeddingRule``).

Layout: torch is NCHW / OIHW. The unfold orders a patch (c, kh, kw), the
row-major flattening of an OIHW kernel's (I, H, W); per-example grads are
kept as (B, d, p) and their weighted sum is transposed once to (O, I*H*W).
The plan only needs T, d, p and the batch size, which do not depend on layout.
Everything is device-agnostic torch (CPU and CUDA).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from common.harness import timing
from common.harness.config import Timing
from common.reference import fastclip_plan
from common.reference.fastclip_plan import LayerPlan
from common.reference.spec import Layer

Methods = str | Mapping[str, str] | None
Chunks = int | Mapping[str, int] | None
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def summed_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum (not mean) of the per-example losses: its gradient w.r.t. a layer's
    output is, row by row, each example's own output gradient."""
    return F.cross_entropy(logits, y, reduction="sum")


def conv_padding(m: nn.Conv2d) -> tuple[int, int] | None:
    """The conv's padding as (ph, pw) on both sides of each dim; None where torch
    pads unevenly ('same' with an even kernel)."""
    if m.padding == "valid":
        return (0, 0)
    if m.padding == "same":
        return fastclip_plan.same_padding(tuple(m.kernel_size), tuple(m.stride))
    return (int(m.padding[0]), int(m.padding[1]))


def clip_factor(total_sq: torch.Tensor, clip_norm: float) -> torch.Tensor:
    """s_i = min(1, C / ||g_i||) from the (B,) squared norms (``fastclip_plan.clip_factor``)."""
    return fastclip_plan.clip_factor(total_sq, clip_norm, sqrt=torch.sqrt, floor=torch.clamp_min, cap=torch.clamp_max)


@dataclass
class _Tap:
    """What one forward recorded for a layer: its input and output."""

    a: torch.Tensor
    out: torch.Tensor
    version: int  # out._version when recorded: an in-place op on it would change G's meaning


def _roots(taps: Mapping[str, _Tap]) -> list[str]:
    """The layers whose output gradients the backward is asked for: those whose input
    does not require grad (the model's input, an embedding's indices), so that nothing
    upstream of them is differentiated; the first layer called if none is (an input
    that requires grad). Any other layer's input depends on the parameters, which only
    the tapped layers own, so its output lies downstream of a root's."""
    roots = [n for n, t in taps.items() if not t.a.requires_grad]
    return roots or [next(iter(taps))]


def _sq(v: torch.Tensor) -> torch.Tensor:
    """Per-row squared L2 norm of a (B, ...) tensor (torch.sum: pairwise, not Tensor.norm)."""
    v = v.flatten(1)
    return (v * v).sum(1)


# --- the layer kinds: one registered rule each ------------------------------------------------

Kept = Callable[[tuple[int, ...]], torch.Tensor]  # shape -> a buffer like the layer's weight, held by FastClip between steps


class Rule:
    """How fastclip clips one kind of torch layer, registered for its module class in
    :data:`RULES` (``fastclip_plan.Registry``). ``FastClip`` dispatches only through
    these methods, so a new kind is one new rule here (its plan, checks and kept bytes:
    ``common.reference.fastclip_plan``). The JAX and TF ports have the same rules by
    the same names."""

    kind = ""  # the plan's kind (fastclip_plan.plan_layer)
    api = ""  # the module class as messages name it
    inputs = (4, "(N, C, H, W)")  # the input's rank and layout

    def check(self, name: str, m: nn.Module) -> None:
        """Raise ``fastclip_plan.unsupported`` unless the plans cover ``m`` (at construction)."""

    def check_input(self, name: str, a: torch.Tensor) -> None:
        """Raise ``fastclip_plan.unsupported`` unless the recorded input ``a`` has this kind's rank."""
        rank, layout = self.inputs
        if a.dim() != rank:
            raise fastclip_plan.unsupported(f"{name!r}: only {layout} inputs to {self.api}")

    def spec_layer(self, name: str, m: nn.Module, out: torch.Tensor) -> Layer:
        """The layer as ``common.reference.spec.Layer`` (HWIO kernel shape), what the cost model plans
        (``out``: one example's output, for its positions)."""
        raise NotImplementedError

    def norms(self, m: nn.Module, plan: LayerPlan, a: torch.Tensor, g: torch.Tensor,
              kept: Kept) -> tuple[torch.Tensor, Any]:
        """(squared norms (B,), state for :meth:`clipped_sum`), from the layer's input A and
        output gradient G; ``kept`` gives held buffers for per-example grads."""
        raise NotImplementedError

    def needs_g(self, plan: LayerPlan) -> bool:
        """Whether :meth:`clipped_sum` reads G: if not, G is dropped as soon as the norms are
        taken, in the backward, as the standard backward frees it."""
        return True

    def clipped_sum(self, m: nn.Module, a: torch.Tensor, g: torch.Tensor | None, state: Any,
                    s: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{parameter name in m: sum_i s_i grad_i}`` (``g`` None where :meth:`needs_g` said no)."""
        raise NotImplementedError


RULES = fastclip_plan.Registry()  # module class -> its Rule
# The spec ops this port's rules cover (steps.py asks fastclip_plan.model_gap with them).
SUPPORTED_OPS = fastclip_plan.SUPPORTED_OPS | fastclip_plan.VIT_OPS
register = RULES.register


class FastClip:
    """Per-example clipped gradient sums of ``net``'s layers of the kinds in :data:`RULES`
    (``nn.Conv2d``, ``nn.GroupNorm``, ``nn.Linear``, ``nn.LayerNorm``, ``nn.Embedding``).

    ``methods``: None (cost model), ``"instantiate"`` / ``"ghost"`` for every
    conv, or ``{layer name: method}``; ``chunks`` likewise forces examples per
    chunk. Layer names are ``net.named_modules()`` names (``conv0``, ...).
    Every module that owns parameters (and every module of a class in :data:`RULES`) must be a
    supported layer, called once per forward; anything else raises
    ``ValueError('fastclip: unsupported layer ...')``.
    """

    def __init__(self, net: nn.Module, clip_norm: float, methods: Methods = None, chunks: Chunks = None,
                 loss_fn: LossFn = summed_cross_entropy):
        self.net, self.clip_norm, self.methods, self.chunks, self.loss_fn = net, clip_norm, methods, chunks, loss_fn
        self.layers: dict[str, tuple[Rule, nn.Module]] = {}
        kinds = tuple(RULES)
        for name, m in net.named_modules():
            # A GroupNorm without scale and shift owns no parameter but is checked all the
            # same: the study's rule (fastclip_plan.check_gn) is the same in every port.
            if next(m.parameters(recurse=False), None) is not None or isinstance(m, kinds):
                rule = RULES.of(name, m)
                rule.check(name, m)
                self.layers[name] = (rule, m)
        self._plans: dict[tuple, dict[str, LayerPlan]] = {}
        self._kept: dict[str, torch.Tensor] = {}  # per-example grad buffers, reused step to step

    # -- one forward, one backward --------------------------------------------------------------
    def _forward(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, _Tap]]:
        """Summed loss of the batch (logits if ``y`` is None), and every layer's recorded
        input and output."""
        taps: dict[str, _Tap] = {}

        def hook(name: str, rule: Rule):
            def record(_m: nn.Module, args: tuple, out: torch.Tensor) -> None:
                if name in taps:
                    raise fastclip_plan.shared_weights(name)
                rule.check_input(name, args[0])
                taps[name] = _Tap(args[0], out, out._version)
            return record

        handles = [m.register_forward_hook(hook(n, rule)) for n, (rule, m) in self.layers.items()]
        try:
            out = self.net(x)
        finally:
            for h in handles:
                h.remove()
        missing = set(self.layers) - set(taps)
        if missing:
            raise ValueError(f"fastclip: layers {sorted(missing)} were not called in the forward pass")
        for name, t in taps.items():
            if t.out._version != t.version:
                raise fastclip_plan.unsupported(f"{name!r}: its output is modified in place (e.g. ReLU(inplace=True))")
        return (out if y is None else self.loss_fn(out, y)), taps

    def forward_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The forward half alone (the ``forward`` phase): summed loss, inputs and outputs recorded."""
        return self._forward(x, y)[0]

    def taps(self, x: torch.Tensor, y: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(A, G)``: each layer's input and the summed loss's gradient w.r.t. its output."""
        loss, taps = self._forward(x, y)
        names = list(taps)
        grads = torch.autograd.grad(loss, [taps[n].out for n in names])
        return {n: taps[n].a.detach() for n in names}, dict(zip(names, grads))

    # -- plans ----------------------------------------------------------------------------------
    def plans(self, x: torch.Tensor) -> dict[str, LayerPlan]:
        """The cost model's per-layer plans for a batch shaped like ``x`` (memoised by shape;
        the first call runs one no-grad forward of a single example for the layer shapes)."""
        key = tuple(x.shape)
        if key not in self._plans:
            with torch.no_grad():
                _, taps = self._forward(x[:1], None)
            layers = [rule.spec_layer(n, m, taps[n].out) for n, (rule, m) in self.layers.items()]
            self._plans[key] = fastclip_plan.plan_model(layers, x.shape[0], self.methods, self.chunks)
        return self._plans[key]

    def calibrate(self, x: torch.Tensor, y: torch.Tensor, budget_s: float, repeats: int = 3) -> dict:
        """Choose each conv's method and chunk by timing (``fastclip_plan.calibrate``)
        on this batch's own layer inputs and output gradients, on the machine that
        runs it: the cost model's constants were fitted on XLA:CPU, and torch's
        bmm and unfold have other sweet spots (on the study's CPU, chunks 2-8x
        larger than the model's were up to 1.3x faster per layer). Each candidate:
        one untimed run, then the median of ``repeats`` one-run windows (the
        study's timing protocol, synchronised on CUDA). Later steps on batches
        shaped like ``x`` use the chosen plans; returns the notes."""
        a, g = self.taps(x, y)
        ones = x.new_ones(x.shape[0])
        protocol = Timing(warmup_steps=0, repeats=repeats, window_s=0.0, min_steps=1)
        sync = (lambda _: torch.cuda.synchronize()) if x.is_cuda else (lambda _: None)

        def time_plan(plan: LayerPlan) -> float:
            (rule, m), at, gt = self.layers[plan.name], a[plan.name], g[plan.name]
            kept = self._kept_for(plan.name, next(m.parameters()))

            def run() -> None:
                rule.clipped_sum(m, at, gt, rule.norms(m, plan, at, gt, kept)[1], ones)
            return timing.measure(run, sync, protocol).step_s_median

        plans, notes = fastclip_plan.calibrate(self.plans(x), time_plan, budget_s)
        self._plans[tuple(x.shape)] = plans
        for name, p in plans.items():  # drop buffers a rejected candidate left behind
            if p.method != "instantiate":
                self._kept.pop(name, None)
        return notes

    def per_example_grad_bytes(self, x: torch.Tensor) -> int:
        """Bytes of the per-example grads kept at once (``instantiate`` convs and token
        dense layers, GroupNorms' and LayerNorms' scale and shift grads, embeddings'
        table grads, all of them: ``fastclip_plan.kept_floats``)."""
        return sum(p.batch * fastclip_plan.kept_floats(p.method, p.fan_in, p.features) * x.element_size()
                   for p in self.plans(x).values())

    # -- norms and clipped sum ------------------------------------------------------------------
    def _norms(self, x: torch.Tensor, y: torch.Tensor):
        """(A, the G still needed, per-layer (squared norms, state)), each layer's norms taken
        inside the backward, as soon as its output gradient exists (a tensor hook), so that
        an ``instantiate`` conv's G is freed then, as the standard backward frees it, rather
        than all layers' G being live at once (medium B 256: conv0's G alone is 268 MB).
        The backward is asked only for the output gradients of the layers that start the
        graph (:func:`_roots`): every other layer's output lies on a root's path to the
        loss, so its hook fires on the way (in WRN the stem feeds every block, a residual
        add only adds paths, and a tensor hook sees the gradient summed over all of them;
        in the ViT the patch embedding and the cls and pos embeddings start it); a layer
        whose output never reaches the loss is caught as ``missing``."""
        loss, taps = self._forward(x, y)
        plans = self.plans(x)
        a = {n: t.a.detach() for n, t in taps.items()}
        g: dict[str, torch.Tensor] = {}
        parts: dict[str, tuple] = {}

        def on_grad(name: str):
            (rule, m), plan = self.layers[name], plans[name]
            kept = self._kept_for(name, next(m.parameters()))

            def consume(grad: torch.Tensor) -> None:
                parts[name] = rule.norms(m, plan, a[name], grad, kept)
                if rule.needs_g(plan):  # e.g. book-keeping: the clipped sum needs G again
                    g[name] = grad
            return consume

        handles = [t.out.register_hook(on_grad(n)) for n, t in taps.items()]
        try:
            # allow_unused: a root whose output never reaches the loss is reported below as missing
            torch.autograd.grad(loss, [taps[n].out for n in _roots(taps)], allow_unused=True)
        finally:
            for h in handles:
                h.remove()
        missing = set(taps) - set(parts)
        if missing:
            raise fastclip_plan.unsupported(f"{sorted(missing)}: not on a path from a layer to the loss")
        return a, g, parts

    def _kept_for(self, name: str, like: torch.Tensor) -> Kept:
        """A rule's ``kept``: the buffer of a given shape for a layer's per-example grads
        (an instantiated conv's (B, d, p)), allocated once and held between steps: a fresh
        one is page-faulted in every step (on the study's CPU, writing a fresh 75 MB
        buffer, medium conv2's size, took 32 ms against 6 ms for a reused one; 1.2 ms
        against 0.1 ms at small conv1's 4.7 MB). ``like`` is a parameter of the layer (its dtype and
        device), not its input: an embedding's input is its integer indices."""
        def kept(shape: tuple[int, ...]) -> torch.Tensor:
            buf = self._kept.get(name)
            if buf is None or buf.shape != shape or buf.dtype != like.dtype or buf.device != like.device:
                buf = self._kept[name] = like.new_empty(shape)
            return buf
        return kept

    def per_layer_sq_norms(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{layer name: (B,) squared norm of that layer's weight (+ bias) gradient}``."""
        return {name: sq for name, (sq, _) in self._norms(x, y)[2].items()}

    def clipped_sum(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """sum_i clip(g_i, C), keyed by ``net.named_parameters()`` names (noise 0)."""
        a, g, parts = self._norms(x, y)
        total = sum(sq for sq, _ in parts.values())
        s = clip_factor(total, self.clip_norm)
        out: dict[str, torch.Tensor] = {}
        for name, (rule, m) in self.layers.items():
            prefix = f"{name}." if name else ""
            sums = rule.clipped_sum(m, a[name], g.get(name), parts[name][1], s)
            out.update({prefix + k: v for k, v in sums.items()})
        return out


def _unfold(ap: torch.Tensor, ksize: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """Padded (n, C, H, W) -> (n, C*kh*kw, Ho*Wo), rows in OIHW's (c, i, j) order, one
    column per output position of the conv with that kernel and stride.

    A strided window view copied once: 4-10x faster on this CPU than
    ``F.unfold`` (torch's im2col copies row by row), same values."""
    (kh, kw), (sh, sw), (n, c) = ksize, stride, ap.shape[:2]
    win = ap.unfold(2, kh, sh).unfold(3, kw, sw)  # (n, C, Ho, Wo, kh, kw), a view
    return win.permute(0, 1, 4, 5, 2, 3).reshape(n, c * kh * kw, -1)


def _products(plan: LayerPlan, g: torch.Tensor, chunk: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]],
              kept: Kept) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(per-example squared kernel-grad norms (B,), the kept (B, d, p) per-example kernel
    grads or None) from the output gradient ``g`` (B, ...), by the plan's method, chunk
    by chunk: ``chunk(i, k)`` gives examples
    i..i+k's (U (k, d, T), G (k, p, T)), a conv's unfolded input or a token sequence's
    transposed one (a 1x1 conv), so that only a chunk's U is live.

    ``instantiate`` fills a kept (B, d, p) buffer with ``bmm(U_i, G_i^T)``: on the
    study's CPU that orientation was as fast or faster than (B, p, d) for every conv
    (up to 1.5x on the d = 27 first convs); ``ghost`` takes <U_i^T U_i, G_i^T G_i>."""
    b, k = g.shape[0], plan.chunk
    pe = kept((plan.batch, plan.fan_in, plan.features)) if plan.method == "instantiate" else None
    sq = g.new_empty(b)
    for i in range(0, b, k):  # whole chunks, then the remainder (a slice past the end is clipped)
        u, gc = chunk(i, k)  # (k, d, T), (k, p, T)
        if plan.method == "instantiate":
            c = torch.bmm(u, gc.transpose(1, 2), out=pe[i:i + k])  # (k, d, p)
            sq[i:i + k] = _sq(c)  # while the chunk is in cache
        elif plan.method == "ghost":
            aa = torch.bmm(u.transpose(1, 2), u)  # (k, T, T)
            gg = torch.bmm(gc.transpose(1, 2), gc)
            sq[i:i + k] = (aa * gg).sum((1, 2))
        else:
            raise ValueError(f"fastclip: unknown method {plan.method!r} for {plan.name}")
    return sq, pe


ConvState = tuple[torch.Tensor | None, torch.Tensor | None]  # (per-example bias grads, kept kernel grads)


@register(nn.Conv2d)
class ConvRule(Rule):
    """``nn.Conv2d``: per-example kernel grads instantiated or ghost norms, by the plan."""

    kind, api = "conv", "nn.Conv2d"

    def check(self, name: str, m: nn.Conv2d) -> None:
        fastclip_plan.check_conv(name, self.api, kernel_size=tuple(m.kernel_size), strides=tuple(m.stride),
                                 padding=conv_padding(m), dilations=tuple(m.dilation), groups=m.groups,
                                 other=None if m.padding_mode == "zeros" else f"padding_mode {m.padding_mode!r}")

    def spec_layer(self, name: str, m: nn.Conv2d, out: torch.Tensor) -> Layer:
        kh, kw = m.kernel_size
        return Layer(name, self.kind, (kh, kw, m.in_channels, m.out_channels), relu=False,
                     out_hw=tuple(out.shape[2:]), bias=m.bias is not None)

    def norms(self, m: nn.Conv2d, plan: LayerPlan, a: torch.Tensor, g: torch.Tensor,
              kept: Kept) -> tuple[torch.Tensor, ConvState]:
        """(squared norms (B,), (per-example bias grads or None without a bias,
        per-example kernel grads or None)) (:func:`_products`). Inputs are padded
        chunk by chunk, so no batch-sized temporary is made."""
        gf = g.flatten(2)  # (B, p, T)
        bias = gf.sum(2) if m.bias is not None else None  # (B, p)
        ph, pw = conv_padding(m)

        def chunk(i: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
            ac = F.pad(a[i:i + k], (pw, pw, ph, ph)) if ph or pw else a[i:i + k]
            return _unfold(ac, m.kernel_size, m.stride), gf[i:i + k]

        sq, pe = _products(plan, g, chunk, kept)
        return (sq if bias is None else sq + _sq(bias)), (bias, pe)

    def needs_g(self, plan: LayerPlan) -> bool:
        return plan.method != "instantiate"  # ghost: the book-keeping product

    def clipped_sum(self, m: nn.Conv2d, a: torch.Tensor, g: torch.Tensor | None, state: ConvState,
                    s: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"weight": kernel, "bias": bias}`` (no ``bias`` for a conv without one):
        weighted sum of kept per-example grads, or book-keeping (which needs ``g``)."""
        bias, pe = state
        if pe is not None:
            kernel = (s @ pe.flatten(1)).view(pe.shape[1:]).T.reshape(m.weight.shape)
        else:
            kernel = torch.nn.grad.conv2d_weight(a, m.weight.shape, g * s[:, None, None, None], stride=m.stride,
                                                 padding=conv_padding(m))
        return {"weight": kernel} if bias is None else {"weight": kernel, "bias": s @ bias}


GnState = tuple[torch.Tensor, torch.Tensor]  # per-example (dgamma, dbeta), (B, C) each


@register(nn.GroupNorm)
class GroupNormRule(Rule):
    """``nn.GroupNorm`` (affine): its per-example scale and shift grads, 2C floats, always instantiated."""

    kind, api = "gn", "nn.GroupNorm"

    def check(self, name: str, m: nn.GroupNorm) -> None:
        fastclip_plan.check_gn(name, self.api, affine=m.affine)

    def spec_layer(self, name: str, m: nn.GroupNorm, out: torch.Tensor) -> Layer:
        return Layer(name, self.kind, (m.num_channels,), relu=False, out_hw=tuple(out.shape[2:]))

    def norms(self, m: nn.GroupNorm, plan: LayerPlan, a: torch.Tensor, g: torch.Tensor,
              kept: Kept) -> tuple[torch.Tensor, GnState]:
        """(squared norms (B,), (dgamma, dbeta) (B, C) each): example i's scale and shift
        grads, sum over positions of G_i * xhat_i and of G_i, exact (xhat recomputed from
        the recorded input with the layer's groups and eps, as its forward normalised)."""
        xhat = F.group_norm(a, m.num_groups, eps=m.eps)
        dgamma, dbeta = (g * xhat).flatten(2).sum(2), g.flatten(2).sum(2)
        return _sq(dgamma) + _sq(dbeta), (dgamma, dbeta)

    def needs_g(self, plan: LayerPlan) -> bool:
        return False

    def clipped_sum(self, m: nn.GroupNorm, a: torch.Tensor, g: torch.Tensor | None, state: GnState,
                    s: torch.Tensor) -> dict[str, torch.Tensor]:
        dgamma, dbeta = state
        return {"weight": s @ dgamma, "bias": s @ dbeta}


DenseState = tuple[torch.Tensor, torch.Tensor | None] | None  # on tokens: (per-example bias grads, kept kernel grads)


@register(nn.Linear)
class DenseRule(Rule):
    """``nn.Linear`` with bias. On (batch, features): norm^2 (|a_i|^2 + 1) |g_i|^2, sum
    (s * G)^T A. On a token sequence (batch, T, features): a 1x1 conv with T positions
    (the plan's ``seq_dense``), so the conv's ghost / instantiate products
    (:func:`_products`) on U_i = A_i^T, nothing to unfold; bias grads sum_t G_i."""

    kind, api = "dense", "nn.Linear"
    inputs = ((2, 3), "(batch, features) or (batch, tokens, features)")

    def check(self, name: str, m: nn.Linear) -> None:  # the input rank: check_input, when the hook sees it
        fastclip_plan.check_dense(name, self.api, has_bias=m.bias is not None, input_rank=2)

    def check_input(self, name: str, a: torch.Tensor) -> None:
        ranks, layout = self.inputs
        if a.dim() not in ranks:
            raise fastclip_plan.unsupported(f"{name!r}: only {layout} inputs to {self.api}")

    def spec_layer(self, name: str, m: nn.Linear, out: torch.Tensor) -> Layer:
        if out.dim() == 3:
            return Layer(name, "seq_dense", (m.in_features, m.out_features), relu=False, out_hw=(out.shape[1], 1))
        return Layer(name, self.kind, (m.in_features, m.out_features), relu=False)

    def norms(self, m: nn.Linear, plan: LayerPlan, a: torch.Tensor, g: torch.Tensor,
              kept: Kept) -> tuple[torch.Tensor, DenseState]:
        if a.dim() == 2:
            return fastclip_plan.dense_sq_norm(_sq(a), _sq(g)), None
        bias = g.sum(1)  # (B, p)
        sq, pe = _products(plan, g, lambda i, k: (a[i:i + k].transpose(1, 2), g[i:i + k].transpose(1, 2)), kept)
        return sq + _sq(bias), (bias, pe)

    def needs_g(self, plan: LayerPlan) -> bool:
        return plan.method != "instantiate"  # dense and ghost: the book-keeping product

    def clipped_sum(self, m: nn.Linear, a: torch.Tensor, g: torch.Tensor | None, state: DenseState,
                    s: torch.Tensor) -> dict[str, torch.Tensor]:
        if state is None:  # (batch, features)
            sg = g * s[:, None]
            return {"weight": sg.T @ a, "bias": sg.sum(0)}
        bias, pe = state
        if pe is not None:
            kernel = (s @ pe.flatten(1)).view(pe.shape[1:]).T
        else:  # book-keeping over all tokens at once
            kernel = (g * s[:, None, None]).flatten(0, 1).T @ a.flatten(0, 1)
        return {"weight": kernel, "bias": s @ bias}


NormState = tuple[torch.Tensor, torch.Tensor]  # per-example (dgamma, dbeta), (B, C) each


@register(nn.LayerNorm)
class LayerNormRule(Rule):
    """``nn.LayerNorm`` over the last axis, with scale and shift: like GroupNorm, its
    per-example grads are 2C floats, exact to instantiate."""

    kind, api = "layernorm", "nn.LayerNorm"
    inputs = ((2, 3), "(batch, features) or (batch, tokens, features)")
    check_input = DenseRule.check_input

    def check(self, name: str, m: nn.LayerNorm) -> None:
        if len(m.normalized_shape) != 1 or m.weight is None or m.bias is None:
            raise fastclip_plan.unsupported(f"{name!r} ({self.api}): only over the last axis, with scale and shift")

    def spec_layer(self, name: str, m: nn.LayerNorm, out: torch.Tensor) -> Layer:
        hw = (out.shape[1], 1) if out.dim() == 3 else (1, 1)
        return Layer(name, self.kind, tuple(m.normalized_shape), relu=False, out_hw=hw)

    def norms(self, m: nn.LayerNorm, plan: LayerPlan, a: torch.Tensor, g: torch.Tensor,
              kept: Kept) -> tuple[torch.Tensor, NormState]:
        """Example i's dgamma = sum_t G_i * xhat_i, dbeta = sum_t G_i, exact (xhat recomputed
        from the recorded input with the layer's eps, as its forward normalised)."""
        xhat = F.layer_norm(a, m.normalized_shape, eps=m.eps)
        c, b = m.normalized_shape[0], a.shape[0]
        dgamma, dbeta = (g * xhat).reshape(b, -1, c).sum(1), g.reshape(b, -1, c).sum(1)
        return _sq(dgamma) + _sq(dbeta), (dgamma, dbeta)

    def needs_g(self, plan: LayerPlan) -> bool:
        return False

    clipped_sum = GroupNormRule.clipped_sum  # s @ dgamma, s @ dbeta


@register(nn.Embedding)
class EmbeddingRule(Rule):
    """``nn.Embedding`` (plain lookup): example i's table grad is its output gradient
    rows scatter-added into the rows it looked up (a row looked up twice gets both),
    kept (B, rows, features); norms from it, the clipped sum its s-weighted sum. Exact;
    in the ViT each example looks up rows 0..rows-1 once, so it is G_i itself."""

    kind, api, inputs = "embed", "nn.Embedding", (2, "(batch, lookups) indices")

    def check(self, name: str, m: nn.Embedding) -> None:
        # each option changes the gradient (padding_idx: its row gets none; scale_grad_by_freq:
        # divided by counts) or the weight in the forward (max_norm: renormalised in place)
        if m.padding_idx is not None or m.max_norm is not None or m.scale_grad_by_freq or m.sparse:
            raise fastclip_plan.unsupported(f"{name!r} ({self.api}): only a plain lookup (no padding_idx, "
                                            "max_norm, scale_grad_by_freq or sparse)")

    def spec_layer(self, name: str, m: nn.Embedding, out: torch.Tensor) -> Layer:
        return Layer(name, self.kind, (m.num_embeddings, m.embedding_dim), relu=False,
                     out_hw=(m.num_embeddings, 1), bias=False)

    def norms(self, m: nn.Embedding, plan: LayerPlan, a: torch.Tensor, g: torch.Tensor,
              kept: Kept) -> tuple[torch.Tensor, torch.Tensor]:
        b, p = g.shape[0], m.embedding_dim
        pe = kept((b, m.num_embeddings, p)).zero_()
        pe.scatter_add_(1, a.reshape(b, -1, 1).expand(-1, -1, p), g.reshape(b, -1, p))
        return _sq(pe), pe

    def needs_g(self, plan: LayerPlan) -> bool:
        return False

    def clipped_sum(self, m: nn.Embedding, a: torch.Tensor, g: torch.Tensor | None, state: torch.Tensor,
                    s: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"weight": (s @ state.flatten(1)).view(state.shape[1:])}
