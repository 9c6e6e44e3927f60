"""Direct use of Opacus: the study's ``opacus_hooks`` row written the way Opacus's
README and tutorials write a training loop, with nothing of the harness in it.

    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    data_loader = DataLoader(dataset, batch_size=B)
    model, optimizer, data_loader = PrivacyEngine().make_private(
        module=model, optimizer=optimizer, data_loader=data_loader,
        noise_multiplier=sigma, max_grad_norm=C, poisson_sampling=False)
    for x, y in data_loader:
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()

Every other ``make_private`` option is left at its default (``grad_sample_mode``
"hooks", ``clipping`` "flat", ``loss_reduction`` "mean", ``batch_first``, the
default criterion, no ``noise_generator``, ``PrivacyEngine(accountant="prv",
secure_mode=False)``). Only ``poisson_sampling=False`` departs from the
defaults, as in every throughput row (docs/design.md §3: fixed-size batches).

Same model (frameworks/torch/models.py GraphNet), initial weights, batch, seed and
TF32 setting (set when frameworks.torch.adapter is imported) as the study's
rows. The batch is fetched once from the private data loader, as ``for x, y in
data_loader`` would (without Poisson sampling Opacus returns the loader
unchanged: the one fixed batch), and reused each step, as the study rows reuse
their fixed on-device batch.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from common.harness.adapter import Bench
from common.harness.config import IMPLS, RunConfig
from common.reference.exchange import init_weights, make_batch
from common.reference.spec import get_model
from frameworks.torch.adapter import _device, _sync
from frameworks.torch.models import labels, make_model, nchw


def build_direct(cfg: RunConfig) -> Bench:
    """The direct-use loop for ``cfg`` (``direct_opacus``); ``step()`` runs one loop
    body and returns the named parameters (updated in place)."""
    from opacus import PrivacyEngine

    if cfg.impl != "direct_opacus":
        raise NotImplementedError(f"torch direct impl {cfg.impl!r} is not implemented; available: direct_opacus")
    device = _device()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(cfg.seed)  # Opacus draws its noise from the global generator
    spec = get_model(cfg.model)
    xn, yn = make_batch(spec, cfg.batch_size, cfg.seed)

    model = make_model(spec, init_weights(spec, cfg.seed), device)
    params = dict(model.named_parameters())  # the harness's view of the weights; the loop never reads it
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.learning_rate)
    data_loader = DataLoader(TensorDataset(nchw(xn, device), labels(yn, device)), batch_size=cfg.batch_size)
    criterion = nn.CrossEntropyLoss()

    privacy_engine = PrivacyEngine()
    model, optimizer, data_loader = privacy_engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=data_loader,
        noise_multiplier=cfg.noise_multiplier,
        max_grad_norm=cfg.clip_norm,
        poisson_sampling=False,
    )
    model.train()
    x, y = next(iter(data_loader))

    def step() -> dict[str, torch.Tensor]:
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        return params

    def peak_memory() -> int | None:
        return torch.cuda.max_memory_allocated() if device.type == "cuda" else None

    notes = {"direct_of": list(IMPLS["torch"][cfg.impl].direct_of), "gsm_class": type(model).__name__,
             "optimizer_class": type(optimizer).__name__, "expected_batch_size": optimizer.expected_batch_size,
             "loader_batch_size": int(x.shape[0]), "tf32": False}
    return Bench(step=step, sync=_sync, peak_memory=peak_memory, notes=notes)
