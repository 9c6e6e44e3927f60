"""Peak memory of a worker on CPU: peak RSS above the idle baseline.

Linux keeps the resident high-water mark in /proc/self/status (VmHWM);
writing "5" to /proc/self/clear_refs resets it to the current RSS, so
``reset_peak()`` after imports and ``peak_above_baseline()`` after the timed
steps gives the memory the configuration itself needed. On GPU the adapters
report their allocator's peak instead (``mem_source`` says which).
"""
from __future__ import annotations

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


class PeakTracker:
    """Baseline at construction (after imports); peak RSS above it on demand."""

    def __init__(self) -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.reset_ok = True
        except OSError:
            self.reset_ok = False
        self.baseline = rss_bytes()

    def peak_above_baseline(self) -> int | None:
        peak = peak_rss_bytes()
        if peak is None or self.baseline is None:
            return None
        return max(peak - self.baseline, 0)
