"""DP-SGD as it is trained (issue 28; docs/design.md §8): Poisson-sampled
logical batches, cut into physical batches, one noise draw per logical step,
timed beside the same implementation's fixed-batch study step.

A *deployed row* is (framework, impl, strategy) at a sampling rate q over a
dataset of N examples (expected logical batch L = qN) with physical batch P.
Its step (``DeployedBench.step``) is one logical step: sample (the library's
own sampler where it has one), gather the examples, run the physical batches
(padded, masked or of variable size, as the strategy says), draw the noise
once, update. Its reference is the study's fixed-batch step of the same impl
at B = P (``common.harness.adapter.Adapter.build``): the two are timed in
alternating windows in one process (``pairing.measure_paired``), and each
pair's ratio is *real* (non-padding) examples per second of the deployed
step over examples per second of the fixed one (``subject_work``).

Before the pairs, the row runs ``cycle`` logical steps untimed (the *first
cycle*): its seconds and the compiles it caused are recorded apart, so that
a strategy that compiles once per batch size is charged its compiles where
they are (``first_cycle_s``, ``compiles``), and the steady state is
measured where it is steady.

This module is framework-free: the worker half (``measure``) runs in the
framework's interpreter and imports ``frameworks.<fw>.deployed`` lazily; the
driver (``main``) runs every row in its own process, appends each record to
``RUN_DIR/deployed.jsonl`` as it finishes (fsynced; a fault is a row) and
never rewrites what is there.

    python -m common.harness.deployed RUN_DIR [--frameworks jax,torch,tf] [--rates 256,1024]
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from common.harness.config import FRAMEWORKS, RunConfig, Timing
from common.reference.sampling import Plan

SCHEMA = 1
FILE = "deployed.jsonl"
# The accounting every row's epsilon is given at: this many epochs (N/L logical steps each), delta.
EPOCHS = 10
DELTA = 1e-5


@dataclass(frozen=True)
class Strategy:
    """One way a framework runs DP-SGD as trained.

    ``fixed``: the study row (impl, variant, microbatch size) at B = P that
    the strategy is paired with. ``sampler``: whose Poisson sampler draws the
    logical batches (``dpbench``: ``common.reference.sampling``, for a
    library that has none). ``how``: one line for the report."""

    framework: str
    impl: str
    strategy: str
    fixed: tuple[str, str, int | None]
    sampler: str
    how: str
    truncate: bool = False


STRATEGIES: tuple[Strategy, ...] = (
    Strategy("jax", "jax_privacy", "pad", ("jax_privacy", "", None), "jax-privacy",
             "CyclicPoissonSampling, split_and_pad_global_batch to P, clipped_grad(is_padding_example=...): one shape"),
    Strategy("jax", "jax_privacy", "truncate", ("jax_privacy", "", None), "jax-privacy",
             "as pad, the logical batch truncated to L + 2 sqrt(L) rounded up to P (accounted as truncated)",
             truncate=True),
    Strategy("jax", "jax_privacy", "recompile", ("jax_privacy", "", None), "jax-privacy",
             "CyclicPoissonSampling, the whole logical batch as one physical batch: one compile per size"),
    Strategy("jax", "fastclip", "pad", ("fastclip", "", None), "jax-privacy",
             "jax-privacy's batches and padding, fastclip's clipped sum with padding masked"),
    Strategy("torch", "opacus", "variable", ("opacus_hooks", "", None), "opacus",
             "make_private(poisson_sampling=True) + BatchMemoryManager(max_physical_batch_size=P), hooks (default)"),
    Strategy("torch", "fastclip", "variable", ("fastclip", "", None), "opacus",
             "Opacus' DPDataLoader batches cut to <= P, fastclip's clipped sums accumulated, noise once"),
    Strategy("tf", "tfp", "variable", ("tfp_vectorized", "graph", 1), "dpbench",
             "the study's Poisson sampler; TF-Privacy's vectorized clipped sums accumulated over <= P batches, noise once"),
    Strategy("tf", "fastclip", "pad", ("fastclip", "graph", None), "dpbench",
             "the study's Poisson sampler, padded to P, fastclip's clipped sum with padding masked (graph)"),
)


def strategy(framework: str, impl: str, name: str) -> Strategy:
    for s in STRATEGIES:
        if (s.framework, s.impl, s.strategy) == (framework, impl, name):
            return s
    known = ", ".join(f"{s.framework}/{s.impl}/{s.strategy}" for s in STRATEGIES)
    raise ValueError(f"unknown deployed row {framework}/{impl}/{name}; choose from {known}")


def truncation_cap(logical: float, physical: int) -> int:
    """L + 2 sqrt(L), rounded up to a multiple of P (jax-privacy's truncated
    batch size must hold the logical batch almost always and pad to P)."""
    return int(math.ceil((logical + 2 * math.sqrt(logical)) / physical) * physical)


@dataclass(frozen=True)
class DeployedConfig:
    """One deployed row at one sampling rate (``logical_batch`` = L = qN)."""

    framework: str
    impl: str
    strategy: str
    model: str = "small"
    dataset_size: int = 50_000
    logical_batch: int = 256
    physical_batch: int = 64
    cycle: int = 8  # logical steps of the untimed first cycle
    seed: int = 0
    clip_norm: float = 1.0
    noise_multiplier: float = 1.0
    learning_rate: float = 0.1
    threads: int = 0
    budget_s: float = 120.0
    timing: Timing = field(default_factory=lambda: Timing(warmup_steps=1, repeats=4, window_s=1.0, min_steps=1))

    @property
    def info(self) -> Strategy:
        return strategy(self.framework, self.impl, self.strategy)

    @property
    def sampling_rate(self) -> float:
        return self.logical_batch / self.dataset_size

    @property
    def cap(self) -> int | None:
        return truncation_cap(self.logical_batch, self.physical_batch) if self.info.truncate else None

    def plan(self) -> Plan:
        return Plan(self.dataset_size, self.sampling_rate, self.physical_batch, self.cap).validate()

    def reference(self) -> RunConfig:
        """The fixed-batch study step it is paired with: same impl, B = P."""
        impl, variant, mb = self.info.fixed
        return RunConfig(self.framework, impl, self.model, self.physical_batch, mb, variant,
                         clip_norm=self.clip_norm, noise_multiplier=self.noise_multiplier,
                         learning_rate=self.learning_rate, seed=self.seed, threads=self.threads,
                         budget_s=self.budget_s, timing=self.timing).validate()

    def validate(self) -> "DeployedConfig":
        self.info  # noqa: B018 - raises on an unknown row
        if not 0 < self.logical_batch <= self.dataset_size:
            raise ValueError(f"need 0 < L <= N, got L={self.logical_batch}, N={self.dataset_size}")
        if self.cycle <= 0 or self.budget_s <= 0:
            raise ValueError("cycle and budget must be positive")
        self.plan()
        self.reference()
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DeployedConfig":
        d = dict(d)
        d["timing"] = Timing(**d.get("timing", {}))
        return cls(**d)


# Counters every DeployedBench keeps, cumulative since it was built.
COUNTERS = ("logical_steps", "real_examples", "padded_examples", "physical_steps", "noise_draws", "compiles")


@dataclass
class DeployedBench:
    """A built deployed row.

    ``step()``: one logical step (sample, gather, its physical batches, one
    noise draw, one update); returns what ``sync`` blocks on. ``counters()``:
    the ``COUNTERS``, cumulative, read from what the code did (the library's
    noise calls, the compile cache, the batches it was given), never from the
    plan. ``sizes()``: the real size of every logical batch drawn so far."""

    step: Callable[[], Any]
    sync: Callable[[Any], Any]
    counters: Callable[[], dict[str, int]]
    sizes: Callable[[], list[int]]
    notes: dict[str, Any] = field(default_factory=dict)


def _delta(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: int(b.get(k, 0)) - int(a.get(k, 0)) for k in COUNTERS}


def per_logical(c: dict[str, int]) -> dict[str, float | None]:
    """Counters per logical step, and the padding share of the physical slots."""
    n = c["logical_steps"]
    slots = c["real_examples"] + c["padded_examples"]
    return {"physical_per_logical": c["physical_steps"] / n if n else None,
            "noise_draws_per_logical": c["noise_draws"] / n if n else None,
            "real_per_logical": c["real_examples"] / n if n else None,
            "padding_share": c["padded_examples"] / slots if slots else None}


def measure(cfg: DeployedConfig, build: Callable[[DeployedConfig], DeployedBench],
            build_fixed: Callable[[RunConfig], Any], *, clock: Callable[[], float] = time.perf_counter,
            steal: Callable[[], float | None] = lambda: None, ncpu: int = 1,
            started: float | None = None) -> dict[str, Any]:
    """The measurement half of a record (runs in the framework's process)."""
    from common.harness import pairing

    started = clock() if started is None else started
    bench = build(cfg)
    out: dict[str, Any] = {"notes": dict(bench.notes)}
    c0 = bench.counters()
    t0 = clock()
    res = None
    for _ in range(cfg.cycle):
        res = bench.step()
    bench.sync(res)
    out["first_cycle_s"] = clock() - t0
    c1 = bench.counters()
    out["first_cycle"] = _delta(c0, c1)
    out["compiles"] = out["first_cycle"]["compiles"]

    work = {"real": 0}

    def counted_step() -> Any:
        before = bench.counters()["real_examples"]
        r = bench.step()
        work["real"] += bench.counters()["real_examples"] - before
        return r

    left = cfg.budget_s - (clock() - started)
    ref_desc = {"impl": cfg.info.fixed[0], "variant": cfg.info.fixed[1], "microbatch_size": cfg.info.fixed[2],
                "batch_size": cfg.physical_batch}
    timing, paired = pairing.measure_paired(
        counted_step, bench.sync, lambda: build_fixed(cfg.reference()), cfg.timing, left, clock=clock,
        steal=steal, ncpu=ncpu, ref_desc=ref_desc, subject_work=lambda: work["real"],
        ref_work=cfg.physical_batch)
    c2 = bench.counters()
    steady = _delta(c1, c2)
    out["steady"] = steady
    out["steady_compiles"] = steady["compiles"]
    out.update(per_logical(steady))
    out["timing"] = timing.to_dict()
    out["paired"] = paired
    rates = [p["subject_work"] / p["subject_step_s"] / p["subject_steps"] for p in paired.get("pairs", [])
             if p.get("subject_work") is not None]
    fixed = [cfg.physical_batch / p["ref_step_s"] for p in paired.get("pairs", [])]
    if rates:
        out["real_examples_per_s"] = statistics.median(rates)
        out["fixed_examples_per_s"] = statistics.median(fixed)
    else:  # unpaired: the steady state's mean real examples per logical step over its median step time
        real = out.get("real_per_logical")
        out["real_examples_per_s"] = real / timing.step_s_median if real else None
        out["fixed_examples_per_s"] = None
    out["sizes"] = list(bench.sizes())
    out["notes"].update(bench.notes)
    return out


def privacy(cfg: DeployedConfig) -> dict[str, Any]:
    """The plan's epsilon after ``EPOCHS`` epochs at ``DELTA`` (dp-accounting;
    truncation accounted as such)."""
    from common.reference.sampling import epsilon

    steps = EPOCHS * round(cfg.dataset_size / cfg.logical_batch)
    return {"epochs": EPOCHS, "steps": steps, "delta": DELTA, "noise_multiplier": cfg.noise_multiplier,
            "epsilon": epsilon(cfg.plan(), cfg.noise_multiplier, steps, DELTA)}


def worker(config_path: str, result_path: str) -> int:
    """In the framework's interpreter: build, measure, write the result atomically."""
    from common.harness import adapter as adapter_mod
    from common.harness import threads
    from common.harness.worker import classify, cpu_steal_s, one_line, write_json_atomic

    started = time.perf_counter()
    with open(config_path) as f:
        cfg = DeployedConfig.from_dict(json.load(f)).validate()
    out: dict[str, Any] = {"threads": threads.recorded(cfg.threads)}
    try:
        threads.pin(cfg.threads)
        adapter = adapter_mod.load(cfg.framework)
        adapter.setup(threads.resolve(cfg.threads))
        out["versions"] = adapter.versions()
        out["device"] = adapter.device()
        module = importlib.import_module(f"frameworks.{cfg.framework}.deployed")
        out.update(measure(cfg, module.build, adapter.build, steal=cpu_steal_s, ncpu=os.cpu_count() or 1,
                           started=started))
        out["status"], out["error"] = "ok", None
    except Exception as exc:  # noqa: BLE001 - a fault is a row
        traceback.print_exc()
        out["status"], out["error"] = classify(exc), one_line(exc)
    write_json_atomic(result_path, out)
    return 0
