"""PNG plots of a run (DESIGN.md §6), from the report's data frames only.

Every implementation has one colour, the same in every plot: a stable mapping
from (framework, impl) built from the catalogue (common.harness.config.IMPLS) onto
tab10. ``standard`` is blue and ``fastclip`` green in every framework; each
framework's library impls take the other hues in catalogue order, so the six
lines of one framework's panel are six distinct hues (a hue can mean one impl
in jax's panel and another in torch's: the legend groups them per framework).
Variants are line styles and microbatch sizes (relative to B) markers, never
new colours. Line plots show study rows with the study's settings: direct-use
rows (checks) and the JAX ``xla-default`` A/B variant have their own tables.
Panels: one column per framework, one row per model; legends sit outside the
data, on the right of the figure.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from common.harness.config import FRAMEWORKS, IMPLS  # noqa: E402
from common.reference.spec import MODELS  # noqa: E402

_TAB10 = plt.get_cmap("tab10").colors
_GREY = _TAB10[7]
# standard and fastclip have one colour in every framework; each framework's library impls take the
# other hues in catalogue order; a direct-use row takes the colour of the study row it checks.
_ROLE = {"standard": _TAB10[0], "fastclip": _TAB10[2]}
_LIBRARY = [_TAB10[i] for i in (1, 3, 4, 5, 6, 8, 9)]


def _colors() -> dict[tuple[str, str], Any]:
    out: dict[tuple[str, str], Any] = {}
    for fw, impls in IMPLS.items():
        lib = iter(_LIBRARY * 2)
        for name, info in impls.items():
            if info.direct_of is None:
                out[(fw, name)] = _ROLE.get(name) or next(lib)
        for name, info in impls.items():
            if info.direct_of is not None:
                out[(fw, name)] = out.get((fw, info.direct_of[0]), _GREY)
    return out


COLORS: dict[tuple[str, str], Any] = _colors()
_KEYS = list(COLORS)
LINESTYLES = {"": "-", "graph": "-", "xla": "--", "xla-default": ":"}
MARKERS = {"": "o", "full vmap": "D", "mb=B": "s", "mb=B/4": "^", "mb=1": "v"}
MAX_LINES = 8


def color(framework: str, impl: str):
    """The fixed colour of (framework, impl); an impl outside the catalogue gets grey."""
    return COLORS.get((framework, impl), _GREY)


def mb_class(r: Any) -> str:
    """The microbatch size relative to B: "" (none applies), "full vmap", "mb=B", "mb=B/4", "mb=1", "mb=N"."""
    info = IMPLS.get(r["framework"], {}).get(r["impl"])
    mb = r["microbatch_size"]
    if info is None or info.microbatch in ("none", "per_example") or r["mode"] == "standard":
        return ""
    if mb is None or pd.isna(mb):
        return "full vmap"
    mb, b = int(mb), int(r["batch_size"])
    return "mb=B" if mb == b else "mb=1" if mb == 1 else "mb=B/4" if mb == max(b // 4, 1) else f"mb={mb}"


def _series(d: pd.DataFrame) -> pd.DataFrame:
    return d.assign(_cls=[mb_class(r) for r in d.to_dict("records")])


def _fw_models(d: pd.DataFrame) -> tuple[list[str], list[str]]:
    fws = sorted(set(d["framework"]), key=lambda f: FRAMEWORKS.index(f) if f in FRAMEWORKS else 99)
    models = sorted(set(d["model"]), key=lambda m: list(MODELS).index(m) if m in MODELS else 99)
    return fws, models


def _study(df: pd.DataFrame) -> pd.DataFrame:
    ok = df[(df["status"] == "ok") & (df["row_kind"] == "study")] if len(df) else df
    return ok[~ok["is_ab"]] if len(ok) else ok


def _legend(fig, handles: list, right: float) -> None:
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(right + 0.005, 0.5), fontsize=8, frameon=False)


def _header(text: str) -> Line2D:
    return Line2D([], [], color="none", label=text)


def _impl_handles(shown: list[tuple[str, str]], patch: bool = False) -> list:
    """Legend entries for the impls shown: standard and fastclip once (one colour in every framework),
    then each framework's own impls under its name."""
    make = ((lambda c, lab: Patch(color=c, label=lab)) if patch else
            (lambda c, lab: Line2D([], [], color=c, lw=2.5, label=lab)))
    hs: list = []
    shared = [n for n in _ROLE if any(impl == n for _, impl in shown)]
    if shared:
        hs.append(_header("every framework:"))
        hs += [make(_ROLE[n], n) for n in shared]
    for fw in dict.fromkeys(fw for fw, _ in shown):
        own = [impl for f, impl in shown if f == fw and impl not in _ROLE]
        if own:
            hs.append(_header(f"{fw}:"))
            hs += [make(color(fw, impl), impl) for impl in own]
    return hs


def _style_handles(d: pd.DataFrame, shown: list[tuple[str, str]]) -> list:
    hs = _impl_handles(shown)
    variants = [v for v in dict.fromkeys(d["variant"]) if v]
    if variants:
        hs.append(_header("variant:"))
        hs += [Line2D([], [], color="0.35", ls=LINESTYLES.get(v, "-."), label=v) for v in variants]
    classes = [c for c in MARKERS if c and c in set(d["_cls"])] + sorted(set(d["_cls"]) - set(MARKERS))
    if classes:
        hs.append(_header("microbatch:"))
        hs += [Line2D([], [], color="0.35", ls="", marker=MARKERS.get(c, "x"), label=c) for c in classes]
    return hs


def panel_series(p: pd.DataFrame) -> tuple[list, str]:
    """The lines of one panel: (impl, variant, microbatch class) groups of rows with ``_cls``; when
    there are more than MAX_LINES, the fastest variant of each (impl, microbatch class) at each B
    (then a note for the title says so)."""
    groups = list(p.groupby(["impl", "variant", "_cls"], sort=False))
    if len(groups) <= MAX_LINES:
        return groups, ""
    best = p.loc[p.groupby(["impl", "_cls", "batch_size"])["throughput_sps"].idxmax()].assign(variant="")
    return list(best.groupby(["impl", "variant", "_cls"], sort=False)), " (best variant)"


def _lines(df: pd.DataFrame, path: Path, column: str, ylabel: str, title: str, scale: float = 1.0,
           dp_only: bool = False, pct: bool = False) -> Path | None:
    """Per (model, framework) panel: column vs batch size, one line per impl/variant/microbatch class."""
    d = _study(df)
    if dp_only and len(d):
        d = d[d["mode"] == "dp"]
    d = d.dropna(subset=[column]) if len(d) else d
    if d.empty:
        return None
    d = _series(d)
    fws, models = _fw_models(d)
    fig, axes = plt.subplots(len(models), len(fws), figsize=(4.6 * len(fws) + 2.4, 3.6 * len(models)),
                             squeeze=False, sharey=True)
    shown: dict[tuple[str, str], None] = {}
    for i, model in enumerate(models):
        for j, fw in enumerate(fws):
            ax = axes[i, j]
            p = d[(d["model"] == model) & (d["framework"] == fw)]
            groups, note = panel_series(p)
            for (impl, variant, cls), g in groups:
                g = g.sort_values("batch_size")
                lw = 2.2 if g["mode"].iloc[0] == "standard" else 1.5
                ax.plot(g["batch_size"], g[column] / scale, color=color(fw, impl), ls=LINESTYLES.get(variant, "-."),
                        marker=MARKERS.get(cls, "x"), lw=lw, ms=5)
                if pct and "pct_lo" in g:  # the paired ratio's 95 % interval
                    ci = g.dropna(subset=["pct_lo", "pct_hi"])
                    ax.vlines(ci["batch_size"], ci["pct_lo"], ci["pct_hi"], color=color(fw, impl), lw=3, alpha=0.45)
                shown[(fw, impl)] = None
            if pct:
                ax.axhline(100, color="0.5", lw=0.8)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            sizes = sorted(set(d["batch_size"]))
            ax.set_xticks(sizes, [str(b) for b in sizes])
            ax.xaxis.set_minor_formatter(NullFormatter())
            if pct:
                ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
                ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
            ax.set_title(f"{fw} — {model}{note}", fontsize=10)
            ax.grid(alpha=0.3, which="both")
            if i == len(models) - 1:
                ax.set_xlabel("batch size")
            if j == 0:
                ax.set_ylabel(ylabel)
            if p.empty:
                ax.text(0.5, 0.5, "no ok rows", transform=ax.transAxes, ha="center", color="0.5")
    fig.suptitle(title)
    right = 1 - 2.4 / (4.6 * len(fws) + 2.4)
    fig.tight_layout(rect=(0, 0, right, 0.97))
    order = [k for k in _KEYS if k in shown] + [k for k in shown if k not in _KEYS]
    _legend(fig, _style_handles(d, order), right)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# The headline's two DP picks per framework (common.report.build.headline_frame): (column prefix, bar hatch, legend text).
HEADLINE_BARS = (("dp", "", "best overall (solid)"), ("lib", "////", "best library (hatched)"))


def headline_chart(h: pd.DataFrame, path: Path) -> Path | None:
    """Per model and B, each framework's two fastest per-example DP study rows as % of the fastest standard of
    any framework: best overall (solid bar; fastclip in practice) and best DP library (hatched bar); colour =
    its impl, its own framework's standard % annotated above each bar."""
    cols = [f"{p}_pct_of_fastest_standard" for p, _, _ in HEADLINE_BARS]
    if h is None or h.empty or not set(cols) <= set(h.columns) or h[cols].isna().all().all():
        return None
    h = h.dropna(subset=cols, how="all")
    fws, models = _fw_models(h)
    sizes = {m: sorted(set(h.loc[h["model"] == m, "batch_size"])) for m in models}
    width = max(len(sizes[m]) for m in models) * len(fws)
    fig, axes = plt.subplots(1, len(models), figsize=(max(4.0, 0.95 * width + 1.2) * len(models) + 2.6, 5.2),
                             squeeze=False, sharey=True)
    shown: dict[tuple[str, str], None] = {}
    top = max(100.0, float(h[cols].max().max()))
    bw = 0.44
    for ax, model in zip(axes[0], models):
        ticks, labels = [], []
        for gi, b in enumerate(sizes[model]):
            for fi, fw in enumerate(fws):
                x0 = gi * (len(fws) + 0.6) + fi
                ticks.append(x0)
                labels.append(fw)
                r = h[(h["model"] == model) & (h["batch_size"] == b) & (h["framework"] == fw)]
                for k, (p, hatch, _) in enumerate(HEADLINE_BARS):
                    x = x0 + (k - 0.5) * bw
                    v = r[f"{p}_pct_of_fastest_standard"].iloc[0] if len(r) else float("nan")
                    if pd.isna(v):  # "none ok: ..." where rows of it failed, no label where none was run
                        tried = len(r) and isinstance(r[f"{p}_label"].iloc[0], str)
                        ax.text(x, top * 0.01, "none\nok" if tried else "not\nrun", ha="center", va="bottom",
                                fontsize=7, color="0.4")
                        continue
                    impl = r[f"{p}_impl"].iloc[0]
                    ax.bar(x, v, width=bw * 0.95, color=color(fw, impl), hatch=hatch, edgecolor="0.2", lw=0.5)
                    shown[(fw, impl)] = None
                    own = r[f"{p}_pct_of_standard"].iloc[0]
                    own = "-" if pd.isna(own) else f"{own:.0f}%"
                    ax.text(x, v + top * 0.01, f"{v:.0f}%\nown {own}", ha="center", va="bottom", fontsize=7)
            ax.text(gi * (len(fws) + 0.6) + (len(fws) - 1) / 2, -0.11, f"B = {b}",
                    transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize=9)
        ax.set_xticks(ticks, labels, fontsize=8)
        ax.set_xlim(ticks[0] - 0.7, ticks[-1] + 0.7)
        ax.axhline(100, color="0.5", lw=0.8)
        ax.set_ylim(0, top * 1.2)
        ax.set_title(f"{model}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_ylabel("% of the fastest standard (any framework)")
    fig.suptitle("Fastest per-example DP rows of each framework: best overall (solid) and best DP library (hatched)\n"
                 "bar: % of the fastest standard of any framework; own: % of its own framework's standard",
                 fontsize=9)
    total_w = fig.get_size_inches()[0]
    right = 1 - 2.6 / total_w
    fig.tight_layout(rect=(0, 0.03, right, 0.94))
    order = [k for k in _KEYS if k in shown] + [k for k in shown if k not in _KEYS]
    picks = [_header("DP pick:")] + [Patch(facecolor="white", edgecolor="0.2", hatch=hatch, label=text)
                                     for _, hatch, text in HEADLINE_BARS]
    _legend(fig, picks + _impl_handles(order, patch=True), right)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_all(df: pd.DataFrame, out: Path, headline: pd.DataFrame | None = None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    made = [
        headline_chart(headline, out / "headline.png"),
        _lines(df, out / "throughput_vs_batch.png", "throughput_sps", "samples/s",
               "throughput vs batch size (log-log)"),
        _lines(df, out / "pct_of_standard.png", "pct_of_standard", "% of own framework's standard",
               "DP throughput as % of its framework's standard (paired; bars: 95 % interval)", dp_only=True,
               pct=True),
        _lines(df, out / "peak_memory.png", "peak_mem_bytes", "peak memory (MiB)", "peak memory", scale=2**20),
    ]
    return [p for p in made if p is not None]

