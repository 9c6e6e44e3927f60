"""PNG plots of a run (docs/design.md), from the report's data frames only.

Every implementation has one colour, the same in every plot: one global
mapping (framework, impl) -> colour built from the catalogue
(common.harness.config.IMPLS) onto a colour-blind-friendly hand list (Okabe-Ito
plus Paul Tol's muted hues). ``standard`` is near-black and ``fastclip`` green
in every framework (one impl each; the panel or label names the framework);
every other study impl of every framework has its own hue, so a hue never
means two libraries' impls; a direct-use row takes the colour of the study row
it checks. Variants are line styles and microbatch sizes (relative to B)
markers, never new colours.

Plots (``write_all``):

- ``headline.png`` (``headline_chart``): from common.report.findings' frame,
  each framework's DP libraries (their fastest mode) and fastclip as % of their
  own framework's standard, per (model, B), with 95 % intervals; sized to read
  at README width.
- ``pct_of_standard.png``, ``throughput_vs_batch.png``,
  ``memory_vs_standard.png`` (DP peak memory / its own standard's) and
  ``peak_memory.png`` (MiB): per (model, framework) panel, values vs batch size.
  Study rows with the study's settings only: direct-use rows (checks) and the
  JAX ``xla-default`` A/B variant have their own tables. A configuration that
  failed (oom, timeout, skipped, ...) is marked at the foot of its panel at its
  batch size, in its impl's colour, one marker shape per status. Legends sit
  outside the data, on the right of the figure.

Every drawn data artist carries ``gid`` "framework/impl" (tests check its
colour against ``color``).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from common.harness.config import FRAMEWORKS, IMPLS  # noqa: E402
from common.report import findings  # noqa: E402
from common.reference.spec import MODELS  # noqa: E402

# --- colours ------------------------------------------------------------------------------------

GREY = "#888888"  # an impl outside the catalogue
ROLE = {"standard": "#222222", "fastclip": "#009E73"}  # one colour in every framework
# The library impls of every framework, in catalogue order: Okabe-Ito, then Paul Tol's muted hues
# (then spares, should the catalogue grow; tests/common/report/test_plots.py checks no two share one).
LIBRARY_PALETTE = ("#0072B2", "#E69F00", "#56B4E9", "#CC79A7", "#D55E00", "#8C510A", "#999933", "#882255",
                   "#332288", "#44AA99", "#DDCC77", "#AA4499", "#117733", "#CC6677", "#88CCEE", "#661100")


def _colors() -> dict[tuple[str, str], str]:
    out: dict[tuple[str, str], str] = {}
    lib = iter(LIBRARY_PALETTE)
    for fw, impls in IMPLS.items():
        for name, info in impls.items():
            if info.direct_of is None:
                out[(fw, name)] = ROLE.get(name) or next(lib, GREY)
    for fw, impls in IMPLS.items():
        for name, info in impls.items():
            if info.direct_of is not None:
                out[(fw, name)] = out.get((fw, info.direct_of[0]), GREY)
    return out


COLORS: dict[tuple[str, str], str] = _colors()
_KEYS = list(COLORS)
LINESTYLES = {"": "-", "graph": "-", "xla": "--", "xla-default": ":"}
MARKERS = {"": "o", "full vmap": "D", "mb=B": "s", "mb=B/4": "^", "mb=1": "v"}
# A configuration without a value, at the foot of its panel: (marker, filled, legend text).
FAILED = {"oom": ("X", True, "oom"), "timeout": ("P", True, "timeout"),
          "skipped": ("X", False, "skipped (a smaller B failed)"), "killed": ("*", True, "killed"),
          "error": ("*", False, "error"), "unsupported": ("d", False, "unsupported")}
FOOT = 0.13  # the share of a panel's height kept free of data for the failure marks
MAX_LINES = 8


def color(framework: str, impl: str) -> str:
    """The fixed colour of (framework, impl); an impl outside the catalogue gets grey."""
    return COLORS.get((framework, impl), GREY)


# --- shared helpers ------------------------------------------------------------------------------

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


def _fw_rank(fw: str) -> int:
    return FRAMEWORKS.index(fw) if fw in FRAMEWORKS else 99


def _model_rank(m: str) -> int:
    return list(MODELS).index(m) if m in MODELS else 99


def _fw_models(d: pd.DataFrame) -> tuple[list[str], list[str]]:
    return sorted(set(d["framework"]), key=_fw_rank), sorted(set(d["model"]), key=_model_rank)


def _study_all(df: pd.DataFrame) -> pd.DataFrame:
    """Study rows with the study's settings, every status (no checks, no A/B variant)."""
    if not len(df):
        return df
    st = df[df["row_kind"] == "study"]
    return st[~st["is_ab"].astype(bool)]


def _study(df: pd.DataFrame) -> pd.DataFrame:
    """The ok rows of ``_study_all``."""
    st = _study_all(df)
    return st[st["status"] == "ok"] if len(st) else st


def _header(text: str) -> Line2D:
    return Line2D([], [], color="none", label=text)


def _impl_handles(shown: list[tuple[str, str]]) -> list:
    """Legend entries for the impls shown: standard and fastclip once (one colour in every framework),
    then each framework's own impls under its name."""
    hs: list = []
    shared = [n for n in ROLE if any(impl == n for _, impl in shown)]
    if shared:
        hs.append(_header("every framework:"))
        hs += [Line2D([], [], color=ROLE[n], lw=2.5, label=n) for n in shared]
    for fw in dict.fromkeys(fw for fw, _ in shown):
        own = [impl for f, impl in shown if f == fw and impl not in ROLE]
        if own:
            hs.append(_header(f"{fw}:"))
            hs += [Line2D([], [], color=color(fw, impl), lw=2.5, label=impl) for impl in own]
    return hs


def _failed_handles(statuses: set[str]) -> list:
    hs = [_header("failed (foot of panel):")] if statuses else []
    for s in [s for s in FAILED if s in statuses] + sorted(statuses - set(FAILED)):
        m, filled, text = FAILED.get(s, ("*", False, s))
        hs.append(Line2D([], [], ls="", marker=m, ms=8, color="0.35", mfc="0.35" if filled else "none",
                         mew=1.5, label=text))
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


def _save(fig: Figure | None, path: Path, dpi: int = 90) -> Path | None:
    if fig is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


# --- per-B line plots ----------------------------------------------------------------------------

def panel_series(p: pd.DataFrame) -> tuple[list, str]:
    """The lines of one panel: (impl, variant, microbatch class) groups of rows with ``_cls``; when
    there are more than MAX_LINES, the fastest variant of each (impl, microbatch class) at each B
    (then a note for the title says so)."""
    groups = list(p.groupby(["impl", "variant", "_cls"], sort=False))
    if len(groups) <= MAX_LINES:
        return groups, ""
    best = p.loc[p.groupby(["impl", "_cls", "batch_size"])["throughput_sps"].idxmax()].assign(variant="")
    return list(best.groupby(["impl", "variant", "_cls"], sort=False)), " (best variant)"


def failed_marks(ok: pd.DataFrame, failed: pd.DataFrame, collapsed: bool) -> pd.DataFrame:
    """The failed rows of one panel to mark: one per (impl, microbatch class, B, status), leaving out a
    configuration whose line has an ok point at that B (another variant of it, when the panel shows the
    best variant)."""
    if failed.empty:
        return failed
    key = ["impl", "_cls"] if collapsed else ["impl", "variant", "_cls"]
    have = set(map(tuple, ok[key + ["batch_size"]].to_numpy().tolist())) if len(ok) else set()
    keep = [tuple(r) not in have for r in failed[key + ["batch_size"]].to_numpy().tolist()]
    return failed[keep].drop_duplicates(["impl", "_cls", "batch_size", "status"])


def mem_multiples(df: pd.DataFrame) -> pd.Series:
    """Each row's peak memory over its own standard's (findings.mem_multiple: same framework, model, B,
    variant); NaN where there is none."""
    return pd.Series([findings.mem_multiple(df, r) for _, r in df.iterrows()], index=df.index, dtype=float)


def memory_caption(df: pd.DataFrame) -> str:
    """What a peak-memory number is, from the rows' mem_source and allocator."""
    allocs = sorted(set(df["allocator"].dropna())) if "allocator" in df else []
    sources = set(df["mem_source"].dropna()) if "mem_source" in df else set()
    rss = bool(sources) and all(str(s).startswith("rss") for s in sources)
    what = "peak RSS above the worker's idle baseline" if rss else "peak memory (RSS above baseline on CPU, " \
        "the framework allocator's peak on GPU)"
    if rss and allocs == ["keep"]:
        return (f"{what}, under the `keep` allocator (glibc malloc tuned not to return freed memory, applied to "
                "every framework):\nit counts freed blocks the allocator keeps")
    return f"{what}; allocator: {', '.join(allocs) or 'unknown'}"


def lines_figure(df: pd.DataFrame, column: str, ylabel: str, title: str, scale: float = 1.0,
                 dp_only: bool = False, pct: bool = False, ref: float | None = None,
                 fmt: str | None = None) -> Figure | None:
    """Per (model, framework) panel: ``column`` (/ ``scale``) vs batch size on log-log axes, one line per
    impl/variant/microbatch class; ``pct``: the paired 95 % interval as error bars (pct_lo/pct_hi);
    ``ref``: a reference level (100 % or 1x: the standard) drawn and kept in range; failed configurations
    marked at the foot of their panel."""
    st = _study_all(df)
    if dp_only and len(st):
        st = st[st["mode"] == "dp"]
    if st.empty:
        return None
    st = _series(st)
    ok = st[st["status"] == "ok"].dropna(subset=[column])
    if ok.empty:
        return None
    failed = st[st["status"] != "ok"]
    fws, models = _fw_models(ok)
    sizes = sorted(set(st["batch_size"]))
    panel_w, side = 4.6, 3.0
    fig, axes = plt.subplots(len(models), len(fws), figsize=(panel_w * len(fws) + side, 3.6 * len(models) + 0.6),
                             squeeze=False, sharey=True)
    shown: dict[tuple[str, str], None] = {}
    statuses: set[str] = set()
    values: list[float] = [ref] if ref else []
    for i, model in enumerate(models):
        for j, fw in enumerate(fws):
            ax = axes[i, j]
            p = ok[(ok["model"] == model) & (ok["framework"] == fw)]
            groups, note = panel_series(p)
            n = len(groups)
            for k, ((impl, variant, cls), g) in enumerate(groups):
                g = g.sort_values("batch_size")
                c, gid = color(fw, impl), f"{fw}/{impl}"
                # with error bars, lines sit a little apart at each B so that the bars do not hide one another
                x = g["batch_size"] * (2 ** (0.05 * (k - (n - 1) / 2)) if pct else 1.0)
                y = g[column] / scale
                lw = 2.2 if g["mode"].iloc[0] == "standard" else 1.5
                ax.plot(x, y, color=c, ls=LINESTYLES.get(variant, "-."), marker=MARKERS.get(cls, "x"), lw=lw, ms=5,
                        gid=gid)
                values += list(y)
                if pct and {"pct_lo", "pct_hi"} <= set(g.columns):
                    has = g["pct_lo"].notna() & g["pct_hi"].notna()
                    if has.any():
                        lo, hi = g.loc[has, "pct_lo"].to_numpy(float), g.loc[has, "pct_hi"].to_numpy(float)
                        yy = y[has].to_numpy(float)
                        eb = ax.errorbar(x[has].to_numpy(float), yy, yerr=np.vstack([(yy - lo).clip(0), (hi - yy).clip(0)]),
                                         fmt="none", ecolor=c, elinewidth=1.3, capsize=3, alpha=0.8)
                        for art in eb.get_children():
                            art.set_gid(gid)
                        values += list(lo) + list(hi)
                shown[(fw, impl)] = None
            pf = failed[(failed["model"] == model) & (failed["framework"] == fw)]
            marks = failed_marks(p, pf, bool(note))
            for b, at_b in marks.groupby("batch_size"):
                for k, (_, r) in enumerate(at_b.iterrows()):
                    m, filled, _ = FAILED.get(r["status"], ("*", False, r["status"]))
                    c = color(fw, r["impl"])
                    xb = b * 2 ** (0.16 * (k - (len(at_b) - 1) / 2))
                    ax.plot([xb], [FOOT / 2], ls="", marker=m, ms=9, mew=1.8, color=c, mfc=c if filled else "none",
                            transform=ax.get_xaxis_transform(), clip_on=False, gid=f"{fw}/{r['impl']}")
                    statuses.add(r["status"])
                    shown.setdefault((fw, r["impl"]), None)
            if ref:
                ax.axhline(ref, color="0.3", lw=1.0, ls=(0, (4, 2)))
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(sizes, [str(b) for b in sizes])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlim(sizes[0] / 1.6, sizes[-1] * 1.6)
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
            ax.yaxis.set_minor_formatter(NullFormatter())
            if fmt:
                ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _, f=fmt: f.format(v)))
            ax.set_title(f"{fw} — {model}{note}", fontsize=10)
            ax.grid(alpha=0.3, which="major")
            if i == len(models) - 1:
                ax.set_xlabel("batch size")
            if j == 0:
                ax.set_ylabel(ylabel)
            if p.empty:
                ax.text(0.5, 0.5, "no ok rows", transform=ax.transAxes, ha="center", color="0.4")
    # one y range for every panel, with the foot of each panel (FOOT of its height) left free for the marks
    pos = [v for v in values if v and v > 0 and math.isfinite(v)]
    lo, hi = math.log(min(pos) / 1.25), math.log(max(pos) * 1.25)
    if statuses:
        lo -= FOOT / (1 - FOOT) * (hi - lo)
        for ax in axes.flat:
            ax.add_patch(Rectangle((0, 0), 1, FOOT, transform=ax.transAxes, color="0.92", zorder=0, lw=0))
    axes[0, 0].set_ylim(math.exp(lo), math.exp(hi))
    fig.suptitle(title, fontsize=11)
    right = 1 - side / fig.get_size_inches()[0]
    fig.tight_layout(rect=(0, 0, right, 1))  # tight_layout leaves the suptitle its room
    order = [k for k in _KEYS if k in shown] + [k for k in shown if k not in _KEYS]
    hs = _style_handles(ok, order) + _failed_handles(statuses)
    if ref and pct:
        hs.append(Line2D([], [], color="0.3", lw=1.0, ls=(0, (4, 2)), label="standard = 100 %"))
    elif ref:
        hs.append(Line2D([], [], color="0.3", lw=1.0, ls=(0, (4, 2)), label=f"standard = {ref:g}x"))
    fig.legend(handles=hs, loc="center left", bbox_to_anchor=(right + 0.005, 0.5), fontsize=8.5, frameon=False)
    return fig


def _pct_figure(df: pd.DataFrame) -> Figure | None:
    return lines_figure(df, "pct_of_standard", "% of own framework's standard",
                        "DP throughput as % of its own framework's standard (same model, B, variant; paired); "
                        "error bars: 95 % interval", dp_only=True, pct=True, ref=100.0, fmt="{:g}%")


def _throughput_figure(df: pd.DataFrame) -> Figure | None:
    return lines_figure(df, "throughput_sps", "samples/s", "throughput vs batch size (log-log)")


def _memory_multiple_figure(df: pd.DataFrame) -> Figure | None:
    if not len(df):
        return None
    d = df.assign(mem_multiple=mem_multiples(df))
    return lines_figure(d, "mem_multiple", "peak memory / own standard's",
                        "DP peak memory as a multiple of its own framework's standard's (same model, B, variant)\n"
                        + memory_caption(df), dp_only=True, ref=1.0, fmt="{:g}x")


def _memory_mib_figure(df: pd.DataFrame) -> Figure | None:
    return lines_figure(df, "peak_mem_bytes", "peak memory (MiB)", "peak memory (MiB)\n" + memory_caption(df),
                        scale=2**20)


# --- the headline --------------------------------------------------------------------------------

HEADLINE_TITLE = ("% of own framework's standard training throughput (same model, batch)\n"
                  "error bars: 95 % interval")
HEADLINE_FONT = 10  # the smallest font: the figure is scaled to ~900 px in the README
_FINDINGS_COLUMNS = {"framework", "option", "is_fastclip", "model", "batch_size", "status", "impl", "pct", "pct_lo",
                     "pct_hi", "paired"}
UNPAIRED_ALPHA = 0.35


def bar_label(r: Any) -> str:
    """The one number over a headline bar: "46%"; "≈ standard" above 100 % where the interval reaches
    100 %; "(46%)" for an unpaired value (no interval)."""
    pct, lo = r["pct"], r["pct_lo"]
    if pct > 100 and pd.notna(lo) and lo <= 100:
        return "≈ standard"
    return f"{pct:.0f}%" if r["paired"] else f"({pct:.0f}%)"


def legend_label(r: Any) -> str:
    """"Opacus: grad_sample_mode="ghost"", "fastclip (JAX): study XLA flag": the option and the setting
    findings.pick named (short: the XLA flag by name, no markdown)."""
    setting = r.get("setting")
    setting = r["impl"] if not isinstance(setting, str) or not setting else setting
    text = setting.replace("`", "").removeprefix("fastclip").lstrip(", ")
    text = text.replace("XLA flag --xla_cpu_experimental_ynn_fusion_type=", "study XLA flag")
    return f"{r['option']}: {text}" if text else str(r["option"])


def headline_figure(f: pd.DataFrame) -> Figure | None:
    """The headline from common.report.findings' frame: one panel per (model, framework), a group of bars
    per B: each DP library's fastest per-example mode (its impl's colour) and fastclip (green, hatched) as %
    of its own framework's standard, with the 95 % interval; unpaired values faded; a cell with no ok row
    names its statuses."""
    if f is None or f.empty or not _FINDINGS_COLUMNS <= set(f.columns):
        return None
    f = f.copy()
    if not (f["status"] == "ok").any():
        return None
    fws, models = _fw_models(f)
    ok = f[f["status"] == "ok"]
    top = max(100.0, float(pd.concat([ok["pct"], ok["pct_hi"]]).max()))
    ymax = top * 1.32
    fig, axes = plt.subplots(len(models), len(fws), figsize=(9.6, 2.45 * len(models) + 1.7), squeeze=False,
                             sharey=True)
    shown: dict[tuple[str, str], str] = {}
    unpaired = False
    for i, model in enumerate(models):
        for j, fw in enumerate(fws):
            ax = axes[i, j]
            p = f[(f["model"] == model) & (f["framework"] == fw)]
            opts = list(dict.fromkeys(p.sort_values("is_fastclip", kind="stable")["option"]))
            sizes = sorted(set(p["batch_size"]))
            bw = 0.86 / max(len(opts), 1)
            for gi, b in enumerate(sizes):
                for k, opt in enumerate(opts):
                    x = gi + (k - (len(opts) - 1) / 2) * bw
                    rr = p[(p["batch_size"] == b) & (p["option"] == opt)]
                    if rr.empty:
                        continue
                    r = rr.iloc[0]
                    if r["status"] != "ok":
                        text = "not\nrun" if r["status"] == "not run" else "\n".join(str(r["status"]).split("/"))
                        ax.text(x, ymax * 0.02, text, ha="center", va="bottom", fontsize=HEADLINE_FONT, color="0.3",
                                style="italic")
                        continue
                    fast = bool(r["is_fastclip"])
                    c, gid = color(fw, r["impl"]), f"{fw}/{r['impl']}"
                    paired = bool(r["paired"])
                    unpaired |= not paired
                    ax.bar(x, r["pct"], width=bw * 0.94, color=c, alpha=1.0 if paired else UNPAIRED_ALPHA,
                           hatch="///" if fast else None, edgecolor="0.1" if fast else c, lw=1.0, gid=gid)
                    if not paired:  # the outline at full strength: the colour stays readable
                        ax.bar(x, r["pct"], width=bw * 0.94, fill=False, edgecolor="0.1" if fast else c, lw=1.0,
                               ls="--", gid=gid)
                    up = r["pct"]
                    if paired and pd.notna(r["pct_lo"]):
                        ax.errorbar([x], [r["pct"]], yerr=np.array([[max(r["pct"] - r["pct_lo"], 0)],
                                                                   [max(r["pct_hi"] - r["pct"], 0)]]),
                                    fmt="none", ecolor="0.1", elinewidth=1.3, capsize=4)
                        up = max(up, r["pct_hi"])
                    ax.text(x, up + ymax * 0.015, bar_label(r), ha="center", va="bottom", fontsize=HEADLINE_FONT,
                            linespacing=0.95)
                    # the legend names what was picked: the library's setting (mode, XLA on or off)
                    shown.setdefault((fw, r["impl"], legend_label(r)), legend_label(r))
            ax.axhline(100, color="0.2", lw=1.1, ls=(0, (4, 2)), zorder=0.5)
            ax.set_xticks(range(len(sizes)), [f"B = {b}" for b in sizes], fontsize=HEADLINE_FONT)
            ax.set_xlim(-0.52, len(sizes) - 0.48)
            ax.set_ylim(0, ymax)
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
            ax.tick_params(axis="y", labelsize=HEADLINE_FONT)
            ax.grid(axis="y", alpha=0.3)
            ax.set_axisbelow(True)
            if i == 0:
                ax.set_title(findings.FRAMEWORK_NAMES.get(fw, fw), fontsize=HEADLINE_FONT + 1, fontweight="bold")
            if j == 0:
                spec = MODELS.get(model)
                ax.set_ylabel(f"{model} model" + (f"\n{'×'.join(map(str, spec.input_shape))} input" if spec else ""),
                              fontsize=HEADLINE_FONT)
    fig.suptitle(HEADLINE_TITLE, fontsize=HEADLINE_FONT + 2)
    hs = [Patch(facecolor=color(fw, impl), edgecolor="0.1" if impl == "fastclip" else color(fw, impl),
                hatch="///" if impl == "fastclip" else None, label=label)
          for (fw, impl, _), label in sorted(shown.items(), key=lambda kv: (kv[0][1] == "fastclip",
                                                                          _fw_rank(kv[0][0])))]
    hs = list({h.get_label(): h for h in hs}.values())
    hs.append(Line2D([], [], color="0.2", lw=1.1, ls=(0, (4, 2)), label="standard training = 100 %"))
    if unpaired:
        hs.append(Patch(facecolor="0.6", alpha=UNPAIRED_ALPHA, edgecolor="0.1", ls="--",
                        label="faded, (n%): unpaired, no interval"))
    ncol = 2
    rows = math.ceil(len(hs) / ncol)
    fig.legend(handles=hs, loc="lower center", ncol=ncol, fontsize=HEADLINE_FONT, frameon=False,
               bbox_to_anchor=(0.5, 0.0), handlelength=1.8, columnspacing=1.2)
    h = fig.get_size_inches()[1]
    fig.tight_layout(rect=(0, (0.3 * rows + 0.15) / h, 1, 1 - 0.1 / h))
    return fig


def headline_chart(f: pd.DataFrame, path: Path) -> Path | None:
    """``headline_figure`` of common.report.findings' frame, written to ``path`` (None: nothing to draw)."""
    return _save(headline_figure(f), path, dpi=100)


# --- all of them ---------------------------------------------------------------------------------

def write_all(df: pd.DataFrame, out: Path, headline: pd.DataFrame | None = None) -> list[Path]:
    """Write the run's PNGs under ``out``; the paths written. ``headline``: common.report.findings.frame(df)
    (computed when None)."""
    out.mkdir(parents=True, exist_ok=True)
    if headline is None:
        headline = findings.frame(df) if len(df) else None
    made = [
        headline_chart(headline, out / "headline.png"),
        _save(_pct_figure(df), out / "pct_of_standard.png"),
        _save(_throughput_figure(df), out / "throughput_vs_batch.png"),
        _save(_memory_multiple_figure(df), out / "memory_vs_standard.png"),
        _save(_memory_mib_figure(df), out / "peak_memory.png"),
    ]
    return [p for p in made if p is not None]
