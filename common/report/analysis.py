"""The analysis seam's framework-free half: the record every framework's
analysis (``frameworks/<fw>/analysis.py``) prints, and its rendering.

A record answers, for one configuration (impl, variant, microbatch size, model,
batch), the same questions in every framework (``summary``):

* ``weight_grad_ops``: which operations make the weight gradients, with their
  shapes (or group counts), and whether they work per example;
* ``per_example_grads``: ``{"materialised": bool, "bytes": int | None}``;
* ``top_ops``: the costliest operations, each ``{"op", "self_s" | "flops",
  "share", "calls", "mem_bytes"}``, ranked by what the framework can measure
  (``top_by``: torch.profiler's self CPU time, TF's profiler op stats, XLA's
  FLOPs for JAX).

Imports no framework.
"""
from __future__ import annotations

import argparse
import json
import traceback
from typing import Any, Callable, Sequence

from common.harness.config import RunConfig

SCHEMA = 2
TOP_N = 8


def base_record(framework: str, cfg: Any, versions: dict[str, str], device: str) -> dict[str, Any]:
    """The fields every analysis record starts with (``cfg``: a RunConfig)."""
    return {"schema": SCHEMA, "framework": framework, "impl": cfg.impl, "variant": cfg.variant, "mode": cfg.mode,
            "model": cfg.model, "batch_size": cfg.batch_size, "microbatch_size": cfg.microbatch_size,
            "status": "ok", "error": None, "versions": versions, "device": device}


def cli(framework: str, analyze: Callable[[Any], dict[str, Any]], argv: Sequence[str] | None = None,
        doc: str = "", default_variant: str = "") -> int:
    """Every ``frameworks/<fw>/analysis.py``'s command line: one configuration
    (``--impl --model --batch-size --microbatch-size --variant``), validated as
    a RunConfig and analysed by ``analyze(cfg)``; one JSON record on stdout,
    a failure as a ``status: error`` record (a failed analysis is a row)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--impl", required=True)
    ap.add_argument("--model", default="small")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--microbatch-size", type=int, default=None)
    ap.add_argument("--variant", default=default_variant)
    a = ap.parse_args(argv)
    try:
        res = analyze(RunConfig(framework, a.impl, a.model, a.batch_size, a.microbatch_size, a.variant).validate())
    except Exception as exc:  # noqa: BLE001 - a failed analysis is a row
        res = {"schema": SCHEMA, "framework": framework, "impl": a.impl, "variant": a.variant, "model": a.model,
               "batch_size": a.batch_size, "microbatch_size": a.microbatch_size, "status": "error",
               "error": f"{type(exc).__name__}: {exc}"[:500], "traceback": traceback.format_exc()[-3000:]}
    print(json.dumps(res))
    return 0


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def label(a: dict[str, Any]) -> str:
    text = a["impl"] + (f" ({a['variant']})" if a.get("variant") else "")
    if a.get("microbatch_size") is not None:
        text += f" mb={a['microbatch_size']}"
    return text


def _op_cost(o: dict[str, Any]) -> str:
    if o.get("self_s") is not None:
        text = f"{o['self_s'] * 1e3:.1f} ms"
    elif o.get("flops") is not None:
        text = f"{o['flops'] / 1e9:.2f} GFLOP"
    else:
        text = "?"
    if o.get("share") is not None:
        text += f", {100 * o['share']:.0f} %"
    return text


def top_cell(s: dict[str, Any], n: int = 3) -> str:
    ops = s.get("top_ops") or []
    return "; ".join(f"{o['op']} ({_op_cost(o)})" for o in ops[:n]) or "-"


def wgrad_cell(s: dict[str, Any], n: int = 2) -> str:
    ops = s.get("weight_grad_ops") or []
    if not ops:
        return "-"
    per_ex = sum(1 for o in ops if o.get("per_example"))
    head = f"{len(ops)} kinds" + (f", {per_ex} per example" if per_ex else "")
    shown = [f"{o['op']} {'x'.join(map(str, (o.get('shapes') or [[]])[0]))}" + (f" ×{o['calls']}" if o.get('calls') else "")
             for o in ops[:n]]
    return f"{head}: " + "; ".join(shown)


def per_example_cell(s: dict[str, Any]) -> str:
    p = s.get("per_example_grads") or {}
    if p.get("materialised") is None:
        return "?"
    if not p["materialised"]:
        return "no"
    return "yes" + (f", {fmt_bytes(p['bytes'])}" if p.get("bytes") else "")


FRAMEWORK_NAMES = {"jax": "JAX", "torch": "PyTorch", "tf": "TensorFlow"}


def render(analyses: Sequence[dict[str, Any]], heading: str = "##") -> str:
    """Markdown: per framework and (model, batch), one row per impl with the
    three answers; then the top cost of every DP impl in one sentence."""
    analyses = [a for a in analyses if a.get("summary") or a.get("status") != "ok"]  # schema 1 (JAX only): no summary
    if not analyses:
        return ""
    out = [f"{heading} Why each row is as fast as it is: per-framework analyses", "",
           "Generated by `python -m common.report.explain` (one process per configuration, the study's own "
           "step, each framework's own tools: JAX's JAXPR and XLA cost analysis, `torch.profiler`, TensorFlow's "
           "profiler op statistics). *Top ops* are per step, by what each framework measures (see `top_by`).", ""]
    by_fw: dict[str, list[dict[str, Any]]] = {}
    for a in analyses:
        by_fw.setdefault(a["framework"], []).append(a)
    for fw, block in by_fw.items():
        ok = [a for a in block if a.get("status") == "ok"]
        by = next((a["summary"].get("top_by") for a in ok if a.get("summary")), "?")
        out += [f"{heading}# {FRAMEWORK_NAMES.get(fw, fw)}", "", f"Top ops by {by}.", "",
                "| model | B | impl | weight-gradient ops | per-example grads | top ops |", "|---|---|---|---|---|---|"]
        for a in block:
            if a.get("status") != "ok":
                cells = [a["model"], str(a["batch_size"]), label(a), f"{a.get('status')}: {str(a.get('error'))[:100]}",
                         "", ""]
            else:
                s = a["summary"]
                cells = [a["model"], str(a["batch_size"]), label(a), wgrad_cell(s), per_example_cell(s), top_cell(s)]
            out.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
        out.append("")
        for a in ok:
            if a.get("mode") == "dp" and a["summary"].get("top_ops"):
                o = a["summary"]["top_ops"][0]
                out.append(f"- **{label(a)}** ({a['model']}, B {a['batch_size']}): top cost {o['op']} "
                           f"({_op_cost(o)}); per-example grads {per_example_cell(a['summary'])}.")
        out.append("")
    return "\n".join(out)
