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


FIRST_SCREEN = 2500  # characters: what a reader sees before scrolling


def first_screen_problem(text: str) -> str | None:
    """Why ``text``'s findings block is not on its first screen, or None when it is.
    A missing marker is a problem, not a pass (``str.find`` gives -1 for it)."""
    i, j = text.find(readme.BEGIN), text.find(readme.END)
    if i < 0:
        return "no findings block: its begin marker is missing"
    if j < i:
        return "the findings block has no end marker after its begin marker"
    if i >= FIRST_SCREEN:
        return f"the findings block begins at character {i}, past the first screen ({FIRST_SCREEN})"
    return None


def test_the_block_is_on_the_first_screen(tmp_path):
    """The question's answer comes before anything else a reader must scroll past."""
    assert first_screen_problem((ROOT / "README.md").read_text()) is None
    # the check fails where it should: a README without the marker, one with the block too far down
    unmarked = tmp_path / "README.md"
    unmarked.write_text("# dpbench\n\n## Findings\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    assert first_screen_problem(unmarked.read_text()) == "no findings block: its begin marker is missing"
    late = "# dpbench\n\n" + "intro\n" * FIRST_SCREEN + f"{readme.BEGIN}\n\n{readme.END}\n"
    assert first_screen_problem(late).startswith("the findings block begins at character")
    assert first_screen_problem(f"{readme.BEGIN}\n") is not None  # no end marker
    assert first_screen_problem(f"# dpbench\n\n{readme.BEGIN}\n\n{readme.END}\n") is None


def _edit_a_number_in_the_block(text: str) -> str:
    """``text`` with one digit of the first percentage between BEGIN and END changed."""
    i, j = text.index(readme.BEGIN), text.index(readme.END)
    m = re.compile(r"\d+\.\d %").search(text, i, j)
    assert m, "the block has no percentage to edit"
    return text[:m.start()] + str((int(m.group(0)[0]) + 1) % 10) + text[m.start() + 1:]


def test_the_check_command_exits_0_1_2(tmp_path, capsys, monkeypatch, generated):
    """``python -m common.report.readme --check`` on a copy of README.md: 0 when
    its block is what the canonical runs give, 1 after one number in the block
    is edited, 2 with one error line when the markers are missing; it never writes."""
    text = (ROOT / "README.md").read_text()
    # The copy's block is generated here (the same as the committed README's when
    # that is up to date, which the test above checks), so this test checks the
    # command, not whether README.md is stale right now.
    fresh = readme.replace_block(text, generated)
    path = tmp_path / "README.md"
    path.write_text(fresh)
    assert readme.main(["--check", "--readme", str(path)]) == 0
    assert "up to date" in capsys.readouterr().out
    assert path.read_text() == fresh

    edited = _edit_a_number_in_the_block(fresh)
    assert edited != fresh
    path.write_text(edited)
    assert readme.main(["--check", "--readme", str(path)]) == 1
    assert "stale: run python -m common.report.readme" in capsys.readouterr().out
    assert path.read_text() == edited  # --check reports, it does not rewrite

    unmarked = fresh.replace(readme.BEGIN, "").replace(readme.END, "")
    path.write_text(unmarked)
    # the markers are looked for after the block is generated: reuse it (15 s a generation on 2 cores)
    monkeypatch.setattr(readme, "block", lambda runs: generated)
    assert readme.main(["--check", "--readme", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == ["error: README.md has no findings markers"] and captured.out == ""
    assert path.read_text() == unmarked


def test_the_readme_figure_is_the_studys_and_inside_the_block(generated):
    """The README's one figure is the canonical study's headline.png (the same picks as its table),
    generated inside the block, so a re-taken study cannot leave an older run's figure behind."""
    text = (ROOT / "README.md").read_text()
    figures = re.findall(r"!\[[^\]]*\]\((results/[^)]+\.png)\)", text)
    assert figures == [readme.HEADLINE_PNG.format(readme.canonical_run(ROOT).name)]
    assert figures[0] in generated and (ROOT / figures[0]).is_file()


def test_supplement_runs_follow_the_study(tmp_path):
    """A second line in CANONICAL adds that run's tables (recommendation, findings) after the study's,
    each with its own scope line; the legend comes once, above every table."""
    study = readme.canonical_run(ROOT)
    (tmp_path / "results").mkdir()
    for name in ("study", "supplement"):
        (tmp_path / "results" / name).mkdir()
        (tmp_path / "results" / name / "records.jsonl").write_bytes((study / "records.jsonl").read_bytes())
    (tmp_path / "results" / "CANONICAL").write_text("study\nsupplement\n")
    runs = readme.canonical_runs(tmp_path)
    assert [r.name for r in runs] == ["study", "supplement"] and readme.canonical_run(tmp_path) == runs[0]
    text = readme.block(runs)
    assert text.count("Scope: ") == 2 and text.count("| Framework |") == 4 and text.count("How to read") == 1
    assert text.index("How to read") < text.index("| Framework |")  # symbols defined above the tables
    assert "Another CPU" not in text  # the same run twice: the same CPU
    assert text.index("results/study/report.md") < text.index("results/supplement/report.md")
    (tmp_path / "results" / "CANONICAL").write_text("\n")
    with pytest.raises(ValueError, match="names no run"):
        readme.canonical_runs(tmp_path)


def test_replace_block_needs_markers():
    with pytest.raises(ValueError):
        readme.replace_block("no markers here", "x")


LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
# A target with a space (not a '"title"') is no link in markdown, and LINK would skip it.
SPACED = re.compile(r"\]\((?!<)([^)\s]*\s[^)]*)\)")


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """The relative link targets of ``path`` that do not resolve to a file inside ``root``."""
    text = path.read_text()
    broken = [t for t in SPACED.findall(text) if not re.fullmatch(r'\S+\s+"[^"]*"', t)]
    for target in LINK.findall(text):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        resolved = (path.parent / target).resolve()
        if not resolved.exists() or root.resolve() not in resolved.parents:
            broken.append(target)
    return broken


@pytest.mark.parametrize("doc", ["README.md", *[str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")]])
def test_every_relative_link_resolves_inside_the_repo(doc):
    assert broken_links(ROOT / doc) == []


def test_a_broken_link_is_found(tmp_path):
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (root / "README.md").write_text("x")
    (tmp_path / "outside.md").write_text("x")
    (root / "docs" / "design.md").write_text("x")
    doc = root / "docs" / "reference.md"
    doc.write_text("[ok](../README.md) [gone](../results/no-such-run/report.md) [up](../../outside.md)\n"
                   "[`old (retired)`](../old-run (retired: results/INDEX.md)/report.md)\n"
                   '[t](design.md "a title") [web](https://example.org/x)\n')
    assert broken_links(doc, root) == ["../old-run (retired: results/INDEX.md", "../results/no-such-run/report.md",
                                       "../../outside.md"]


def test_the_readme_points_at_nothing_outside_the_repo():
    text = (ROOT / "README.md").read_text()
    assert "shared folder" not in text and "../shared" not in text


def test_a_table_from_another_cpu_says_so_above_it(tmp_path):
    """The scope line names the CPU's family, model and vector extensions; a run on
    another CPU than the first table's gets a warning right above its table."""
    import json as _json
    study = readme.canonical_run(ROOT)
    (tmp_path / "results").mkdir()
    lines = (study / "records.jsonl").read_text().splitlines()
    for name, family in (("study", None), ("other", "26")):
        (tmp_path / "results" / name).mkdir()
        recs = [_json.loads(ln) for ln in lines]
        for r in recs:
            if family:
                r["machine"] = dict(r["machine"], family=family, model="2",
                                    vector_extensions=r["machine"]["vector_extensions"] + ["avx512f"])
        (tmp_path / "results" / name / "records.jsonl").write_text("".join(_json.dumps(r) + "\n" for r in recs))
    runs = [tmp_path / "results" / "study", tmp_path / "results" / "other"]
    text = readme.block(runs)
    m = _json.loads(lines[0])["machine"]
    assert f"family {m['family']} model {m['model']}" in text and "family 26 model 2 (AVX-512)" in text
    warn = text.index("**Another CPU**")
    assert text.index("results/other/report.md") < warn < text.index("| Framework |", warn)
    assert text.count("**Another CPU**") == 1


def test_a_win_is_claimed_only_where_the_librarys_modes_raced(tmp_path):
    """A cell where a library ran one mode only (a sweep's cells; WRN runs jax-privacy at its default
    only) is no win for that mode: the recommendation counts it apart."""
    import json as _json
    study = readme.canonical_run(ROOT)
    recs = [_json.loads(ln) for ln in (study / "records.jsonl").read_text().splitlines()]
    cell = ("small", 64)
    # in one cell keep only Opacus' winning mode (ghost); the other cells keep their race
    keep = [r for r in recs if not ((r["model"], r["batch_size"]) == cell and r.get("dp_library") == "opacus"
                                    and r["impl"] != "opacus_ghost")]
    assert len(keep) < len(recs)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "records.jsonl").write_text("".join(_json.dumps(r) + "\n" for r in keep))
    line = next(ln for ln in readme.block(tmp_path / "run").splitlines() if ln.startswith("| PyTorch | Opacus:"))
    # the canonical study: ghost best in each of its 3 cells; here one cell ran ghost alone
    assert "best in 2 of 2 cells where its modes competed; the only mode run in 1" in line, line
    full = next(ln for ln in readme.block(study).splitlines() if ln.startswith("| PyTorch | Opacus:"))
    assert "best in 3 of 3 cells" in full and "only mode" not in full


def test_a_flag_that_slows_jaxs_standard_is_said_beside_the_table(tmp_path):
    """Where the study's XLA flag slows JAX's standard step (its A/B row), JAX's % of standard is
    against a slowed reference: the table says so with the defaults' numbers; where the flag speeds
    standard up (the study's small model) nothing is added."""
    import json as _json
    study = readme.canonical_run(ROOT)
    assert not readme.flag_notes(*_frame_and_findings(study))
    recs = [_json.loads(ln) for ln in (study / "records.jsonl").read_text().splitlines()]

    def ab_standard(r):
        return r["framework"] == "jax" and r["impl"] == "standard" and r["variant"] == "xla-default"
    recs = [r for r in recs if not (ab_standard(r) and r["round"] > 1)]  # one round: its record's number
    for r in recs:  # XLA's defaults 3x faster for standard: the flag now slows it
        if ab_standard(r) and r["status"] == "ok":
            r["throughput_sps"] *= 3
            r["step_s_median"] /= 3
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "records.jsonl").write_text("".join(_json.dumps(r) + "\n" for r in recs))
    notes = readme.flag_notes(*_frame_and_findings(tmp_path / "run"))
    # the flag's samples/s against 3 x the A/B record's own (one round), and their ratio, from the records
    ab = next(r["throughput_sps"] for r in recs if ab_standard(r) and r["status"] == "ok")
    m = re.match(r"\*\*JAX at small B 64\*\*: the study's XLA flag runs JAX's standard step at ([0-9.]+)x of "
                 r"XLA's defaults \(([0-9]+) against ([0-9]+)", notes[1] if len(notes) == 3 else "")
    assert m, notes
    ratio, flag, defaults = float(m[1]), int(m[2]), int(m[3])
    assert defaults == round(ab) and ratio < 1 and abs(ratio - flag / defaults) < 0.006, notes
    # each JAX A/B pick of the cell with the defaults' paired %
    assert "with XLA's defaults on both arms: " in notes[1] and "fastclip (JAX) " in notes[1]
    others = sorted({(r["model"], r["batch_size"]) for r in recs if r["framework"] == "jax"} - {("small", 64)},
                    key=lambda c: (c[0] != "small", c[1]))
    assert f"not measured in the other cells ({', '.join(f'{m_} B {b}' for m_, b in others)})" in notes[2], notes


def _frame_and_findings(run_dir):
    from common.report import findings
    df, failed = readme.run_frame(run_dir)
    return df, findings.frame(df, failed)


def test_the_setting_that_wins_is_the_one_that_won_a_race(tmp_path):
    """A mode that ran alone in two cells does not outvote the mode that won the one cell where
    the library's modes raced (the ViT run: Opacus ghost alone in the sweep's cells, ew fastest at B 64)."""
    import json as _json
    study = readme.canonical_run(ROOT)
    recs = [_json.loads(ln) for ln in (study / "records.jsonl").read_text().splitlines()]

    def dropped(r):  # small B 64: every mode but ghost races; small B 256 and medium B 64: ghost alone
        if r.get("dp_library") != "opacus" or r["impl"] == "direct_opacus":
            return False
        return r["impl"] == "opacus_ghost" if (r["model"], r["batch_size"]) == ("small", 64) else r["impl"] != "opacus_ghost"
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "records.jsonl").write_text("".join(_json.dumps(r) + "\n" for r in recs if not dropped(r)))
    line = next(ln for ln in readme.block(tmp_path / "run").splitlines() if ln.startswith("| PyTorch | Opacus:"))
    assert line.startswith('| PyTorch | Opacus: `grad_sample_mode="ew"` (best in 1 of 1 cells where its modes '
                           'competed; elsewhere'), line
