"""CPU thread settings, applied equally to every framework and recorded.

One number, ``threads`` (default: all cores), sets the intra-op pool of every
framework; inter-op pools are 1 so no framework runs independent ops side by
side on cores another framework would not get. The settings go into the
worker's environment before the framework is imported (the only point where
OpenMP/Eigen/XLA read them); adapters apply the framework's own calls too.

The thread count reaches every framework the same way as well: ``pin``
restricts each worker to the same N CPUs (``os.sched_setaffinity``, before
the framework is imported): XLA:CPU has no thread-count flag; it sizes its
pool from ``PJRT_NPROC`` (set to N too) or else the CPUs it may run on, and
affinity also bounds how many parts its compiler splits loops into. The
record says which CPUs were in force (``cpu_affinity``).

XLA:CPU (jax 0.10.2) runs convolutions through YNNPACK fusions;
``--xla_cpu_experimental_ynn_fusion_type=`` (empty) turns those fusions off.
It is a JAX-only speed setting, measured against XLA's defaults in every run
by the ``xla-default`` variant of each JAX impl (see README).
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

JAX_XLA_FLAGS = "--xla_cpu_experimental_ynn_fusion_type="

# glibc malloc settings, one per ``RunConfig.allocator``, for every framework
# alike (every worker, ranks and analyses included). ``glibc``: glibc's
# defaults: a block of 128 KiB or more (the threshold grows with use, up to
# 32 MiB) is a fresh mmap, returned to the kernel on free, so the next step's
# buffer of that size is page-faulted in again, page by page; freed heap top
# above 128 KiB is trimmed. ``keep``: no mmap (``MALLOC_MMAP_MAX_=0``) and no
# trim below 4 GiB, so freed memory stays in the process and the next step
# reuses it. PyTorch's CPU tensors are plain malloc blocks (c10 alloc_cpu);
# the PyTorch performance tuning guide's advice for CPUs is an allocator
# that reuses memory. What it costs: RSS stays at the heap's high-water mark,
# freed blocks included (peak memory counts them). ``--allocators keep,glibc``
# measures both, back to back (README: Allocator, for what it changes per
# framework); the study's default is ``DEFAULT_ALLOCATOR``.
ALLOCATORS: dict[str, dict[str, str]] = {
    "glibc": {},
    "keep": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(4 * 2**30)},
}
DEFAULT_ALLOCATOR = "keep"
MALLOC_KEYS = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
               "MALLOC_ARENA_MAX")


def jax_xla_flags() -> str:
    """The study's XLA flags; ``DPBENCH_XLA_FLAGS`` overrides (empty: XLA defaults),
    which is how the README's with/without comparison was run."""
    return os.environ.get("DPBENCH_XLA_FLAGS", JAX_XLA_FLAGS)


def resolve(threads: int) -> int:
    return threads if threads > 0 else (os.cpu_count() or 1)


def per_device(threads: int, devices: int) -> int:
    """Intra-op threads of each of ``devices`` data-parallel devices on a CPU:
    the configuration's threads shared out (2 threads, 2 devices: 1 each), so
    that N devices get the cores 1 device gets, never more."""
    return max(1, resolve(threads) // devices)


# XLA:CPU makes one CPU look like N devices (jax.devices() lists N) with this
# flag, read at backend start; JAX's data-parallel rows (devices > 1) get it.
JAX_HOST_DEVICES_FLAG = "--xla_force_host_platform_device_count"


def worker_env(threads: int, framework: str = "jax", base: dict[str, str] | None = None,
               variant: str = "", devices: int = 1, allocator: str = DEFAULT_ALLOCATOR) -> dict[str, str]:
    """Environment for a worker process with ``threads`` intra-op threads.

    The XLA flag is set for JAX on the CPU only: TensorFlow 2.15's own XLA does not know
    it and aborts on unknown XLA_FLAGS. JAX's ``xla-default`` variant (the
    A/B of that flag) gets XLA's defaults. ``devices`` > 1 (JAX): XLA:CPU
    shows that many host devices (``JAX_HOST_DEVICES_FLAG``; no effect on
    GPUs, where the visible GPUs are the devices). ``allocator``: the glibc
    malloc settings of ``ALLOCATORS`` (inherited ``MALLOC_*`` settings are
    dropped, so that the record's are the ones in force).
    """
    from common.harness.config import XLA_DEFAULT
    # Data-parallel JAX and torch: each device's pools get its share of the
    # threads (XLA:CPU's host devices share one intra-op pool of PJRT_NPROC
    # threads; torch runs one process per device). TF's logical CPU devices
    # share one process and its pools, which keep the total.
    n = str(per_device(threads, devices) if framework in ("jax", "torch") else resolve(threads))
    if allocator not in ALLOCATORS:
        raise ValueError(f"unknown allocator {allocator!r}; choose from {', '.join(ALLOCATORS)}")
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in MALLOC_KEYS}
    env.update(ALLOCATORS[allocator])
    # The study's flag tunes XLA:CPU's convolutions; under the cuda accelerator
    # (common/harness/accel.py) JAX runs XLA:GPU, which gets XLA's defaults.
    from common.harness import accel
    on_cpu = accel.selected() == "cpu"
    flags = jax_xla_flags() if framework == "jax" and variant != XLA_DEFAULT and on_cpu else ""
    current = env.get("XLA_FLAGS", "")
    if variant == XLA_DEFAULT:  # XLA's defaults: drop the study's flag even when inherited
        current = " ".join(f for f in current.split() if f != JAX_XLA_FLAGS)
    if framework == "jax" and devices > 1:
        current = " ".join(f for f in current.split() if not f.startswith(JAX_HOST_DEVICES_FLAG))
        flags = f"{flags} {JAX_HOST_DEVICES_FLAG}={devices}".strip()
    env.update({
        "OMP_NUM_THREADS": n,
        "MKL_NUM_THREADS": n,
        "OPENBLAS_NUM_THREADS": n,
        "TF_NUM_INTRAOP_THREADS": n,
        "TF_NUM_INTEROP_THREADS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        # XLA:CPU's intra-op pool size (xla/pjrt/utils.cc DefaultThreadPoolSize); with
        # the CPU affinity of ``pin`` it is the same N as every other framework's.
        "PJRT_NPROC": n,
        "XLA_FLAGS": " ".join(dict.fromkeys(current.split() + flags.split())),
        "PYTHONHASHSEED": "0",
    })
    return env


def allowed_cpus() -> list[int]:
    """CPUs this process may run on (all of them where affinity is unknown)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def pin(threads: int) -> list[int]:
    """Restrict this process (and the threads it starts) to ``threads`` CPUs,
    the first N it may use, so that every framework, XLA:CPU included, gets
    the same cores; returns the CPUs in force. Call before importing a framework."""
    cpus = allowed_cpus()
    n = min(resolve(threads), len(cpus))
    if n < len(cpus) and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus[:n])
    return allowed_cpus()


def recorded(threads: int, env: dict[str, str] | None = None, devices: int = 1) -> dict[str, object]:
    """What goes into every record's ``threads`` field: the pools asked for
    (``per_device``: each data-parallel device's share, on a CPU), the
    environment the frameworks read and the CPUs actually in force."""
    env = os.environ if env is None else env
    keys = ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "PJRT_NPROC", "XLA_FLAGS",
            *MALLOC_KEYS)
    return {"intra_op": resolve(threads), "inter_op": 1, "per_device": per_device(threads, devices),
            "cpu_count": os.cpu_count(),
            "cpu_affinity": allowed_cpus(), "env": {k: env.get(k) for k in keys if k in env or not k.startswith("MALLOC")}}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
