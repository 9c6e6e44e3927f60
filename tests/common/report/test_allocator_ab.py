"""The allocator A/B section and the study tables' choice of allocator, from fixture records."""
import pytest

from common.harness import records
from common.harness.config import RunConfig
from common.harness.runner import base_record
from common.harness.threads import worker_env
from common.report import allocator, build


def rec(impl, alloc, sps, mem=100 * 2**20, fw="torch", model="small"):
    c = RunConfig(fw, impl, model, 64, allocator=alloc)
    r = base_record(c, "run", "abc", worker_env(0, fw, allocator=alloc))
    step = 64 / sps
    r.update(status="ok", framework_version="0", device="cpu", compile_s=1.0, step_s_median=step, step_s_p10=step,
             step_s_p90=step, step_s_cv=0.0, throughput_sps=sps, window_s=[1.0] * 5, steps_per_window=2,
             elapsed_s=2.0, peak_mem_bytes=mem)
    return records.validate(r)


RECS = [rec("standard", "keep", 2000.0, 150 * 2**20), rec("standard", "glibc", 1000.0),
        rec("fastclip", "keep", 1500.0), rec("fastclip", "glibc", 900.0),
        rec("standard", "keep", 500.0, model="medium")]  # no glibc arm: not in the A/B


def test_pairs_ratio_and_share_of_standard_under_the_same_allocator():
    af = allocator.frame(RECS).set_index("impl")
    assert list(af.index) == ["standard", "fastclip"]
    assert af.loc["standard", "ratio"] == pytest.approx(2.0)
    assert af.loc["fastclip", "ratio"] == pytest.approx(1500 / 900)
    assert af.loc["fastclip", "default_pct_std"] == pytest.approx(75.0)  # 1500 / 2000, not / 1000
    assert af.loc["fastclip", "other_pct_std"] == pytest.approx(90.0)
    assert af.loc["standard", "default_mem"] == 150 * 2**20


def test_study_tables_use_the_default_allocator_and_the_ab_has_its_section(tmp_path):
    assert {r["allocator"] for r in allocator.preferred(RECS)} == {"keep"}
    only_glibc = [rec("standard", "glibc", 1000.0)]  # e.g. a run from before the setting
    assert allocator.preferred(only_glibc) == only_glibc
    for r in RECS:
        records.append(tmp_path / "records.jsonl", r)
    text = build.write_report(tmp_path).read_text()
    assert "## Allocator A/B" in text and "| torch | fastclip | small | 64 | 1500.0 | 900.0 | 1.67 | 75.0 | 90.0 |" in text
    df = build.frame(allocator.preferred(RECS))
    assert sorted(df["throughput_sps"]) == [500.0, 1500.0, 2000.0]
    assert "mixes" not in text  # the A/B's two malloc settings are on purpose
    assert allocator.frame(only_glibc).empty
