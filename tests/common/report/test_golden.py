"""The report's numbers do not move when the report's code does: regenerating
the committed canonical run gives the committed tables, byte for byte.

Every number of report.md is in one of tables/*.csv, so this pins them while
the rendering (order, sections, wording) is free to change. A deliberate
change of a number regenerates the canonical run's outputs in the same commit
(``python -m common.report results/$(cat results/CANONICAL)``) and says why.
"""
from pathlib import Path

import pytest

from common.report import build, readme

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> tuple[Path, Path]:
    run = readme.canonical_run(ROOT)
    out = tmp_path_factory.mktemp("golden")
    build.write_report(run, out)
    return run, out


def test_the_canonical_runs_tables_regenerate_byte_identical(regenerated):
    run, out = regenerated
    committed = sorted(p.name for p in (run / "tables").glob("*.csv"))
    assert committed, "the canonical run has no committed tables"
    assert sorted(p.name for p in (out / "tables").glob("*.csv")) == committed
    changed = [name for name in committed if (run / "tables" / name).read_bytes() != (out / "tables" / name).read_bytes()]
    assert changed == []


def test_the_committed_report_is_what_the_code_renders(regenerated):
    """report.md is generated, never edited: the committed one is the renderer's output."""
    run, out = regenerated
    assert (run / "report.md").read_text() == (out / "report.md").read_text()
