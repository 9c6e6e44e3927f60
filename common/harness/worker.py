"""One configuration, measured in its own process with its framework's interpreter.

    <venv>/bin/python -m common.harness.worker CONFIG.json RESULT.json

CONFIG's ``row`` names the kind of row (runner.ROW_KINDS): a study
configuration (RunConfig, ``run``) or a deployed row
(common/harness/deployed.py, ``run_deployed``); both end the same way.

Writes the framework-side fields of the record to RESULT.json: versions,
device, timing, memory and notes, or a status (oom / error) with the message
when building or stepping raised. The result is written atomically (a
temporary file renamed), then the process exits at once: a framework's slow
teardown can never turn a finished measurement into a timeout. While timing
it keeps RESULT.json.partial up to date (compile time, step times so far),
so a configuration stopped by its budget still says how long its steps
took. Hard deaths (OOM killer, segfault, budget) leave no result; the runner
turns those into records.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Any

from common.harness import adapter as adapter_mod
from common.harness import pairing, timing, threads
from common.harness.config import RunConfig, Timing
from common.harness.memory import PeakTracker

OOM_MARKERS = ("out of memory", "resource_exhausted", "resource exhausted", "memoryerror", "oom", "cannot allocate memory")


def classify(exc: BaseException) -> str:
    """'unsupported' where the adapter says the library cannot run the
    configuration, 'oom' for allocation failures of any framework, else 'error'."""
    text = f"{type(exc).__name__}: {exc}".lower()
    if isinstance(exc, adapter_mod.Unsupported):
        return "unsupported"
    if isinstance(exc, MemoryError) or any(m in text for m in OOM_MARKERS):
        return "oom"
    return "error"


def one_line(exc: BaseException, limit: int = 500) -> str:
    msg = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {msg}"[:limit]


# Short timing of each cumulative phase (RunConfig.phases): after the main
# timing, so it neither warms nor disturbs what the record's step time measures.
PHASE_TIMING = Timing(warmup_steps=1, repeats=3, window_s=0.3)
# A phase is started only when this many times its estimated cost is left of
# the budget: running out would lose the whole record, main timing included.
PHASE_BUDGET_FACTOR = 2.0


def phase_timing(cfg: RunConfig) -> Timing:
    """``PHASE_TIMING``, with windows no longer than the main timing's."""
    return Timing(PHASE_TIMING.warmup_steps, PHASE_TIMING.repeats, min(PHASE_TIMING.window_s, cfg.timing.window_s),
                  PHASE_TIMING.min_steps)


def breakdown(phases_s: dict[str, float], step_s: float) -> dict[str, float]:
    """Seconds of each phase from the medians of the cumulative prefixes.

    A phase is its prefix minus the longest earlier prefix, clamped at 0 (so
    noise that makes a prefix look faster than an earlier one gives 0, and
    the phases still add up to the step); the last phase,
    ``FULL_STEP_PHASE``, is the full step minus the prefixes.
    """
    out: dict[str, float] = {}
    done = 0.0
    for name, s in phases_s.items():
        out[name] = max(s - done, 0.0)
        done = max(done, s)
    out[adapter_mod.FULL_STEP_PHASE] = max(step_s - done, 0.0)
    return out


def measure_phases(bench: "adapter_mod.Bench", cfg: RunConfig, step: timing.TimingResult,
                   started: float) -> dict[str, Any]:
    """Notes for the record: ``phases_s`` (median step seconds of each
    cumulative prefix, the full step last, as measured by the main timing)
    and ``phase_breakdown_s`` (``breakdown``); ``phases_skipped`` /
    ``phases_error`` instead where the budget or a phase stopped it. A
    failing phase does not fail the record."""
    t = phase_timing(cfg)
    notes: dict[str, Any] = {"phases_timing": {"warmup_steps": t.warmup_steps, "repeats": t.repeats,
                                               "window_s": t.window_s, "min_steps": t.min_steps}}
    if not bench.phases:
        notes["phases_skipped"] = "the adapter has no phases for this impl"
        return notes
    # What one prefix costs at most: it compiles anew and steps no slower than the full step.
    s = step.step_s_median
    need = step.compile_s + (t.warmup_steps + 1) * s + t.repeats * max(t.min_steps * s, t.window_s)
    phases_s: dict[str, float] = {}
    compile_s: dict[str, float] = {}
    for name, fn in bench.phases.items():
        left = cfg.budget_s - (time.monotonic() - started)
        if need * PHASE_BUDGET_FACTOR > left:
            notes["phases_skipped"] = f"budget: {left:.1f} s left before {name!r}, about {need:.1f} s needed per phase"
            break
        try:
            r = timing.measure(fn, bench.sync, t, budget_s=left / PHASE_BUDGET_FACTOR)
        except Exception as exc:  # noqa: BLE001 - the main timing stands
            traceback.print_exc()
            notes["phases_error"] = f"{name}: {one_line(exc)}"
            break
        phases_s[name], compile_s[name] = r.step_s_median, r.compile_s
    notes["phases_compile_s"] = compile_s
    if len(phases_s) == len(bench.phases):
        notes["phase_breakdown_s"] = breakdown(phases_s, step.step_s_median)
        phases_s[adapter_mod.FULL_STEP_PHASE] = step.step_s_median
    notes["phases_s"] = phases_s
    return notes


# The noise draw alone (Bench.noise_draw), after the main timing. It is a
# part of the step, so one step bounds one draw; its first call also compiles
# a program much smaller than the step's (JAX's privatizer took 4-5 s on the
# study's CPU): NOISE_COMPILE_S bounds that. Only the first call and two timed
# draws need the guard: ``timing.measure`` fits the rest to its budget.
NOISE_TIMING = Timing(warmup_steps=1, repeats=3, window_s=0.1)
NOISE_COMPILE_S = 6.0


def measure_noise(bench: "adapter_mod.Bench", cfg: RunConfig, step: timing.TimingResult,
                  started: float) -> dict[str, Any]:
    """``noise_draw_s`` (median seconds of one draw) for the record's notes, or
    ``noise_draw_skipped`` / ``noise_draw_error``; the main timing stands either way."""
    left = cfg.budget_s - (time.monotonic() - started)
    need = NOISE_COMPILE_S + (1 + timing.MIN_TIMED_STEPS) * step.step_s_median
    if need * PHASE_BUDGET_FACTOR > left:
        return {"noise_draw_skipped": f"budget: {left:.1f} s left, up to {need:.1f} s needed"}
    try:
        r = timing.measure(bench.noise_draw, bench.sync, NOISE_TIMING, budget_s=left / PHASE_BUDGET_FACTOR)
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        return {"noise_draw_error": one_line(exc)}
    return {"noise_draw_s": r.step_s_median, "noise_draw_cv": r.step_s_cv}


PARTIAL_SUFFIX = ".partial"


def write_json_atomic(path: str, obj: Any) -> None:
    """Write ``obj`` so that a reader sees the old file or the whole new one."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def cpu_steal_s() -> float | None:
    """Seconds of CPU time stolen by the hypervisor, all CPUs, since boot
    (/proc/stat's ``steal`` column); None where the kernel does not say."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK") if fields[0] == "cpu" and len(fields) > 8 else None
    except (OSError, ValueError, IndexError):
        return None


def run(cfg: RunConfig, started: float, partial_path: str | None = None) -> dict[str, Any]:
    cpus = threads.pin(cfg.threads)  # before any framework is imported
    out: dict[str, Any] = {"threads": threads.recorded(cfg.threads, devices=cfg.devices)}
    out["threads"]["cpu_affinity"] = cpus
    progress = (lambda p: write_json_atomic(partial_path, p)) if partial_path else None
    try:
        adapter = adapter_mod.load(cfg.framework)
        adapter.setup(threads.resolve(cfg.threads), cfg.devices)
        versions = adapter.versions()
        out["framework_version"] = versions.get(cfg.framework)
        lib = cfg.impl_info.dp_library
        out["dp_library"] = lib
        out["dp_library_version"] = versions.get(lib) if lib else None
        out["device"] = adapter.device()
        tracker = PeakTracker()
        bench = adapter.build(cfg)
        # Every version the adapter names (the framework, each DP library; on a
        # GPU the CUDA build's) and what float32 means on the device (TF32 off).
        out["notes"] = {**bench.notes, "versions": versions, "accelerator": adapter.accelerator()}
        budget_left = cfg.budget_s - (time.monotonic() - started)
        steal0, t0 = cpu_steal_s(), time.monotonic()
        ref_cfg = cfg.reference()
        mem: dict[str, Any] = {}

        def read_memory() -> None:  # the subject's own peak, before a reference exists in this process
            mem["peak"] = bench.peak_memory()
            mem["rss"], mem["reset_ok"] = tracker.peak_above_baseline(), tracker.reset_ok
            mem["compile_peak"] = tracker.compile_peak

        if ref_cfg is None:
            t = timing.measure(bench.step, bench.sync, cfg.timing, budget_s=budget_left,
                               on_compiled=tracker.mark_compiled, on_progress=progress,
                               steal=cpu_steal_s, ncpu=os.cpu_count() or 1)
            read_memory()
        else:
            ref_desc = {"impl": ref_cfg.impl, "variant": ref_cfg.variant, "microbatch_size": ref_cfg.microbatch_size}
            t, out["paired"] = pairing.measure_paired(
                bench.step, bench.sync, lambda: adapter.build(ref_cfg), cfg.timing, budget_left,
                clock=time.perf_counter, steal=cpu_steal_s, ncpu=os.cpu_count() or 1,
                on_compiled=tracker.mark_compiled, before_ref=read_memory, on_progress=progress, ref_desc=ref_desc)
        steal1, t1 = cpu_steal_s(), time.monotonic()
        out.update(t.to_dict())
        for k in ("warmup_step_s", "warmup_timed", "dropped_windows"):
            out["notes"][k] = out.pop(k)
        if steal0 is not None and steal1 is not None:
            # Time the hypervisor ran other guests on this VM's CPUs while this
            # configuration was measured: a noisy row can be told from a slow one.
            out["notes"]["cpu_steal_share"] = round((steal1 - steal0) / max((t1 - t0) * (os.cpu_count() or 1), 1e-9), 4)
        out["notes"].update(bench.notes)  # a step may add notes when first traced
        out["throughput_sps"] = cfg.global_batch_size / t.step_s_median
        if mem["peak"] is not None:
            out["peak_mem_bytes"], out["mem_source"] = int(mem["peak"]), "allocator_peak"
        else:
            out["peak_mem_bytes"] = mem["rss"]
            out["mem_source"] = "rss_steady_peak_above_baseline" if mem["reset_ok"] else "rss_peak_since_start"
            out["notes"]["compile_peak_mem_bytes"] = mem["compile_peak"]
        if cfg.phases:  # after the peak memory is read: the prefixes' buffers are not the step's
            out["notes"].update(measure_phases(bench, cfg, t, started))
        if bench.noise_draw is not None:
            out["notes"].update(measure_noise(bench, cfg, t, started))
        out["status"], out["error"] = "ok", None
    except Exception as exc:  # noqa: BLE001 - every failure becomes a record
        traceback.print_exc()
        out["status"], out["error"] = classify(exc), one_line(exc)
    return out


def run_deployed(d: dict[str, Any], started: float) -> dict[str, Any]:
    """A deployed row (common/harness/deployed.py): its config, its measurement; a fault is a result."""
    from common.harness import deployed
    cfg = deployed.DeployedConfig.from_dict(d).validate()
    try:
        out = deployed.run_in_worker(cfg, time.perf_counter() - (time.monotonic() - started), cpu_steal_s)
        out["status"], out["error"] = "ok", None
    except Exception as exc:  # noqa: BLE001 - a fault is a row
        traceback.print_exc()
        out = {"status": classify(exc), "error": one_line(exc)}
    return out


def main(argv: list[str]) -> int:
    """Read the config (its ``row`` says which kind: runner.ROW_KINDS), measure, write the result."""
    started = time.monotonic()
    cfg_path, result_path = argv
    with open(cfg_path) as f:
        d = json.load(f)
    if d.pop("row", "study") == "deployed":
        result = run_deployed(d, started)
    else:
        result = run(RunConfig.from_dict(d).validate(), started, result_path + PARTIAL_SUFFIX)
    write_json_atomic(result_path, result)
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # the result is on disk: skip the frameworks' teardown
