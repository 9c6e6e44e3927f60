"""results/INDEX.md is what the runs' records and runs.json give, and lists every run directory."""
import json
import shutil
from pathlib import Path

import pytest

from common.report import index

ROOT = Path(__file__).resolve().parents[3]


def test_the_committed_index_is_generated():
    assert (ROOT / "results" / index.INDEX).read_text() == index.render(ROOT / "results")


def test_every_run_directory_is_listed_and_no_retired_run_is_left():
    assert index.check_listed(index.load(ROOT / "results"), ROOT / "results") == []


@pytest.fixture
def results(tmp_path):
    src = ROOT / "results"
    for name in ("CANONICAL", "runs.json", "quick-20261203T101020Z"):
        (shutil.copytree if (src / name).is_dir() else shutil.copy)(src / name, tmp_path / name)
    meta = json.loads((tmp_path / "runs.json").read_text())
    meta["current"] = {"quick-20261203T101020Z": meta["current"]["quick-20261203T101020Z"]}
    (tmp_path / "runs.json").write_text(json.dumps(meta))
    return tmp_path


def test_an_unlisted_or_edited_run_is_caught(results):
    (results / "stray-run").mkdir()
    assert index.check_listed(index.load(results), results) == ["stray-run: in results/ but not in runs.json"]
    assert index.main(["--results", str(results)]) == 2  # refuses to write an index that omits a run
    (results / "stray-run").rmdir()
    assert index.main(["--results", str(results)]) == 0 and index.main(["--results", str(results), "--check"]) == 0
    text = (results / index.INDEX).read_text()
    (results / index.INDEX).write_text(text.replace("28 configs", "29 configs"))
    assert index.main(["--results", str(results), "--check"]) == 1


def test_a_retired_run_keeps_its_facts_and_leaves_results(results, monkeypatch):
    monkeypatch.setattr(index.launcher, "run_tool", lambda *a, **k: (0, "abc1234\n"))
    index.retire("quick-20261203T101020Z", "a newer run", results)
    assert not (results / "quick-20261203T101020Z").exists()
    info = index.load(results)["retired"]["quick-20261203T101020Z"]
    assert info["kept_at"] == "abc1234" and info["facts"]["configurations"] == 28 and info["superseded_by"] == "a newer run"
    assert "quick-20261203T101020Z (abc1234)" in index.render(results)
    with pytest.raises(ValueError):
        index.retire("quick-20261203T101020Z", "x", results)
