"""The PyTorch + Opacus side of the seam (common.harness.adapter.Adapter)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from common.harness.adapter import Adapter, Bench
from common.harness.config import IMPLS, RunConfig
from common.reference.exchange import Weights, init_weights, make_batch
from common.reference.spec import get_model
from frameworks.torch import steps
from frameworks.torch.models import labels, make_model, nchw, to_exchange

# Full float32 on GPU, as the JAX adapter's "highest" matmul precision: cuDNN convs
# default to TF32 on Ampere and later (torch 2.13). Set for everything this adapter
# runs, parity tests included. The legacy flags, because mixing them with the newer
# ``fp32_precision`` API makes the legacy getters raise for any code that reads them.
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False


# Share of a configuration's budget (at most CALIBRATION_MAX_S) fastclip may
# spend choosing its per-layer plans by timing, at build time (before the
# compiling step; FastClip.calibrate).
CALIBRATION_SHARE = 0.05
CALIBRATION_MAX_S = 5.0


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _is_direct(impl: str) -> bool:
    """A direct-use row (common.harness.config ``Impl.kind``): frameworks/torch/direct.py builds it."""
    info = IMPLS["torch"].get(impl)
    return info is not None and info.kind == "direct"


def tf32_allowed() -> bool:
    """Whether CUDA matmuls or cuDNN convs may round float32 to TF32 (read
    back, not assumed: the flags above turn both off)."""
    return bool(torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32)


def allocator_peak(device: torch.device) -> int | None:
    """The CUDA caching allocator's peak of allocated bytes since ``build``
    reset it (``reset_peak_memory_stats``); None on a CPU, where PyTorch keeps
    no allocator statistics (the worker measures RSS)."""
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def _sync(_out: Any) -> None:
    """Block until the step's kernels are done. CUDA launches are asynchronous;
    PyTorch CPU ops run synchronously on the calling thread, so there is nothing
    to wait for on CPU."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class TorchAdapter(Adapter):
    """Plain SGD, Opacus DP-SGD (one impl per ``grad_sample_mode``) and the study's
    fastclip (frameworks/torch/fastclip.py), eager; and the direct-use row
    ``direct_opacus`` (frameworks/torch/direct.py: Opacus's README loop, timed
    beside ``opacus_hooks`` to show the harness adds nothing; no clipped_sum, no phases).

    Phases (``RunConfig.phases``; ``steps.Trainer.phases`` has the details),
    each a cumulative prefix of the step on the same model and batch:
    standard ``forward``, ``backward``; Opacus hooks/functorch/ew ``forward``,
    ``backward`` (incl. per-sample gradients), ``clip`` (+
    ``clip_and_accumulate``), ``noise`` (+ ``add_noise``); Opacus ghost
    ``forward``, ``backward+clip`` (both ghost passes), ``noise`` (+
    ``accumulate`` + ``add_noise``); fastclip ``forward``, ``backward+clip``
    (backward to the layer outputs, norms, clipped sum), ``noise``; then
    ``update`` (divide by B and the SGD step) is the full step minus the last
    prefix.
    """

    framework = "torch"
    threads = 0  # setup's; 0: all cores

    def setup(self, threads: int, devices: int = 1) -> None:
        self.threads = threads  # all of them: data_parallel shares them out over its ranks
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # only settable before the first parallel work; keep what is set
            pass

    def versions(self) -> dict[str, str]:
        import opacus
        return {"torch": torch.__version__, "opacus": opacus.__version__, "dpbench": "fastclip"}

    def device(self) -> str:
        return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"

    def accelerator(self) -> dict[str, Any]:
        if not torch.cuda.is_available():
            return {"tf32": None}
        props = torch.cuda.get_device_properties(0)
        return {"tf32": tf32_allowed(), "cuda_runtime": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                "capability": f"{props.major}.{props.minor}", "memory_bytes": int(props.total_memory)}

    def build(self, cfg: RunConfig) -> Bench:
        if _is_direct(cfg.impl):
            from frameworks.torch.direct import build_direct  # imports this module: lazily
            return build_direct(cfg)
        calibrate_s = min(CALIBRATION_SHARE * cfg.budget_s, CALIBRATION_MAX_S)
        if cfg.devices > 1:
            from frameworks.torch import data_parallel  # every Opacus mode runs on DPDDP (Opacus 1.6)
            return data_parallel.build(cfg, self.threads, calibrate_s, _sync)
        device = _device()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        torch.manual_seed(cfg.seed)  # Opacus and fastclip draw their noise from the global generator
        spec = get_model(cfg.model)
        xn, yn = make_batch(spec, cfg.batch_size, cfg.seed)
        x, y = nchw(xn, device), labels(yn, device)
        trainer = steps.make_trainer(cfg.impl, spec, init_weights(spec, cfg.seed), x, y, lr=cfg.learning_rate,
                                     clip_norm=cfg.clip_norm, noise_multiplier=cfg.noise_multiplier,
                                     calibrate_s=calibrate_s)
        params = dict(trainer.net.named_parameters())

        def step() -> dict[str, torch.Tensor]:
            trainer.step(x, y)
            return params  # the parameters, updated in place by this step

        peak_memory = lambda: allocator_peak(device)  # noqa: E731

        phases = {}
        if cfg.phases:
            phases = {name: (lambda fn=fn: (fn(), params)[1]) for name, fn in trainer.phases(x, y).items()}

        noise_draw = None
        if isinstance(trainer, steps.FastclipTrainer) and trainer.noise_std > 0:
            grads = [torch.zeros_like(p) for p in params.values()]

            def noise_draw() -> list[torch.Tensor]:  # drawn, and added as the step adds it
                return [g.add_(n) for g, n in zip(grads, trainer.draw_noise())]

        notes = {**trainer.notes, "tf32": tf32_allowed()}
        return Bench(step=step, sync=_sync, peak_memory=peak_memory, notes=notes, phases=phases,
                     noise_draw=noise_draw)

    def forward(self, model: str, weights: Weights, x: np.ndarray) -> np.ndarray:
        device = _device()
        net = make_model(get_model(model), weights, device)
        with torch.no_grad():
            return net(nchw(x, device)).cpu().numpy()

    def clipped_sum(self, impl: str, model: str, weights: Weights, x: np.ndarray, y: np.ndarray,
                    clip_norm: float, microbatch_size: int | None = None, variant: str = "",
                    devices: int = 1) -> dict[str, np.ndarray]:
        if _is_direct(impl):
            raise NotImplementedError(f"torch/{impl} is a direct-use row (frameworks/torch/direct.py): it is timed, "
                                      f"not verified; its study row {IMPLS['torch'][impl].direct_of[0]} is")
        if microbatch_size is not None or variant:
            raise ValueError(f"torch/{impl} takes no microbatch size or variant")
        if devices > 1:
            from frameworks.torch import data_parallel
            return data_parallel.clipped_sum(impl, model, weights, x, y, clip_norm, devices)
        device = _device()
        xt, yt = nchw(x, device), labels(y, device)
        trainer = steps.make_trainer(impl, get_model(model), weights, xt, yt, lr=0.0,
                                     clip_norm=clip_norm, noise_multiplier=0.0)
        return to_exchange(steps.gradient_sum(trainer, xt, yt), trainer.net.spec)
