"""The report renders the seed's table exactly from fixture records."""
import pytest

from common import records, report
from common.config import RunConfig
from common.runner import base_record
from common.threads import worker_env

# The seed report's (32, 32, 3), B=32 block.
SEED = [("standard", None, 1027.97), ("jax_privacy", 32, 188.36), ("jax_privacy", 8, 174.68), ("jax_privacy", 1, 148.61)]


def rec(framework, impl, b, mb, sps, variant="", status="ok"):
    r = base_record(RunConfig(framework, impl, "small", b, mb, variant), "fixture", "abc", worker_env(2))
    step = b / sps
    r.update(status=status, framework_version="0.10.2", dp_library_version="2.0.0" if r["dp_library"] else None,
             device="cpu", compile_s=1.5, step_s_median=step, step_s_min=step, step_s_max=step, step_s_p10=step,
             step_s_p90=step, step_s_cv=0.0, steps_per_window=2, window_s=[2 * step], throughput_sps=sps,
             peak_mem_bytes=100 * 2**20, mem_source="rss_peak_above_baseline", elapsed_s=3.0)
    if status != "ok":
        r.update(throughput_sps=None, step_s_median=None, window_s=None, compile_s=None, error="exceeded the budget")
    return records.validate(r)


@pytest.fixture
def run_dir(tmp_path):
    for impl, mb, sps in SEED:
        records.append(tmp_path / "records.jsonl", rec("jax", impl, 32, mb, sps))
    records.append(tmp_path / "records.jsonl", rec("jax", "fastclip", 32, None, 1.0, status="timeout"))
    return tmp_path


def test_seed_table_exact(run_dir):
    text = report.write_report(run_dir).read_text()
    want = """## Input Shape: (32, 32, 3), Batch Size: 32

### jax (jax 0.10.2, jax-privacy 2.0.0)

**Standard Throughput:** 1027.97 samples/s

| Mode | Implementation | Microbatch Size | Throughput (samples/s) | Speedup vs Standard | % of Standard | Spread p10-p90 (samples/s) | CV | Compile (s) | Peak Mem (MiB) |
|---|---|---|---|---|---|---|---|---|---|
| Standard | standard | - | 1027.97 | 1.0x | 100% | 1028.0-1028.0 | 0.00 | 1.50 | 100 |
| Clipped | fastclip | - | timeout | - | - | - | - | - | - |
| Clipped | jax_privacy | 32 | 188.36 | 0.18x | 18.3% | 188.4-188.4 | 0.00 | 1.50 | 100 |
| Clipped | jax_privacy | 8 | 174.68 | 0.17x | 17.0% | 174.7-174.7 | 0.00 | 1.50 | 100 |
| Clipped | jax_privacy | 1 | 148.61 | 0.14x | 14.5% | 148.6-148.6 | 0.00 | 1.50 | 100 |
"""
    assert want in text
    assert "| jax | fastclip | small | 32 | - | timeout | exceeded the budget |" in text
    for png in ("throughput_vs_batch", "pct_of_standard", "peak_memory"):
        assert (run_dir / "plots" / f"{png}.png").stat().st_size > 1000
    csv = (run_dir / "tables" / "throughput.csv").read_text().splitlines()
    assert len(csv) == 1 + 5 and sum("jax_privacy" in line for line in csv) == 3


def test_cross_framework_and_privacy_unit_label(run_dir):
    path = run_dir / "records.jsonl"
    records.append(path, rec("tf", "standard", 32, None, 500.0, "graph"))
    records.append(path, rec("tf", "standard", 32, None, 400.0, "xla"))
    records.append(path, rec("tf", "tfp_microbatch_mean", 32, 8, 300.0, "graph"))
    df = report.frame(records.read(path))
    cross = report.cross_framework(df)
    row = cross.loc[("small", 32)]
    assert row["jax: jax_privacy"] == "18.3% (188/s, mb 32)"
    assert row["tf: standard"] == "100.0% (500/s, graph)"
    assert row["tf: tfp_microbatch_mean†"] == "60.0% (300/s, graph, mb 8)"
    assert row["jax: fastclip"] == "timeout"
    text = report.write_report(run_dir).read_text()
    assert "| Clipped† | tfp_microbatch_mean (graph) | 8 | 300.00 | 0.60x | 60.0% |" in text
    assert "(best standard: standard (graph))" in text and report.PRIVACY_NOTE in text


def test_report_without_records_fails(tmp_path):
    assert report.main([str(tmp_path)]) == 2
    assert not (tmp_path / "report.md").exists()


def test_code_paths_lists_what_frameworks_recorded():
    from common import report as rp
    a = rec("torch", "opacus_hooks", 64, None, 100.0)
    a["notes"] = {"per_sample_grad_bytes": 3 * 2**20}
    b = rec("tf", "fastclip", 64, None, 100.0, variant="graph")
    b["notes"] = {"fastclip_plan": {"conv0": {"method": "instantiate", "chunk": 8}, "dense0": {"method": "dense", "chunk": 64}},
                  "noise_sampler": "box_muller(uniform)"}
    c = rec("jax", "standard", 64, None, 100.0)
    c["notes"] = {"per_sample_grad_bytes": 1}  # standard rows are not DP rows: left out
    text = "\n".join(rp.code_paths([a, b, c]))
    assert "| torch | opacus_hooks | - | small | 64 | per-example grads 3.0 MiB |" in text
    assert "| tf | fastclip (graph) | - | small | 64 | plan conv0: instantiate/8, dense0: dense; noise: box_muller(uniform) |" in text
    assert "| jax | standard" not in text
    assert rp.code_paths([c]) == []
