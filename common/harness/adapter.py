"""The one seam between the harness and a framework.

Each framework package ``frameworks.<name>`` exposes ``ADAPTER``, an
``Adapter``. The harness loads it lazily by name (``load``) inside a worker
running that framework's interpreter, so a framework's packages are needed
only where it runs. Everything crossing the seam is NumPy or plain Python.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from common.harness.config import FRAMEWORKS, RunConfig
from common.reference.exchange import Weights


@dataclass
class Bench:
    """A built configuration, ready to time.

    ``step()`` runs one full training step (gradient, clip, noise, update) and
    returns the real output (the new parameters/state); ``sync(out)`` blocks
    until that output is computed. ``peak_memory()`` is the allocator's peak
    on accelerators (None on CPU: the worker then reports peak RSS).
    ``notes`` lands in the record (e.g. which code path a library took).

    ``phases`` (built when ``RunConfig.phases`` is set, else empty): ordered
    cumulative *prefixes* of ``step``, each a callable that runs the step up
    to and including that phase on the same model and batch and returns
    something ``sync`` blocks on (the prefix's real output). The full step is
    the implicit last phase, named ``FULL_STEP_PHASE``; the worker times each
    prefix with the same protocol and takes differences. A prefix must leave
    the parameters (and whatever the step reads) as they were, so that it can
    run before or after the timed windows. Each adapter's docstring says
    what its phases contain.

    ``noise_draw`` (DP rows that have one; fastclip's today): one step's
    Gaussian noise for every parameter, drawn alone with the sampler the step
    uses (and added, as the step adds it), returning what ``sync`` blocks on.
    The worker times it after the main timing (``notes.noise_draw_s``): the
    draw costs the same for every DP row of a framework and model (one sampler
    per framework) whatever the clipping, so the report can tell the noise's
    share of the DP gap from the clipping's.
    """

    step: Callable[[], Any]
    sync: Callable[[Any], Any]
    peak_memory: Callable[[], int | None] = lambda: None
    notes: dict[str, Any] = field(default_factory=dict)
    phases: dict[str, Callable[[], Any]] = field(default_factory=dict)
    noise_draw: Callable[[], Any] | None = None


class Unsupported(Exception):
    """Raised by ``Adapter.build`` when the library has no way to run the
    configuration as asked (e.g. a DP mode without data-parallel support):
    the record's status is then ``unsupported`` with this message, not a crash."""


# Name of the last phase of every breakdown: the full step minus its last
# prefix (for every impl that is at least the optimizer update).
FULL_STEP_PHASE = "update"


class Adapter(ABC):
    framework: str

    @abstractmethod
    def setup(self, threads: int, devices: int = 1) -> None:
        """Apply thread settings and make ``devices`` data-parallel devices
        available (where the framework must be told before it starts, e.g.
        TF's logical CPUs); called once, before anything is built."""

    @abstractmethod
    def versions(self) -> dict[str, str]:
        """Versions of the framework and every DP library it can use."""

    @abstractmethod
    def device(self) -> str:
        """Name of the device the steps run on (GPU model or 'cpu')."""

    def accelerator(self) -> dict[str, Any]:
        """What float32 means on the device and which accelerator build runs,
        read back from the framework after ``setup`` (every record's
        ``notes.accelerator``): ``tf32`` (True where float32 matmuls/convs may
        run as TF32, which the study turns off; None on a CPU, which has no
        such mode) and, on a GPU, the CUDA/cuDNN versions and the device's
        compute capability."""
        return {}

    @abstractmethod
    def build(self, cfg: RunConfig) -> Bench:
        """Model, optimizer, data on the device; a step per ``cfg.impl``.

        ``cfg.devices`` > 1: one data-parallel step over that many devices on
        the framework's own engine, ``cfg.batch_size`` examples on each (the
        global batch ``make_batch(spec, cfg.global_batch_size, seed)``, split
        in order), per-device clipped sums reduced by the framework's
        collectives and the noise drawn once per step (its variance that of
        one N(0, (sigma C)^2) draw per coordinate); ``Unsupported`` where the
        library cannot. Its phases are not built (one device only)."""

    @abstractmethod
    def forward(self, model: str, weights: Weights, x: np.ndarray) -> np.ndarray:
        """Logits of the model with exchange ``weights`` on NHWC ``x``."""

    @abstractmethod
    def clipped_sum(self, impl: str, model: str, weights: Weights, x: np.ndarray, y: np.ndarray,
                    clip_norm: float, microbatch_size: int | None = None, variant: str = "",
                    devices: int = 1) -> dict[str, np.ndarray]:
        """The implementation's clipped gradient sum with noise 0, in exchange
        layout, computed by the same code path ``build`` times; ``devices`` >
        1: x split in order over that many devices, the per-device sums
        reduced as the data-parallel step reduces them."""


def load(framework: str) -> Adapter:
    if framework not in FRAMEWORKS:
        raise ValueError(f"unknown framework {framework!r}; choose from {', '.join(FRAMEWORKS)}")
    return importlib.import_module(f"frameworks.{framework}").ADAPTER
