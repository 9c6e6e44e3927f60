"""The README's findings are the canonical run's records, and its links resolve."""
import re
from pathlib import Path

import pytest

from common.report import readme

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def generated() -> str:
    return readme.block(readme.canonical_runs(ROOT))


def test_readme_findings_block_is_what_the_canonical_run_gives(generated):
    """Fails when the README's block was typed, edited or left stale: regenerate
    it with `python -m common.report.readme`."""
    assert readme.current_block((ROOT / "README.md").read_text()) == generated


def test_an_edited_number_in_the_block_is_caught(generated):
    text = (ROOT / "README.md").read_text()
    block = readme.current_block(text)
    m = re.search(r"\d+\.\d %", block)
    assert m, "the block has no percentage to edit"
    digit = m.group(0)[0]
    edited = block[:m.start()] + str((int(digit) + 1) % 10) + block[m.start() + 1:]
    assert edited != generated
    assert readme.current_block(readme.replace_block(text, edited)) != generated


def test_the_block_is_on_the_first_screen():
    """The question's answer comes before anything else a reader must scroll past."""
    text = (ROOT / "README.md").read_text()
    assert text.find(readme.BEGIN) < 2500


def test_supplement_runs_follow_the_study(tmp_path):
    """A second line in CANONICAL adds that run's table after the study's,
    each with its own scope line; the legend comes once."""
    study = readme.canonical_run(ROOT)
    (tmp_path / "results").mkdir()
    for name in ("study", "supplement"):
        (tmp_path / "results" / name).mkdir()
        (tmp_path / "results" / name / "records.jsonl").write_bytes((study / "records.jsonl").read_bytes())
    (tmp_path / "results" / "CANONICAL").write_text("study\nsupplement\n")
    runs = readme.canonical_runs(tmp_path)
    assert [r.name for r in runs] == ["study", "supplement"] and readme.canonical_run(tmp_path) == runs[0]
    text = readme.block(runs)
    assert text.count("Scope: ") == 2 and text.count("| Framework |") == 2 and text.count("Each cell:") == 1
    assert text.index("results/study/report.md") < text.index("results/supplement/report.md")
    (tmp_path / "results" / "CANONICAL").write_text("\n")
    with pytest.raises(ValueError, match="names no run"):
        readme.canonical_runs(tmp_path)


def test_replace_block_needs_markers():
    with pytest.raises(ValueError):
        readme.replace_block("no markers here", "x")


LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("doc", ["README.md", *[str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")]])
def test_every_relative_link_resolves_inside_the_repo(doc):
    path = ROOT / doc
    broken = []
    for target in LINK.findall(path.read_text()):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        resolved = (path.parent / target).resolve()
        if not resolved.exists() or ROOT.resolve() not in resolved.parents:
            broken.append(target)
    assert broken == []


def test_the_readme_points_at_nothing_outside_the_repo():
    text = (ROOT / "README.md").read_text()
    assert "shared folder" not in text and "../shared" not in text
