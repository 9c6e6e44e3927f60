"""Which machine a run was measured on, and how fast it was at the start and end.

``gpus``: the NVIDIA GPUs the machine has (name, driver, memory; from
nvidia-smi, common/harness/accel.py), None where it has none; the device a
row ran on is its record's ``device``.

``cpu_model`` alone is not enough: the study's VM has been both an Intel Xeon
(whose model name read only "Intel(R) Xeon(R) Processor") and an AMD EPYC, and
their vector units (AVX-512 or not) change every framework's speed. So
``identity`` records vendor, family/model/stepping, the vector extensions the
frameworks' kernels dispatch on, the hypervisor and cache sizes.

``canary`` times a fixed GEMM and a fixed im2col conv with numpy; run at the
start and end of a run it shows whether the machine changed speed during the
run, and across runs how two runs' machines compare.

    python -m common.harness.machine OUT.json [--phase start|end]

numpy only: nothing here imports a framework.
"""
from __future__ import annotations

import argparse
import json
import os
import functools
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

FILE = "machine.json"  # in a run directory: identity and the canary at start, resume and end

VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")
IDENTITY_KEYS = ("cpu_model", "vendor", "family", "model", "stepping", "vector_extensions", "cores",
                 "usable_cpus", "hypervisor", "cache", "gpus")
_REAL = object()  # default marker: read the real /proc/cpuinfo / lscpu (None means "missing")


def _read_cpuinfo() -> str | None:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


def _run_lscpu() -> str | None:
    exe = shutil.which("lscpu")
    if exe is None:
        return None
    from common.harness import launcher  # the one way the harness starts a child
    try:
        code, out = launcher.run_tool([exe], 10, env={**os.environ, "LC_ALL": "C"}, capture=True, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out if code == 0 else None


def _fields(text: str | None) -> dict[str, str]:
    """``key: value`` lines; for cpuinfo, only the first processor block."""
    fields: dict[str, str] = {}
    for line in (text or "").splitlines():
        if not line.strip():
            if fields:
                break  # end of the first processor block
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


@functools.lru_cache(maxsize=1)
def this_machine() -> tuple[tuple[str, Any], ...]:
    """``identity()`` of this machine, read once per process (every record carries it)."""
    return tuple(identity().items())


def identity(cpuinfo: Any = _REAL, lscpu: Any = _REAL, gpus: Any = _REAL) -> dict[str, Any]:
    """The machine's CPU identity and its GPUs. Never raises; what cannot be read is None.

    ``cpuinfo``/``lscpu``: the texts to parse (default: the real ones; None: missing);
    ``gpus``: accel.identity()'s list (default: this machine's).
    """
    try:
        info = _fields(_read_cpuinfo() if cpuinfo is _REAL else cpuinfo)
        ls = _fields(_run_lscpu() if lscpu is _REAL else lscpu)
        flags = set(info["flags"].split()) if "flags" in info else None
        try:
            usable: int | None = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            usable = None
        if "Hypervisor vendor" in ls:
            hypervisor: str | None = ls["Hypervisor vendor"]
        elif flags is not None and "hypervisor" in flags:
            hypervisor = "present"
        else:
            hypervisor = None
        cache = {k: ls[f"{k} cache"] for k in ("L2", "L3") if f"{k} cache" in ls} or None
        return {
            "cpu_model": info.get("model name"),
            "vendor": info.get("vendor_id"),
            "family": info.get("cpu family"),
            "model": info.get("model"),
            "stepping": info.get("stepping"),
            "vector_extensions": None if flags is None else sorted(f for f in VECTOR_FLAGS if f in flags),
            "cores": os.cpu_count(),
            "usable_cpus": usable,
            "hypervisor": hypervisor,
            "cache": cache,
            "gpus": _gpus() if gpus is _REAL else gpus,
        }
    except Exception as exc:  # a record without identity beats a run that dies here
        return {**dict.fromkeys(IDENTITY_KEYS), "error": f"{type(exc).__name__}: {exc}"}


def _gpus() -> list[dict] | None:
    from common.harness import accel
    try:
        return accel.identity()
    except Exception:  # noqa: BLE001 - a record without its GPUs beats a run that dies here
        return None


def _median_time(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # untimed warm-up: first-touch pages, BLAS thread start-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _numpy_threads() -> list[dict[str, Any]] | None:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    return [{k: p.get(k) for k in ("user_api", "internal_api", "num_threads")} for p in threadpool_info()]


def canary(repeats: int = 7, n: int = 1024) -> dict[str, Any]:
    """Median seconds of a fixed float32 GEMM (n x n @ n x n) and a fixed conv
    (3x3, 64 -> 64 channels, 'same' padding, on 8 x 32 x 32 x 64 NHWC, as
    im2col + GEMM), each timed ``repeats`` times after one untimed call.

    Well under a second at the defaults on a 2-core AMD EPYC VM (n=1024 GEMM:
    2.1 GFLOP, ~16 ms; conv: 0.6 GFLOP, ~9 ms), so it can run at both ends
    of every run without costing the run anything noticeable.
    """
    import numpy as np  # here: the runner's command line must start without numpy
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    x = rng.standard_normal((8, 32, 32, 64), dtype=np.float32)
    w = rng.standard_normal((3 * 3 * 64, 64), dtype=np.float32)

    def conv() -> np.ndarray:
        xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(1, 2))  # N,H,W,C,3,3
        cols = win.transpose(0, 1, 2, 4, 5, 3).reshape(8 * 32 * 32, 3 * 3 * 64)  # copies: im2col
        return (cols @ w).reshape(8, 32, 32, 64)

    gemm_s = _median_time(lambda: a @ b, repeats)
    conv_s = _median_time(conv, repeats)
    return {"gemm_s": gemm_s, "conv_s": conv_s, "gemm_gflops": 2 * n**3 / gemm_s / 1e9,
            "numpy_threads": _numpy_threads(), "repeats": repeats}


def read(path: Path) -> dict[str, Any]:
    """A run's machine.json, {} where it is absent or unreadable (a report still renders)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write(out: Path, phase: str) -> dict[str, Any]:
    """Merge this machine's identity and ``phase``'s canary into ``out`` (other phases kept).
    Written to a temporary file then renamed, so ``out`` is never half-written."""
    data = json.loads(out.read_text()) if out.exists() else {}
    ident = identity()
    data.setdefault("machine", ident)
    if ident != data["machine"]:  # e.g. a resume on another VM: keep both
        data.setdefault("machine_changed", {})[phase] = ident
    data.setdefault("canary", {})[phase] = canary()
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--phase", choices=("start", "resume", "end"), default="start")
    args = p.parse_args(argv)
    write(args.out, args.phase)
    return 0


if __name__ == "__main__":
    sys.exit(main())
