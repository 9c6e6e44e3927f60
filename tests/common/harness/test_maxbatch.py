import sys

from common.harness import maxbatch, records, runner
from common.report import maxbatch as maxbatch_table
from common.harness.config import RunConfig
from tests.common.harness.test_runner import FAKES


def test_search_finds_known_limit():
    calls = []

    def probe(b):
        calls.append(b)
        return "ok" if b <= 100 else "oom"
    res = maxbatch.search(probe, start=8)
    assert res["largest_ok"] == 100 and res["first_failure"] in (101, 102, 103, 104)
    assert res["failure_status"] == "oom" and calls[:5] == [8, 16, 32, 64, 128]
    assert maxbatch.search(lambda b: "ok" if b <= 3 else "timeout", start=16)["largest_ok"] == 3
    assert maxbatch.search(lambda b: "error", start=4)["largest_ok"] is None
    assert maxbatch.search(lambda b: "ok", start=16, limit=64)["first_failure"] is None


def test_runner_search_with_fake_worker(tmp_path):
    """Probes through the real runner: a worker that 'OOMs' above B=48."""
    cmd = lambda c, cfg_path, result: [sys.executable, FAKES, "ok" if c.batch_size <= 48 else "oom", cfg_path, result]
    run_one = lambda c: runner.run_config(c, "r", None, cmd)
    res = maxbatch.run_searches([RunConfig("jax", "standard", "small", 16)], tmp_path, run_one, start=16)
    assert res[0]["largest_ok"] == 48
    recs = records.read(tmp_path / maxbatch.MAX_BATCH)
    text = "\n".join(maxbatch_table.table(recs))
    assert "| jax | standard | small | 48 |" in text and "oom" in text


def test_memory_watchdog_kills_worker(tmp_path):
    """A worker whose RSS passes --mem-limit becomes an oom record."""
    import textwrap
    hog = tmp_path / "hog.py"
    hog.write_text(textwrap.dedent("""
        import time, numpy as np
        a = np.ones(400 * 2**20 // 8)
        time.sleep(30)
    """))
    cmd = lambda c, cfg_path, result: [sys.executable, str(hog)]
    rec = runner.run_config(RunConfig("jax", "standard", "small", 4, budget_s=20), "r", None, cmd, mem_limit=200 * 2**20)
    assert rec["status"] == "oom" and "limit" in rec["error"] and rec["elapsed_s"] < 10
