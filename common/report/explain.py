"""Why is each row as fast as it is? The per-framework analyses, generated.

    python -m common.report.explain OUT_MD [--frameworks jax,torch,tf] [--models small] [--batch-size 64]

For every study implementation of each framework's catalogue (variants and
the microbatch sweep included, direct-use rows and A/B variants not: they run
the same library path) and every model, runs ``frameworks.<fw>.analysis`` in
that framework's environment (one process per configuration, through the one
launcher, with the worker's thread settings and flags), then writes a
Markdown section to OUT_MD and the raw analyses to OUT_MD with ``.json``.
The seam's common answers (weight-gradient ops, per-example gradients, top
ops) are rendered for every framework by ``common.report.analysis``; JAX's
JAXPR/HLO detail (the seed's finding, automated) follows as its own table.
Nothing in the text is typed by hand: every fact comes from an analysis.
Framework-neutral: imports no framework.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from common.harness import launcher
from common.harness.config import FRAMEWORKS, IMPLS, microbatch_sizes
from common.reference.spec import get_model
from common.report import analysis
from common.report.analysis import fmt_bytes

ROOT = Path(__file__).resolve().parents[2]

LOOP_NOTE = ("XLA's `cost_analysis()` counts a loop body (a while loop, or a scan, which lowers to one) once, "
             "whatever its trip count: for rows with loops (marked ↻ with their trip counts) its flops and bytes "
             "cover one iteration, while the JAXPR conv+dot column multiplies every op by its loops' trip counts. "
             "XLA's flops also count elementwise work (noise generation, norms, clipping), the JAXPR column only "
             "convolutions and matrix products.")


def configs(framework: str, batch_size: int, impls: Sequence[str] | None = None
            ) -> list[tuple[str, str, int | None]]:
    """(impl, variant, microbatch size) of every study implementation of ``framework``, from the catalogue."""
    out = []
    for impl in IMPLS[framework].values():
        if impl.kind == "direct":  # same library path as the study row it checks
            continue
        if impls and impl.name not in impls:
            continue
        for variant in impl.variants:
            if variant in impl.ab_variants:  # same code, other flags
                continue
            if framework == "tf" and variant == "xla":  # TF's op stats see one compiled cluster, nothing inside
                continue
            out += [(impl.name, variant, mb) for mb in microbatch_sizes(impl, batch_size)]
    return out


def command(impl: str, variant: str, model: str, batch_size: int, microbatch_size: int | None) -> list[str]:
    args = ["--impl", impl, "--model", model, "--batch-size", str(batch_size)]
    if variant:
        args += ["--variant", variant]
    return args + (["--microbatch-size", str(microbatch_size)] if microbatch_size is not None else [])


def run_module(module: str, args: list[str], base: dict[str, Any], timeout_s: float, framework: str,
               variant: str = "") -> dict[str, Any]:
    """``python -m module args`` in ``framework``'s environment, with the
    worker's thread settings and flags; its last printed JSON object, or
    ``base`` with ``status: timeout|error``."""
    try:
        with tempfile.TemporaryDirectory(prefix="dpbench-explain-") as tmp:
            o = launcher.launch(launcher.python_cmd(framework, module, *args),
                                launcher.framework_env(framework, variant=variant), timeout_s,
                                Path(tmp) / "analysis.log")
    except OSError as exc:
        return dict(base, status="error", error=f"cannot start the {framework} interpreter: {exc}")
    if o.stopped:
        return dict(base, status="timeout", error=f"{module} ran past {timeout_s:.0f} s")
    lines = [ln for ln in o.log.splitlines() if ln.startswith("{")]
    if lines:
        try:
            return json.loads(lines[-1])
        except json.JSONDecodeError:
            pass
    return dict(base, status="error", error=f"exit {o.code}: {o.tail(300) or 'no output'}")


def run_one(framework: str, impl: str, variant: str, model: str, batch_size: int,
            microbatch_size: int | None = None, timeout_s: float = 900.0) -> dict[str, Any]:
    """One analysis in its own process; failures become ``status: error`` dicts."""
    base = {"framework": framework, "impl": impl, "variant": variant, "model": model, "batch_size": batch_size,
            "microbatch_size": microbatch_size}
    t0 = time.monotonic()
    out = run_module(f"frameworks.{framework}.analysis", command(impl, variant, model, batch_size, microbatch_size),
                     base, timeout_s, framework, variant)
    return {**out, "elapsed_s": round(time.monotonic() - t0, 1)}  # the process's wall time, start to exit


def collect(frameworks: Sequence[str], models: Sequence[str], batch_size: int, impls: Sequence[str] | None = None,
            timeout_s: float = 900.0, progress: bool = True) -> list[dict[str, Any]]:
    out = []
    for fw in frameworks:
        for model in models:
            for impl, variant, mb in configs(fw, batch_size, impls):
                if progress:
                    print(f"[explain] {fw} {model} B={batch_size} {impl}" + (f" ({variant})" if variant else "")
                          + (f" mb={mb}" if mb else ""), file=sys.stderr, flush=True)
                out.append(run_one(fw, impl, variant, model, batch_size, mb, timeout_s))
    return out


# --------------------------------------------------------------------------
# Rendering

def _g(n: float | None) -> str:
    return "?" if n is None else f"{n / 1e9:.2f}"


def _label(a: dict[str, Any]) -> str:
    mb = a.get("microbatch_size")
    return a["impl"] + (f" mb={mb}" if mb is not None else "")


def _trips(a: dict[str, Any]) -> list[int | None]:
    """Trip counts of the step's loops (while: jax-privacy's microbatches, scan: lax.map chunks)."""
    return [lp["trips"] for lp in a["jaxpr"]["loops"]]


def _looped(a: dict[str, Any]) -> bool:
    return any(t is None or t > 1 for t in _trips(a))


def _shape(shape: list[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _groups(values: list[int], name: str) -> str:
    return f"{name} {'/'.join(str(v) for v in values)}"


def wgrad_cell(j: dict[str, Any]) -> str:
    wc, wd = j["weight_grad_convs"], j["weight_grad_dots"]
    parts = []
    if wc["count"]:
        g = [_groups(wc["feature_group_counts"], "fgc")]
        if wc["batch_group_counts"] != [1]:
            g.append(_groups(wc["batch_group_counts"], "bgc"))
        g.append(f"sums {'/'.join(map(str, wc['contracted']))} ex.")
        parts.append(f"{wc['count']} conv ({', '.join(g)})")
    if wd["count"]:
        k = [x for x in wd["k"] if x > 1]
        parts.append(f"{wd['count']} dot" + (f" (×{'/'.join(map(str, k))} batched)" if k else ""))
    return " + ".join(parts) or "none"


def _materialised(j: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(name, e) for name, e in j["per_example"].items() if e["materialised"]]


def per_example_cell(j: dict[str, Any]) -> str:
    mat = _materialised(j)
    if not mat:
        return "none"
    ks = sorted({e["examples_at_once"] for _, e in mat})
    total = sum(e["bytes"] for _, e in mat)
    return f"{', '.join(n for n, _ in mat)}: {'/'.join(map(str, ks))} ex. at once, {fmt_bytes(total)}"


# Ops that only move or pick data: named after the op that computes a tensor.
_PLUMBING = {"broadcast_in_dim", "reshape", "transpose", "select_n", "convert_element_type", "copy", "squeeze",
             "expand_dims", "concatenate", "slice", "dynamic_slice", "pad", "rev"}


def largest_cell(j: dict[str, Any]) -> str:
    if not j["largest"]:
        return "-"
    t = j["largest"][0]
    prims = sorted(t.get("primitives") or {t["primitive"]: 1}, key=lambda p: (p in _PLUMBING, -t["primitives"].get(p, 1)))
    count = f"{t['count']}× " if t.get("count", 1) > 1 else ""
    return f"{_shape(t['shape'])} {fmt_bytes(t['bytes'])} ({count}{', '.join(prims[:2])})"


def sentence(a: dict[str, Any]) -> str:
    label = f"**{_label(a)}**"
    if a.get("status") != "ok":
        return f"{label}: no analysis ({a.get('status')}: {a.get('error')})."
    j = a["jaxpr"]
    b = a["batch_size"]
    mat = _materialised(j)
    wc = j["weight_grad_convs"]
    groups = sorted(set(wc["feature_group_counts"]) | set(wc["batch_group_counts"]))
    if not mat:
        s = f"{label} materialises no per-example weight gradient"
        if wc["count"]:
            s += (f"; its {wc['count']} weight-gradient convolutions sum over "
                  f"{'/'.join(map(str, wc['contracted']))} examples inside the op "
                  f"(feature_group_count {'/'.join(map(str, wc['feature_group_counts']))})")
        return s + "."
    kbytes = sum(e["kernel_bytes"] for _, e in mat)
    ks = sorted({e["examples_at_once"] for _, e in mat})
    k = ks[-1]
    total = sum(e["bytes"] for _, e in mat)
    s = (f"{label} materialises per-example kernel gradients for {', '.join(n for n, _ in mat)} "
         f"({k} × {fmt_bytes(kbytes)} = {fmt_bytes(total)} at once")
    steps = [e.get("examples_per_step") for _, e in mat]
    per_step = [e.get("per_step_bytes") for _, e in mat]
    if k < b and None not in steps:
        s += f"; {max(steps) // k} loop iterations build {max(steps)} examples' gradients, {fmt_bytes(sum(per_step))} per step"
    s += ")"
    big_name, big = max(mat, key=lambda ne: ne[1]["bytes"])
    if big.get("tensors", 0) > 1:
        s += f"; the JAXPR makes {big['tensors']} intermediates of that kind for {big_name} (before XLA fusion)"
    rest = [n for n, e in j["per_example"].items() if not e["materialised"]]
    if rest:
        s += f"; none for {', '.join(rest)}"
    if wc["count"] and groups != [1]:
        s += f"; its weight-gradient convolutions run with feature_group_count {'/'.join(map(str, wc['feature_group_counts']))}"
        if wc["batch_group_counts"] != [1]:
            s += f", batch_group_count {'/'.join(map(str, wc['batch_group_counts']))}"
        hlo = [c for c in a.get("xla", {}).get("convs", []) if c["role"] == "weight_grad"]
        kept = sorted({c["feature_group_count"] * c["batch_group_count"] for c in hlo})
        if hlo:
            s += (f" (compiled HLO: group count {'/'.join(map(str, kept))})" if kept != [1]
                  else " (XLA rewrites them to ungrouped convolutions)")
    elif wc["count"]:
        s += f"; its weight-gradient convolutions each sum {'/'.join(map(str, wc['contracted']))} example(s)"
    return s + "."


def table(block: list[dict[str, Any]]) -> list[str]:
    head = ["impl", "microbatch", "weight-grad ops", "per-example grads materialised", "largest intermediate",
            "conv+dot GFLOP (JAXPR, × loop trips)", "XLA GFLOP", "XLA bytes accessed", "XLA temp bytes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in block:
        mb = a.get("microbatch_size")
        mb_cell = "-" if mb is None else str(mb)
        if a.get("status") != "ok":
            cells = [a["impl"], mb_cell, f"{a.get('status')}: {str(a.get('error'))[:120]}"] + [""] * (len(head) - 3)
        else:
            j, x = a["jaxpr"], a.get("xla", {})
            cost, mem = x.get("cost", {}), x.get("memory", {})
            loops = [t for t in _trips(a) if t is None or t > 1]
            if loops:
                mb_cell += f" ↻{'/'.join('?' if t is None else str(t) for t in loops)}"
            flops = _g(j["conv_dot_flops"]) + ("" if j["conv_dot_flops_known"] else " (trips ?)")
            cells = [a["impl"], mb_cell, wgrad_cell(j), per_example_cell(j), largest_cell(j), flops,
                     _g(cost.get("flops")), fmt_bytes(cost.get("bytes accessed")), fmt_bytes(mem.get("temp_size"))]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return lines


def render(analyses: list[dict[str, Any]], heading: str = "##") -> str:
    """Markdown: the seam's answers for every framework, then JAX's JAXPR/HLO detail."""
    text = analysis.render(analyses, heading)
    jax_rows = [a for a in analyses if a.get("framework") == "jax"]
    return text + ("\n" + render_jax(jax_rows, heading) if jax_rows else "")


def render_jax(analyses: list[dict[str, Any]], heading: str = "##") -> str:
    """Markdown: one table per (model, batch size) and a sentence per impl."""
    ok = [a for a in analyses if a.get("status") == "ok"]
    out = [f"{heading} Where the DP-SGD time goes in JAX: JAXPR and HLO of the timed steps", ""]
    if ok:
        v = ok[0].get("versions", {})
        out.append("Generated by `python -m common.report.explain` from the jitted steps the benchmark times "
                   f"({', '.join(f'{k} {val}' for k, val in v.items())}; device {ok[0].get('device')}; "
                   f"XLA_FLAGS `{ok[0].get('xla_flags') or '(none)'}`). A weight-gradient op is a conv/dot whose "
                   "output holds kernel-shaped gradients; *fgc* is its feature_group_count, *sums N ex.* how many "
                   "examples it reduces over. A per-example gradient is *materialised* when an intermediate holds "
                   "k kernel gradients side by side (k examples at once).")
        out.append("")
    blocks: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for a in analyses:
        blocks.setdefault((a["model"], a["batch_size"]), []).append(a)
    for (model, b), block in blocks.items():
        try:
            shape = "x".join(map(str, get_model(model).input_shape))
        except ValueError:
            shape = "?"
        out += [f"{heading}# {model} ({shape}), batch {b}", ""]
        out += table(block)
        out.append("")
        out += [f"- {sentence(a)}" for a in block]
        out.append("")
    if any(_looped(a) for a in ok):
        out += [LOOP_NOTE, ""]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Per-framework analyses of every study implementation, as Markdown.")
    ap.add_argument("out_md", type=Path)
    ap.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    ap.add_argument("--models", default="small")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--impls", default="", help="comma-separated subset of the implementations")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per analysis")
    ap.add_argument("--from-json", type=Path, default=None, help="re-render saved analyses instead of running")
    a = ap.parse_args(argv)
    if a.from_json:
        analyses = json.loads(a.from_json.read_text())
    else:
        frameworks = [f for f in a.frameworks.split(",") if f]
        models = [m for m in a.models.split(",") if m]
        impls = [i for i in a.impls.split(",") if i] or None
        try:
            for fw in frameworks:
                if fw not in FRAMEWORKS:
                    raise ValueError(f"unknown framework {fw!r}; choose from {', '.join(FRAMEWORKS)}")
            for m in models:
                get_model(m)
            known = {n for fw in frameworks for n in IMPLS[fw]}
            for i in impls or ():
                if i not in known:
                    raise ValueError(f"unknown impl {i!r}; choose from {', '.join(sorted(known))}")
            if a.batch_size <= 0:
                raise ValueError(f"batch size must be positive, got {a.batch_size}")
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        analyses = collect(frameworks, models, a.batch_size, impls, a.timeout)
        a.out_md.parent.mkdir(parents=True, exist_ok=True)
        a.out_md.with_suffix(".json").write_text(json.dumps(analyses, indent=1) + "\n")
    a.out_md.parent.mkdir(parents=True, exist_ok=True)
    a.out_md.write_text(render(analyses) + "\n")
    bad = [f"{x['framework']} {analysis.label(x)}" for x in analyses if x.get("status") != "ok"]
    if bad:  # a failed analysis is a row, as in the runner; the rest stands
        print(f"[explain] no analysis for: {', '.join(bad)}", file=sys.stderr)
    print(a.out_md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
