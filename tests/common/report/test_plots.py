"""Plots: one global colour per implementation, intervals as error bars, failures marked where the point
would be, memory as a multiple of standard, a headline that reads at README width."""
import functools
import re

import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection
from matplotlib.legend import Legend
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.text import Text

from common.harness.config import IMPLS
from common.report import build as report
from common.report import findings, plots
from tests.common.report.test_report import rec


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_one_colour_per_impl_in_every_plot():
    assert plots._colors() == plots.COLORS  # stable: rebuilt from the catalogue, the same
    assert set(plots.COLORS) == {(fw, name) for fw in IMPLS for name in IMPLS[fw]}
    # one global mapping: no two study impls of any frameworks share a colour, standard and fastclip aside
    study = {(fw, n): plots.color(fw, n) for fw, impls in IMPLS.items() for n, i in impls.items()
             if i.direct_of is None and n not in ("standard", "fastclip")}
    rgb = {k: mcolors.to_rgb(c) for k, c in study.items()}
    assert len(set(rgb.values())) == len(rgb) >= 9, "two study impls share a colour"
    roles = {mcolors.to_rgb(c) for c in plots.ROLE.values()} | {mcolors.to_rgb(plots.GREY)}
    assert not roles & set(rgb.values()) and len(roles) == 3
    for fw, impls in IMPLS.items():
        for n, i in impls.items():
            if i.direct_of is not None:  # a check takes the colour of the study row it checks
                assert plots.color(fw, n) == plots.color(fw, i.direct_of[0])
    assert plots.color("jax", "standard") == plots.color("torch", "standard") == plots.color("tf", "standard")
    assert plots.color("jax", "fastclip") == plots.color("tf", "fastclip") != plots.color("jax", "standard")
    assert plots.color("torch", "opacus_ghost") != plots.color("tf", "tfp_dpmodel")  # the old clash
    assert plots.color("torch", "nope") == plots.GREY


def test_microbatch_class_is_relative_to_b():
    r = lambda impl, b, mb, fw="jax", mode="dp": {"framework": fw, "impl": impl, "batch_size": b, "microbatch_size": mb,
                                                  "mode": mode}
    assert plots.mb_class(r("jax_privacy", 64, None)) == "full vmap"
    assert plots.mb_class(r("jax_privacy", 64, 64)) == "mb=B"
    assert plots.mb_class(r("jax_privacy", 256, 64)) == "mb=B/4"
    assert plots.mb_class(r("jax_privacy", 4, 1)) == "mb=1"
    assert plots.mb_class(r("jax_privacy", 64, float("nan"))) == "full vmap"
    assert plots.mb_class(r("tfp_vectorized", 64, 1, "tf")) == ""  # always per example: no marker class
    assert plots.mb_class(r("fastclip", 64, None)) == ""


def _tf_many():
    out = []
    for b in (32, 64, 256):
        for impl, variants, mbs in (("standard", ("graph", "xla"), (None,)), ("tfp_microbatch", ("graph", "xla"), (1,)),
                                    ("tfp_microbatch_mean", ("graph",), (b // 4, b)),
                                    ("tfp_vectorized", ("graph", "xla"), (1,)), ("tfp_dpmodel", ("graph", "xla"), (None,)),
                                    ("fastclip", ("graph", "xla"), (None,))):
            for i, v in enumerate(variants):
                for mb in mbs:
                    out.append(rec("tf", impl, b, mb, 100.0 + b + 10 * i, variant=v))
    return out


def test_a_panel_has_at_most_eight_lines():
    df = plots._series(plots._study(report.frame(_tf_many())))
    assert len(df.groupby(["impl", "variant", "_cls"])) == 12
    groups, note = plots.panel_series(df)
    assert len(groups) <= plots.MAX_LINES and note == " (best variant)"
    few = df[df["impl"].isin(["standard", "fastclip"])]
    groups, note = plots.panel_series(few)
    assert len(groups) == 4 and note == ""


def test_line_plots_leave_out_checks_and_the_ab_variant():
    df = report.frame([rec("jax", "standard", 64, None, 1000.0), rec("jax", "direct_jax_privacy", 64, None, 90.0),
                       rec("jax", "fastclip", 64, None, 900.0, variant="xla-default"),
                       rec("jax", "fastclip", 64, None, 1.0, status="timeout")])
    assert list(plots._study(df)["impl"]) == ["standard"]
    assert list(plots._study_all(df)["status"]) == ["ok", "timeout"]  # failures stay, to be marked


# --- a small run with intervals, failures and two frameworks ---------------------------------------

def _run() -> pd.DataFrame:
    return _RUN().copy()


@functools.lru_cache(maxsize=1)
def _RUN() -> pd.DataFrame:
    recs = []
    for b in (64, 256):
        recs += [rec("jax", "standard", b, None, 1000.0), rec("jax", "jax_privacy", b, None, 200.0),
                 rec("jax", "fastclip", b, None, 800.0),
                 rec("torch", "standard", b, None, 2000.0), rec("torch", "opacus_ghost", b, None, 900.0),
                 rec("torch", "fastclip", b, None, 1500.0),
                 rec("tf", "standard", b, None, 500.0, "graph"), rec("tf", "fastclip", b, None, 300.0, "graph")]
    recs += [rec("torch", "opacus_hooks", 64, None, 500.0),
             rec("torch", "opacus_hooks", 256, None, 1.0, status="oom", error="killed"),
             rec("tf", "tfp_dpmodel", 64, None, 1.0, "graph", status="timeout"),
             rec("tf", "tfp_dpmodel", 256, None, 1.0, "graph", status="skipped", error="not run: B=64 timed out")]
    df = report.frame(recs)
    dp = (df["mode"] == "dp") & (df["status"] == "ok") & (df["row_kind"] == "study")
    # paired intervals (the fixture records are unpaired): a known band around each % of standard
    df.loc[dp, "pct_lo"] = df.loc[dp, "pct_of_standard"] - 3.0
    df.loc[dp, "pct_hi"] = df.loc[dp, "pct_of_standard"] + 5.0
    mem = {("jax", "jax_privacy"): 4, ("torch", "opacus_ghost"): 2, ("torch", "opacus_hooks"): 6}
    df["peak_mem_bytes"] = [(100 * mem.get((fw, i), 1) + 10 * (m == "dp")) * 2**20 if s == "ok" else None
                            for fw, i, m, s in zip(df["framework"], df["impl"], df["mode"], df["status"])]
    return df


def _findings() -> pd.DataFrame:
    """A findings frame with every kind of cell: paired, above 100 % with the interval reaching 100 %,
    above 100 % with the interval above it, unpaired, failed, not run."""
    rows = []

    def add(fw, lib, b, status="ok", impl=None, pct=None, lo=None, hi=None):
        rows.append(dict(framework=fw, library=lib, option=findings.option_name(fw, lib),
                         is_fastclip=lib == findings.FASTCLIP, model="small", batch_size=b, status=status, impl=impl,
                         variant="", mode="", throughput_sps=1.0, pct=pct, pct_lo=lo, pct_hi=hi, pct_wide=None,
                         paired=None if status != "ok" else lo is not None, mem_multiple=1.5))
    add("jax", "jax-privacy", 64, impl="jax_privacy", pct=21.4, lo=20.7, hi=22.4)
    add("jax", "jax-privacy", 256, "oom/timeout")
    add("jax", "dpbench", 64, impl="fastclip", pct=115.9, lo=96.3, hi=132.5)
    add("jax", "dpbench", 256, impl="fastclip", pct=104.0, lo=101.0, hi=107.0)
    add("torch", "opacus", 64, impl="opacus_ghost", pct=42.4, lo=40.8, hi=45.0)
    add("torch", "opacus", 256, impl="opacus_ghost", pct=41.9)  # unpaired
    add("torch", "dpbench", 64, impl="fastclip", pct=75.1, lo=70.5, hi=76.9)
    add("torch", "dpbench", 256, "not run")
    return pd.DataFrame(rows).reindex(columns=findings.COLUMNS)


def _rgb(c):
    return mcolors.to_rgb(np.asarray(c).reshape(-1)[:3] if not isinstance(c, str) else c)


def _coloured(fig):
    """(gid, rgb) of every artist carrying a "framework/impl" gid."""
    out = []
    for a in fig.findobj(lambda a: isinstance(a.get_gid(), str) and "/" in a.get_gid()):
        if isinstance(a, Rectangle):
            c = a.get_facecolor() if a.get_fill() else a.get_edgecolor()
        elif isinstance(a, LineCollection):
            c = a.get_color()[0]
        elif isinstance(a, Line2D):
            c = a.get_color()
        else:
            continue
        out.append((a.get_gid(), _rgb(c)))
    return out


def _figures(df, f):
    return {"headline": plots.headline_figure(f), "pct": plots._pct_figure(df),
            "throughput": plots._throughput_figure(df), "memory": plots._memory_multiple_figure(df),
            "mib": plots._memory_mib_figure(df)}


# Every (framework, impl) of the catalogue and the colour its artists are drawn in, written out: the
# plots are checked against this table, not against plots.color(), so a changed colour, a swapped pair or a
# plot that picks its own colours fails here. standard and fastclip have one colour each in every framework;
# a direct-use check has the colour of the study row it checks.
EXPECTED_COLORS = {
    ("jax", "standard"): "#222222", ("jax", "jax_privacy"): "#0072B2", ("jax", "fastclip"): "#009E73",
    ("jax", "direct_jax_privacy"): "#0072B2",
    ("torch", "standard"): "#222222", ("torch", "opacus_hooks"): "#E69F00", ("torch", "opacus_functorch"): "#56B4E9",
    ("torch", "opacus_ew"): "#CC79A7", ("torch", "opacus_ghost"): "#D55E00", ("torch", "fastclip"): "#009E73",
    ("torch", "direct_opacus"): "#E69F00",
    ("tf", "standard"): "#222222", ("tf", "tfp_microbatch"): "#8C510A", ("tf", "tfp_microbatch_mean"): "#999933",
    ("tf", "tfp_vectorized"): "#882255", ("tf", "tfp_dpmodel"): "#332288", ("tf", "fastclip"): "#009E73",
    ("tf", "direct_tfp_optimizer"): "#8C510A", ("tf", "direct_tfp_dpsequential"): "#332288",
}


def _wrong_colours(figures, expected: dict[tuple[str, str], str]) -> list[str]:
    """Every drawn artist whose colour is not ``expected``'s for its "framework/impl" gid."""
    wrong = []
    for name, fig in figures.items():
        for gid, rgb in _coloured(fig):
            want = expected.get(tuple(gid.split("/")))
            if want is None or rgb != pytest.approx(mcolors.to_rgb(want)):
                wrong.append(f"{name}: {gid} drawn {mcolors.to_hex(rgb)}, expected {want}")
    return wrong


def test_the_expected_table_covers_the_catalogue():
    assert set(EXPECTED_COLORS) == {(fw, n) for fw in IMPLS for n in IMPLS[fw]}


def test_every_plot_draws_each_impl_in_its_catalogue_colour():
    df, f = _run(), _findings()
    figures = _figures(df, f)
    for name, fig in figures.items():
        gids = {g for g, _ in _coloured(fig)}
        assert len(gids) >= 4 and {"torch/opacus_ghost", "torch/fastclip"} <= gids, name
    assert _wrong_colours(figures, EXPECTED_COLORS) == []
    # That the check fails where it should: test_every_plot_follows_the_mapping_it_is_given (its
    # figures, drawn from a permuted mapping, are all wrong against this table: no second drawing here).


def test_every_plot_follows_the_mapping_it_is_given(monkeypatch):
    """A permuted table installed as the mapping: a plot that kept colours of its own (a per-framework
    palette, a hard-coded hue) would not follow it."""
    keys = sorted(EXPECTED_COLORS)
    hues = [EXPECTED_COLORS[k] for k in keys]
    permuted = dict(zip(keys, hues[1:] + hues[:1]))
    assert all(permuted[k] != EXPECTED_COLORS[k] for k in keys)  # every impl drawn in another colour
    monkeypatch.setattr(plots, "COLORS", permuted)
    figures = _figures(_run(), _findings())
    assert _wrong_colours(figures, permuted) == []
    # and the colour check fails where it should: against the catalogue's table every drawn impl is wrong
    drawn = {g for fig in figures.values() for g, _ in _coloured(fig)}
    wrong = _wrong_colours(figures, EXPECTED_COLORS)
    assert {"torch/opacus_ghost", "torch/fastclip"} <= drawn
    assert all(any(f" {g} drawn" in w for w in wrong) for g in drawn), (drawn, wrong)


def test_line_plot_error_bars_are_the_intervals_and_failures_are_marked():
    df = _run()
    fig = plots._pct_figure(df)
    ghost = df[(df["impl"] == "opacus_ghost")].sort_values("batch_size")
    bars = [a for a in fig.findobj(LineCollection) if a.get_gid() == "torch/opacus_ghost"]
    assert bars, "no error bars"
    spans = sorted((round(min(s[:, 1]), 6), round(max(s[:, 1]), 6)) for b in bars for s in b.get_segments())
    assert spans == [pytest.approx((lo, hi)) for lo, hi in zip(ghost["pct_lo"], ghost["pct_hi"])]
    # torch/opacus_hooks ran out of memory at B=256; tf/tfp_dpmodel timed out at 64 and was skipped at 256
    marks = {(a.get_gid(), a.get_marker(), round(float(np.log2(a.get_xdata()[0])))) for a in fig.findobj(Line2D)
             if a.get_gid() and len(a.get_xdata()) == 1}
    assert ("torch/opacus_hooks", plots.FAILED["oom"][0], 8) in marks
    assert ("tf/tfp_dpmodel", plots.FAILED["timeout"][0], 6) in marks
    assert ("tf/tfp_dpmodel", plots.FAILED["skipped"][0], 8) in marks
    legend = {t.get_text() for lg in fig.legends for t in lg.get_texts()}
    assert {"oom", "timeout", "skipped (a smaller B failed)"} <= legend
    # the marks sit at the foot of the panel, under every value
    tf_ax = next(ax for ax in fig.axes if ax.get_title().startswith("tf"))
    assert "no ok rows" not in [t.get_text() for t in tf_ax.texts]  # tf has fastclip
    figs = _figures(df, _findings())
    for name in ("throughput", "memory", "mib"):
        f2 = figs[name]
        assert any(a.get_gid() == "torch/opacus_hooks" and a.get_marker() == plots.FAILED["oom"][0]
                   for a in f2.findobj(Line2D)), name


def test_failure_marks_leave_out_a_configuration_with_an_ok_variant():
    ok = pd.DataFrame([dict(impl="tfp_dpmodel", variant="", _cls="", batch_size=64)])
    failed = pd.DataFrame([dict(impl="tfp_dpmodel", variant="xla", _cls="", batch_size=64, status="timeout"),
                           dict(impl="tfp_dpmodel", variant="xla", _cls="", batch_size=256, status="oom"),
                           dict(impl="tfp_dpmodel", variant="graph", _cls="", batch_size=256, status="oom")])
    assert list(plots.failed_marks(ok, failed, collapsed=True)["batch_size"]) == [256]  # one mark, not two
    assert list(plots.failed_marks(ok.assign(variant="graph"), failed, collapsed=False)["batch_size"]) == [64, 256]


def test_memory_is_a_multiple_of_its_own_standard_and_says_what_rss_counts():
    df = _run()
    m = plots.mem_multiples(df)
    r = df[(df["impl"] == "opacus_ghost") & (df["batch_size"] == 64)].index[0]
    assert m[r] == pytest.approx(210 / 100)
    assert m[df[df["status"] != "ok"].index].isna().all()
    fig = plots._memory_multiple_figure(df)
    ys = {round(float(y), 6) for a in fig.findobj(Line2D) if a.get_gid() == "torch/opacus_ghost"
          for y in a.get_ydata()}
    assert ys == {2.1}
    title = fig._suptitle.get_text()
    assert "`keep` allocator" in title and "freed blocks" in title and "multiple" in title
    assert any(abs(a.get_ydata()[0] - 1.0) < 1e-9 for a in fig.axes[0].lines if len(a.get_ydata()) == 2)  # 1x line


def test_legends_do_not_cover_data():
    df = _run()
    for name, fig in _figures(df, _findings()).items():
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        legends = fig.findobj(Legend)
        assert legends, name
        for lg in legends:
            box = lg.get_window_extent(r)
            for ax in fig.axes:
                assert not box.overlaps(ax.get_window_extent(r)), name


def test_headline_reads_at_readme_width():
    fig = plots.headline_figure(_findings())
    w, _ = fig.get_size_inches()
    assert 9 <= w <= 10
    fig.canvas.draw()
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    small = [(t.get_text(), t.get_fontsize()) for t in texts if t.get_fontsize() < 10]
    assert not small, small
    assert fig._suptitle.get_text().startswith("% of own framework's standard training throughput (same model, batch)")
    assert "95 % interval" in fig._suptitle.get_text()


def test_headline_bars_are_pct_of_own_standard_with_intervals_and_statuses():
    f = _findings()
    fig = plots.headline_figure(f)
    jax, torch = fig.axes
    labels = {t.get_text() for ax in fig.axes for t in ax.texts}
    # one number per bar at most; >100 % with the interval reaching 100 % reads "≈ standard", not 116 %
    assert all(len(re.findall(r"\d+", t)) <= 1 for t in labels)
    assert "≈ standard" in labels and not any("116" in t for t in labels)
    assert "104%" in labels  # the whole interval above 100 %: the number
    assert "(42%)" in labels  # unpaired
    assert {"21%", "42%", "75%"} <= labels
    assert "oom\ntimeout" in labels and "not\nrun" in labels
    bars = {(a.get_gid(), round(a.get_height(), 1)): a for ax in fig.axes for a in ax.patches
            if isinstance(a, Rectangle) and a.get_gid() and a.get_fill()}
    assert set(bars) == {("jax/jax_privacy", 21.4), ("jax/fastclip", 115.9), ("jax/fastclip", 104.0),
                         ("torch/opacus_ghost", 42.4), ("torch/opacus_ghost", 41.9), ("torch/fastclip", 75.1)}
    assert bars[("jax/fastclip", 115.9)].get_hatch() and not bars[("jax/jax_privacy", 21.4)].get_hatch()
    assert bars[("torch/opacus_ghost", 41.9)].get_alpha() < 1 and bars[("torch/opacus_ghost", 42.4)].get_alpha() == 1
    # error bars: the 95 % interval of every paired bar, none for the unpaired one
    spans = sorted((round(min(s[:, 1]), 1), round(max(s[:, 1]), 1)) for ax in fig.axes
                   for c in ax.findobj(LineCollection) for s in c.get_segments())
    assert spans == sorted((lo, hi) for lo, hi in zip(f["pct_lo"], f["pct_hi"]) if pd.notna(lo))
    assert any(abs(line.get_ydata()[0] - 100) < 1e-9 for line in jax.lines)  # the standard
    legend = {t.get_text() for lg in fig.legends for t in lg.get_texts()}
    assert {"fastclip (JAX)", "fastclip (PyTorch)", "Opacus: opacus_ghost"} <= legend
    # the legend names the picked row's setting where the frame has one (findings.setting)
    fig = plots.headline_figure(f.assign(setting=[findings.setting(fw, i, "", None) if isinstance(i, str) else None
                                                  for fw, i in zip(f["framework"], f["impl"])]))
    legend = {t.get_text() for lg in fig.legends for t in lg.get_texts()}
    assert 'Opacus: grad_sample_mode="ghost"' in legend and "fastclip (JAX): study XLA flag" in legend


def test_write_all_takes_the_findings_frame(tmp_path):
    df = _run()
    made = plots.write_all(df, tmp_path, headline=findings.frame(df))
    assert [p.name for p in made] == ["headline.png", "pct_of_standard.png", "throughput_vs_batch.png",
                                      "memory_vs_standard.png", "peak_memory.png"]
    assert all(p.stat().st_size > 1000 for p in made)
    torch = df[df["framework"] == "torch"]  # the findings frame computed when not given
    assert plots.write_all(torch, tmp_path / "b")[0].name == "headline.png"
    assert plots.headline_chart(pd.DataFrame(columns=findings.COLUMNS), tmp_path / "none.png") is None
    none_ok = _findings().assign(status="oom", pct=None)
    assert plots.headline_chart(none_ok, tmp_path / "x.png") is None
    assert plots.write_all(report.frame([]), tmp_path / "empty") == []
