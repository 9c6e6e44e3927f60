"""Is fastclip's per-layer choice the faster one, and what does each conv cost against
the standard weight gradient? Measured, per conv layer.

    python -m common.report.layer_timing RUN_DIR [--frameworks jax,torch] [--models small,medium]
                                         [--batch-sizes 64,256]

Runs ``frameworks.<fw>.fastclip_layers`` (one process per framework, model
and batch, in that framework's environment with the worker's settings) and
writes RUN_DIR/fastclip_layers.json; ``common.report.build`` renders it with
:func:`table`. Each row: the layer's shapes, the plan the study row runs,
the literature's rule, and the measured time of the layer's standard weight
gradient and of fastclip's norms + clipped sum by instantiation and by ghost
norm. This module is also the ports' framework-free half (:func:`medians`,
:func:`port_cli`); it imports no framework.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

from common.report.explain import run_module
from common.reference.fastclip_plan import METHODS

FILE = "fastclip_layers.json"
PORTS = ("jax", "torch", "tf")  # frameworks with a frameworks/<fw>/fastclip_layers.py
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


def collect(models: Sequence[str], batch_sizes: Sequence[int], rounds: int = 5,
            timeout_s: float = 900.0, frameworks: Sequence[str] = ("jax",)) -> list[dict[str, Any]]:
    out = []
    for fw in frameworks:
        for model in models:
            for b in batch_sizes:
                print(f"[layer_timing] {fw} {model} B={b}", file=sys.stderr, flush=True)
                base = {"framework": fw, "model": model, "batch_size": b}
                out.append(run_module(f"frameworks.{fw}.fastclip_layers",
                                      ["--model", model, "--batch-size", str(b), "--rounds", str(rounds)], base,
                                      timeout_s, fw))
    return out


def _ms(s: float | None) -> str:
    return "-" if s is None else f"{s * 1e3:.1f}"


def table(results: list[dict[str, Any]]) -> list[str]:
    """Markdown section; a failed measurement is a row with its error."""
    out = ["## fastclip: per-layer method, chosen and measured", "",
           "Per conv layer, from the real layer inputs and output gradients: the standard step's weight + bias "
           "gradient of that layer, and fastclip's norms + clipped sum of that layer by each method "
           "(median of interleaved rounds, ms; `common.report.layer_timing`). **Bold**: the method the study row "
           "runs (JAX and TF: the cost model's, `common/reference/fastclip_plan.py`, TF as one whole-batch product; "
           "torch: its build-time calibration's, at that plan's chunk); ✓ when it was also the faster one measured. The literature's rule "
           "is ghost when 2T² ≤ pd.", "",
           "| Framework | Model | B | Layer | T | d | p | Chunk | Standard (ms) | Instantiate (ms) | Ghost (ms) | Chosen | "
           "Literature |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        fw = r.get("framework", "jax")
        if r.get("status") != "ok":
            out.append(f"| {fw} | {r['model']} | {r['batch_size']} | {r.get('status')}: {str(r.get('error'))[:100]} |"
                       + " - |" * 10)
            continue
        for row in r["layers"]:
            m = row["measured_s"]
            cells = {k: _ms(m.get(k)) for k in METHODS}
            cells[row["chosen"]] = f"**{cells[row['chosen']]}**"
            fastest = min(METHODS, key=lambda k: m.get(k, float("inf")))
            mark = " ✓" if fastest == row["chosen"] else f" (measured faster: {fastest})"
            label = fw + (f" ({row['variant']})" if row.get("variant") else "")  # TF: graph and xla
            out.append(f"| {label} | {r['model']} | {r['batch_size']} | {row['layer']} | {row['positions']} | {row['fan_in']} | "
                       f"{row['features']} | {row['chunk']} | {_ms(m.get('standard'))} | {cells['instantiate']} | "
                       f"{cells['ghost']} | {row['chosen']}{mark} | {row['literature']} |")
    return out + [""]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m common.report.layer_timing", description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--frameworks", default="jax")
    ap.add_argument("--models", default="small,medium")
    ap.add_argument("--batch-sizes", default="64,256")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args(argv)
    try:
        sizes = [int(t) for t in a.batch_sizes.split(",") if t.strip()]
        models = [m.strip() for m in a.models.split(",") if m.strip()]
        frameworks = [f.strip() for f in a.frameworks.split(",") if f.strip()]
        for fw in frameworks:
            if fw not in PORTS:
                raise ValueError(f"no per-layer timing for {fw!r}; choose from {', '.join(PORTS)}")
        if not sizes or min(sizes) <= 0 or a.rounds <= 0:
            raise ValueError("batch sizes and rounds must be positive")
        from common.reference.spec import get_model
        for m in models:
            get_model(m)
        if not a.run_dir.is_dir():
            raise ValueError(f"{a.run_dir} is not a directory")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from common.harness.runner import git_commit  # the code the timings come from, as records say it
    commit = git_commit()
    results = [dict(r, git_commit=commit) for r in collect(models, sizes, a.rounds, frameworks=frameworks)]
    (a.run_dir / FILE).write_text(json.dumps(results, indent=1) + "\n")
    print("\n".join(table(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
