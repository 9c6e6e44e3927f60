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
norm. The ports' framework-free half (``medians``, ``port_cli``, the schema)
is common/harness/layer_timing.py; this module imports no framework.
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
# The ports' record schema and command line live in the harness (it measures; this renders).
from common.harness.layer_timing import SCHEMA, medians, port_cli  # noqa: E402,F401


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
