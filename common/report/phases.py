"""Where a training step's time goes: tables and a plot of the phase breakdown.

With ``RunConfig.phases`` the worker times cumulative prefixes of each step
(``Bench.phases``: forward; + backward, per-example gradients or norms as the
impl does them; + clip and sum; + noise) and stores in the record's notes
``phases_s`` (median step seconds of each prefix, the full step last) and
``phase_breakdown_s`` (each phase alone: its prefix minus the earlier ones;
``update`` = full step minus the last prefix). Which operations each phase
holds differs by framework and impl (each adapter's docstring says), so a
phase that merges two (``backward+clip``, ``clip+noise``) keeps its own
name and column. Everything here is read from records only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from common.harness import records

# Column / legend order; phases not listed here go before "update".
ORDER = ("forward", "backward", "backward+clip", "clip", "clip+noise", "noise", "update")
COLORS = {"forward": "#4c72b0", "backward": "#dd8452", "backward+clip": "#c44e52", "clip": "#8172b3",
          "clip+noise": "#937860", "noise": "#55a868", "update": "#8c8c8c"}


def rows(recs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per configuration, the latest ok record that has a phase breakdown; sorted."""
    out = records.latest(r for r in recs
                         if r.get("status") == "ok" and (r.get("notes") or {}).get("phase_breakdown_s"))
    mode = {"standard": 0, "dp": 1}
    return sorted(out, key=lambda r: (r["model"], r["batch_size"], r["framework"], mode.get(r["mode"], 2), r["impl"],
                                      r.get("variant") or "", -(r.get("microbatch_size") or 10**9)))


def phase_names(rs: Iterable[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for r in rs:
        seen.update(dict.fromkeys(r["notes"]["phase_breakdown_s"]))
    known = [p for p in ORDER if p in seen and p != "update"]
    other = [p for p in seen if p not in ORDER]
    return known + other + (["update"] if "update" in seen else [])


def label(r: dict[str, Any]) -> str:
    """framework:impl (variant) mb=N."""
    text = f"{r['framework']}:{r['impl']}"
    if r.get("variant"):
        text += f" ({r['variant']})"
    if r.get("microbatch_size") is not None and r["mode"] != "standard":
        text += f" mb={r['microbatch_size']}"
    return text


def _step_s(r: dict[str, Any]) -> float:
    return float(sum(r["notes"]["phase_breakdown_s"].values()))


def _fmt(s: float) -> str:
    return f"{s:.3g}"


def table(recs: Iterable[dict[str, Any]]) -> list[str]:
    """Markdown lines: per model, one row per (framework, impl, variant,
    microbatch, batch size); each phase's seconds and % of the step."""
    rs = rows(recs)
    if not rs:
        return []
    out: list[str] = []
    for model in dict.fromkeys(r["model"] for r in rs):
        block = [r for r in rs if r["model"] == model]
        names = phase_names(block)
        out += [f"### Phase breakdown: {model}", "",
                "Seconds per step of each phase (% of the step). Each cumulative prefix of the step is compiled and "
                "timed on its own (short timing) and differenced; `update` is the full step's median minus the last "
                "prefix. An empty cell: the impl has no cut there (its phases are merged into a named one).", ""]
        out += ["| Framework | Implementation | Microbatch | Batch | Step (s) | " + " | ".join(names) + " |",
                "|" + "---|" * (5 + len(names))]
        for r in block:
            parts = r["notes"]["phase_breakdown_s"]
            step, total = r["step_s_median"], _step_s(r) or 1.0
            cells = [r["framework"], r["impl"] + (f" ({r['variant']})" if r.get("variant") else ""),
                     "-" if r.get("microbatch_size") is None else str(r["microbatch_size"]), str(r["batch_size"]),
                     _fmt(step)]
            for n in names:
                cells.append(f"{_fmt(parts[n])} ({100 * parts[n] / total:.0f}%)" if n in parts else "")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return out


def plot(recs: Iterable[dict[str, Any]], path: str | Path, batch_size: int | None = None) -> Path | None:
    """Stacked horizontal bars per model: one bar per framework:impl at one
    batch size (``batch_size``, else the model's largest with phase data),
    segments = phases; seconds on the left, % of the step on the right.
    None when no record has a breakdown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rs = rows(recs)
    models = list(dict.fromkeys(r["model"] for r in rs))
    blocks = []
    for model in models:
        sizes = sorted({r["batch_size"] for r in rs if r["model"] == model})
        b = batch_size if batch_size is not None else (sizes[-1] if sizes else None)
        block = [r for r in rs if r["model"] == model and r["batch_size"] == b]
        if block:
            blocks.append((model, b, block))
    if not blocks:
        return None
    height = sum(1.6 + 0.35 * len(block) for _, _, block in blocks)
    fig, axes = plt.subplots(len(blocks), 2, figsize=(14, height), squeeze=False)
    for (model, b, block), (ax_s, ax_p) in zip(blocks, axes):
        names = phase_names(block)
        labels = [label(r) for r in block][::-1]
        block = block[::-1]  # first row on top
        for ax, pct in ((ax_s, False), (ax_p, True)):
            left = [0.0] * len(block)
            for n in names:
                widths = []
                for r in block:
                    v = r["notes"]["phase_breakdown_s"].get(n, 0.0)
                    widths.append(100 * v / _step_s(r) if pct and _step_s(r) > 0 else v)
                ax.barh(labels, widths, left=left, color=COLORS.get(n), label=n, edgecolor="white", linewidth=0.5)
                left = [a + w for a, w in zip(left, widths)]
            ax.set_xlabel("% of step" if pct else "seconds per step")
            ax.grid(axis="x", alpha=0.3)
            ax.tick_params(axis="y", labelsize=7)
        ax_p.set_yticklabels([])
        ax_s.set_title(f"phase breakdown — {model}, batch {b}")
        ax_p.set_title("share of the step")
        ax_p.set_xlim(0, 100)
        ax_p.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="phase", title_fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
