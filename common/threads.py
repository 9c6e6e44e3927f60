"""CPU thread settings, applied equally to every framework and recorded.

One number, ``threads`` (default: all cores), sets the intra-op pool of every
framework; inter-op pools are 1 so no framework runs independent ops side by
side on cores another framework would not get. The settings go into the
worker's environment before the framework is imported (the only point where
OpenMP/Eigen/XLA read them); adapters apply the framework's own calls too.

XLA:CPU (jax 0.10.2) runs convolutions through YNNPACK fusions on one core;
``--xla_cpu_experimental_ynn_fusion_type=`` (empty) turns those fusions off so
convs use the multi-threaded path (about 2x on 2 cores, see README).
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

JAX_XLA_FLAGS = "--xla_cpu_experimental_ynn_fusion_type="


def resolve(threads: int) -> int:
    return threads if threads > 0 else (os.cpu_count() or 1)


def worker_env(threads: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a worker process with ``threads`` intra-op threads."""
    n = str(resolve(threads))
    env = dict(os.environ if base is None else base)
    env.update({
        "OMP_NUM_THREADS": n,
        "MKL_NUM_THREADS": n,
        "OPENBLAS_NUM_THREADS": n,
        "TF_NUM_INTRAOP_THREADS": n,
        "TF_NUM_INTEROP_THREADS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "XLA_FLAGS": (env.get("XLA_FLAGS", "") + " " + JAX_XLA_FLAGS).strip()
        if JAX_XLA_FLAGS not in env.get("XLA_FLAGS", "") else env["XLA_FLAGS"],
        "PYTHONHASHSEED": "0",
    })
    return env


def recorded(threads: int, env: dict[str, str] | None = None) -> dict[str, object]:
    """What goes into every record's ``threads`` field."""
    env = os.environ if env is None else env
    keys = ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "XLA_FLAGS")
    return {"intra_op": resolve(threads), "inter_op": 1, "cpu_count": os.cpu_count(),
            "env": {k: env.get(k) for k in keys}}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
