"""Run a study: every configuration in its own process, faults become records.

    python -m common.runner --frameworks jax,torch --preset quick --out results/NAME [--resume]

Each configuration runs ``common.worker`` under its framework's interpreter
(``.venvs/<framework>``, see common/envs.py) with the thread settings of
common/threads.py, under a wall-clock budget. A timeout, an out-of-memory
kill or a crash becomes a record with its status and the run goes on; every
record is appended (and fsynced) to ``<out>/records.jsonl`` as it finishes.
All input is validated before anything is written.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from common import envs, memory, records, threads
from common.config import FRAMEWORKS, PRESETS, RunConfig, Timing, expand
from common.spec import get_model

ROOT = Path(__file__).resolve().parent.parent
RECORDS = "records.jsonl"
WorkerCmd = Callable[[RunConfig, str, str], list[str]]


def default_worker_cmd(cfg: RunConfig, cfg_path: str, result_path: str) -> list[str]:
    return [str(envs.python_for(cfg.framework)), "-m", "common.worker", cfg_path, result_path]


def git_commit() -> str | None:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def base_record(cfg: RunConfig, run_id: str, commit: str | None, env: dict[str, str]) -> dict[str, Any]:
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
        "input_shape": list(spec.input_shape), "dtype": cfg.dtype,
        "clip_norm": cfg.clip_norm if dp else None, "noise_multiplier": cfg.noise_multiplier if dp else None,
        "cpu_model": threads.cpu_model(), "threads": threads.recorded(cfg.threads, env),
        "budget_s": float(cfg.budget_s), "notes": {},
    })
    return rec


def _tail(text: str, n: int = 400) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else "")[-n:]


def _wait(proc: subprocess.Popen, budget_s: float, mem_limit: int | None) -> tuple[int | None, str | None]:
    """Wait for the worker; (exit code, None), or (None, why) when it is stopped
    for exceeding the time budget or, with ``mem_limit``, that resident memory."""
    if mem_limit is None:
        try:
            return proc.wait(timeout=budget_s), None
        except subprocess.TimeoutExpired:
            return None, "timeout"
    deadline = time.monotonic() + budget_s
    while time.monotonic() < deadline:
        try:
            return proc.wait(timeout=0.1), None
        except subprocess.TimeoutExpired:
            rss = memory.process_rss_bytes(proc.pid)
            if rss is not None and rss > mem_limit:
                return None, "oom"
    return None, "timeout"


def run_config(cfg: RunConfig, run_id: str, commit: str | None, worker_cmd: WorkerCmd = default_worker_cmd,
               mem_limit: int | None = None) -> dict[str, Any]:
    """Run one configuration in a child process; always returns a valid record.

    ``mem_limit`` (bytes): the worker is killed, as out of memory, when its
    resident memory exceeds it (an address-space rlimit would break JAX and TF,
    which reserve far more virtual memory than they use)."""
    env = threads.worker_env(cfg.threads, cfg.framework)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    rec = base_record(cfg, run_id, commit, env)
    with tempfile.TemporaryDirectory(prefix="dpbench-") as tmp:
        cfg_path, result_path, log_path = (os.path.join(tmp, n) for n in ("config.json", "result.json", "worker.log"))
        Path(cfg_path).write_text(json.dumps(cfg.to_dict()))
        start = time.monotonic()
        with open(log_path, "w") as log:
            proc = subprocess.Popen(worker_cmd(cfg, cfg_path, result_path), cwd=ROOT, env=env,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                code, stopped = _wait(proc, cfg.budget_s, mem_limit)
            finally:
                _kill_group(proc)
        rec["elapsed_s"] = time.monotonic() - start
        log_text = Path(log_path).read_text(errors="replace")
        if stopped == "timeout":
            rec["status"], rec["error"] = "timeout", f"exceeded the budget of {cfg.budget_s:g} s"
        elif stopped == "oom":
            rec["status"], rec["error"] = "oom", f"resident memory exceeded the limit of {mem_limit / 2**30:.2f} GiB"
        elif os.path.exists(result_path):
            rec.update(json.loads(Path(result_path).read_text()))
        elif code == -signal.SIGKILL:
            rec["status"], rec["error"] = "oom", "worker killed by SIGKILL (out of memory)"
        else:
            from common.worker import OOM_MARKERS
            status = "oom" if any(m in log_text.lower() for m in OOM_MARKERS) else "error"
            rec["status"], rec["error"] = status, f"worker exited with code {code}: {_tail(log_text) or 'no output'}"
        if rec["status"] != "ok":
            rec["notes"] = dict(rec.get("notes") or {}, log_tail=log_text[-2000:])
    return records.validate(rec)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def check_writable(out: Path) -> None:
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
    rec_file = out / RECORDS
    if rec_file.exists() and (not rec_file.is_file() or not os.access(rec_file, os.W_OK)):
        raise ValueError(f"cannot write to {rec_file}")


def run_study(configs: Sequence[RunConfig], out: Path, *, resume: bool = False, run_id: str | None = None,
              worker_cmd: WorkerCmd = default_worker_cmd, progress: bool = True,
              mem_limit: int | None = None) -> list[dict[str, Any]]:
    """Run ``configs`` and append their records to ``out/records.jsonl``."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / RECORDS
    done = {records.config_key(r) for r in records.read(path) if r["status"] == "ok"} if resume else set()
    todo = [c for c in configs if c.key() not in done]
    run_id = run_id or f"{out.name}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}"
    commit = git_commit()
    if resume and len(todo) < len(configs):
        print(f"[runner] --resume: {len(configs) - len(todo)} configurations already recorded ok, {len(todo)} to run", flush=True)
    bar = _progress(len(todo), progress)
    written = []
    for cfg in todo:
        label = f"{cfg.framework}/{cfg.impl}{'/' + cfg.variant if cfg.variant else ''} {cfg.model} B={cfg.batch_size}" + (
            f" mb={cfg.microbatch_size}" if cfg.microbatch_size is not None else "")
        bar.set_description(label)
        rec = run_config(cfg, run_id, commit, worker_cmd, mem_limit)
        records.append(path, rec)
        written.append(rec)
        result = (f"{rec['throughput_sps']:.1f} samples/s" if rec["status"] == "ok" else f"{rec['status']}: {rec['error']}")
        bar.write(f"{label:<55} {result}")
        bar.update(1)
    bar.close()
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
    ap = argparse.ArgumentParser(prog="python -m common.runner", description=__doc__.splitlines()[0])
    ap.add_argument("--frameworks", type=_names, default=list(FRAMEWORKS), help="comma list (default: all)")
    ap.add_argument("--preset", default="quick", help=f"one of {', '.join(PRESETS)} (default quick)")
    ap.add_argument("--out", type=Path, help="run directory (default results/<preset>-<UTC time>)")
    ap.add_argument("--resume", action="store_true", help="skip configurations already recorded ok in --out")
    ap.add_argument("--models", type=_names, help="restrict to these models")
    ap.add_argument("--impls", type=_names, help="restrict to these impls")
    ap.add_argument("--batch-sizes", type=_ints, help="override the preset's batch sizes")
    ap.add_argument("--microbatch-sizes", type=_ints, help="override the B, B/4, 1 sweep")
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
    ap.add_argument("--find-max-batch", action="store_true",
                    help="instead of timing the preset, search the largest batch per impl and model")
    ap.add_argument("--mem-limit", type=float, help="GiB of resident memory a worker may use (default: the machine's)")
    return ap.parse_args(argv)


def configs_from_args(a: argparse.Namespace) -> list[RunConfig]:
    """Validated configurations; ValueError with a one-line message otherwise."""
    if a.preset not in PRESETS:
        raise ValueError(f"unknown preset {a.preset!r}; choose from {', '.join(PRESETS)}")
    p = PRESETS[a.preset]
    timing = Timing(p.timing.warmup_steps, a.repeats if a.repeats is not None else p.timing.repeats,
                    a.window_s if a.window_s is not None else p.timing.window_s, p.timing.min_steps)
    for mb in a.microbatch_sizes or ():
        if mb <= 0:
            raise ValueError(f"microbatch size must be positive, got {mb}")
    return expand(a.frameworks, a.preset, models=a.models, impls=a.impls, batch_sizes=a.batch_sizes,
                  microbatch_sizes_override=a.microbatch_sizes, timing=timing,
                  budget_s=a.budget_s if a.budget_s is not None else p.budget_s,
                  threads=a.threads, clip_norm=a.clip_norm, noise_multiplier=a.noise_multiplier, phases=a.phases)


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(sys.argv[1:] if argv is None else argv)
    out = a.out or ROOT / "results" / f"{a.preset}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}"
    try:
        configs = configs_from_args(a)
        if not configs:
            raise ValueError("no configuration matches the selection")
        check_writable(out)
        if a.mem_limit is not None and a.mem_limit <= 0:
            raise ValueError(f"memory limit must be positive, got {a.mem_limit}")
        if a.dry_run:
            for c in configs:
                print(" ".join(f"{k}={v}" for k, v in zip(("framework", "impl", "variant", "model", "batch", "microbatch"), c.key())))
            print(f"[runner] {len(configs)} configurations valid; output {out}")
            return 0
        missing = sorted({c.framework for c in configs if not envs.python_for(c.framework).exists()})
        if missing:
            raise ValueError(f"no environment for {', '.join(missing)}: run ./run_all.sh {missing[0]} (it provisions .venvs/)")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    mem_limit = int((a.mem_limit if a.mem_limit is not None else memory.machine_memory_bytes() / 2**30) * 2**30)
    try:
        if a.verify:
            from common import verify
            print(f"[runner] parity check -> {out / verify.PARITY}", flush=True)
            verify.run(sorted({c.framework for c in configs}, key=FRAMEWORKS.index), out)
        if a.find_max_batch:
            from common import maxbatch
            print(f"[runner] largest-batch search -> {out / maxbatch.MAX_BATCH}", flush=True)
            commit, run_id = git_commit(), f"{out.name}-maxbatch"
            for r in maxbatch.run_searches(configs, out, lambda c: run_config(c, run_id, commit, mem_limit=mem_limit)):
                print(f"  {r['framework']}/{r['impl']} {r['variant']} {r['model']}: largest ok {r['largest_ok']}, "
                      f"first failure {r['first_failure']} ({r['failure_status']})", flush=True)
            return 0
        print(f"[runner] {len(configs)} configurations -> {out / RECORDS}", flush=True)
        run_study(configs, out, resume=a.resume, progress=not a.no_progress, mem_limit=mem_limit)
    except KeyboardInterrupt:
        print(f"\n[runner] interrupted; records so far are in {out / RECORDS}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
