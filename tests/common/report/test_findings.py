"""The findings frame never picks a row whose parity check failed (common/report/findings.py)."""
from pathlib import Path

from common.harness import records, verify
from common.report import allocator, findings, readme, rows

ROOT = Path(__file__).resolve().parents[3]
WRN = ROOT / "results" / "wrn-20261203T152015Z"  # its TF XLA rows failed parity (4.7e-4 > 2e-4)


def _frame(run: Path, failed=frozenset()):
    recs = records.read(run / "records.jsonl", warn=False)
    return findings.frame(rows.frame(allocator.preferred([r for r in recs if r.get("devices", 1) == 1])), failed)


def test_parity_failures_are_the_failed_rows():
    failed = findings.parity_failures(verify.read(WRN))
    assert ("tf", "fastclip", "xla", "wrn16_4") in failed and ("tf", "standard", "xla", "wrn16_4") in failed
    assert ("tf", "fastclip", "graph", "wrn16_4") not in failed and not any(f[0] != "tf" for f in failed)


def test_a_failed_rows_number_is_never_a_finding():
    failed = findings.parity_failures(verify.read(WRN))
    blind, seen = _frame(WRN), _frame(WRN, failed)
    tf_fastclip = (seen["framework"] == "tf") & (seen["library"] == findings.FASTCLIP)
    assert set(blind[tf_fastclip]["variant"]) == {"xla"}  # the fastest, unfiltered, is the failed XLA row
    assert set(seen[tf_fastclip]["variant"]) == {"graph"}
    assert not any((f, i, v or "", m) in failed for f, i, v, m in
                   zip(seen["framework"], seen["impl"], seen["variant"], seen["model"]) if isinstance(i, str))


def test_a_cell_with_only_failed_rows_says_so():
    recs_df = rows.frame(allocator.preferred(records.read(WRN / "records.jsonl", warn=False)))
    every_ok = frozenset((f, i, v or "", m) for f, i, v, m in
                         zip(recs_df["framework"], recs_df["impl"], recs_df["variant"], recs_df["model"]))
    f = findings.frame(recs_df, every_ok)
    assert set(f["status"]) <= {findings.PARITY_FAIL, "timeout", "not run"} and findings.PARITY_FAIL in set(f["status"])
    assert readme.cell_text(f[f["status"] == findings.PARITY_FAIL].iloc[0]) == "parity FAIL (not a finding)"
