"""Peak memory of a worker on CPU: peak RSS above the idle baseline.

Linux keeps the resident high-water mark in /proc/self/status (VmHWM);
writing "5" to /proc/self/clear_refs resets it to the current RSS. The
tracker takes the baseline after imports; after the first (compiling) step
``mark_compiled()`` keeps that peak (compile + build) and resets the mark, so
``peak_above_baseline()`` after the timed steps is the steady-state peak of
training: the model, data, optimizer state and compiled code that stay
resident plus each step's temporaries, without the compiler's transient
working set (XLA/TF graph compilation can need more than a step). That is
the quantity a GPU allocator's peak measures too (compilation runs on the
host), so CPU and GPU rows compare like with like; the compile peak is kept
in the record's notes. On GPU the adapters report their allocator's peak
instead (``mem_source`` says which).
"""
from __future__ import annotations

import ctypes
import os
from pathlib import Path

_STATUS = Path("/proc/self/status")


def _status_kb(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def process_rss_bytes(pid: int) -> int | None:
    """Resident memory of process ``pid`` (another process: the runner's watchdog)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def machine_memory_bytes() -> int:
    """Total physical memory (the default --mem-limit)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def rss_bytes() -> int | None:
    kb = _status_kb("VmRSS")
    return None if kb is None else kb * 1024


def peak_rss_bytes() -> int | None:
    kb = _status_kb("VmHWM")
    return None if kb is None else kb * 1024


def trim_heap() -> None:
    """glibc ``malloc_trim(0)``: return freed heap pages to the OS. Compilers
    (LLVM in XLA:CPU, TF's grappler) free their many small blocks into
    malloc's arenas, which glibc keeps resident; without the trim a larger
    compile would count as training memory. No-op where glibc is absent."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakTracker:
    """Baseline at construction (after imports); peak RSS above it on demand."""

    def __init__(self) -> None:
        trim_heap()  # the baseline too, else a later trim can drop RSS below it
        self.reset_ok = _reset_peak()
        self.baseline = rss_bytes()
        self.compile_peak: int | None = None

    def mark_compiled(self) -> None:
        """Keep the peak so far (build + first step), hand the heap the
        compiler freed back to the OS, and restart the mark."""
        self.compile_peak = self.peak_above_baseline()
        trim_heap()
        self.reset_ok = self.reset_ok and _reset_peak()

    def peak_above_baseline(self) -> int | None:
        peak = peak_rss_bytes()
        if peak is None or self.baseline is None:
            return None
        return max(peak - self.baseline, 0)
