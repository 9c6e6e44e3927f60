"""Result records (DESIGN.md §5): schema, validation, append-only JSONL.

One JSON object per configuration. Field names are fixed so other tools can
read them. The runner is the only writer: each record is serialised, checked
and written as one line with one ``write`` + flush + fsync, so an interrupted
run leaves every earlier record intact. Readers skip a torn last line.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

SCHEMA_VERSION = 1
STATUSES = ("ok", "timeout", "oom", "error")

_num = (int, float)
_opt_num = (int, float, type(None))
_opt_str = (str, type(None))
_opt_int = (int, type(None))

# field -> allowed types; "ok" records must also have every MEASURED field set.
FIELDS: dict[str, tuple[type, ...]] = {
    "schema_version": (int,),
    "run_id": (str,),
    "time_utc": (str,),
    "git_commit": _opt_str,
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
    "batch_size": (int,),
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
}
MEASURED = ("compile_s", "step_s_median", "throughput_sps", "window_s", "device", "framework_version")


class RecordError(ValueError):
    pass


def validate(rec: dict[str, Any]) -> dict[str, Any]:
    """Return ``rec`` if it follows the schema, else raise RecordError."""
    missing = [k for k in FIELDS if k not in rec]
    if missing:
        raise RecordError(f"record lacks fields: {', '.join(missing)}")
    for k, types in FIELDS.items():
        v = rec[k]
        if isinstance(v, bool) or not isinstance(v, types):
            raise RecordError(f"field {k!r} has type {type(v).__name__}, expected {'/'.join(t.__name__ for t in types)}")
    if rec["schema_version"] != SCHEMA_VERSION:
        raise RecordError(f"schema_version {rec['schema_version']} != {SCHEMA_VERSION}")
    if rec["status"] not in STATUSES:
        raise RecordError(f"status {rec['status']!r} not in {STATUSES}")
    if rec["mode"] not in ("standard", "dp"):
        raise RecordError(f"mode {rec['mode']!r} not standard/dp")
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
    line = json.dumps(validate(rec), sort_keys=True) + "\n"
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = "\n" + line  # close a line torn by an earlier crash
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read(path: str | Path) -> list[dict[str, Any]]:
    """All valid records of a JSONL file; a torn or invalid line is skipped."""
    out: list[dict[str, Any]] = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text().splitlines():
        if not line.strip():
            continue
        try:
            out.append(validate(json.loads(line)))
        except (json.JSONDecodeError, RecordError):
            continue
    return out


def config_key(rec: dict[str, Any]) -> tuple:
    """Same identity as RunConfig.key()."""
    return (rec["framework"], rec["impl"], rec["variant"], rec["model"], rec["batch_size"], rec["microbatch_size"])


def latest(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per configuration: the last ok one, else the last one."""
    best: dict[tuple, dict[str, Any]] = {}
    for r in records:
        k = config_key(r)
        if k not in best or r["status"] == "ok" or best[k]["status"] != "ok":
            best[k] = r
    return list(best.values())
