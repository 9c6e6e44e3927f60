"""Run a study: every configuration in its own process, faults become records.

    python -m common.harness.runner --frameworks jax,torch --preset quick --out results/NAME [--resume]
    python -m common.harness.runner --preset deployed --out results/NAME    # DP-SGD as trained

Every kind of row goes through the same functions (``ROW_KINDS``): a study
configuration (config.RunConfig, records.jsonl) and a deployed row
(deployed.DeployedConfig, deployed.jsonl) differ only in their record's
fields, their file, and which rows later rounds repeat; the worker entry,
run loop, rounds, resume, fault labels and refusals are one code path.

Each configuration runs ``common.harness.worker`` under its framework's interpreter
(``.venvs/<framework>``, see common/harness/envs.py) with the thread settings of
common/harness/threads.py, under a wall-clock budget. A timeout, an out-of-memory
kill or a crash becomes a record with its status and the run goes on; every
record is appended (and fsynced) to ``<out>/records.jsonl`` as it finishes.
All input is validated before anything is written.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from common.harness import accel, deployed, envs, launcher, machine, memory, pairing, records, threads, timing
from common.harness.config import FRAMEWORKS, OWN_LIBRARY, PRESETS, RunConfig, Timing, expand, findable
from common.harness.threads import ALLOCATORS, DEFAULT_ALLOCATOR
from common.reference.spec import MODELS, get_model

ROOT = Path(__file__).resolve().parents[2]
RECORDS = "records.jsonl"
WorkerCmd = Callable[[Any, str, str], list[str]]


def default_worker_cmd(cfg: Any, cfg_path: str, result_path: str) -> list[str]:
    return launcher.python_cmd(cfg.framework, "common.harness.worker", cfg_path, result_path)


# A tree copied without its .git (a lent machine gets the files only): the
# commit the copy was made from, as whoever copied it says; records say
# "<sha>-copy" (common/harness/preinstalled.py sets it).
COMMIT_VAR = "DPBENCH_COMMIT"


def git_commit() -> str | None:
    """HEAD, with "-dirty" when tracked files differ from it (untracked files,
    e.g. a run directory being written, do not count); where git cannot say
    (no repository), ``DPBENCH_COMMIT`` + "-copy", else None."""
    try:
        sha = launcher.run_tool(["git", "rev-parse", "HEAD"], 30, capture=True)[1].strip()
        dirty = launcher.run_tool(["git", "status", "--porcelain", "--untracked-files=no"], 30,
                                  capture=True)[1].strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        copied = os.environ.get(COMMIT_VAR, "").strip()
        return f"{copied}-copy" if copied else None


def base_record(cfg: RunConfig, run_id: str, commit: str | None, env: dict[str, str],
                round_: int = 1) -> dict[str, Any]:
    """The fields the runner knows without the framework; the worker adds the rest."""
    spec = get_model(cfg.model)
    info = cfg.impl_info
    dp = cfg.mode == "dp"
    rec: dict[str, Any] = {k: None for k in records.FIELDS}
    rec.update({
        "schema_version": records.SCHEMA_VERSION, "run_id": run_id,
        "time_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": commit, "framework": cfg.framework, "dp_library": info.dp_library,
        "impl": cfg.impl, "variant": cfg.variant, "privacy_unit": cfg.privacy_unit,
        "model": cfg.model, "params": spec.param_count, "mode": cfg.mode,
        "batch_size": cfg.batch_size, "microbatch_size": cfg.microbatch_size,
        "devices": cfg.devices, "global_batch_size": cfg.global_batch_size, "allocator": cfg.allocator,
        "input_shape": list(spec.input_shape), "dtype": cfg.dtype,
        "clip_norm": cfg.clip_norm if dp else None, "noise_multiplier": cfg.noise_multiplier if dp else None,
        "cpu_model": threads.cpu_model(), "threads": threads.recorded(cfg.threads, env, cfg.devices),
        "budget_s": float(cfg.budget_s), "notes": {},
        "row_kind": info.kind,
        "direct_of": (dict(zip(("impl", "variant", "microbatch_size"), info.direct_of)) if info.direct_of else None),
        "timing": dataclasses.asdict(cfg.timing),
        "env_lock": envs.lock_label(envs.env_for(cfg.framework)),
        "round": round_, "machine": dict(machine.this_machine()),
    })
    # What the worker will have in force: the first N CPUs the runner may use.
    rec["threads"]["cpu_affinity"] = threads.allowed_cpus()[:threads.resolve(cfg.threads)]
    return rec


def _partial_text(partial: dict[str, Any] | None) -> str:
    """'compile step 12.3 s, 2 steps 4.1-4.3 s' from a worker's partial progress."""
    if not partial or partial.get("compile_s") is None:
        return "the first (compiling) step did not finish"
    steps = partial.get("step_s") or []
    text = f"first (compiling) step {partial['compile_s']:.1f} s"
    if steps:
        text += f", {len(steps)} more step{'s' * (len(steps) != 1)} of {min(steps):.2f}-{max(steps):.2f} s"
    if partial.get("running_step_s_min"):
        text += f"; the step running when the budget ran out had taken {partial['running_step_s_min']:.1f} s"
    return text


# Seconds between the worker writing its partial file and starting its next
# step (the on-compiled callback's memory baseline, the write itself): taken
# off the running step's bound so that it stays a lower bound.
RUNNING_STEP_SLACK_S = 1.0


def running_step_bound(partial_mtime: float, killed_after: float) -> float:
    """A lower bound on the step a timed-out worker was running: the worker
    starts its next step right after writing its partial file, and was killed
    no earlier than ``killed_after`` (wall-clock: launch start + budget), so
    that step had run at least this long and had not finished."""
    return max(0.0, killed_after - partial_mtime - RUNNING_STEP_SLACK_S)


_UNREADABLE = object()


def _read_json(path: str, default: Any = None) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


def run_config(cfg: Any, run_id: str, commit: str | None, worker_cmd: WorkerCmd = default_worker_cmd,
               mem_limit: int | None = None, round_: int = 1) -> dict[str, Any]:
    """Run one configuration in a child process; always returns a valid record.

    A result file the worker wrote wins over everything that happened after
    (a slow teardown past the budget, a kill). ``mem_limit`` (bytes): the
    worker is killed, as out of memory, when its resident memory exceeds it
    (an address-space rlimit would break JAX and TF, which reserve far more
    virtual memory than they use). A SIGKILL is ``oom`` only when the kernel
    counted an OOM kill in this cgroup meanwhile, else ``killed``."""
    from common.harness.worker import OOM_MARKERS, PARTIAL_SUFFIX  # here: the runner's CLI must start without numpy
    kind = kind_of(cfg)
    env = kind.env(cfg)
    rec = kind.base_record(cfg, run_id, commit, env, round_)
    with tempfile.TemporaryDirectory(prefix="dpbench-") as tmp:
        cfg_path, result_path, log_path = (os.path.join(tmp, n) for n in ("config.json", "result.json", "worker.log"))
        Path(cfg_path).write_text(json.dumps({"row": cfg.ROW, **cfg.to_dict()}))
        launched_at = time.time()  # before the launch: launched_at + budget is no later than the kill
        o = launcher.launch(worker_cmd(cfg, cfg_path, result_path), env, cfg.budget_s, log_path, mem_limit,
                            stop_early=lambda: os.path.exists(result_path))
        rec["elapsed_s"] = o.elapsed_s
        has_result = os.path.exists(result_path)
        result = _read_json(result_path, _UNREADABLE) if has_result else None
        partial = _read_json(result_path + PARTIAL_SUFFIX)
        if has_result:
            try:
                if not isinstance(result, dict):
                    raise records.RecordError("not a JSON object" if result is not _UNREADABLE else "unreadable JSON")
                return kind.finish({**rec, **result, "round": round_})
            except records.RecordError as exc:
                rec["status"], rec["error"] = "error", f"worker wrote an invalid result: {exc}"[:500]
        elif o.stopped == "timeout":
            rec["status"] = "timeout"
            if partial and partial.get("compile_s") is not None:
                mtime = os.stat(result_path + PARTIAL_SUFFIX).st_mtime
                partial["running_step_s_min"] = round(running_step_bound(mtime, launched_at + cfg.budget_s), 3)
            rec["error"] = f"exceeded the budget of {cfg.budget_s:g} s: {_partial_text(partial)}"
        elif o.stopped == "oom":
            rec["status"], rec["error"] = "oom", f"resident memory exceeded the limit of {mem_limit / 2**30:.2f} GiB"
        elif o.code == -signal.SIGKILL:
            if o.oom_kills:
                rec["status"], rec["error"] = "oom", "worker killed by the kernel's OOM killer (cgroup oom_kill count rose)"
            else:
                rec["status"], rec["error"] = "killed", "worker killed by SIGKILL from outside (not an OOM kill)"
        else:
            status = "oom" if any(m in o.log.lower() for m in OOM_MARKERS) else "error"
            rec["status"], rec["error"] = status, f"worker exited with code {o.code}: {o.tail() or 'no output'}"
        rec["notes"] = dict(rec.get("notes") or {}, log_tail=o.log[-2000:])
        if partial:
            rec["notes"]["partial"] = partial
    return kind.finish(rec)


def check_writable(out: Path, file: str = RECORDS) -> None:
    """Raise ValueError unless ``out`` is, or can be created as, a writable directory.

    Probes with a temporary file in the nearest existing directory (removed at
    once), since permission bits lie for root and on special file systems.
    """
    p = out
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        raise ValueError(f"cannot write to {out}: {p} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=p):
            pass
    except OSError as exc:
        raise ValueError(f"cannot write to {out}: {exc.strerror or exc}") from None
    rec_file = out / file
    if rec_file.exists() and (not rec_file.is_file() or not os.access(rec_file, os.W_OK)):
        raise ValueError(f"cannot write to {rec_file}")


def _mb_rule(cfg: RunConfig) -> str:
    """The microbatch size relative to B ("none", "B", "B/4", "1", ...), so
    that one impl's configurations line up across batch sizes."""
    mb = cfg.microbatch_size
    if mb is None:
        return "none"
    if mb == cfg.batch_size:
        return "B"
    return "1" if mb == 1 else f"B/{cfg.batch_size // mb}"


def _env(cfg: RunConfig) -> dict[str, str]:
    """The environment ``cfg``'s worker runs with (threads, XLA flags, malloc settings)."""
    return launcher.framework_env(cfg.framework, cfg.threads, cfg.variant, cfg.devices, cfg.allocator)


def series_key(cfg: RunConfig) -> tuple:
    """Configurations that differ only in batch size (the skip proof's series)."""
    return (cfg.framework, cfg.impl, cfg.variant, cfg.model, _mb_rule(cfg), cfg.threads, cfg.budget_s,
            cfg.timing, cfg.clip_norm, cfg.noise_multiplier, cfg.phases, cfg.devices, cfg.allocator)


def skip_proof(cfg: RunConfig, smaller: dict[str, Any]) -> str | None:
    """Why ``cfg`` cannot fit its budget, proved by the record of the same
    series at a smaller batch (a step takes at least as long, and needs at
    least as much memory, at a larger batch), or None. Fitting needs the
    first step plus ``timing.MIN_TIMED_STEPS`` timed steps."""
    b = smaller["batch_size"]
    need_steps = 1 + timing.MIN_TIMED_STEPS
    status = smaller["status"]
    if status == "oom":
        return f"B={b} of this impl ran out of memory ({smaller['error'][:120]}); a larger batch needs at least as much"
    if status == "skipped":  # the same proof holds for every larger batch
        return smaller["error"].removeprefix("not run: ") + f" (nor B={cfg.batch_size})"
    if status == "ok":
        step = smaller["step_s_median"]
    elif status == "timeout":
        partial = (smaller.get("notes") or {}).get("partial") or {}
        steps = partial.get("step_s") or []
        if partial.get("compile_s") is None:
            return (f"B={b} of this impl did not finish its first step within the {smaller['budget_s']:g} s budget, "
                    f"so B={cfg.batch_size} cannot either")
        # Measured steps and the lower bound on the one still running when the
        # budget ran out (run_config); the smallest of them is a lower bound on a step.
        bounds = list(steps) + ([partial["running_step_s_min"]] if partial.get("running_step_s_min") else [])
        step = min(bounds) if bounds else None
    else:
        return None
    if step is not None and need_steps * step > cfg.budget_s:
        took = "measured" if status == "ok" else "took at least"
        return (f"B={b} of this impl {took} {step:.2f} s per step; {need_steps} steps at B={cfg.batch_size} "
                f"need at least {need_steps * step:.1f} s > the {cfg.budget_s:g} s budget")
    return None


def skipped_record(cfg: RunConfig, run_id: str, commit: str | None, proof: str) -> dict[str, Any]:
    rec = base_record(cfg, run_id, commit, _env(cfg), 1)  # skip proofs are made in round 1 only
    rec.update(status="skipped", error=f"not run: {proof}", elapsed_s=0.0)
    return records.validate(rec)


def check_resumable(configs: Sequence[Any], existing: list[dict[str, Any]], commit: str | None) -> None:
    """Raise ValueError when ``existing`` records were measured with other
    settings (threads, budget, timing, clip, noise, flags, code, lock) than
    ``configs`` would be: one run directory holds one set of settings."""
    kind = kind_of(configs[0])
    want = {kind.settings_key(kind.base_record(c, "-", commit, kind.env(c))) for c in configs}
    other = [r for r in existing if kind.settings_key(r) not in want]
    if other:
        diff = json.loads(kind.settings_key(other[0]))
        mine = json.loads(next(iter(want)))
        keys = [k for k in mine if mine.get(k) != diff.get(k)]
        size = f"B={other[0]['batch_size']}" if "batch_size" in other[0] else f"L={other[0].get('logical_batch')}"
        raise ValueError(f"--resume: {len(other)} record(s) in this directory were made with other settings "
                         f"({', '.join(keys) or 'see records'} differ, e.g. {other[0]['impl']} {other[0]['model']} "
                         f"{size}); use a new --out")


def _result_text(rec: dict[str, Any]) -> str:
    return f"{rec['throughput_sps']:.1f} samples/s" if rec["status"] == "ok" else f"{rec['status']}: {rec['error']}"


def _fmt_s(sec: float) -> str:
    return f"{sec / 60:.0f} min" if sec >= 90 else f"{sec:.0f} s"


# Rounds after the first repeat every row a finding can name, so that no
# finding rests on one process (fresh processes on these VMs differ by up to
# 1.8x, while one process's pairs agree within a few %): standard, direct-use
# and fastclip rows, and each library mode that round 1 puts within
# LEADER_SPAN of its library's best mode in the cell (config.findable; a mode
# further behind cannot become the fastest by process variance). The
# microbatch sweep, the A/B variants, TF-Privacy's microbatch-mean rows and
# unpaired or failed rows keep one round; the report marks them "(one
# process)" and no finding names them (common.report.findings.pick).
LEADER_SPAN = 2.0


def later_round_keys(first: Iterable[dict[str, Any]]) -> set[tuple]:
    """The configurations (records.config_key) that rounds 2+ repeat, from round 1's records."""
    ok = [r for r in first if r["status"] == "ok"]

    def cell(r: dict[str, Any]) -> tuple:
        return (r["framework"], r.get("dp_library"), r["model"], r["batch_size"], r.get("devices", 1),
                r.get("allocator", DEFAULT_ALLOCATOR))

    def named(r: dict[str, Any]) -> bool:
        return r.get("row_kind", "study") == "study" and findable(r["framework"], r["impl"], r["variant"],
                                                                 r["microbatch_size"])

    ratios = [pairing.median_ratio(r.get("paired")) for r in ok]
    best: dict[tuple, float] = {}
    for r, ratio in zip(ok, ratios):
        if r["mode"] == "dp" and named(r) and ratio is not None:
            best[cell(r)] = max(best.get(cell(r), 0.0), ratio)
    keys = set()
    for r, ratio in zip(ok, ratios):
        if r["mode"] == "standard" or r.get("row_kind") == "direct":
            keys.add(records.config_key(r))
        elif named(r) and ratio is not None and (r.get("dp_library") == OWN_LIBRARY
                                                 or ratio * LEADER_SPAN >= best[cell(r)]):
            keys.add(records.config_key(r))
    return keys


def round_order(configs: Sequence[Any], round_: int) -> list[Any]:
    """Round 1 small to large batch within each impl (the skip proofs need it);
    later rounds alternate reversed and forward order, so that a drift over the
    run does not always reach the same rows first (ABBA at the round level)."""
    order = sorted(configs, key=lambda c: c.order_key())
    return order[::-1] if round_ % 2 == 0 else order


def run_study(configs: Sequence[Any], out: Path, *, resume: bool = False, run_id: str | None = None,
              worker_cmd: WorkerCmd = default_worker_cmd, progress: bool = True,
              mem_limit: int | None = None, commit: str | None = None,
              retry_stolen: int = 1, rounds: int = 1) -> list[dict[str, Any]]:
    """Run ``configs`` in ``rounds`` rounds of fresh processes and append their
    records (each with its ``round``) to ``out/records.jsonl``. Round 1 runs
    every configuration; rounds 2+ those that ``later_round_keys`` names
    (``round_order``). With ``resume``, a (configuration, round) that already
    has a record is not run again (an interrupted one has none); the
    directory must hold records of the same settings. ``retry_stolen`` N:
    after each round, up to N more times, run again each configuration whose
    record is ok but was timed while the hypervisor took more than
    ``records.STOLEN_SHARE`` of the CPUs; every record stays, the analysis
    uses a round's last ok one."""
    out.mkdir(parents=True, exist_ok=True)
    kind = kind_of(configs[0])
    path = out / kind.records_file
    commit = git_commit() if commit is None else commit
    existing = kind.read(out) if resume else []
    if resume:
        check_resumable(configs, existing, commit)
    run_id = run_id or f"{out.name}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}"
    machine.write(out / machine.FILE, "resume" if resume and (out / machine.FILE).exists() else "start")
    written: list[dict[str, Any]] = []
    for round_ in range(1, rounds + 1):
        have = {kind.rec_key(r) for r in existing + written if (r.get("round") or 1) == round_}
        if round_ == 1:
            todo = [c for c in round_order(configs, 1) if c.key() not in have]
        else:
            again = kind.later_rounds(records.latest((r for r in existing + written if (r.get("round") or 1) == 1),
                                                     key=kind.rec_key))
            todo = [c for c in round_order(configs, round_) if c.key() not in have and c.key() in again]
        if resume and round_ == 1 and len(todo) < len(configs):
            print(f"[runner] --resume: {len(configs) - len(todo)} configurations already recorded, {len(todo)} to run",
                  flush=True)
        if rounds > 1 and todo:
            print(f"[runner] round {round_}/{rounds}: {len(todo)} configurations", flush=True)
        new = _run_round(todo, round_, configs, existing + written, path, run_id, commit, worker_cmd, progress,
                         mem_limit)
        written += new
        written += _retry_stolen(todo, round_, new, path, run_id, commit, worker_cmd, mem_limit, retry_stolen)
    machine.write(out / machine.FILE, "end")
    return written


@dataclass(frozen=True)
class RowKind:
    """What differs between kinds of row; everything else is one code path."""

    name: str
    records_file: str
    base_record: Callable[..., dict[str, Any]]  # (cfg, run_id, commit, env, round) -> the runner's fields
    finish: Callable[[dict[str, Any]], dict[str, Any]]  # the record as appended (validated)
    read: Callable[[Path], list[dict[str, Any]]]  # a run directory's records of this kind
    rec_key: Callable[[dict[str, Any]], tuple]  # a record's configuration key (== cfg.key())
    env: Callable[[Any], dict[str, str]]  # the worker's environment
    later_rounds: Callable[[Sequence[dict[str, Any]]], set[tuple]]  # from round 1's records
    label: Callable[[Any], str]
    result_text: Callable[[dict[str, Any]], str]
    append: Callable[[Path, dict[str, Any]], None]
    settings_key: Callable[[dict[str, Any]], str]  # JSON of what one run directory's records share (--resume)
    skip_proofs: bool = False  # a smaller batch's record may prove a larger one cannot fit (study rows)


def _append_json(path: Path, rec: dict[str, Any]) -> None:
    """One record as one fsynced line (a deployed record has its own schema: records.validate is the study's)."""
    records.append_line(path, json.dumps(rec, sort_keys=True, default=str) + "\n")


def _label(cfg: RunConfig) -> str:
    return f"{cfg.framework}/{cfg.impl}{'/' + cfg.variant if cfg.variant else ''} {cfg.model} B={cfg.batch_size}" + (
        f" mb={cfg.microbatch_size}" if cfg.microbatch_size is not None else "") + (
        f" x{cfg.devices} devices" if cfg.devices > 1 else "") + (
        f" malloc={cfg.allocator}" if cfg.allocator != DEFAULT_ALLOCATOR else "")


def _result_with_ratio(rec: dict[str, Any]) -> str:
    text = _result_text(rec)
    ratio = pairing.median_ratio(rec.get("paired"))
    return text + (f", {100 * ratio:.1f} % of {rec['paired']['ref']['impl']} (paired)" if ratio is not None else "")


STUDY = RowKind("study", RECORDS, base_record, records.validate, lambda out: records.read(Path(out) / RECORDS),
                records.config_key, _env, later_round_keys, _label, _result_with_ratio, records.append,
                records.settings_key, skip_proofs=True)
DEPLOYED = RowKind("deployed", deployed.FILE, deployed.base_record, deployed.finish, deployed.read, deployed.key,
                   deployed.env, deployed.later_round_keys, lambda c: c.label(), deployed.result_text, _append_json,
                   deployed.settings_key)
ROW_KINDS = {k.name: k for k in (STUDY, DEPLOYED)}


def kind_of(cfg: Any) -> RowKind:
    """The row kind of a configuration (its class's ``ROW``)."""
    return ROW_KINDS[cfg.ROW]


def _run_round(todo: list[Any], round_: int, configs: Sequence[Any], before: list[dict[str, Any]],
               path: Path, run_id: str, commit: str | None, worker_cmd: WorkerCmd, progress: bool,
               mem_limit: int | None) -> list[dict[str, Any]]:
    """One round: each configuration in ``todo`` once, in order. In round 1 a
    study configuration that a smaller batch of its series proves cannot fit
    is recorded as skipped (``skip_proof``)."""
    kind = kind_of(configs[0])
    last: dict[tuple, dict[str, Any]] = {}  # series -> its record at the largest batch so far (round 1)
    proofs = round_ == 1 and kind.skip_proofs
    if proofs:
        by_key = {kind.rec_key(r): r for r in before if (r.get("round") or 1) == 1}
        for c in configs:
            if c.key() in by_key:
                k = series_key(c)
                if k not in last or last[k]["batch_size"] < c.batch_size:
                    last[k] = by_key[c.key()]
    bar = _progress(len(todo), progress)
    written = []
    started = time.monotonic()
    for i, cfg in enumerate(todo, 1):
        label = kind.label(cfg)
        bar.set_description(label)
        prev = last.get(series_key(cfg)) if proofs else None
        proof = skip_proof(cfg, prev) if prev is not None and prev["batch_size"] < cfg.batch_size else None
        rec = (skipped_record(cfg, run_id, commit, proof) if proof
               else run_config(cfg, run_id, commit, worker_cmd, mem_limit, round_))
        kind.append(path, rec)
        written.append(rec)
        if proofs:
            last[series_key(cfg)] = rec
        spent = time.monotonic() - started
        eta = spent / i * (len(todo) - i)
        bar.write(f"[r{round_} {i}/{len(todo)}, {_fmt_s(spent)} spent, ~{_fmt_s(eta)} left] {label:<50} "
                  f"{kind.result_text(rec)[:160]}")
        bar.update(1)
    bar.close()
    return written


def _retry_stolen(todo: list[Any], round_: int, new: list[dict[str, Any]], path: Path, run_id: str,
                  commit: str | None, worker_cmd: WorkerCmd, mem_limit: int | None,
                  retry_stolen: int) -> list[dict[str, Any]]:
    written: list[dict[str, Any]] = []
    if not todo:
        return written
    kind = kind_of(todo[0])
    for attempt in range(1, retry_stolen + 1):
        last_of = {kind.rec_key(r): r for r in records.latest(new + written, key=kind.rec_key)}
        again = [c for c in todo if records.stolen(last_of.get(c.key(), {}))]
        if not again:
            break
        print(f"[runner] round {round_}, retry {attempt}/{retry_stolen}: {len(again)} configurations timed with > "
              f"{records.STOLEN_SHARE:.0%} of the CPUs stolen", flush=True)
        for cfg in again:
            rec = run_config(cfg, run_id, commit, worker_cmd, mem_limit, round_)
            kind.append(path, rec)
            written.append(rec)
            share = (rec.get("notes") or {}).get("cpu_steal_share")
            print(f"[runner] retry {kind.label(cfg)}: {kind.result_text(rec)[:160]}"
                  + (f", steal {share:.0%}" if share is not None else ""), flush=True)
    return written


def _progress(total: int, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, disable=not enabled, unit="config", file=sys.stderr, dynamic_ncols=True)


def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m common.harness.runner", description=__doc__.splitlines()[0])
    ap.add_argument("--frameworks", type=_names, default=list(FRAMEWORKS), help="comma list (default: all)")
    ap.add_argument("--preset", default="quick", help=f"one of {', '.join(PRESETS)} (default quick)")
    ap.add_argument("--out", type=Path, help="run directory (default results/<preset>-<UTC time>)")
    ap.add_argument("--resume", action="store_true",
                    help="continue the run in --out: skip configurations it already recorded (same settings only)")
    ap.add_argument("--allow-dirty", action="store_true",
                    help="run from a tree with uncommitted changes (records then say '<commit>-dirty')")
    ap.add_argument("--models", type=_names, help="restrict to these models")
    ap.add_argument("--impls", type=_names, help="restrict to these impls")
    ap.add_argument("--batch-sizes", type=_ints, help="override the preset's batch sizes")
    ap.add_argument("--microbatch-sizes", type=_ints, help="override the B, B/4, 1 sweep")
    ap.add_argument("--devices", type=_ints,
                    help="data-parallel device counts, e.g. 1,2 (batch sizes are per device; default: the preset's)")
    ap.add_argument("--allocators", type=_names,
                    help=f"glibc malloc settings, each configuration once per entry, e.g. "
                         f"{','.join(ALLOCATORS)} (an A/B; default: {DEFAULT_ALLOCATOR})")
    ap.add_argument("--budget-s", type=float, help="per-configuration wall-clock budget")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads for every framework (0: all cores)")
    ap.add_argument("--repeats", type=int, help="timed windows per configuration")
    ap.add_argument("--window-s", type=float, help="target seconds per timed window")
    ap.add_argument("--clip-norm", type=float, default=1.0)
    ap.add_argument("--noise-multiplier", type=float, default=1.0)
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="validate and list the configurations; write nothing")
    ap.add_argument("--phases", action="store_true",
                    help="also time each step's cumulative phases (forward, backward, clip, noise, update)")
    ap.add_argument("--verify", action="store_true",
                    help="also write the parity table (every impl vs the float64 reference, noise 0)")
    ap.add_argument("--verify-models", type=lambda s: [m for m in s.split(",") if m],
                    help="models of the parity table (default: the small model where the run has it, "
                         "else the run's models; medium adds ~6 min on a 2-core CPU)")
    ap.add_argument("--find-max-batch", action="store_true",
                    help="instead of timing the preset, search the largest batch per impl and model")
    ap.add_argument("--retry-stolen", type=int, default=1, metavar="N",
                    help="after each round, re-run up to N times each ok configuration timed while the hypervisor "
                         "took more than 5%% of the CPUs (default 1; every record is kept, the last ok one is used)")
    ap.add_argument("--rounds", type=int, metavar="N",
                    help="rounds of fresh processes (default: the preset's); rounds 2+ repeat every row a finding "
                         "can name (runner.later_round_keys)")
    ap.add_argument("--mem-limit", type=float, help="GiB of resident memory a worker may use (default: the machine's)")
    return ap.parse_args(argv)


def parity_models(configs: Sequence[RunConfig], asked: Sequence[str] | None = None) -> list[str]:
    """The parity table's models: ``asked``, else the small model where the run
    has it (what the full preset's hour holds), else the run's models."""
    if asked:
        for m in asked:
            get_model(m)
        return list(asked)
    run = sorted({c.model for c in configs}, key=list(MODELS).index)
    return ["small"] if "small" in run else run


def parity_rows(configs: Sequence[RunConfig]) -> dict[tuple[str, str], set[str]]:
    """Per (framework, model), the "impl:variant" rows the run measures there: the parity
    stage checks those (a sweep's models run a few rows, not every one)."""
    out: dict[tuple[str, str], set[str]] = {}
    for c in configs:
        out.setdefault((c.framework, c.model), set()).add(f"{c.impl}:{c.variant}")
    return out


# The runner's options a deployed run takes (its rows are deployed.STRATEGIES at deployed.RATES).
DEPLOYED_OPTIONS = {"frameworks", "preset", "out", "resume", "allow_dirty", "budget_s", "threads", "no_progress",
                    "dry_run", "retry_stolen", "rounds", "mem_limit"}


def configs_from_args(a: argparse.Namespace) -> list[Any]:
    """Validated configurations; ValueError with a one-line message otherwise."""
    if a.preset == deployed.PRESET:
        defaults = parse_args([])
        given = sorted(k for k, v in vars(a).items() if k not in DEPLOYED_OPTIONS and v != getattr(defaults, k))
        if given:
            raise ValueError(f"--preset deployed takes no --{given[0].replace('_', '-')} (its rows are fixed: "
                             "common/harness/deployed.py)")
        if a.budget_s is not None and a.budget_s <= 0:
            raise ValueError(f"budget must be positive, got {a.budget_s}")
        return deployed.configs(a.frameworks, budget_s=a.budget_s or deployed.BUDGET_S, threads=a.threads)
    if a.preset not in PRESETS:
        raise ValueError(f"unknown preset {a.preset!r}; choose from {', '.join([*PRESETS, deployed.PRESET])}")
    p = PRESETS[a.preset]
    timing = Timing(p.timing.warmup_steps, a.repeats if a.repeats is not None else p.timing.repeats,
                    a.window_s if a.window_s is not None else p.timing.window_s, p.timing.min_steps)
    for mb in a.microbatch_sizes or ():
        if mb <= 0:
            raise ValueError(f"microbatch size must be positive, got {mb}")
    return expand(a.frameworks, a.preset, models=a.models, impls=a.impls, batch_sizes=a.batch_sizes,
                  microbatch_sizes_override=a.microbatch_sizes, devices=a.devices, allocators=a.allocators,
                  timing=timing,
                  budget_s=a.budget_s,
                  threads=a.threads, clip_norm=a.clip_norm, noise_multiplier=a.noise_multiplier, phases=a.phases)


def check_accelerator(preset: str) -> str:
    """The accelerator in force (accel.selected), refused in one line
    (ValueError) where it cannot be what the run needs: cuda on a machine
    without a GPU, or a preset that measures GPUs (``Preset.needs_gpu``) on the CPU."""
    name = accel.check_selected()
    if name == "cpu" and preset in PRESETS and PRESETS[preset].needs_gpu:
        gpus, why = accel.find_gpus()
        if gpus:
            raise ValueError(f"--preset {preset} measures the GPU ({gpus[0].name}), but the accelerator in force is "
                             f"the CPU ({accel.VAR}=cpu): run it with --accelerator cuda (or auto)")
        raise ValueError(f"--preset {preset} needs an NVIDIA GPU with its driver; none found ({why}); "
                         f"on a CPU, run --preset full or quick")
    return name


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(sys.argv[1:] if argv is None else argv)
    out = a.out or ROOT / "results" / f"{a.preset}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}"
    try:
        file = deployed.FILE if a.preset == deployed.PRESET else RECORDS
        if a.resume and a.out is None:
            raise ValueError("--resume needs --out DIR: the run directory to continue")
        if a.resume and not (out / file).is_file():
            raise ValueError(f"--resume: {out / file} does not exist")
        if not a.resume and (out / file).exists():
            raise ValueError(f"{out / file} exists: pass --resume to continue it, or choose another --out")
        configs = configs_from_args(a)
        if not configs:
            raise ValueError("no configuration matches the selection")
        check_accelerator(a.preset)
        kind = kind_of(configs[0])
        check_writable(out, file)
        if a.mem_limit is not None and a.mem_limit <= 0:
            raise ValueError(f"memory limit must be positive, got {a.mem_limit}")
        if a.retry_stolen < 0:
            raise ValueError(f"--retry-stolen must be >= 0, got {a.retry_stolen}")
        if a.rounds is not None and a.rounds < 1:
            raise ValueError(f"--rounds must be >= 1, got {a.rounds}")
        usable = len(threads.allowed_cpus())
        if a.threads > usable:
            raise ValueError(f"--threads {a.threads} is more than the {usable} CPUs this process may use")
        if a.dry_run:
            for c in configs:
                print(kind.label(c) if kind is not STUDY else " ".join(
                    f"{k}={v}" for k, v in zip(("framework", "impl", "variant", "model", "batch", "microbatch",
                                                "devices", "allocator"), c.key())))
            print(f"[runner] {len(configs)} configurations valid; output {out}")
            return 0
        commit = git_commit()
        if (commit is None or commit.endswith("-dirty")) and not a.allow_dirty:
            raise ValueError("the tree has uncommitted changes (or no git commit): results must come from a "
                             "committed tree; commit first, or pass --allow-dirty (records then say -dirty)")
        missing = sorted({envs.env_for(c.framework) for c in configs
                          if not envs.python_for(envs.env_for(c.framework)).exists()})
        if missing:
            raise ValueError(f"no environment {', '.join(missing)}: run ./run_all.sh {missing[0].split('-')[0]} "
                             f"(it provisions .venvs/)")
        if a.resume:
            check_resumable(configs, kind.read(out), commit)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    mem_limit = int((a.mem_limit if a.mem_limit is not None else memory.machine_memory_bytes() / 2**30) * 2**30)
    try:
        if a.verify and not (a.resume and (out / "parity.jsonl").exists()):
            from common.harness import verify
            print(f"[runner] parity check -> {out / verify.PARITY}", flush=True)
            verify.run(sorted({c.framework for c in configs}, key=FRAMEWORKS.index), out,
                       models=parity_models(configs, a.verify_models), devices=max(c.devices for c in configs),
                       only=None if a.verify_models else parity_rows(configs))
        if a.find_max_batch:
            from common.harness import maxbatch
            print(f"[runner] largest-batch search -> {out / maxbatch.MAX_BATCH}", flush=True)
            run_id = f"{out.name}-maxbatch"
            for r in maxbatch.run_searches(configs, out, lambda c: run_config(c, run_id, commit, mem_limit=mem_limit)):
                print(f"  {r['framework']}/{r['impl']} {r['variant']} {r['model']}: largest ok {r['largest_ok']}, "
                      f"first failure {r['first_failure']} ({r['failure_status']})", flush=True)
            return 0
        print(f"[runner] {len(configs)} configurations -> {out / file}", flush=True)
        rounds = a.rounds or (deployed.ROUNDS if kind is DEPLOYED else PRESETS[a.preset].rounds)
        run_study(configs, out, resume=a.resume, progress=not a.no_progress, mem_limit=mem_limit, commit=commit,
                  retry_stolen=a.retry_stolen, rounds=rounds)
    except KeyboardInterrupt:
        print(f"\n[runner] interrupted; records so far are in {out / file}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
