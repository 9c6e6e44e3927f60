"""The report's numbers do not move when the report's code does: regenerating
each canonical run (every line of results/CANONICAL: the study, the WRN run,
the deployed run, the ViT run) gives its committed tables, byte for byte, and its committed
report.md.

Every number of a study run's report.md is in one of its tables/*.csv, so
they pin its numbers while the rendering (order, sections, wording) is free to
change; a run of deployed rows only (no records.jsonl) writes no tables, and
its numbers are pinned by its report.md. A deliberate change of a number
regenerates the canonical runs' outputs in the same commit
(``for r in $(cat results/CANONICAL); do python -m common.report results/$r; done``)
and says why.
"""
import csv
import math
from pathlib import Path

import pytest

from common.report import build, readme

ROOT = Path(__file__).resolve().parents[3]


CANONICAL_RUNS = readme.canonical_runs(ROOT)


@pytest.fixture(scope="module", params=CANONICAL_RUNS, ids=[r.name for r in CANONICAL_RUNS])
def regenerated(request, tmp_path_factory) -> tuple[Path, Path]:
    run = request.param
    out = tmp_path_factory.mktemp(f"golden-{run.name}")
    build.write_report(run, out)
    return run, out


def test_every_canonical_run_is_covered():
    names = [n.strip() for n in (ROOT / "results" / "CANONICAL").read_text().splitlines() if n.strip()]
    assert len(names) >= 2 and [r.name for r in CANONICAL_RUNS] == names
    assert all(r.is_dir() for r in CANONICAL_RUNS)


# Epsilons are not read from records: dp-accounting computes them, and its PLD
# accountant's FFTs round differently on different CPUs (seen: 0.9318115082 on
# an AVX2 EPYC, 0.9318115131 on an AVX-512 one, 5e-9 apart). Those columns
# are compared to this relative tolerance, far below any digit the report prints.
EPSILON_RTOL = 1e-6


def same_table(a: Path, b: Path) -> bool:
    """Byte-identical, or equal cell for cell with ``epsilon*`` columns within ``EPSILON_RTOL``."""
    if a.read_bytes() == b.read_bytes():
        return True
    ra, rb = list(csv.reader(a.open())), list(csv.reader(b.open()))
    if len(ra) != len(rb) or not ra or ra[0] != rb[0]:
        return False
    eps = [i for i, name in enumerate(ra[0]) if name.startswith("epsilon")]
    for x, y in zip(ra[1:], rb[1:]):
        if len(x) != len(y):
            return False
        for i, (u, v) in enumerate(zip(x, y)):
            if u != v and not (i in eps and u and v and math.isclose(float(u), float(v), rel_tol=EPSILON_RTOL)):
                return False
    return True


def test_the_canonical_runs_tables_regenerate_byte_identical(regenerated):
    run, out = regenerated
    committed = sorted(p.name for p in (run / "tables").glob("*.csv"))
    if (run / "records.jsonl").exists():  # a study run: its numbers are in its tables
        assert committed, f"{run.name} has no committed tables"
    assert sorted(p.name for p in (out / "tables").glob("*.csv")) == committed
    changed = [name for name in committed if not same_table(run / "tables" / name, out / "tables" / name)]
    assert changed == []


def test_only_epsilons_get_a_tolerance(tmp_path):
    a, b, c = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.csv"
    a.write_text("impl,epsilon_pld,epoch_s\njax,0.9318115081958598,950.74\n")
    b.write_text("impl,epsilon_pld,epoch_s\njax,0.9318115130994418,950.74\n")
    c.write_text("impl,epsilon_pld,epoch_s\njax,0.9318115081958598,950.75\n")
    assert same_table(a, b) and not same_table(a, c)
    b.write_text("impl,epsilon_pld,epoch_s\njax,0.9319,950.74\n")
    assert not same_table(a, b)


def test_the_committed_report_is_what_the_code_renders(regenerated):
    """report.md is generated, never edited: the committed one is the renderer's output."""
    run, out = regenerated
    assert (run / "report.md").read_text() == (out / "report.md").read_text()
