"""Is fastclip's per-layer choice the faster one, and what does each layer cost against
the standard gradient of its parameters? Measured, per layer.

    python -m common.report.layer_timing RUN_DIR [--frameworks jax,torch] [--models small,medium]
                                         [--batch-sizes 64,256] [--cells vit:64,vit_p2:32]

Runs ``frameworks.<fw>.fastclip_layers`` (one process per framework, model
and batch: every model at every batch size, or the ``--cells`` given, in that
framework's environment with the worker's settings) and writes
RUN_DIR/fastclip_layers.json; ``common.report.build`` renders it with
:func:`table`. Each row of the main table, per conv and per dense layer on
tokens (seq_dense): the layer's shapes, the plan the study row runs, the
literature's rule, and the measured time of the layer's standard weight
gradient and of fastclip's norms + clipped sum by instantiation and by ghost
norm; a second table has the layers of one method (GroupNorm, LayerNorm,
embedding): standard against fastclip. The ports' framework-free half
(``time_layer``, ``row``, ``record``, ``medians``, ``port_cli``, the schema) is
common/harness/layer_timing.py; this module imports no framework.
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


def collect(cells: Sequence[tuple[str, int]], rounds: int = 5, timeout_s: float = 900.0,
            frameworks: Sequence[str] = ("jax",)) -> list[dict[str, Any]]:
    """Each framework's port on each (model, batch size) cell, one process each."""
    out = []
    for fw in frameworks:
        for model, b in cells:
            print(f"[layer_timing] {fw} {model} B={b}", file=sys.stderr, flush=True)
            base = {"framework": fw, "model": model, "batch_size": b}
            out.append(run_module(f"frameworks.{fw}.fastclip_layers",
                                  ["--model", model, "--batch-size", str(b), "--rounds", str(rounds)], base,
                                  timeout_s, fw))
    return out


def parse_cells(text: str) -> list[tuple[str, int]]:
    """``"vit:64,vit_p2:32"`` -> [("vit", 64), ("vit_p2", 32)]; ValueError on a malformed cell."""
    cells = []
    for part in (t.strip() for t in text.split(",") if t.strip()):
        model, sep, b = part.rpartition(":")
        if not sep or not model or not b.strip().isdigit():
            raise ValueError(f"--cells: {part!r} is not MODEL:BATCH")
        cells.append((model.strip(), int(b)))
    return cells


def _ms(s: float | None) -> str:
    """Milliseconds, one decimal; two under 1 ms (a small ViT layer's, where one decimal is one digit)."""
    return "-" if s is None else f"{s * 1e3:.2f}" if s < 1e-3 else f"{s * 1e3:.1f}"


def table(results: list[dict[str, Any]]) -> list[str]:
    """Markdown section; a failed measurement is a row with its error."""
    out = ["## fastclip: per-layer method, chosen and measured", "",
           "Per conv layer, from the real layer inputs and output gradients: the standard step's weight + bias "
           "gradient of that layer, and fastclip's norms + clipped sum of that layer by each method "
           "(median of interleaved rounds, ms; `common.report.layer_timing`). **Bold**: the method the study row "
           "runs (JAX and TF: the cost model's, `common/reference/fastclip_plan.py`, TF as one whole-batch product; "
           "torch: its build-time calibration's, at that plan's chunk); ✓ when it was also the faster one measured. The literature's rule "
           "is ghost when 2T² ≤ pd.", ""]
    if any(row.get("kind") == "seq_dense" for r in results if r.get("status") == "ok" for row in r["layers"]):
        out += ["Rows of kind seq_dense (the ViT's dense layers on a token sequence: a 1x1 conv with T = tokens "
                "positions) likewise: standard, the kernel's gradient A^T G over the B·T token rows + the bias sum.", ""]
    out += ["| Framework | Model | B | Layer | T | d | p | Chunk | Standard (ms) | Instantiate (ms) | Ghost (ms) | Chosen | "
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
    return out + [""] + _single_table(results)


def _single_table(results: list[dict[str, Any]]) -> list[str]:
    """The one-method layers (GroupNorm, LayerNorm, embedding) of the records that have them
    (``single_layers``); none: no table. Records of torch's first GroupNorm timing
    (``gn_layers``, the WRN run) are not rendered: the report never showed them, and the
    committed reports stay what they were (tests/common/report/test_golden.py)."""
    rows = [(r, row) for r in results if r.get("status") == "ok" for row in r.get("single_layers", ())]
    if not rows:
        return []
    out = ["### fastclip: layers with one method", "",
           "Per GroupNorm, LayerNorm and embedding layer (one exact method each: their per-example grads are "
           "instantiated, nothing to choose), from the same layer inputs and output gradients: the standard "
           "step's gradient of that layer's parameters against fastclip's per-example grads, norms and clipped "
           "sum of that layer (median of interleaved rounds, ms). T: positions or tokens per example.", "",
           "| Framework | Model | B | Kind | Layer | T | Standard (ms) | fastclip (ms) |", "|---|---|---|---|---|---|---|---|"]
    for r, row in rows:
        label = r.get("framework", "jax") + (f" ({row['variant']})" if row.get("variant") else "")
        m = row["measured_s"]
        out.append(f"| {label} | {r['model']} | {r['batch_size']} | {row['kind']} | {row['layer']} | {row['positions']} | "
                   f"{_ms(m.get('standard'))} | {_ms(m.get('fastclip'))} |")
    return out + [""]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m common.report.layer_timing", description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--frameworks", default="jax")
    ap.add_argument("--models", default="small,medium")
    ap.add_argument("--batch-sizes", default="64,256")
    ap.add_argument("--cells", default="", help="MODEL:B,... (replaces --models x --batch-sizes)")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args(argv)
    try:
        if a.cells:
            cells = parse_cells(a.cells)
        else:
            cells = [(m.strip(), int(b)) for m in a.models.split(",") if m.strip()
                     for b in a.batch_sizes.split(",") if b.strip()]
        sizes = [b for _, b in cells]
        models = list(dict.fromkeys(m for m, _ in cells))
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
    results = [dict(r, git_commit=commit) for r in collect(cells, a.rounds, frameworks=frameworks)]
    (a.run_dir / FILE).write_text(json.dumps(results, indent=1) + "\n")
    print("\n".join(table(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
