"""What every framework's phase breakdown must show (framework-free, shared
by tests/{jax,torch,tf}/test_*_phases.py)."""
from __future__ import annotations

from typing import Any

from common.harness.adapter import FULL_STEP_PHASE


def check_phase_times(rec: dict[str, Any]) -> None:
    """The prefixes are what they say: the first (forward alone) costs less
    than the whole step, and the full-step phase, timed again after the main
    windows, agrees with the record's timed step (within 2x on a shared CPU)."""
    ph = rec["notes"]["phases_s"]
    first, full = next(iter(ph.values())), ph[FULL_STEP_PHASE]
    assert first < full, ph
    assert 0.5 < full / rec["step_s_median"] < 2.0, (full, rec["step_s_median"])
