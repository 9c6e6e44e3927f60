"""The lock files: they agree with pyproject, ensure installs them, records can name them.

No network and no pip: subprocess.run is replaced wherever ensure would run it.
"""
import hashlib
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from common.harness import accel, envs, launcher


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


# --- accelerators: each framework's environment, the CUDA locks ---------------------

def test_env_for_maps_each_framework_to_its_accelerators_environment(monkeypatch):
    monkeypatch.delenv(accel.VAR, raising=False)
    assert [envs.env_for(fw) for fw in ("jax", "torch", "tf")] == ["jax", "torch", "tf"]
    assert [envs.env_for(fw, "cuda") for fw in ("jax", "torch", "tf")] == ["jax-cuda", "torch-cuda", "tf-cuda"]
    monkeypatch.setenv(accel.VAR, "cuda")
    assert envs.env_for("torch") == "torch-cuda" and envs.env_for("torch", "cpu") == "torch"
    assert envs.env_for("study") == "study" and envs.env_for("jax-cuda", "cpu") == "jax-cuda"
    with pytest.raises(ValueError, match="unknown framework 'caffe'"):
        envs.env_for("caffe")
    # the worker's interpreter is the accelerator's environment's
    assert launcher.python_cmd("jax", "m")[0] == str(envs.python_for("jax-cuda"))
    monkeypatch.setenv(accel.VAR, "cpu")
    assert launcher.python_cmd("jax", "m")[0] == str(envs.python_for("jax"))
    assert set(envs.FRAMEWORK_ENVS["cuda"].values()) | {"study"} | set(envs.FRAMEWORK_ENVS["cpu"].values()) \
        == set(envs.ENV_NAMES)


def _pins(name: str) -> dict[str, str]:
    return envs.parse_lock(envs.lock_path(name).read_text())


def test_cuda_locks_pin_cuda_builds_and_cpu_locks_do_not():
    """What tells the two apart is the build, not a pyproject pin (torch==2.13.0 in both)."""
    cpu, cuda = _pins("torch"), _pins("torch-cuda")
    assert cpu["torch"] == "2.13.0+cpu" and not any(p.startswith("nvidia-") for p in cpu)
    # PyPI's Linux torch 2.13.0 is the CUDA 13.0 build: no local label, its CUDA wheels beside it
    assert cuda["torch"] == "2.13.0" and cuda["cuda-toolkit"].startswith("13.0.")
    assert cuda["nvidia-cudnn-cu13"] and cuda["nvidia-cublas"] and cuda["triton"]
    cpu, cuda = _pins("jax"), _pins("jax-cuda")
    assert not any(p.startswith(("jax-cuda", "nvidia-")) for p in cpu)
    assert cuda["jax-cuda13-plugin"] == cuda["jax-cuda13-pjrt"] == cuda["jax"] == cuda["jaxlib"] == "0.10.2"
    # the same CUDA 13.0 libraries and cuDNN as torch's wheel: one driver serves both
    torch_cuda = _pins("torch-cuda")
    for lib in ("nvidia-cudnn-cu13", "nvidia-cublas", "nvidia-cuda-runtime", "nvidia-cuda-nvrtc", "nvidia-cufft",
                "nvidia-cusolver", "nvidia-cusparse", "nvidia-cuda-cupti"):
        assert cuda[lib] == torch_cuda[lib], lib
    assert cuda["nvidia-cuda-nvcc"].startswith("13.0.")   # ptxas no newer than a CUDA 13.0 driver
    cpu, cuda = _pins("tf"), _pins("tf-cuda")
    assert not any(p.startswith("nvidia-") for p in cpu)
    assert cuda["tensorflow"] == "2.15.1" and cuda["nvidia-cudnn-cu12"].startswith("8.9.")
    # beyond the CUDA wheels, an accelerator lock is its CPU sibling's (its pins seeded the lock)
    for cpu_name, cuda_name in (("jax", "jax-cuda"), ("tf", "tf-cuda")):
        a, b = _pins(cpu_name), _pins(cuda_name)
        extra = {p for p in b if p not in a}
        assert all(p.startswith(("nvidia-", "jax-cuda", "cuda-")) for p in extra), extra
        assert {p: v for p, v in a.items() if b.get(p) != v} == {}, cuda_name


def test_check_all_is_the_consistency_check(capsys):
    assert envs.main(["check", "all"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(envs.ENV_NAMES) and all("agrees with pyproject.toml" in ln for ln in lines)


def test_cuda_locks_resolve_against_pypi_alone(lock_copy, tmp_path, monkeypatch):
    """pip-compile for a CUDA lock sees no pip config file and no PIP_* source: a machine's
    own wheel folder (here torch 2.13.0+cpu) cannot enter it; a CPU lock keeps the machine's sources."""
    monkeypatch.setenv("PIP_FIND_LINKS", "/opt/wheels")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "file:///opt/pypi/simple")
    monkeypatch.setenv("PIP_CERT", "/etc/ssl/certs/ca-certificates.crt")
    compiles = []

    def run(cmd, timeout_s, cwd=None, env=None, **kw):
        if Path(cmd[0]).name == "pip-compile":
            compiles.append(env)
            out = Path(cwd) / cmd[cmd.index("--output-file") + 1]
            shutil.copyfile(envs.ROOT / "common" / "harness" / "locks" / out.name, out)

    monkeypatch.setattr(envs, "_run", run)
    monkeypatch.setattr(envs, "_lock_python", lambda: sys.executable)
    envs.lock(["torch-cuda", "torch"])
    cuda, cpu = compiles
    assert cuda["PIP_CONFIG_FILE"] == os.devnull and "PIP_FIND_LINKS" not in cuda and "PIP_EXTRA_INDEX_URL" not in cuda
    assert cuda["PIP_CERT"] == os.environ["PIP_CERT"]            # trust settings add no package
    assert cpu["PIP_FIND_LINKS"] == "/opt/wheels" and "PIP_CONFIG_FILE" not in cpu


def test_a_new_accelerator_lock_starts_from_its_cpu_siblings_pins(lock_copy, monkeypatch):
    (lock_copy / "tf-cuda.txt").unlink()
    seeded = {}

    def run(cmd, timeout_s, cwd=None, env=None, **kw):
        if Path(cmd[0]).name == "pip-compile":
            out = Path(cwd) / cmd[cmd.index("--output-file") + 1]
            seeded["text"] = out.read_text()
            shutil.copyfile(envs.ROOT / "common" / "harness" / "locks" / out.name, out)

    monkeypatch.setattr(envs, "_run", run)
    monkeypatch.setattr(envs, "_lock_python", lambda: sys.executable)
    envs.lock(["tf-cuda"])
    assert seeded["text"] == (lock_copy / "tf.txt").read_text()


def test_lock_label_names_the_lock_or_the_installed_packages(lock_copy, monkeypatch):
    monkeypatch.delenv(envs.INTERPRETER_VAR, raising=False)
    assert envs.lock_label("jax-cuda") == f"jax-cuda:{envs.lock_hash('jax-cuda')}"
    assert envs.lock_label("jax") != envs.lock_label("jax-cuda")
    (lock_copy / "jax.txt").unlink()
    assert envs.lock_label("jax") is None
    monkeypatch.setenv(envs.INTERPRETER_VAR, sys.executable)
    label = envs.lock_label("jax")
    have = envs.installed(sys.executable)
    assert any(p.startswith("pytest==") for p in have) and list(have) == sorted(have)
    assert label == "installed:" + hashlib.sha256("\n".join(have).encode()).hexdigest()[:16]


def test_one_preinstalled_interpreter_for_every_environment(lock_copy, fake_pip, monkeypatch):
    monkeypatch.setenv(envs.INTERPRETER_VAR, "/opt/python/bin/python3")
    assert envs.python_for("torch-cuda") == envs.python_for("study") == Path("/opt/python/bin/python3")
    assert envs.ensure("torch-cuda") == Path("/opt/python/bin/python3")
    assert fake_pip == []                      # nothing is provisioned


def test_a_cuda_lock_is_installed_from_pypi_alone(lock_copy, tmp_path, monkeypatch):
    """torch==2.13.0 matches a local 2.13.0+cpu too, which pip would prefer: the CUDA
    environments install with no pip config and no PIP_* source, the CPU ones as configured."""
    monkeypatch.setenv("DPBENCH_VENVS", str(tmp_path / "venvs"))
    monkeypatch.setenv("PIP_FIND_LINKS", "/opt/wheels")
    installs = []

    def run(cmd, timeout_s, **kw):
        if cmd[1:3] == ["-m", "venv"]:
            py = Path(cmd[-1]) / "bin" / "python"
            py.parent.mkdir(parents=True, exist_ok=True)
            py.write_text("")
        else:
            installs.append((cmd[-1], kw.get("env")))

    monkeypatch.setattr(envs, "_run", run)
    envs.ensure("torch-cuda")
    envs.ensure("torch")
    (cuda_lock, cuda_env), (cpu_lock, cpu_env) = installs
    assert cuda_lock.endswith("torch-cuda.txt") and cpu_lock.endswith("torch.txt")
    assert cuda_env["PIP_CONFIG_FILE"] == os.devnull and "PIP_FIND_LINKS" not in cuda_env
    assert cpu_env is None                     # the user's pip settings, as before
