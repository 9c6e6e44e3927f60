"""Training steps: plain SGD (``standard``), Opacus DP-SGD (one impl per grad_sample_mode)
and the study's own fast clipping (``fastclip``, frameworks/torch/fastclip.py).

A ``Trainer`` is the model, optimizer and loss an impl trains with. The timed step
and the parity tests' clipped sum go through the same ``Trainer.backward``, so the
tests check the code path that is timed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from common.harness.adapter import Unsupported
from common.reference import fastclip_plan
from common.reference.exchange import Weights
from common.reference.spec import ModelSpec
from frameworks.torch.fastclip import SUPPORTED_OPS, FastClip, summed_cross_entropy
from frameworks.torch.models import GraphNet, make_model

# impl name -> Opacus grad_sample_mode
OPACUS_MODES = {
    "opacus_hooks": "hooks",
    "opacus_functorch": "functorch",
    "opacus_ew": "ew",
    "opacus_ghost": "ghost",
}
IMPLS = ("standard", *OPACUS_MODES, "fastclip")


@dataclass
class Trainer:
    """``net`` owns the trained parameters; ``model`` is what the forward pass goes
    through (Opacus's wrapper for DP impls, ``net`` itself for standard)."""

    net: GraphNet
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable[[torch.Tensor, torch.Tensor], Any]
    notes: dict[str, Any] = field(default_factory=dict)

    # Data-parallel: this process's rank among ``world`` (one process per device,
    # frameworks/torch/data_parallel.py); x and y are then this rank's shard.
    rank: int = 0
    world: int = 1

    @property
    def dp(self) -> bool:
        return "grad_sample_mode" in self.notes  # Opacus's (the standard model may be a DDP wrapper)

    def backward(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Fill the gradients for batch (x, y): ``p.grad`` (standard), per-sample grads
        or norms (Opacus; ghost clipping runs both its backward passes here).

        ``set_to_none=True`` although ``DPOptimizer.zero_grad`` defaults to False (the
        README loop, frameworks/torch/direct.py, calls ``zero_grad()``): Opacus replaces
        ``p.grad`` in ``add_noise`` anyway, so False only adds a ``zero_`` of every
        ``p.grad`` and an accumulating ``add_`` in backward (one step's profile: those
        16 ops are the only difference from direct use); the update is bit-identical
        (tests/torch/test_torch_direct.py)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.loss_fn(self.model(x), y).backward()

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One full training step. For DP impls ``optimizer.step`` clips and sums
        (ghost: already done in ``backward``), adds noise, divides by B, applies SGD."""
        self.backward(x, y)
        self.optimizer.step()

    def phases(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, Callable[[], None]]:
        """Cumulative prefixes of ``step``, in order; none updates the parameters.

        - ``forward``: ``zero_grad`` + forward + loss (Opacus: its forward hooks
          capture the layer inputs, which are then dropped, as a backward would);
        - ``backward``: ``Trainer.backward``: + the backward pass (standard:
          ``p.grad``; Opacus hooks/functorch/ew: per-sample gradients
          ``p.grad_sample``, computed in the backward hooks / expanded weights);
        - Opacus ghost, ``backward+clip`` instead: both of ghost clipping's
          backward passes (per-sample norms, ghost norms for Linear and
          Embedding; clip factors; the rescaled second pass gives the clipped
          sum in ``p.grad``);
        - Opacus non-ghost ``clip``: + ``DPOptimizer.clip_and_accumulate``
          (per-sample norms, clip factors, clipped sum into ``p.summed_grad``);
        - Opacus ``noise``: + ``add_noise`` (ghost: after ``accumulate``, its copy
          of ``p.grad`` into ``p.summed_grad``), the Gaussian noise into ``p.grad``.

        The rest of ``step``: ``scale_grad`` (divide by B), the accountant's step
        hook and the SGD ``step`` (standard: the SGD step only).
        """
        def forward() -> None:
            self.optimizer.zero_grad(set_to_none=True)
            self.loss_fn(self.model(x), y)
            if self.dp:
                _drop_captured_activations(self.model)

        def backward() -> None:
            self.backward(x, y)

        if not self.dp:
            return {"forward": forward, "backward": backward}
        opt = self.optimizer
        if self.notes.get("grad_sample_mode") == "ghost":
            def noise_ghost() -> None:
                self.backward(x, y)
                opt.accumulate()
                opt.add_noise()
            return {"forward": forward, "backward+clip": backward, "noise": noise_ghost}

        def clip() -> None:
            self.backward(x, y)
            opt.clip_and_accumulate()

        def noise() -> None:
            clip()
            opt.add_noise()
        return {"forward": forward, "backward": backward, "clip": clip, "noise": noise}


@dataclass
class FastclipTrainer(Trainer):
    """DP-SGD with ``FastClip``'s clipped sum, then the same update as Opacus: Gaussian
    noise N(0, (sigma C)^2) per parameter from torch's global generator (Opacus's
    ``_generate_noise``: ``torch.normal``, seeded by the adapter), divide by B, SGD."""

    clipper: FastClip | None = None
    noise_std: float = 0.0

    @property
    def dp(self) -> bool:
        return True

    def backward(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """The clipped sum (noise 0) into ``p.grad``: one forward, one backward to the
        layer outputs, per-layer norms, book-keeping sums (no weight-gradient pass)."""
        self.optimizer.zero_grad(set_to_none=True)
        grads = self.clipper.clipped_sum(x, y)
        for name, p in self.net.named_parameters():
            p.grad = grads[name]

    def reduce(self) -> None:
        """Data-parallel: sum every rank's ``p.grad`` (the clipped sums, rank 0's
        with the noise) with torch.distributed's all-reduce, as Opacus's
        ``DistributedDPOptimizer.reduce_gradients`` does."""
        if self.world > 1:
            for p in self.net.parameters():
                torch.distributed.all_reduce(p.grad, op=torch.distributed.ReduceOp.SUM)

    def draw_noise(self) -> Iterator[torch.Tensor]:
        """One N(0, (sigma C)^2) tensor per parameter, as Opacus's ``_generate_noise``
        draws it; lazily, so that one parameter's noise is live at a time (as in Opacus)."""
        return (torch.normal(mean=0.0, std=self.noise_std, size=p.shape, device=p.device)
                for p in self.net.parameters())

    def add_noise(self) -> None:
        """The noise once per step: on rank 0 only when data-parallel (as
        Opacus's ``DistributedDPOptimizer.add_noise``), before the all-reduce."""
        if self.noise_std > 0 and self.rank == 0:
            for p, n in zip(self.net.parameters(), self.draw_noise()):
                p.grad.add_(n)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.backward(x, y)
        self.add_noise()
        self.reduce()
        for p in self.net.parameters():
            p.grad.div_(x.shape[0] * self.world)  # the global batch
        self.optimizer.step()

    def phases(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, Callable[[], None]]:
        """``forward`` (zero_grad + the hooked forward and summed loss, inputs and
        outputs recorded, then dropped), ``backward+clip`` (+ the backward to the layer
        outputs, norms, clipped sum into ``p.grad``), ``noise`` (+ the Gaussian noise);
        the rest of ``step`` is dividing by B and the SGD step."""
        def forward() -> None:
            self.optimizer.zero_grad(set_to_none=True)
            self.clipper.forward_loss(x, y)

        def noise() -> None:
            self.backward(x, y)
            self.add_noise()
        return {"forward": forward, "backward+clip": lambda: self.backward(x, y), "noise": noise}


def _drop_captured_activations(model: nn.Module) -> None:
    """Undo the book-keeping of Opacus's forward hooks after a forward without
    backward (the backward hooks would pop the captured inputs and count down
    ``p._forward_counter``): else inputs pile up and ghost clipping takes the next
    forward for parameter tying (opacus/grad_sample/grad_sample_module*.py)."""
    for m in model.modules():
        captured = getattr(m, "activations", None)
        if captured:
            captured.clear()
    for p in model.parameters():
        if getattr(p, "_forward_counter", 0):
            p._forward_counter = 0


def make_trainer(impl: str, spec: ModelSpec, weights: Weights, x: torch.Tensor, y: torch.Tensor, *,
                 lr: float, clip_norm: float = 1.0, noise_multiplier: float = 0.0,
                 calibrate_s: float = 0.0, rank: int = 0, world: int = 1) -> Trainer:
    """Model from exchange ``weights`` on ``x``'s device, wired for ``impl``.

    ``calibrate_s`` > 0: fastclip chooses each conv's plan by timing on
    (x, y) within that many seconds (``FastClip.calibrate``; notes
    ``fastclip_calibration``); else the cost model's plan is used.

    ``world`` > 1 (inside an initialised torch.distributed group, x and y
    this ``rank``'s shard): standard trains a ``DistributedDataParallel``
    model; Opacus a ``DPDDP`` model, which ``make_private`` recognises and
    gives its distributed optimizer (noise on rank 0, gradients all-reduced;
    its data loader is the global batch under a ``DistributedSampler``, as
    Opacus's own multi-GPU tests build it); fastclip all-reduces its clipped
    sums (``FastclipTrainer.reduce``).

    For DP impls, Opacus's ``make_private`` raises its own message for a mode it
    cannot run on this model; that propagates (the worker records it).
    """
    if impl not in IMPLS:
        raise NotImplementedError(f"torch impl {impl!r} is not implemented; available: {', '.join(IMPLS)}")
    net = make_model(spec, weights, x.device)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.0)
    if impl == "standard":
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP
            model = DDP(net, device_ids=[x.device.index] if x.device.type == "cuda" else None)
            return Trainer(net, model, optimizer, F.cross_entropy, {"ddp": True}, rank, world)
        return Trainer(net, net, optimizer, F.cross_entropy)
    if impl == "fastclip":
        if gap := fastclip_plan.model_gap(spec, SUPPORTED_OPS):
            raise Unsupported(gap)
        clipper = FastClip(net, clip_norm)
        notes = {"fastclip_calibration": clipper.calibrate(x, y, calibrate_s)} if calibrate_s > 0 else {}
        plans = clipper.plans(x)
        notes.update({"fastclip_plan": {n: {"method": p.method, "chunk": p.chunk, "reason": p.reason}
                                        for n, p in plans.items()},
                      "per_sample_grad_bytes": clipper.per_example_grad_bytes(x)})
        return FastclipTrainer(net, net, optimizer, summed_cross_entropy, notes, rank, world, clipper,
                               noise_multiplier * clip_norm)

    from opacus import PrivacyEngine  # only DP impls need it

    mode = OPACUS_MODES[impl]
    batch = x.shape[0]
    # One batch of exactly B examples: without Poisson sampling Opacus sets
    # expected_batch_size = len(dataset) / len(loader) = B, the divisor of the
    # mean reduction. The loader is never iterated: steps use x, y directly.
    loader = DataLoader(TensorDataset(x, y), batch_size=batch)
    module: nn.Module = net
    if world > 1:
        from opacus.distributed import DifferentiallyPrivateDistributedDataParallel as DPDDP
        from torch.utils.data.distributed import DistributedSampler
        # Opacus takes B per rank from the loader: len(dataset) / len(loader) / world.
        dataset = TensorDataset(torch.arange(batch * world))
        loader = DataLoader(dataset, batch_size=batch,
                            sampler=DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False))
        module = DPDDP(net)
    criterion = nn.CrossEntropyLoss(reduction="mean")
    out = PrivacyEngine().make_private(
        module=module, optimizer=optimizer, criterion=criterion, data_loader=loader,
        noise_multiplier=noise_multiplier, max_grad_norm=clip_norm, loss_reduction="mean",
        poisson_sampling=False, grad_sample_mode=mode)
    if mode == "ghost":
        # Ghost clipping returns a loss wrapper whose .backward() runs the norm pass
        # and the clipped-sum pass (opacus/utils/fast_gradient_clipping_utils.py).
        model, dp_optimizer, loss_fn, _ = out
    else:
        (model, dp_optimizer, _), loss_fn = out, criterion
    if dp_optimizer.expected_batch_size != batch:
        raise RuntimeError(f"Opacus would divide by {dp_optimizer.expected_batch_size}, not B={batch}")
    ghost = _ghost_norm_layers(net, model)
    notes = {"grad_sample_mode": mode, "gsm_class": type(model).__name__,
             "optimizer_class": type(dp_optimizer).__name__, "expected_batch_size": batch,
             "per_sample_grad_bytes": _per_sample_grad_bytes(net, ghost, mode, batch)}
    if mode == "ghost":
        notes["ghost_norm_layers"] = ghost
    notes["per_sample_rule"] = per_sample_rules(net, model, mode)
    return Trainer(net, model, dp_optimizer, loss_fn, notes, rank, world)


def per_sample_rules(net: GraphNet, model: nn.Module, mode: str) -> dict[str, str]:
    """Which rule gives each parametrised layer's per-sample gradient (or
    norm) in Opacus ``mode``, read from the wrapper Opacus built:

    - ``ghost_norm``: a registered norm sampler (ghost mode, ``NORM_SAMPLERS``:
      Linear and Embedding in Opacus 1.6; on a (B, T, d) input Linear's builds
      per-example T x T products a a^T and g g^T, opacus/grad_sample/linear.py);
    - ``grad_sampler``: Opacus's own per-sample rule for the layer type
      (``GRAD_SAMPLERS``: Conv2d, Linear, GroupNorm, LayerNorm, Embedding, ...
      in opacus/grad_sample/). Ghost mode takes this branch for a layer with
      no norm sampler (Conv2d, GroupNorm, LayerNorm): it instantiates that
      layer's per-sample gradients in the backward hook, takes their norms
      and frees them (``GradSampleHooksFastGradientClipping.capture_backprops_hook``);
    - ``functorch``: vmap of the layer's forward (``force_functorch`` in
      functorch mode, opacus/grad_sample/utils.py; the fallback of hooks and
      ghost for a layer without a grad sampler);
    - ``expanded_weights``: PyTorch's ExpandedWeights rule for the layer's
      functional op (torch/nn/utils/_expanded_weights: conv2d, linear,
      group_norm, layer_norm, embedding, ...); ``unsupported`` where it has none."""
    out: dict[str, str] = {}
    for name, m in net.named_children():
        if not any(True for _ in m.parameters()):
            continue
        if mode == "ew":
            from torch.nn.utils._expanded_weights.expanded_weights_impl import HANDLED_FUNCTIONS
            fn = {nn.Conv2d: F.conv2d, nn.Linear: F.linear, nn.GroupNorm: F.group_norm,
                  nn.LayerNorm: F.layer_norm, nn.Embedding: F.embedding}.get(type(m))
            out[name] = "expanded_weights" if fn in HANDLED_FUNCTIONS else "unsupported"
        elif getattr(model, "use_ghost_clipping", False) and type(m) in model.NORM_SAMPLERS:
            out[name] = "ghost_norm"
        elif not getattr(model, "force_functorch", False) and type(m) in model.GRAD_SAMPLERS:
            out[name] = "grad_sampler"
        else:
            out[name] = "functorch"
    return out


def _ghost_norm_layers(net: GraphNet, model: nn.Module) -> list[str]:
    """Layers whose norms ghost clipping gets without per-sample gradients: those with
    a registered Opacus norm sampler (in 1.6 Linear and Embedding; not Conv2d,
    GroupNorm or LayerNorm)."""
    if not getattr(model, "use_ghost_clipping", False):
        return []
    return [name for name, m in net.named_children() if type(m) in model.NORM_SAMPLERS]


def _per_sample_grad_bytes(net: GraphNet, ghost: list[str], mode: str, batch: int) -> int:
    """Size of the per-sample gradients Opacus materialises. Ghost mode builds them
    only for non-ghost layers, one layer at a time (freed once its norm is taken);
    the other modes keep all of them until the optimizer clips."""
    sizes = [sum(p.numel() * p.element_size() for p in m.parameters())
             for name, m in net.named_children() if name not in ghost]
    if not sizes:
        return 0
    return batch * (max(sizes) if mode == "ghost" else sum(sizes))


def gradient_sum(trainer: Trainer, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """The impl's summed gradient, keyed by parameter name, without updating.

    Standard: B * the batch-mean gradient (the plain sum). fastclip: what its
    ``backward`` leaves in ``p.grad``, before noise. Opacus: the clipped sum
    ``p.summed_grad``, set by ``DPOptimizer.pre_step`` (clip_and_accumulate, or
    ``accumulate`` of the already clipped p.grad for ghost) before noise is added
    and the result divided by B (opacus/optimizers/optimizer.py). With the trainer
    built at noise 0 that is sum_i clip(g_i, C).

    Data-parallel (``trainer.world`` > 1): the sum over all ranks, reduced
    as the step reduces it (standard: DDP's averaged gradient times the
    global batch; Opacus: its ``reduce_gradients`` of the scaled sums, times
    the global batch; fastclip: its all-reduce).
    """
    trainer.backward(x, y)
    params = dict(trainer.net.named_parameters())
    g = x.shape[0] * trainer.world  # the global batch
    if isinstance(trainer, FastclipTrainer):
        trainer.reduce()
        return {n: p.grad for n, p in params.items()}
    if not trainer.dp:
        return {n: p.grad * g for n, p in params.items()}
    trainer.optimizer.pre_step()
    if trainer.world > 1:
        trainer.optimizer.reduce_gradients()
        return {n: p.grad * g for n, p in params.items()}
    return {n: p.summed_grad.view_as(p) for n, p in params.items()}
