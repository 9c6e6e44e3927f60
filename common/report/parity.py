"""The parity table of a run: every implementation's clipped gradient sum (noise 0)
against the float64 per-example reference, from RUN_DIR/parity.jsonl
(common/harness/verify.py measures; this renders)."""
from __future__ import annotations

from typing import Any

from common.harness.verify import CASES


def render(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown parity table (latest row per implementation)."""
    latest = {(r["framework"], r["impl"], r["variant"], r["microbatch_size"], r["model"], r.get("devices", 1)): r
              for r in rows}
    multi = any(r.get("devices", 1) > 1 for r in rows)
    cases = {r["model"]: (r["batch_size"], r.get("seed")) for r in rows}
    # Runs before CASES (their seeds were searched for max-pool ties only) claim no more than that.
    ties = "max-pool or ReLU" if all(CASES.get(m) == c for m, c in cases.items()) else "max-pool"
    # Where each framework computed its sums (rows before issue 38 do not say).
    where = sorted({f"{r['framework']} on {r['device']}" for r in rows if r.get("device")})
    out = ["## Parity: clipped gradient sum (noise 0) vs the float64 per-example reference", "",
           (f"Computed on the run's device: {', '.join(where)}. " if where else "") +
           f"Exchange weights and batch of {', '.join(f'{m} B {b} seed {s}' for m, (b, s) in cases.items())}"
           f": a seed with no {ties} near-tie; clip norm = median per-example norm (examples above and "
           "below it). Error: max |got - want| / max |want| over each parameter tensor."
           + (" Devices > 1: the batch split over that many devices, the per-device sums reduced as the "
              "data-parallel step reduces them, against the same whole-batch reference." if multi else ""), "",
           "| Framework | Impl | Microbatch | Model | " + ("Devices | " if multi else "")
           + "Max rel. error | Tolerance | Result |", "|---|---|---|---|" + ("---|" if multi else "") + "---|---|---|"]
    reasons: list[str] = []  # what the unsupported rows say, each once (footnotes)
    for r in latest.values():
        label = r["impl"] + (f" ({r['variant']})" if r["variant"] else "")
        err = "-" if r["max_rel_error"] is None else f"{r['max_rel_error']:.1e}"
        if r["passed"] is None:
            if r["error"] not in reasons:
                reasons.append(r["error"])
            res = f"unsupported [{reasons.index(r['error']) + 1}]"
        else:
            res = "pass" if r["passed"] else "FAIL" + (f": {r['error']}" if r.get("error") else "")
        mb = "-" if r["microbatch_size"] is None else str(r["microbatch_size"])
        dev = f"{r.get('devices', 1)} | " if multi else ""
        out.append(f"| {r['framework']} | {label} | {mb} | {r['model']} | {dev}{err} | {r['tolerance']:.0e} | {res} |")
    if reasons:
        out += [""] + [f"[{i}] {text}" for i, text in enumerate(reasons, 1)]
    return out + [""]
