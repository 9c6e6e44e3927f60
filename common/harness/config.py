"""What one configuration is, the implementation catalogue, and the presets.

The catalogue names every implementation of every framework without importing
any framework: the runner validates and expands presets from it, adapters
implement the names. ``microbatch_size`` always means *examples processed
together* (jax-privacy's ``microbatch_size``; for TF-Privacy, B /
``num_microbatches``); ``privacy_unit`` says what is clipped.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from common.harness.threads import ALLOCATORS, DEFAULT_ALLOCATOR
from common.reference.spec import MODELS, get_model

FRAMEWORKS = ("jax", "torch", "tf")
MODES = ("standard", "dp")

@dataclass(frozen=True)
class Impl:
    """One implementation of a training step.

    ``microbatch``: how the microbatch sweep applies: ``none`` (null),
    ``sweep`` (None = the library's default, then B, B/4, 1, seed style),
    ``per_example`` (always 1) or ``mean_sweep`` (B/4 and B examples per
    clipped *mean*: TF-Privacy's num_microbatches 4 and 1). ``variants``:
    separately recorded settings; those in ``ab_variants`` are A/B checks of
    one setting, expanded only at the preset's ``ab_batch_sizes``.

    ``direct_of``: set for a *direct-use* row (``kind`` "direct"): a minimal
    loop written the way the library's README does it (frameworks/<fw>/
    direct.py), on the same model, weights and batch; it names the study row
    (impl, variant, microbatch size) it checks, and the report compares them.
    """

    name: str
    mode: str
    dp_library: str | None
    microbatch: str = "none"
    variants: tuple[str, ...] = ("",)
    privacy_unit: str = "example"
    direct_of: tuple[str, str, int | None] | None = None
    ab_variants: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        return "direct" if self.direct_of else "study"


# fastclip's dp_library: this study's own, not a library a user installs.
OWN_LIBRARY = "dpbench"

# JAX's A/B variant: the same impl with XLA's default flags (common/harness/threads.py).
XLA_DEFAULT = "xla-default"
_JAX_AB = dict(variants=("", XLA_DEFAULT), ab_variants=(XLA_DEFAULT,))

IMPLS: dict[str, dict[str, Impl]] = {
    "jax": {i.name: i for i in (
        Impl("standard", "standard", None, **_JAX_AB),
        Impl("jax_privacy", "dp", "jax-privacy", "sweep", **_JAX_AB),
        Impl("fastclip", "dp", OWN_LIBRARY, **_JAX_AB),
        Impl("direct_jax_privacy", "dp", "jax-privacy", direct_of=("jax_privacy", "", None)),
    )},
    "torch": {i.name: i for i in (
        Impl("standard", "standard", None),
        Impl("opacus_hooks", "dp", "opacus"),
        Impl("opacus_functorch", "dp", "opacus"),
        Impl("opacus_ew", "dp", "opacus"),
        Impl("opacus_ghost", "dp", "opacus"),
        Impl("fastclip", "dp", OWN_LIBRARY),
        Impl("direct_opacus", "dp", "opacus", direct_of=("opacus_hooks", "", None)),
    )},
    "tf": {i.name: i for i in (
        Impl("standard", "standard", None, variants=("graph", "xla")),
        Impl("tfp_microbatch", "dp", "tensorflow-privacy", "per_example", ("graph", "xla")),
        Impl("tfp_microbatch_mean", "dp", "tensorflow-privacy", "mean_sweep", ("graph",), privacy_unit="microbatch_mean"),
        Impl("tfp_vectorized", "dp", "tensorflow-privacy", "per_example", ("graph", "xla")),
        Impl("tfp_dpmodel", "dp", "tensorflow-privacy", variants=("graph", "xla")),
        Impl("fastclip", "dp", OWN_LIBRARY, variants=("graph", "xla")),
        Impl("direct_tfp_optimizer", "dp", "tensorflow-privacy", direct_of=("tfp_microbatch", "graph", 1)),
        Impl("direct_tfp_dpsequential", "dp", "tensorflow-privacy", direct_of=("tfp_dpmodel", "xla", None)),
    )},
}

def findable(framework: str, impl: str, variant: str, microbatch_size: int | None) -> bool:
    """Whether a row of this kind can be named by a finding: a standard row, or
    a per-example DP study row at the study's settings (no A/B variant) and at
    its library's own microbatching (jax-privacy's default, not its sweep).
    The sweep, the A/B variants, direct-use checks and TF-Privacy's
    microbatch-mean rows (another privacy unit) are other modes: the report
    shows them, no finding names them (common.report.findings.pick)."""
    info = IMPLS.get(framework, {}).get(impl)
    if info is None or info.kind == "direct" or variant in info.ab_variants:
        return False
    if info.mode == "standard":
        return True
    return info.privacy_unit == "example" and not (info.microbatch == "sweep" and microbatch_size is not None)


@dataclass(frozen=True)
class Timing:
    """Knobs of the timing protocol (docs/design.md §4)."""

    warmup_steps: int = 2
    repeats: int = 5
    window_s: float = 2.0
    min_steps: int = 2

@dataclass(frozen=True)
class RunConfig:
    """One study configuration (the runner's row kind "study"; a deployed row is
    common.harness.deployed.DeployedConfig, kind "deployed")."""

    ROW = "study"

    framework: str
    impl: str
    model: str
    batch_size: int
    microbatch_size: int | None = None
    variant: str = ""
    clip_norm: float = 1.0
    noise_multiplier: float = 1.0
    learning_rate: float = 0.1
    seed: int = 0
    dtype: str = "float32"
    threads: int = 0  # 0: all cores
    budget_s: float = 300.0
    timing: Timing = field(default_factory=Timing)
    phases: bool = False  # also time the step's cumulative phases (Bench.phases) after the main timing
    # Data-parallel devices (weak scaling): ``batch_size`` examples on each,
    # ``global_batch_size`` per step; 1 is the single-device study.
    devices: int = 1
    # glibc malloc settings of the worker (common.harness.threads.ALLOCATORS), one
    # environment setting for every framework alike.
    allocator: str = DEFAULT_ALLOCATOR

    @property
    def impl_info(self) -> Impl:
        return IMPLS[self.framework][self.impl]

    @property
    def mode(self) -> str:
        return self.impl_info.mode

    @property
    def global_batch_size(self) -> int:
        """Examples per step over all devices (``batch_size`` is per device)."""
        return self.batch_size * self.devices

    @property
    def privacy_unit(self) -> str | None:
        return None if self.mode == "standard" else self.impl_info.privacy_unit

    def key(self) -> tuple:
        """Identity of a configuration (what --resume matches on)."""
        return (self.framework, self.impl, self.variant, self.model, self.batch_size, self.microbatch_size,
                self.devices, self.allocator)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def order_key(self) -> tuple:
        """Where round 1 runs it: small to large batch within a model (the skip proofs need it)."""
        return (self.model, self.batch_size)

    def reference(self) -> "RunConfig | None":
        """What this row's ratio is taken against, timed in pairs with it in one
        process (common/harness/pairing.py): a DP study row's framework standard
        at the same model, batch, variant, devices and allocator (the ratio within
        one variant: TF xla against xla, JAX xla-default against xla-default); a
        direct-use row's study row (``Impl.direct_of``); None for standard rows."""
        info = self.impl_info
        if info.direct_of:
            impl, variant, mb = info.direct_of
            return replace(self, impl=impl, variant=variant, microbatch_size=mb, phases=False)
        if self.mode == "standard":
            return None
        return replace(self, impl="standard", microbatch_size=None, phases=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        d = dict(d)
        d["timing"] = Timing(**d.get("timing", {}))
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def validate(self) -> "RunConfig":
        """Raise ValueError with a one-line message for any bad field."""
        if self.framework not in FRAMEWORKS:
            raise ValueError(f"unknown framework {self.framework!r}; choose from {', '.join(FRAMEWORKS)}")
        if self.impl not in IMPLS[self.framework]:
            raise ValueError(f"unknown impl {self.impl!r} for {self.framework}; choose from {', '.join(IMPLS[self.framework])}")
        get_model(self.model)
        if not isinstance(self.batch_size, int) or self.batch_size <= 0:
            raise ValueError(f"batch size must be a positive integer, got {self.batch_size!r}")
        info = self.impl_info
        if self.variant not in info.variants:
            raise ValueError(f"unknown variant {self.variant!r} for {self.framework}/{self.impl}; choose from {info.variants}")
        if info.microbatch == "none":
            if self.microbatch_size is not None:
                raise ValueError(f"{self.framework}/{self.impl} takes no microbatch size")
        elif info.microbatch == "sweep" and self.microbatch_size is None:
            pass  # the library's default (jax-privacy: one vmap over the whole batch)
        else:
            mb = self.microbatch_size
            if not isinstance(mb, int) or mb <= 0:
                raise ValueError(f"microbatch size must be a positive integer, got {mb!r}")
            if self.batch_size % mb:
                raise ValueError(f"microbatch size {mb} does not divide batch size {self.batch_size}")
            if info.microbatch == "per_example" and mb != 1:
                raise ValueError(f"{self.framework}/{self.impl} clips per example: microbatch size must be 1")
        if self.clip_norm <= 0:
            raise ValueError(f"clip norm must be positive, got {self.clip_norm}")
        if self.noise_multiplier < 0:
            raise ValueError(f"noise multiplier must be >= 0, got {self.noise_multiplier}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")
        if not isinstance(self.devices, int) or isinstance(self.devices, bool) or self.devices <= 0:
            raise ValueError(f"devices must be a positive integer, got {self.devices!r}")
        if self.allocator not in ALLOCATORS:
            raise ValueError(f"unknown allocator {self.allocator!r}; choose from {', '.join(ALLOCATORS)}")
        if self.devices > 1 and info.kind == "direct":
            raise ValueError(f"{self.framework}/{self.impl} is a direct-use row: it runs on one device")
        if self.devices > 1 and self.phases:
            raise ValueError("phases are timed on one device only (devices > 1 given)")
        if self.budget_s <= 0:
            raise ValueError(f"budget must be positive, got {self.budget_s}")
        t = self.timing
        if t.repeats <= 0 or t.window_s <= 0 or t.warmup_steps < 0 or t.min_steps <= 0:
            raise ValueError("timing: repeats, window and min steps must be positive, warm-up >= 0")
        return self

def microbatch_sizes(impl: Impl, batch_size: int) -> list[int | None]:
    """The microbatch sizes one (impl, B) expands to (docs/design.md §3 sweep)."""
    if impl.microbatch == "none":
        return [None]
    if impl.microbatch == "per_example":
        return [1]
    if impl.microbatch == "mean_sweep":
        return sorted({max(batch_size // 4, 1), batch_size}, reverse=True)
    return [None] + sorted({batch_size, max(batch_size // 4, 1), 1}, reverse=True)

@dataclass(frozen=True)
class Preset:
    models: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    timing: Timing
    budget_s: float
    # Where the A/B variants (Impl.ab_variants) run: these models x batch sizes.
    ab_models: tuple[str, ...] = ()
    ab_batch_sizes: tuple[int, ...] = ()
    # Where the direct-use rows (Impl.direct_of) run; empty: at every batch size.
    direct_batch_sizes: tuple[int, ...] = ()
    # Per-model budgets that replace ``budget_s`` (model, seconds).
    model_budget_s: tuple[tuple[str, float], ...] = ()
    # Data-parallel device counts (RunConfig.devices); > 1 skips direct-use rows.
    devices: tuple[int, ...] = (1,)
    # Direct-use rows (Impl.direct_of) at all; they are single-device checks of the harness.
    direct: bool = True
    # Models of the direct-use rows; empty: every model of the preset.
    direct_models: tuple[str, ...] = ()
    # Microbatch sizes of "sweep" impls (None: the library's default); empty: the full sweep.
    sweep: tuple[int | None, ...] = ()
    # glibc malloc settings (RunConfig.allocator); each configuration runs once per entry.
    allocators: tuple[str, ...] = (DEFAULT_ALLOCATOR,)
    # Rounds of fresh processes (runner.run_study; --rounds overrides).
    rounds: int = 1
    # Measures NVIDIA GPUs: refused where the accelerator in force is the CPU
    # (runner.check_accelerator; common/harness/accel.py).
    needs_gpu: bool = False
    # Per-model batch sizes that replace ``batch_sizes`` (model, sizes): a sweep's models at one size.
    model_batch_sizes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    # Per-model rows (model or (model, batch), ("impl" or "impl:variant", ...)): only these run
    # there (a sweep's cells run the rows the sweep asks about, not every row).
    model_rows: tuple[tuple[str | tuple[str, int], tuple[str, ...]], ...] = ()
    # run_all.sh's analyses after the run (analysis_plan): fastclip's per-layer timings
    # on these (model, batch size) cells (empty: analysis_models at B 64), and whether
    # the JAX "why" analysis (common.report.explain) runs.
    layer_cells: tuple[tuple[str, int], ...] = ()
    explain: bool = True

    def budget_for(self, model: str) -> float:
        return dict(self.model_budget_s).get(model, self.budget_s)

    def batch_sizes_for(self, model: str) -> tuple[int, ...]:
        return dict(self.model_batch_sizes).get(model, self.batch_sizes)

    def runs_row(self, model: str, impl: str, variant: str, batch_size: int | None = None) -> bool:
        """Whether the preset runs ``impl`` (at ``variant``) on ``model`` at ``batch_size``
        (``model_rows``: a (model, batch) key first, then the model's)."""
        table = dict(self.model_rows)
        rows = table.get((model, batch_size), table.get(model))
        return rows is None or impl in rows or f"{impl}:{variant}" in rows

# The ViT sweep's rows (issue 37): standard, each library's fast path, fastclip.
VIT_SWEEP_ROWS = ("standard:", "standard:graph", "jax_privacy", "opacus_ghost", "tfp_dpmodel:graph", "fastclip:",
                  "fastclip:graph")

PRESETS: dict[str, Preset] = {
    # The study (./run_all.sh): the small model at B 64 and 256, medium at B 64, every impl, the XLA
    # flag A/B on the small model at B 64, two rounds of fresh processes (the
    # second for the rows runner.later_round_keys names), every DP row
    # paired in its process with its standard (common/harness/pairing.py).
    # Budgets and windows are chosen so that the whole run, parity and the
    # default analyses included, fits an hour on a 2-core CPU (README gives the
    # measured time); slow configurations get fewer windows or no pairs
    # (timing.plan_windows, pairing.plan_pairs), never no number. B 32 (in the
    # study until schema 5) left to make room for the second round: the cells a
    # practitioner sizes for are 64 and up. One step per window is allowed
    # (min_steps=1): a medium-model step already lasts longer than the window.
    # Direct-use rows run on the small model at B 64 (the check of the harness's
    # wrapping of a library needs one cell; it costs two rounds of every library).
    # Medium gets 40 s: jax-privacy's default path there compiles for ~15 s.
    # Medium runs at B 64 only: with B 256 (26 configurations, 15 of the hour:
    # results/full-20261203T104033Z) and the second round for every row a
    # finding can name, the study took over an hour (round 1 alone ~44 min,
    # 2026-12-07); its DP rows there were mostly OOM, timeouts or skipped, and
    # the batch-size effect is the small model's B 64 -> 256.
    "full": Preset(("small", "medium"), (64, 256), Timing(warmup_steps=1, repeats=3, window_s=0.5, min_steps=1),
                   30.0, ab_models=("small",), ab_batch_sizes=(64,), direct_batch_sizes=(64,), direct_models=("small",),
                   model_budget_s=(("medium", 40.0),), model_batch_sizes=(("medium", (64,)),), rounds=2),
    # A first look in minutes: the small model at B 64, every impl, the study's
    # protocol with three rounds (the preset whose two runs must agree).
    "quick": Preset(("small",), (64,), Timing(warmup_steps=1, repeats=3, window_s=0.5, min_steps=1), 30.0,
                    rounds=3),
    # Data-parallel scaling (issue 16): the small model at B 64 per device on
    # 1 and 2 devices, each library at its default (jax-privacy: no
    # microbatch loop). On a CPU the devices share its cores: 1 device x all
    # threads against N devices x threads/N (README: Scaling).
    "scaling": Preset(("small",), (64,), Timing(warmup_steps=1, repeats=3, window_s=0.5, min_steps=1), 40.0,
                      devices=(1, 2), sweep=(None,), direct=False),
    # NVIDIA GPUs through the CUDA environments (issue 38), sized for a short
    # slot on a lent GPU (15 min in all, at most 10 per command: the run goes
    # on after a timeout row, and a cut-off run keeps every record written):
    # small, medium and WRN-16-4 at B 64 and 256, every impl at its library's
    # default (jax-privacy without its microbatch loop) and fastclip; no
    # direct-use rows (checks of the harness's wrapping of each library: the
    # CPU study has them) and no A/B variant (XLA:CPU's flag does nothing on a
    # GPU); one round. A GPU step lasts milliseconds, so windows of 0.2 s
    # hold tens of steps; 60 s per configuration is for process start, CUDA's
    # start and compiling (WRN's the longest), and a slower compile is a
    # timeout row. One budget for every model, so that one run directory can
    # be filled model by model (--resume refuses other settings;
    # common/harness/preinstalled.py runs it so in a short slot).
    "gpu": Preset(("small", "medium", "wrn16_4"), (64, 256),
                  Timing(warmup_steps=2, repeats=3, window_s=0.2, min_steps=2), 60.0,
                  direct=False, sweep=(None,), needs_gpu=True),
    # WRN-16-4 + GroupNorm (issue 27), on its own so that the study's presets
    # (and the timing of their rows) do not change: B 32 and 64, the full
    # preset's timing, 60 s per configuration (a WRN step is ~10x small's),
    # two rounds, no direct-use rows (those check the harness's wrapping of
    # each library, which the small model already does), jax-privacy at its
    # default only (its microbatch loop timed out on medium B 64, a smaller
    # network than WRN at B 64; --microbatch-sizes adds it back).
    "wrn": Preset(("wrn16_4",), (32, 64), Timing(warmup_steps=1, repeats=3, window_s=0.5, min_steps=1), 60.0,
                  direct=False, rounds=2, sweep=(None,)),
    # The ViT (issue 37), on its own like WRN: ``vit`` (patch 4, T = 65 tokens with the class
    # token) at B 64 with every row, the WRN preset's timing, budget and rounds; and the
    # sequence-length sweep at B 32: patches of 8, 4 and 2 (``vit_p8``, ``vit``, ``vit_p2``;
    # T = 17, 65, 257) for the rows whose cost the sweep asks about: standard, each library's
    # ghost / fast-gradient-clipping path (Opacus "ghost", TF-Privacy's DPModel with its
    # registry, graph mode; jax-privacy has only its per-example vmap), and fastclip (whose cost
    # model chooses ghost or instantiate per layer by T): ghost norms cost T^2 per layer. The
    # B 32 cell holds the sweep's rows only (not every row, as B 64 does): every row at both
    # sizes, two rounds, was over an hour on the 2-core CPU, and the canonical runs must share
    # a working session; a cell where a library ran one mode is no win for it
    # (common.report.readme._won_text). JAX's XLA-flag A/B at vit B 64: the study's flag
    # slowed the ViT's standard step (its LayerNorm backward) in a first look, so the flag's
    # effect is measured, not assumed.
    "vit": Preset(("vit", "vit_p8", "vit_p2"), (32, 64), Timing(warmup_steps=1, repeats=3, window_s=0.5, min_steps=1),
                  60.0, direct=False, rounds=2, sweep=(None,), ab_models=("vit",), ab_batch_sizes=(64,),
                  model_batch_sizes=(("vit_p8", (32,)), ("vit_p2", (32,))),
                  model_rows=tuple((key, VIT_SWEEP_ROWS) for key in ("vit_p8", "vit_p2", ("vit", 32))),
                  # The ViT's question is per layer (where does ghost stop paying as T grows?):
                  # fastclip's per-layer timings on the three points of T at the sweep's B 32, and
                  # vit at B 64 (the cell with every row), and no "why" analysis, which
                  # explains whole steps, to keep the session short.
                  layer_cells=(("vit_p8", 32), ("vit", 32), ("vit_p2", 32), ("vit", 64)), explain=False),
    # For tests of the harness itself (CI): seconds per configuration.
    "tiny": Preset(("small",), (4,), Timing(warmup_steps=1, repeats=2, window_s=0.05), 120.0),
}

def analysis_models(preset: str) -> list[str]:
    """The models run_all.sh's analyses (the "why", fastclip's per-layer
    timings) cover by default: the small model where the preset has it (what
    fits the full preset's hour), else the preset's own (wrn: wrn16_4)."""
    models = PRESETS[preset].models
    return ["small"] if "small" in models else list(models)


def analysis_plan(preset: str, models: list[str] | None = None) -> dict[str, Any]:
    """What run_all.sh's analyses cover after a ``preset`` run: ``models`` (the "why"'s,
    :func:`analysis_models` unless given), ``explain`` (whether the "why" runs) and
    ``layer_cells`` ("model:B" cells of fastclip's per-layer timings: the preset's
    ``layer_cells``, or each model at B 64, where ``models`` (run_all.sh --models)
    narrows or widens the preset's models)."""
    p = PRESETS[preset]
    chosen = list(models) if models else analysis_models(preset)
    cells = list(p.layer_cells) if p.layer_cells and not models else [(m, 64) for m in chosen]
    return {"models": chosen, "explain": p.explain, "layer_cells": [f"{m}:{b}" for m, b in cells]}


def expand(frameworks: list[str], preset: str, *, models: list[str] | None = None,
           impls: list[str] | None = None, batch_sizes: list[int] | None = None,
           microbatch_sizes_override: list[int] | None = None, devices: list[int] | None = None,
           allocators: list[str] | None = None, **overrides: Any) -> list[RunConfig]:
    """All configurations of a study, validated; raises ValueError on bad input."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    p = PRESETS[preset]
    for fw in frameworks:
        if fw not in FRAMEWORKS:
            raise ValueError(f"unknown framework {fw!r}; choose from {', '.join(FRAMEWORKS)}")
    for m in models or ():
        get_model(m)
    if impls:
        known = {n for fw in frameworks for n in IMPLS[fw]}
        for name in impls:
            if name not in known:
                raise ValueError(f"unknown impl {name!r} for {', '.join(frameworks)}; choose from {', '.join(sorted(known))}")
    for b in batch_sizes or ():
        if b <= 0:
            raise ValueError(f"batch size must be positive, got {b}")
    for n in devices or ():
        if n <= 0:
            raise ValueError(f"devices must be positive, got {n}")
    for a in allocators or ():
        if a not in ALLOCATORS:
            raise ValueError(f"unknown allocator {a!r}; choose from {', '.join(ALLOCATORS)}")
    overrides.setdefault("timing", p.timing)
    budget = overrides.pop("budget_s", None)  # None: the preset's, per model
    out: list[RunConfig] = []
    for model in models or p.models:
        for b in sorted(batch_sizes or p.batch_sizes_for(model)):  # small to large: the skip proofs need it
            for fw in frameworks:
                for impl in IMPLS[fw].values():
                    if impls and impl.name not in impls:
                        continue
                    mbs = microbatch_sizes(impl, b)
                    if impl.microbatch == "sweep" and (microbatch_sizes_override or p.sweep):
                        mbs = list(microbatch_sizes_override or p.sweep)
                    if impl.direct_of and not p.direct:
                        continue
                    if impl.direct_of and p.direct_batch_sizes and b not in p.direct_batch_sizes and not batch_sizes:
                        continue
                    if impl.direct_of and p.direct_models and model not in p.direct_models and not models:
                        continue
                    for variant in impl.variants:
                        if variant in impl.ab_variants and (model not in p.ab_models or b not in p.ab_batch_sizes):
                            continue
                        if not impls and not p.runs_row(model, impl.name, variant, b):
                            continue
                        for mb in mbs:
                            for n in sorted(devices or p.devices):
                                if n > 1 and impl.kind == "direct":
                                    continue
                                # innermost: an allocator A/B runs its pair back to back
                                for alloc in dict.fromkeys(allocators or p.allocators):
                                    out.append(RunConfig(fw, impl.name, model, b, mb, variant, **overrides, devices=n,
                                                         allocator=alloc,
                                                         budget_s=budget if budget is not None else p.budget_for(model)).validate())
    return out

