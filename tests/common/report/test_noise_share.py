"""fastclip vs standard, the noise draw's share: exact numbers from fixture records."""
import pytest

from common.report import noise_share, build as report
from tests.common.report.test_report import rec


def _frame(recs):
    return noise_share.frame(report.frame(recs))


def test_ceiling_and_clipping_cost_exact():
    # B 10: standard 0.1 s/step, fastclip 0.2 s/step of which the noise draw is 0.05 s
    nf = _frame([rec("torch", "standard", 10, None, 100.0),
                 rec("torch", "fastclip", 10, None, 50.0, notes={"noise_draw_s": 0.05})])
    r = nf.iloc[0]
    assert r["pct_of_standard"] == pytest.approx(50.0)
    assert r["noise_pct_of_standard_step"] == pytest.approx(50.0)
    assert r["ceiling_pct"] == pytest.approx(100 * 0.1 / 0.15)
    assert r["without_noise_pct"] == pytest.approx(100 * 0.1 / 0.15)
    assert not r["noise_borrowed"]
    line = next(x for x in noise_share.lines(nf) if x.startswith("| torch | small | 10 |"))
    assert line == "| torch | small | 10 | 100.0 | 50.0 | 50.0 | 50.0 | 50.0 | 66.7 | 66.7 | 1.00x |"


def test_draw_borrowed_from_the_same_model_only_and_variant_matched():
    recs = [rec("tf", "standard", 10, None, 100.0, variant="graph"),
            rec("tf", "standard", 10, None, 20.0, variant="xla"),
            rec("tf", "fastclip", 10, None, 50.0, variant="graph", notes={"noise_draw_skipped": "budget"}),
            rec("tf", "fastclip", 10, None, 10.0, variant="xla", notes={"noise_draw_s": 0.3}),
            rec("tf", "standard", 20, None, 100.0, variant="graph"),
            rec("tf", "fastclip", 20, None, 50.0, variant="graph", notes={"noise_draw_s": 0.04}),
            rec("tf", "fastclip", 40, None, 50.0, variant="graph", notes={"noise_draw_s": 0.06}),
            rec("tf", "standard", 10, None, 100.0, variant="graph", model="medium"),
            rec("tf", "fastclip", 10, None, 50.0, variant="graph", model="medium")]
    nf = _frame(recs).set_index(["variant", "model", "batch_size"])
    g = nf.loc[("graph", "small", 10)]
    assert g["noise_borrowed"] and g["noise_draw_s"] == pytest.approx(0.05)  # median of B 20 and 40, not xla's
    xla = nf.loc[("xla", "small", 10)]
    assert xla["pct_of_standard"] == pytest.approx(50.0)  # against the xla standard row, not graph's
    assert xla["noise_draw_s"] == pytest.approx(0.3) and not xla["noise_borrowed"]
    assert ("graph", "small", 40) not in nf.index  # no standard row at B 40
    med = nf.loc[("graph", "medium", 10)]
    assert med["noise_draw_s"] is None or med["noise_draw_s"] != med["noise_draw_s"]  # none for that model
    text = "\n".join(noise_share.lines(_frame(recs)))
    assert "| tf (graph) | small | 10 | 100.0 | 50.0 | 50.0 | 50.0* |" in text
    assert "| tf (graph) | medium | 10 | 100.0 | 50.0 | 50.0 | - | - | - | - |" in text


def test_timeout_row_and_report_section():
    recs = [rec("jax", "standard", 32, None, 100.0), rec("jax", "fastclip", 32, None, 1.0, status="timeout")]
    text = "\n".join(noise_share.lines(_frame(recs)))
    assert "| jax | small | 32 | 100.0 | timeout" in text
    assert noise_share.lines(_frame([rec("jax", "standard", 32, None, 100.0)])) == []

