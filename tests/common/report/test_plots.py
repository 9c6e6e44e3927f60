"""Plots: one fixed colour per implementation, few lines per panel, the headline chart."""
import pandas as pd

from common.report import plots, build as report
from common.harness.config import IMPLS
from tests.common.report.test_report import rec


def test_one_fixed_colour_per_impl():
    assert plots._colors() == plots.COLORS  # stable: rebuilt from the catalogue, the same
    assert set(plots.COLORS) == {(fw, name) for fw in IMPLS for name in IMPLS[fw]}
    for fw, impls in IMPLS.items():
        study = [plots.color(fw, n) for n, i in impls.items() if i.direct_of is None]
        assert len(set(study)) == len(study), f"{fw}: two study impls share a colour"
        for n, i in impls.items():
            if i.direct_of is not None:
                assert plots.color(fw, n) == plots.color(fw, i.direct_of[0])
    assert plots.color("jax", "standard") == plots.color("torch", "standard") == plots.color("tf", "standard")
    assert plots.color("jax", "fastclip") == plots.color("tf", "fastclip") != plots.color("jax", "standard")


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


def test_write_all_makes_the_headline_chart(tmp_path):
    recs = [rec("jax", "standard", 64, None, 1000.0), rec("jax", "fastclip", 64, None, 800.0),
            rec("torch", "standard", 64, None, 2000.0), rec("torch", "opacus_ghost", 64, None, 500.0)]
    df = report.frame(recs)
    made = plots.write_all(df, tmp_path, headline=report.headline_frame(df))
    assert [p.name for p in made] == ["headline.png", "throughput_vs_batch.png", "pct_of_standard.png",
                                      "peak_memory.png"]
    assert all(p.stat().st_size > 1000 for p in made)
    cols = ["dp_pct_of_fastest_standard", "lib_pct_of_fastest_standard"]
    assert plots.headline_chart(pd.DataFrame(columns=cols), tmp_path / "none.png") is None
    # only library rows ok (fastclip timed out): the chart still has their hatched bars
    lib_only = report.frame([rec("torch", "standard", 64, None, 2000.0), rec("torch", "opacus_hooks", 64, None, 500.0),
                             rec("torch", "fastclip", 64, None, 1.0, status="timeout")])
    h = report.headline_frame(lib_only)
    assert h.iloc[0]["dp_label"] == h.iloc[0]["lib_label"] == "opacus_hooks"
    assert plots.headline_chart(h, tmp_path / "lib.png").stat().st_size > 1000
