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


def jax_xla_flags() -> str:
    """The study's XLA flags; ``DPBENCH_XLA_FLAGS`` overrides (empty: XLA defaults),
    which is how the README's with/without comparison was run."""
    return os.environ.get("DPBENCH_XLA_FLAGS", JAX_XLA_FLAGS)


def resolve(threads: int) -> int:
    return threads if threads > 0 else (os.cpu_count() or 1)


def worker_env(threads: int, framework: str = "jax", base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a worker process with ``threads`` intra-op threads.

    The XLA flag is set for JAX only: TensorFlow 2.15's own XLA does not know
    it and aborts on unknown XLA_FLAGS.
    """
    n = str(resolve(threads))
    env = dict(os.environ if base is None else base)
    flags = jax_xla_flags() if framework == "jax" else ""
    current = env.get("XLA_FLAGS", "")
    env.update({
        "OMP_NUM_THREADS": n,
        "MKL_NUM_THREADS": n,
        "OPENBLAS_NUM_THREADS": n,
        "TF_NUM_INTRAOP_THREADS": n,
        "TF_NUM_INTEROP_THREADS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "XLA_FLAGS": current if flags in current else f"{current} {flags}".strip(),
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
