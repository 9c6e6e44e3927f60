"""The scaling section: 1 and 2 devices from fixture records, exact numbers."""
import pandas as pd
import pytest

from common.harness import records
from common.harness.config import RunConfig
from common.harness.runner import base_record
from common.harness.threads import worker_env
from common.report import build, scaling
from common.report.sections import cross


def rec(impl, devices, sps, status="ok", error=None, fw="torch"):
    c = RunConfig(fw, impl, "small", 64, devices=devices)
    r = base_record(c, "run", "abc", worker_env(0, fw, devices=devices))
    step = c.global_batch_size / sps if sps else None
    r.update(status=status, error=error, framework_version="0", device="cpu", compile_s=1.0, step_s_median=step,
             step_s_p10=step, step_s_p90=step, step_s_cv=0.0 if sps else None, throughput_sps=sps, window_s=[1.0] * 5, steps_per_window=2,
             elapsed_s=2.0)
    return records.validate(r)


RECS = [rec("standard", 1, 1000.0), rec("standard", 2, 1500.0), rec("fastclip", 1, 800.0),
        rec("fastclip", 2, 1350.0), rec("opacus_ew", 1, 100.0),
        rec("opacus_ew", 2, None, "unsupported", "Unsupported: no DDP for expanded weights")]
# the same reason for the same impl on another model: listed once
OTHER_MODEL = dict(rec("opacus_ew", 2, None, "unsupported", "Unsupported: no DDP for expanded weights"), model="medium")


def test_speedup_efficiency_and_share_of_standard_at_each_device_count():
    sf = scaling.frame(RECS).set_index(["impl", "devices"])
    assert sf.loc[("standard", 2), "speedup"] == pytest.approx(1.5)
    assert sf.loc[("standard", 2), "efficiency"] == pytest.approx(0.75)
    assert sf.loc[("fastclip", 1), "pct_of_standard"] == pytest.approx(80.0)
    assert sf.loc[("fastclip", 2), "pct_of_standard"] == pytest.approx(90.0)
    assert sf.loc[("fastclip", 2), "efficiency"] == pytest.approx(1350 / 1600)
    assert sf.loc[("fastclip", 2), "global_batch"] == 128
    assert pd.isna(sf.loc[("opacus_ew", 2), "samples_per_s"])


def test_section_shows_numbers_and_says_why_a_row_has_none():
    text = "\n".join(scaling.lines(scaling.frame(RECS + [OTHER_MODEL])))
    assert "| torch | standard | 1000.0 | 100.0 | 1500.0 | 100.0 | 1.50x | 0.75 |" in text
    assert "| torch | fastclip | 800.0 | 80.0 | 1350.0 | 90.0 | 1.69x | 0.84 |" in text
    assert "| torch | opacus_ew | 100.0 | 10.0 | unsupported | - | - | - |" in text
    assert "- torch opacus_ew: unsupported: Unsupported: no DDP for expanded weights" in text
    assert text.count("no DDP for expanded weights") == 1


def test_no_section_for_a_single_device_run():
    assert scaling.frame([r for r in RECS if r["devices"] == 1]).empty
    assert scaling.lines(scaling.frame([r for r in RECS if r["devices"] == 1])) == []


def test_the_other_tables_are_of_one_device(tmp_path):
    for r in RECS:
        records.append(tmp_path / "records.jsonl", r)
    text = build.write_report(tmp_path).read_text()
    assert "## Data-parallel scaling" in text
    table = cross.cross_framework(build.frame([r for r in RECS if r["devices"] == 1]))
    assert "1500.0" not in text.split("## Data-parallel scaling")[0]  # no 2-device number in the other tables
    assert (tmp_path / "tables" / "scaling.csv").exists() and not table.empty
    assert "| torch | 5 | 0 | 0 | 0 | 0 | 0 | 1 | 6 |" in text  # status counts cover both device counts
