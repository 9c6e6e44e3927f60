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
measured where it is steady. Peak memory is the process's resident memory
above its baseline (the framework imported, nothing built), read after the
first steady steps and before the fixed-batch step is built
(``peak_rss_bytes``; the on-device dataset of N examples is in it, as it
is in a deployed run; the first cycle's peak, compiles included, apart).

After the pairs with the fixed DP step, the same deployed step is paired
with the framework's *standard* (non-private) step at B = P (same model and
variant): what DP as trained costs a user against training without privacy
(``paired_standard``), beside what sampling and padding cost against the
fixed DP step (``paired``).

This module is framework-free and keeps only what is deployed-specific: the
strategies, the config, the bench, its measurement (``measure``, which the
worker, common/harness/worker.py, runs in the framework's interpreter with
``frameworks.<fw>.deployed``) and the record's fields. A deployed row runs
through the study's runner like any other configuration (runner.DEPLOYED:
its worker, rounds, resume, fault labels, records appended to
``RUN_DIR/deployed.jsonl``):

    python -m common.harness.runner --preset deployed --frameworks jax,torch,tf --out RUN_DIR
"""
from __future__ import annotations

import importlib
import json
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from common.harness.config import FRAMEWORKS, RunConfig, Timing

SCHEMA = 1
FILE = "deployed.jsonl"
PRESET = "deployed"  # ./run_all.sh --preset deployed: the runner builds ``configs``
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
             "make_private(poisson_sampling=True) + BatchMemoryManager(max_physical_batch_size=P), hooks (default); "
             "where L does not divide N, Opacus' DPDataLoader rebuilt at q = L/N and its divisor set to L (make_private "
             "takes q = 1/ceil(N/L))"),
    Strategy("torch", "fastclip", "variable", ("fastclip", "", None), "opacus",
             "Opacus' DPDataLoader batches cut to <= P, fastclip's clipped sums accumulated, noise once"),
    Strategy("tf", "tfp", "variable", ("tfp_vectorized", "graph", 1), "dpbench",
             "the study's Poisson sampler (TF-Privacy has none); per physical batch of <= P (one trace, batch "
             "dimension None) TF-Privacy's per-example jacobian + clip_gradients_vmap, summed and accumulated; noise "
             "once, / L (the library's gradient_accumulation_steps noises every physical batch and needs a fixed "
             "count)"),
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

    ROW = "deployed"  # the runner's row kind (runner.DEPLOYED); a RunConfig's is "study"

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
    # 12 pairs per arm and round: a deployed window is often one logical step of a Poisson-sized batch,
    # so one pair's ratio spreads +-15 points (deployed-20261207T120125Z, 6 pairs: rounds' medians within
    # ~5 points, each round's pairs over 20-40), and the interval's width is mostly the pairs' spread.
    # Rows that reach the budget first keep the pairs that fit it (pairing.plan_pairs).
    timing: Timing = field(default_factory=lambda: Timing(warmup_steps=1, repeats=12, window_s=1.0, min_steps=1))

    @property
    def info(self) -> Strategy:
        return strategy(self.framework, self.impl, self.strategy)

    @property
    def sampling_rate(self) -> float:
        return self.logical_batch / self.dataset_size

    @property
    def cap(self) -> int | None:
        return truncation_cap(self.logical_batch, self.physical_batch) if self.info.truncate else None

    def plan(self) -> "Plan":  # noqa: F821 - imported here: the driver's validation runs without numpy
        from common.reference.sampling import Plan
        return Plan(self.dataset_size, self.sampling_rate, self.physical_batch, self.cap).validate()

    def reference(self) -> RunConfig:
        """The fixed-batch study step it is paired with: same impl, B = P."""
        impl, variant, mb = self.info.fixed
        return RunConfig(self.framework, impl, self.model, self.physical_batch, mb, variant,
                         clip_norm=self.clip_norm, noise_multiplier=self.noise_multiplier,
                         learning_rate=self.learning_rate, seed=self.seed, threads=self.threads,
                         budget_s=self.budget_s, timing=self.timing).validate()

    def standard_reference(self) -> RunConfig:
        """The framework's standard (non-private) step at B = P, in the fixed step's variant."""
        return replace(self.reference(), impl="standard", microbatch_size=None).validate()

    def key(self) -> tuple:
        """What --resume matches on (with the round)."""
        return key(self.to_dict())

    def order_key(self) -> tuple:
        """Where a round runs it: small to large logical batch (runner.round_order)."""
        return (self.model, self.logical_batch)

    def label(self) -> str:
        return f"{self.framework} {self.impl}/{self.strategy} L={self.logical_batch} P={self.physical_batch}"

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

    from common.harness.memory import PeakTracker

    started = clock() if started is None else started
    tracker = PeakTracker()  # baseline: the framework imported, nothing built
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
    tracker.mark_compiled()  # the first cycle's peak (compiles included) kept apart

    def read_memory() -> None:  # the deployed step's own steady peak, before the fixed step exists here
        out["peak_rss_bytes"] = tracker.peak_above_baseline()
        out["first_cycle_peak_rss_bytes"] = tracker.compile_peak
        out["mem_source"] = "rss_steady_peak_above_baseline" if tracker.reset_ok else "rss_peak_since_start"

    # Half of what is left for the pairs with the fixed DP step, the rest for the pairs with standard.
    left = (cfg.budget_s - (clock() - started)) / 2
    fixed_cfg, std_cfg = cfg.reference(), cfg.standard_reference()
    common = dict(clock=clock, steal=steal, ncpu=ncpu, ref_work=cfg.physical_batch,
                  # read around each window, outside the timed span (a TF counter read is a device sync)
                  subject_work=lambda: bench.counters()["real_examples"])
    timing, paired = pairing.measure_paired(
        bench.step, bench.sync, lambda: build_fixed(fixed_cfg), cfg.timing, left, before_ref=read_memory,
        ref_desc={"impl": fixed_cfg.impl, "variant": fixed_cfg.variant, "microbatch_size": fixed_cfg.microbatch_size,
                  "batch_size": cfg.physical_batch}, **common)
    left = cfg.budget_s - (clock() - started)
    _, paired_std = pairing.measure_paired(
        bench.step, bench.sync, lambda: build_fixed(std_cfg), cfg.timing, left,
        ref_desc={"impl": "standard", "variant": std_cfg.variant, "microbatch_size": None,
                  "batch_size": cfg.physical_batch}, **common)
    c2 = bench.counters()
    steady = _delta(c1, c2)
    out["steady"] = steady
    out["steady_compiles"] = steady["compiles"]
    out.update(per_logical(steady))
    out["timing"] = timing.to_dict()
    out["paired"], out["paired_standard"] = paired, paired_std
    rates, fixed = arm_rates(paired, cfg.physical_batch)
    if rates:
        out["real_examples_per_s"] = statistics.median(rates)
        out["fixed_examples_per_s"] = statistics.median(fixed)
    else:  # unpaired: the steady state's mean real examples per logical step over its median step time
        real = out.get("real_per_logical")
        out["real_examples_per_s"] = real / timing.step_s_median if real else None
        out["fixed_examples_per_s"] = None
    std_rates, std = arm_rates(paired_std, cfg.physical_batch)
    out["standard_examples_per_s"] = statistics.median(std) if std else None
    out["real_examples_per_s_beside_standard"] = statistics.median(std_rates) if std_rates else None
    out["sizes"] = list(bench.sizes())
    out["notes"].update(bench.notes)
    return out


def arm_rates(paired: dict[str, Any] | None, physical: int) -> tuple[list[float], list[float]]:
    """Per kept pair: the deployed window's real examples/s, and the reference's examples/s."""
    pairs = [p for p in (paired or {}).get("pairs") or [] if p.get("subject_work") is not None]
    return ([p["subject_work"] / p["subject_step_s"] / p["subject_steps"] for p in pairs],
            [physical / p["ref_step_s"] for p in pairs])


def privacy(cfg: DeployedConfig) -> dict[str, Any]:
    """The plan's epsilon after ``EPOCHS`` epochs at ``DELTA`` (dp-accounting;
    truncation accounted as such)."""
    from common.reference.sampling import epsilon

    steps = EPOCHS * round(cfg.dataset_size / cfg.logical_batch)
    return {"epochs": EPOCHS, "steps": steps, "delta": DELTA, "noise_multiplier": cfg.noise_multiplier,
            "epsilon": epsilon(cfg.plan(), cfg.noise_multiplier, steps, DELTA)}


def run_in_worker(cfg: DeployedConfig, started: float, steal: Callable[[], float | None]) -> dict[str, Any]:
    """The worker's half (common/harness/worker.py, in the framework's interpreter): build, measure."""
    from common.harness import adapter as adapter_mod
    from common.harness import threads

    out: dict[str, Any] = {"threads": threads.recorded(cfg.threads)}
    threads.pin(cfg.threads)
    adapter = adapter_mod.load(cfg.framework)
    adapter.setup(threads.resolve(cfg.threads))
    out["versions"] = adapter.versions()
    out["device"] = adapter.device()
    module = importlib.import_module(f"frameworks.{cfg.framework}.deployed")
    out.update(measure(cfg, module.build, adapter.build, steal=steal, ncpu=os.cpu_count() or 1,
                       started=started))
    return out


# The deployed preset (./run_all.sh --preset deployed): the small model, N =
# 50,000 (CIFAR-10's size), two sampling rates with their physical batches
# (L 256 from P 64; L 1024 from P 256), every strategy of every framework.
DATASET_SIZE = 50_000
RATES: tuple[tuple[int, int], ...] = ((256, 64), (1024, 256))
BUDGET_S = 240.0
# Rounds of fresh processes, in alternately reversed order (one process's pairs describe one process).
ROUNDS = 2
# Logical steps of the untimed first cycle: enough for the sizes to vary
# (and for recompile-per-size to meet several sizes), fewer where steps are large.
CYCLE = {256: 8, 1024: 4}


def configs(frameworks: Sequence[str], rates: Sequence[tuple[int, int]] = RATES, *, model: str = "small",
            dataset_size: int = DATASET_SIZE, budget_s: float = BUDGET_S, threads: int = 0) -> list[DeployedConfig]:
    """Every deployed row of ``frameworks`` at each (L, P), validated (ValueError on bad input)."""
    for fw in frameworks:
        if fw not in FRAMEWORKS:
            raise ValueError(f"unknown framework {fw!r}; choose from {', '.join(FRAMEWORKS)}")
    out = []
    for logical, physical in rates:
        for s in STRATEGIES:
            if s.framework in frameworks:
                out.append(DeployedConfig(s.framework, s.impl, s.strategy, model, dataset_size, logical, physical,
                                          CYCLE.get(logical, 4), threads=threads, budget_s=budget_s).validate())
    return out


def key(rec_or_cfg: dict[str, Any]) -> tuple:
    """What --resume matches on."""
    r = rec_or_cfg
    return (r["framework"], r["impl"], r["strategy"], r["model"], r["dataset_size"], r["logical_batch"],
            r["physical_batch"])


def base_record(cfg: DeployedConfig, run_id: str, commit: str | None, env: dict[str, str] | None = None,
                round_: int = 1) -> dict[str, Any]:
    """What the runner knows without the framework: identity, settings, machine, accounting."""
    import datetime as dt

    from common.harness import envs, machine, threads
    info = cfg.info
    rec = {"schema": SCHEMA, "run_id": run_id, "git_commit": commit,
           "time_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           **{k: v for k, v in cfg.to_dict().items() if k != "timing"}, "timing": asdict(cfg.timing),
           "sampling_rate": cfg.sampling_rate, "cap": cfg.cap, "sampler": info.sampler, "how": info.how,
           "fixed": {"impl": info.fixed[0], "variant": info.fixed[1], "microbatch_size": info.fixed[2],
                     "batch_size": cfg.physical_batch},
           "cpu_model": threads.cpu_model(), "machine": dict(machine.this_machine()),
           "env_lock": envs.lock_label(envs.env_for(cfg.framework)), "privacy": privacy(cfg), "status": None, "error": None,
           "round": round_, "notes": {}, "row_kind": PRESET}
    return rec


def env(cfg: DeployedConfig) -> dict[str, str]:
    """The environment its worker runs with (the study's thread settings)."""
    from common.harness import launcher
    return launcher.framework_env(cfg.framework, cfg.threads)


def finish(rec: dict[str, Any]) -> dict[str, Any]:
    """A record as the runner appends it: the worker's ``versions`` kept, nothing dropped."""
    return rec


def settings_key(rec: dict[str, Any]) -> str:
    """What one run directory's records share (--resume refuses a mix): code, lock, budget, timing, ..."""
    keep = ("git_commit", "env_lock", "budget_s", "timing", "cycle", "threads", "clip_norm", "noise_multiplier",
            "learning_rate", "seed", "dataset_size")
    return json.dumps({k: rec.get(k) for k in keep}, sort_keys=True, default=str)


def later_round_keys(first: Sequence[dict[str, Any]]) -> set[tuple]:
    """Every ok row repeats: each is a finding of the deployed table."""
    return {key(r) for r in first if r["status"] == "ok"}


def result_text(rec: dict[str, Any]) -> str:
    ratio = statistics.median(rec["paired"]["ratios"]) if (rec.get("paired") or {}).get("ratios") else None
    std = (rec.get("paired_standard") or {}).get("ratios")
    return (rec["status"] + (f": {100 * ratio:.1f} % of the fixed batch's examples/s" if ratio else "")
            + (f", {100 * statistics.median(std):.1f} % of standard's" if std else "")
            + (f" ({rec['error']})" if rec.get("error") else ""))


def read(run_dir: Path) -> list[dict[str, Any]]:
    """Every readable record of RUN_DIR/deployed.jsonl (a torn or foreign line is skipped)."""
    p = Path(run_dir) / FILE
    out = []
    if not p.exists():
        return out
    for raw in p.read_bytes().splitlines():
        try:
            rec = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            continue
        if isinstance(rec, dict) and rec.get("schema") == SCHEMA and rec.get("status"):
            out.append(rec)
    return out
