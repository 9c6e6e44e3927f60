"""Result records (docs/design.md §5): schema, validation, append-only JSONL.

One JSON object per configuration. Field names are fixed so other tools can
read them. The runner is the only writer: each record is serialised, checked
and written as one line with one ``write`` + flush + fsync, so an interrupted
run leaves every earlier record intact. Readers skip a torn last line.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

from common.harness.timing import STOLEN_SHARE

SCHEMA_VERSION = 5
# Schema 1 records (earlier committed runs) lack the fields added in 2; they
# are read with those fields set to None. Schema 1-2 records were all
# single-device: read with devices 1 and global_batch_size = batch_size.
# Schema 1-3 workers ran with glibc's malloc defaults (no MALLOC_* settings
# were set by the harness): read with allocator "glibc".
# Schema 1-4 records were single measurements, unpaired: read with round 1,
# paired None, machine None.
READABLE_VERSIONS = (1, 2, 3, 4, 5)
ADDED_IN_2 = ("row_kind", "direct_of", "timing", "env_lock")
# skipped: not run, because a smaller batch of the same impl proved it cannot
# fit the budget (the error text gives the proof); killed: SIGKILL from
# outside that the kernel did not report as an out-of-memory kill.
# unsupported: the library cannot run this configuration (e.g. a DP mode without
# data-parallel support); the error text says why (common.harness.adapter.Unsupported).
STATUSES = ("ok", "timeout", "oom", "error", "skipped", "killed", "unsupported")

_num = (int, float)
_opt_num = (int, float, type(None))
_opt_str = (str, type(None))
_opt_int = (int, type(None))

# field -> allowed types; "ok" records must also have every MEASURED field set.
FIELDS: dict[str, tuple[type, ...]] = {
    "schema_version": (int,),
    "run_id": (str,),
    "time_utc": (str,),
    "git_commit": _opt_str,  # HEAD, "-dirty" when run with --allow-dirty from a changed tree
    "framework": (str,),
    "framework_version": _opt_str,
    "dp_library": _opt_str,
    "dp_library_version": _opt_str,
    "impl": (str,),
    "variant": (str,),
    "privacy_unit": _opt_str,
    "model": (str,),
    "params": (int,),
    "mode": (str,),
    "batch_size": (int,),          # per device
    "devices": (int,),             # data-parallel devices (RunConfig.devices)
    "global_batch_size": (int,),   # batch_size x devices: what throughput_sps counts
    "allocator": (str,),           # glibc malloc settings (RunConfig.allocator; the env is in threads.env)
    "microbatch_size": _opt_int,
    "input_shape": (list,),
    "dtype": (str,),
    "clip_norm": _opt_num,
    "noise_multiplier": _opt_num,
    "compile_s": _opt_num,
    "step_s_median": _opt_num,
    "step_s_min": _opt_num,
    "step_s_max": _opt_num,
    "step_s_p10": _opt_num,
    "step_s_p90": _opt_num,
    "step_s_cv": _opt_num,
    "steps_per_window": _opt_int,
    "window_s": (list, type(None)),
    "throughput_sps": _opt_num,
    "peak_mem_bytes": _opt_int,
    "mem_source": _opt_str,
    "device": _opt_str,
    "cpu_model": (str,),
    "threads": (dict,),
    "status": (str,),
    "error": _opt_str,
    "elapsed_s": _opt_num,
    "budget_s": _num,
    "notes": (dict,),
    "row_kind": (str,),            # "study" or "direct" (a direct use of the library, common.harness.config.Impl)
    "direct_of": (dict, type(None)),  # direct rows: {"impl", "variant", "microbatch_size"} of the study row checked
    "timing": (dict, type(None)),  # the protocol asked for (config.Timing); None in schema-1 records
    "env_lock": _opt_str,          # hash of the framework environment's lock file (common/harness/envs.py)
    "round": _opt_int,             # 1-based round of fresh processes (runner --rounds); None before schema 5
    # DP and direct rows: the windows timed in pairs with the reference row in the same process
    # (common/harness/pairing.py): ref, per-pair step times and ratios, dropped pairs, error.
    "paired": (dict, type(None)),
    "machine": (dict, type(None)),  # common.harness.machine.identity(): CPU model, vector extensions, cores, hypervisor
}
MEASURED = ("compile_s", "step_s_median", "throughput_sps", "window_s", "device", "framework_version")


class RecordError(ValueError):
    pass


def validate(rec: dict[str, Any]) -> dict[str, Any]:
    """Return ``rec`` if it follows the schema, else raise RecordError."""
    if not isinstance(rec, dict):
        raise RecordError(f"record is a JSON {type(rec).__name__}, not an object")
    if rec.get("schema_version") == 1:
        rec = {**{k: None for k in ADDED_IN_2}, **rec}
        rec["row_kind"] = rec["row_kind"] or "study"
    if rec.get("schema_version") in (1, 2):
        rec = {"devices": 1, "global_batch_size": rec.get("batch_size"), **rec}
    if rec.get("schema_version") in (1, 2, 3):
        rec = {"allocator": "glibc", **rec}
    if rec.get("schema_version") in (1, 2, 3, 4):
        rec = {"round": 1, "paired": None, "machine": None, **rec}
    missing = [k for k in FIELDS if k not in rec]
    if missing:
        raise RecordError(f"record lacks fields: {', '.join(missing)}")
    for k, types in FIELDS.items():
        v = rec[k]
        if isinstance(v, bool) or not isinstance(v, types):
            raise RecordError(f"field {k!r} has type {type(v).__name__}, expected {'/'.join(t.__name__ for t in types)}")
    if rec["schema_version"] not in READABLE_VERSIONS:
        raise RecordError(f"schema_version {rec['schema_version']} not in {READABLE_VERSIONS}")
    if rec["status"] not in STATUSES:
        raise RecordError(f"status {rec['status']!r} not in {STATUSES}")
    if rec["mode"] not in ("standard", "dp"):
        raise RecordError(f"mode {rec['mode']!r} not standard/dp")
    if rec["devices"] < 1 or rec["global_batch_size"] != rec["batch_size"] * rec["devices"]:
        raise RecordError(f"global batch {rec['global_batch_size']} is not batch {rec['batch_size']} x devices {rec['devices']}")
    if rec["status"] == "ok":
        unset = [k for k in MEASURED if rec[k] is None]
        if unset:
            raise RecordError(f"ok record lacks measurements: {', '.join(unset)}")
        if rec["throughput_sps"] <= 0 or rec["step_s_median"] <= 0:
            raise RecordError("ok record with non-positive timing")
    elif not rec["error"]:
        raise RecordError(f"{rec['status']} record needs an error text")
    return rec


def append(path: str | Path, rec: dict[str, Any]) -> None:
    """Validate and append one record as one line, durably."""
    append_line(path, json.dumps(validate(rec), sort_keys=True) + "\n")


def append_line(path: str | Path, line: str) -> None:
    """Append one JSONL line and fsync it, closing first a line an earlier
    crash tore (every record file of a run: records.jsonl, deployed.jsonl)."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = "\n" + line  # close a line torn by an earlier crash
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read_counted(path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """(valid records, number of lines skipped) of a JSONL file. A torn,
    non-UTF-8, non-JSON or invalid line is skipped, never raised."""
    out: list[dict[str, Any]] = []
    bad = 0
    p = Path(path)
    if not p.exists():
        return out, 0
    for raw in p.read_bytes().splitlines():
        if not raw.strip():
            continue
        try:
            out.append(validate(json.loads(raw.decode("utf-8"))))
        except (UnicodeDecodeError, json.JSONDecodeError, RecordError):
            bad += 1
    return out, bad


def read(path: str | Path, warn: bool = True) -> list[dict[str, Any]]:
    """All valid records of a JSONL file; skipped lines are counted on stderr."""
    out, bad = read_counted(path)
    if bad and warn:
        print(f"warning: {path}: skipped {bad} unreadable or invalid line{'s' * (bad != 1)}", file=sys.stderr)
    return out


# Windows whose per-step times spread more than this (coefficient of
# variation) make a number the tables mark: on a shared 2-core VM such a row
# (e.g. steps that took twice as long in one window) is noise as much as speed.
NOISY_CV = 0.15
# Share of the CPU time the hypervisor gave other guests while a row was timed
# (notes.cpu_steal_share) above which its number is not the machine's: on the
# study's VM a steal share of 0.27-0.35 halved a row against a repeat.
# (common.harness.timing.STOLEN_SHARE: the same rule drops single windows.)


def stolen(rec: dict[str, Any]) -> bool:
    """An ok record timed while the hypervisor took more than ``STOLEN_SHARE`` of the CPUs."""
    return rec.get("status") == "ok" and ((rec.get("notes") or {}).get("cpu_steal_share") or 0.0) > STOLEN_SHARE


def reduced_precision(rec: dict[str, Any]) -> bool:
    """True when an ok record is a low-precision number: timed with fewer
    windows or fewer steps per window than its protocol asked for (the budget
    did not allow more), with windows that disagree (CV > ``NOISY_CV``), or
    while the hypervisor took more than ``STOLEN_SHARE`` of the CPUs."""
    t = rec.get("timing")
    if rec.get("status") != "ok" or not t:
        return False
    return (len(rec["window_s"] or ()) < t["repeats"] or (rec["steps_per_window"] or 0) < t["min_steps"]
            or (rec.get("step_s_cv") or 0.0) > NOISY_CV or stolen(rec))


def settings(rec: dict[str, Any]) -> dict[str, Any]:
    """Everything besides the configuration key that changes a measurement:
    two records with equal keys but different settings are different
    measurements (--resume refuses to mix them; the report lists each)."""
    th = rec.get("threads") or {}
    env = th.get("env") or {}
    return {
        "threads": th.get("intra_op"),
        "cpu_affinity": th.get("cpu_affinity"),
        "xla_flags": env.get("XLA_FLAGS"),
        "malloc": {k: v for k, v in env.items() if k.startswith("MALLOC_")} or None,
        "budget_s": rec.get("budget_s"),
        "timing": rec.get("timing"),
        "clip_norm": rec.get("clip_norm"),
        "noise_multiplier": rec.get("noise_multiplier"),
        "git_commit": rec.get("git_commit"),
        "env_lock": rec.get("env_lock"),
    }


def settings_key(rec: dict[str, Any]) -> str:
    """``settings`` as one comparable string (DP fields only for DP rows)."""
    s = settings(rec)
    if rec.get("mode") == "standard":
        s.pop("clip_norm"), s.pop("noise_multiplier")
    return json.dumps(s, sort_keys=True)


def config_key(rec: dict[str, Any]) -> tuple:
    """Same identity as RunConfig.key()."""
    return (rec["framework"], rec["impl"], rec["variant"], rec["model"], rec["batch_size"], rec["microbatch_size"],
            rec.get("devices", 1), rec.get("allocator", "glibc"))


def latest(records: Iterable[dict[str, Any]], key: Callable[[dict[str, Any]], tuple] | None = None
           ) -> list[dict[str, Any]]:
    """One record per configuration (or per ``key``): the last ok one, else the last one."""
    key = key or config_key
    best: dict[tuple, dict[str, Any]] = {}
    for r in records:
        k = key(r)
        if k not in best or r["status"] == "ok" or best[k]["status"] != "ok":
            best[k] = r
    return list(best.values())


def per_round(records: Iterable[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    """Each configuration's records, one per round in round order (``latest``'s
    rule within a round: a steal retry replaces the record it re-ran)."""
    out: dict[tuple, list[dict[str, Any]]] = {}
    for r in sorted(latest(records, key=lambda r: (config_key(r), r.get("round") or 1)),
                    key=lambda r: r.get("round") or 1):
        out.setdefault(config_key(r), []).append(r)
    return out
