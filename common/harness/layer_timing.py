"""fastclip's per-layer timing, the measuring half every port
(``frameworks/<fw>/fastclip_layers.py``) shares: interleaved median timing and
the command line that prints one JSON object (a fault is a row).
common/report/layer_timing.py runs the ports and renders their table.

Imports no framework.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
import traceback
from typing import Any, Callable, Sequence

SCHEMA = 1


def medians(fns: dict[str, Callable[[], Any]], rounds: int, sync: Callable[[Any], Any]) -> dict[str, float]:
    """Median seconds per call of each function over ``rounds`` interleaved rounds
    (so that a noisy CPU hits them alike), after one untimed call each (compile,
    warm caches); ``sync`` waits for a call's output (e.g. ``jax.block_until_ready``)."""
    for fn in fns.values():
        sync(fn())
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            sync(fn())
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def port_cli(framework: str, measure: Callable[..., dict[str, Any]], doc: str,
             argv: Sequence[str] | None = None) -> int:
    """A port's command line: ``--model --batch-size --rounds``; prints one JSON
    object, ``measure``'s or an error row (a fault is a row, as in the worker)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--model", default="small")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args(argv)
    try:
        res = measure(a.model, a.batch_size, rounds=a.rounds)
    except Exception as exc:  # noqa: BLE001 - reported as a row
        res = {"schema": SCHEMA, "framework": framework, "model": a.model, "batch_size": a.batch_size,
               "status": "error", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}
    print(json.dumps(res))
    return 0
