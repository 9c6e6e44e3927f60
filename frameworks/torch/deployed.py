"""DP-SGD as it is trained, in PyTorch (issue 28; common/harness/deployed.py).

Two strategies, both eager (nothing is compiled, nothing padded: eager
PyTorch runs a physical batch of any size, so ``padded_examples`` stays 0
and ``compiles`` 0):

- ``opacus/variable``: Opacus 1.6 as its tutorials train: a ``DataLoader``
  over a ``TensorDataset`` of the N examples with ``batch_size`` L,
  ``PrivacyEngine().make_private(..., poisson_sampling=True)`` (its default
  ``grad_sample_mode`` "hooks", the study's ``opacus_hooks`` model and
  weights), then ``BatchMemoryManager(max_physical_batch_size=P)``: every
  physical batch is forward, backward, ``optimizer.step()``; the optimizer
  only clips and accumulates until the physical batch that ends the logical
  one (``DPOptimizer._is_last_step_skipped`` False), where it adds the noise
  once, divides by its ``expected_batch_size`` (L) and steps.
- ``fastclip/variable``: the logical batches of Opacus' ``DPDataLoader``
  (its ``UniformWithReplacementSampler``: indices), gathered from the
  on-device dataset, cut into chunks of at most P, the study's fastclip
  clipped sums (frameworks/torch/fastclip.py) accumulated over the chunks,
  ``FastclipTrainer.add_noise`` once, divided by L, SGD.

``make(cfg)`` returns the runner (tests read its ``last_indices``, the last
logical batch's dataset indices); ``build(cfg)`` its ``DeployedBench``.
"""
from __future__ import annotations

from contextlib import ExitStack
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from common.harness.deployed import COUNTERS, DeployedBench, DeployedConfig
from common.reference.exchange import init_weights, make_batch
from common.reference.spec import ModelSpec, get_model
from frameworks.torch import steps
from frameworks.torch.adapter import _device, _sync
from frameworks.torch.models import labels, make_model, nchw


def _dataset(cfg: DeployedConfig, device: torch.device) -> tuple[ModelSpec, torch.Tensor, torch.Tensor]:
    """The N synthetic examples (``make_batch``, seeded), on the device once."""
    spec = get_model(cfg.model)
    xn, yn = make_batch(spec, cfg.dataset_size, cfg.seed)
    return spec, nchw(xn, device), labels(yn, device)


def _loader(cfg: DeployedConfig, dataset: TensorDataset) -> DataLoader:
    """The tutorials' loader: the N examples, ``batch_size`` L. Its generator, seeded,
    is what Opacus' DPDataLoader samples with (``from_data_loader`` keeps it): the
    logical batches are then the same for both rows of a seed, and independent of
    the global generator, which the noise draws from and which the fixed-batch
    reference's build reseeds (adapter.build's ``torch.manual_seed``) in the same
    process."""
    return DataLoader(dataset, batch_size=cfg.logical_batch,
                      generator=torch.Generator().manual_seed(cfg.seed))


def _plan_rate(loader: DataLoader, cfg: DeployedConfig) -> tuple[DataLoader, dict[str, Any]]:
    """The DPDataLoader at the plan's q = L/N.

    Opacus derives q from the loader it is given: 1 / len(loader) =
    1 / ceil(N / L) (``DPDataLoader.from_data_loader``, ``make_private``),
    which is L/N only where L divides N (the study's N = 50,000 and L = 256
    or 1024 do not). The row's epsilon is the plan's (q = L/N), so where the
    two differ the loader is rebuilt with Opacus' own ``DPDataLoader``
    constructor at ``sample_rate`` L/N (same dataset and generator); the
    notes keep what Opacus chose."""
    from opacus.data_loader import DPDataLoader

    notes = {"opacus_sample_rate": loader.sample_rate, "sample_rate": cfg.sampling_rate}
    if loader.sample_rate != cfg.sampling_rate:
        loader = DPDataLoader(loader.dataset, sample_rate=cfg.sampling_rate, generator=loader.generator)
        notes["sample_rate_rebuilt"] = True
    return loader, notes


class _Logged:
    """A logical-batch sampler that keeps the last batch it gave (tests
    compare the step with the float64 reference over exactly those examples)."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.last: list[int] = []

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.inner:
            self.last = batch
            yield batch

    def __len__(self) -> int:
        return len(self.inner)


class _Runner:
    """Counters and sizes shared by both strategies (cumulative since built)."""

    def __init__(self, cfg: DeployedConfig):
        self.cfg = cfg
        self.count = dict.fromkeys(COUNTERS, 0)
        self.logical_sizes: list[int] = []
        self.notes: dict[str, Any] = {"padding": "none: eager PyTorch runs any physical batch size",
                                      "divisor": cfg.logical_batch}
        self.params: dict[str, torch.Tensor] = {}

    @property
    def last_indices(self) -> list[int]:
        raise NotImplementedError

    def step(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def counted_noise(self, add_noise: Any) -> Any:
        """``add_noise`` wrapped to count its calls (the noise draws)."""
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.count["noise_draws"] += 1
            return add_noise(*args, **kwargs)
        return counted

    def bench(self) -> DeployedBench:
        return DeployedBench(step=self.step, sync=_sync, counters=lambda: dict(self.count),
                             sizes=lambda: list(self.logical_sizes), notes=self.notes)


class OpacusVariable(_Runner):
    """``opacus/variable``: make_private(poisson_sampling=True) + BatchMemoryManager."""

    def __init__(self, cfg: DeployedConfig):
        from opacus import PrivacyEngine
        from opacus.utils.batch_memory_manager import BatchMemoryManager

        super().__init__(cfg)
        device = _device()
        torch.manual_seed(cfg.seed)  # the noise draws from the global generator (as the study's row)
        spec, x, y = _dataset(cfg, device)
        net = make_model(spec, init_weights(spec, cfg.seed), device)
        optimizer = torch.optim.SGD(net.parameters(), lr=cfg.learning_rate, momentum=0.0)
        loader = _loader(cfg, TensorDataset(x, y))
        self.criterion = nn.CrossEntropyLoss(reduction="mean")  # the study's; Opacus' loss_reduction "mean"
        self.model, self.optimizer, dp_loader = PrivacyEngine().make_private(
            module=net, optimizer=optimizer, data_loader=loader, noise_multiplier=cfg.noise_multiplier,
            max_grad_norm=cfg.clip_norm, poisson_sampling=True)
        self.dp_loader, rate_notes = _plan_rate(dp_loader, cfg)
        self.notes.update(rate_notes)
        self.notes["opacus_expected_batch_size"] = self.optimizer.expected_batch_size
        # (Opacus' RDP accountant hook keeps make_private's rate: unused, the row's epsilon is
        # common.harness.deployed.privacy's, dp-accounting's at the plan's q.)
        # scale_grad divides the noised sum by expected_batch_size * accumulated_iterations
        # (1 here: zero_grad clears p.grad_sample after every physical batch, the
        # accumulation is in p.summed_grad); Opacus' int(N / ceil(N / L)) is L only where L
        # divides N, so it is set to the plan's L, the divisor of every deployed row.
        self.optimizer.expected_batch_size = cfg.logical_batch
        if self.optimizer.loss_reduction != "mean":
            raise RuntimeError(f"Opacus loss_reduction is {self.optimizer.loss_reduction!r}, not 'mean'")
        self.optimizer.add_noise = self.counted_noise(self.optimizer.add_noise)
        self._stack = ExitStack()
        self.loader = self._stack.enter_context(BatchMemoryManager(
            data_loader=self.dp_loader, max_physical_batch_size=cfg.physical_batch, optimizer=self.optimizer))
        # The BatchSplittingSampler's logical batches, logged (a list reference per step).
        self._log = _Logged(self.loader.batch_sampler.sampler)
        self.loader.batch_sampler.sampler = self._log
        # An empty logical batch is one empty physical batch (Opacus' collate keeps the
        # first batch's structure; were the *first* batch empty it would give CPU zeros,
        # a device mismatch on a GPU: Opacus' own limit, at e^-L odds).
        self._it = iter(self.loader)
        self.params = dict(net.named_parameters())
        self.notes.update({"grad_sample_mode": "hooks", "gsm_class": type(self.model).__name__,
                           "optimizer_class": type(self.optimizer).__name__,
                           "sampler": type(self._log.inner).__name__,
                           "physical_split": "BatchSplittingSampler (np.array_split into ceil(n / P) parts)"})

    @property
    def last_indices(self) -> list[int]:
        return list(self._log.last)

    def _next(self) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            return next(self._it)
        except StopIteration:  # the epoch's 1/q logical batches are done: a new epoch
            self._it = iter(self.loader)
            return next(self._it)

    def step(self) -> dict[str, torch.Tensor]:
        """Physical batches until the optimizer takes a step that was not skipped."""
        size = 0
        while True:
            xb, yb = self._next()
            self.criterion(self.model(xb), yb).backward()
            self.optimizer.step()
            # set_to_none=True as the paired opacus_hooks row (steps.Trainer.backward: the
            # same update); it clears p.grad_sample, and p.summed_grad only after a real step.
            self.optimizer.zero_grad(set_to_none=True)
            size += len(yb)
            self.count["physical_steps"] += 1
            self.count["real_examples"] += len(yb)
            if not self.optimizer._is_last_step_skipped:  # Opacus' own flag: this step was taken
                break
        self.count["logical_steps"] += 1
        self.logical_sizes.append(size)
        return self.params


class FastclipVariable(_Runner):
    """``fastclip/variable``: DPDataLoader's logical batches, chunks of <= P,
    fastclip's clipped sums accumulated, the noise once, / L, SGD."""

    def __init__(self, cfg: DeployedConfig):
        from opacus.data_loader import DPDataLoader

        super().__init__(cfg)
        device = _device()
        torch.manual_seed(cfg.seed)
        spec, self.x, self.y = _dataset(cfg, device)
        p = cfg.physical_batch
        self.trainer = steps.make_trainer("fastclip", spec, init_weights(spec, cfg.seed), self.x[:p], self.y[:p],
                                          lr=cfg.learning_rate, clip_norm=cfg.clip_norm,
                                          noise_multiplier=cfg.noise_multiplier)
        # Over the indices: the DPDataLoader yields each logical batch's indices (its
        # sampler's, drawn as for the Opacus row: the same generator use, so the same
        # batches for a seed), and the examples are gathered on the device.
        loader = DPDataLoader.from_data_loader(_loader(cfg, TensorDataset(torch.arange(cfg.dataset_size))))
        self.dp_loader, rate_notes = _plan_rate(loader, cfg)
        self.notes.update(rate_notes)
        self._it = iter(self.dp_loader)
        self._last: list[int] = []
        self.trainer.add_noise = self.counted_noise(self.trainer.add_noise)
        self.params = dict(self.trainer.net.named_parameters())
        self.notes.update(self.trainer.notes)  # fastclip's per-layer plans at B = P
        self.notes.update({"sampler": type(self.dp_loader.batch_sampler).__name__,
                           "gather": "DPDataLoader over the indices, x[idx] on the device",
                           "physical_split": "torch.split(idx, P): chunks of P, the last one shorter",
                           "empty_logical_batch": "no physical batch: noise only"})

    @property
    def last_indices(self) -> list[int]:
        return list(self._last)

    def _next(self) -> torch.Tensor:
        try:
            (idx,) = next(self._it)
        except StopIteration:  # a new epoch of 1/q logical batches
            self._it = iter(self.dp_loader)
            (idx,) = next(self._it)
        return idx

    def step(self) -> dict[str, torch.Tensor]:
        idx = self._next()
        self._last = idx.tolist()
        idx = idx.to(self.x.device)
        tr = self.trainer
        tr.optimizer.zero_grad(set_to_none=True)
        acc = {n: torch.zeros_like(p) for n, p in self.params.items()}
        for chunk in idx.split(self.cfg.physical_batch) if len(idx) else ():  # split([]) is one empty chunk
            sums = tr.clipper.clipped_sum(self.x[chunk], self.y[chunk])
            for n, g in sums.items():
                acc[n].add_(g)
            self.count["physical_steps"] += 1
            self.count["real_examples"] += len(chunk)
        for n, p in self.params.items():
            p.grad = acc[n]
        tr.add_noise()  # FastclipTrainer's: N(0, (sigma C)^2) per parameter, as Opacus draws it
        for p in self.params.values():
            p.grad.div_(self.cfg.logical_batch)
        tr.optimizer.step()
        self.count["logical_steps"] += 1
        self.logical_sizes.append(len(self._last))
        return self.params


RUNNERS = {"opacus": OpacusVariable, "fastclip": FastclipVariable}


def make(cfg: DeployedConfig) -> _Runner:
    """The runner of a torch deployed row (``cfg.strategy`` is "variable" for both)."""
    cfg.validate()
    if cfg.framework != "torch" or cfg.strategy != "variable" or cfg.impl not in RUNNERS:
        raise ValueError(f"no torch deployed row {cfg.framework}/{cfg.impl}/{cfg.strategy}")
    return RUNNERS[cfg.impl](cfg)


def build(cfg: DeployedConfig) -> DeployedBench:
    """common.harness.deployed's entry point: one logical step per ``step()``."""
    return make(cfg).bench()
