"""The lock files: they agree with pyproject, ensure installs them, records can name them.

No network and no pip: subprocess.run is replaced wherever ensure would run it.
"""
import hashlib
import re
import shutil
from pathlib import Path

import pytest

from common.harness import envs


@pytest.fixture
def lock_copy(tmp_path, monkeypatch):
    """LOCK_DIR pointed at a temp copy of the committed locks; returns its folder."""
    locks = tmp_path / "locks"
    shutil.copytree(envs.LOCK_DIR, locks)
    monkeypatch.setattr(envs, "LOCK_DIR", locks)
    return locks


@pytest.fixture
def fake_pip(tmp_path, monkeypatch):
    """DPBENCH_VENVS in tmp_path; the tool runs recorded, venv creation faked."""
    monkeypatch.setenv("DPBENCH_VENVS", str(tmp_path / "venvs"))
    calls = []

    def run(cmd, timeout_s, **kw):
        calls.append([str(c) for c in cmd])
        if cmd[1:3] == ["-m", "venv"]:
            py = Path(cmd[-1]) / "bin" / "python"
            py.parent.mkdir(parents=True, exist_ok=True)
            py.write_text("")
        return None

    monkeypatch.setattr(envs, "_run", run)
    return calls


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


# --- every environment is locked -------------------------------------------------

@pytest.mark.parametrize("name", envs.ENV_NAMES)
def test_every_env_has_a_lock_matching_pyproject(name):
    path = envs.lock_path(name)
    assert path.is_file(), f"missing {path}; run {envs.lock_command(name)}"
    assert envs.check_lock(name) == [], f"stale lock; run {envs.lock_command(name)}"
    text = path.read_text()
    assert envs.lock_command(name) in text  # the header says how to regenerate it
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    # Every requirement line is an exact pin, and no machine-specific option (index
    # URLs, find-links folders) is written into the committed file.
    assert lines and all(re.fullmatch(r"[a-z0-9][a-z0-9._-]*==\S+", ln) for ln in lines), lines
    assert len(envs.parse_lock(text)) == len(lines) > len(envs.requirements(name))


def test_torch_lock_accepts_the_cpu_local_label():
    # torch==2.13.0 in pyproject, 2.13.0+cpu in the lock: PEP 440 == ignores the label.
    assert envs._version_matches("2.13.0", "2.13.0+cpu")
    assert envs._version_matches("2.13.0+cpu", "2.13.0+cpu")       # a pinned label must match
    assert not envs._version_matches("2.13.0+cpu", "2.13.0")
    assert not envs._version_matches("2.13.0+cu121", "2.13.0+cpu")
    assert not envs._version_matches("2.13.0", "2.13.1+cpu")
    assert not envs._version_matches("2.2.6", "2.2.60")


# --- check_lock ------------------------------------------------------------------

def test_check_lock_catches_a_changed_pin(lock_copy):
    assert envs.check_lock("study") == []
    _edit(lock_copy / "study.txt", "\nnumpy==2.2.6\n", "\nnumpy==2.2.5\n")
    problems = envs.check_lock("study")
    assert len(problems) == 1 and problems[0].startswith("numpy==2.2.6") and "2.2.5" in problems[0]


def test_check_lock_catches_a_missing_pin_and_a_missing_lock(lock_copy):
    _edit(lock_copy / "study.txt", "\npandas==2.2.3\n", "\n")
    assert [p.split()[0] for p in envs.check_lock("study")] == ["pandas==2.2.3"]
    (lock_copy / "study.txt").unlink()
    assert len(envs.check_lock("study")) == len(envs.requirements("study"))


def test_check_lock_catches_a_changed_pyproject_pin(lock_copy, monkeypatch):
    reqs = envs.requirements("tf")
    bumped = [r.replace("dp-accounting==0.4.3", "dp-accounting==0.6.0") for r in reqs]
    assert bumped != reqs
    monkeypatch.setattr(envs, "requirements", lambda name: bumped)
    assert [p.split()[0] for p in envs.check_lock("tf")] == ["dp-accounting==0.6.0"]


# --- lock_hash -------------------------------------------------------------------

def test_lock_hash_follows_the_file(lock_copy):
    path = lock_copy / "jax.txt"
    h = envs.lock_hash("jax")
    assert re.fullmatch(r"[0-9a-f]{16}", h)
    pins = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert h == hashlib.sha256("\n".join(pins).encode()).hexdigest()[:16]
    # a comment (pip-compile's header, its "# via" lines) is not what gets installed
    path.write_text("# regenerate with: some other command\n" + path.read_text() + "\n    # via nothing\n")
    assert envs.lock_hash("jax") == h
    # a changed pin is
    path.write_text(path.read_text().replace("jax==0.10.2", "jax==0.10.1"))
    assert envs.lock_hash("jax") not in (None, h)
    path.unlink()
    assert envs.lock_hash("jax") is None


def test_lock_hashes_differ_between_envs():
    hashes = {envs.lock_hash(n) for n in envs.ENV_NAMES}
    assert None not in hashes and len(hashes) == len(envs.ENV_NAMES)


# --- ensure ----------------------------------------------------------------------

def test_ensure_installs_the_lock_and_stamps_its_hash(lock_copy, fake_pip):
    py = envs.ensure("torch")
    assert py == envs.python_for("torch") and py.exists()
    venv, pip = fake_pip
    assert venv[1:4] == ["-m", "venv", "--clear"]
    assert pip[-2:] == ["-r", str(lock_copy / "torch.txt")]
    stamp = (envs.venv_dir("torch") / ".dpbench-stamp").read_text().strip()
    assert stamp == envs.stamp_digest("torch")
    assert stamp == "lock:" + envs.pins_digest(lock_copy / "torch.txt")

    envs.ensure("torch")                       # same lock: nothing runs
    assert len(fake_pip) == 2

    path = lock_copy / "torch.txt"             # a changed lock (same pyproject pins) reinstalls
    path.write_text(re.sub(r"\nfilelock==[^\n]+", "\nfilelock==0.0.1", path.read_text()))
    envs.ensure("torch")
    assert len(fake_pip) == 4 and fake_pip[3][-2:] == ["-r", str(path)]
    assert (envs.venv_dir("torch") / ".dpbench-stamp").read_text().strip() == envs.stamp_digest("torch") != stamp


def test_ensure_refuses_a_lock_that_disagrees_with_pyproject(lock_copy, fake_pip, capsys):
    _edit(lock_copy / "tf.txt", "\nnumpy==1.26.4\n", "\nnumpy==2.2.6\n")
    with pytest.raises(ValueError, match=r"numpy==1\.26\.4 \(lock has 2\.2\.6\).*common\.harness\.envs lock tf"):
        envs.ensure("tf")
    assert fake_pip == []                      # nothing was installed
    assert envs.main(["ensure", "tf"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and err.endswith(envs.lock_command("tf"))
    assert envs.main(["check", "tf"]) == 1
    assert fake_pip == []


def test_ensure_without_a_lock_falls_back_to_pyproject_with_a_warning(lock_copy, fake_pip, capsys):
    (lock_copy / "study.txt").unlink()
    envs.ensure("study")
    assert "warning: no lock file" in capsys.readouterr().err
    assert fake_pip[1][-len(envs.requirements("study")):] == envs.requirements("study")
    assert envs.stamp_digest("study").startswith("reqs:")
