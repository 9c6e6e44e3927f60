"""The script for a machine with the frameworks preinstalled (common/harness/preinstalled.py):
which carried wheels it installs, how a stage is cut off, what it runs and writes.
Its end-to-end rehearsal on the CPU (real frameworks) is the README's documented command."""
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from common.harness import accel, envs, preinstalled, runner


@pytest.fixture(autouse=True)
def restored_env(monkeypatch):
    """main() sets these in os.environ for its children: undone after each test."""
    for var in (envs.INTERPRETER_VAR, accel.VAR, runner.COMMIT_VAR, "PYTHONPATH"):
        monkeypatch.setenv(var, "")       # recorded, so that teardown restores the original state
        monkeypatch.delenv(var)


def test_wheel_project_is_the_canonical_name():
    assert preinstalled.wheel_project(Path("jax_privacy-2.0.0-py3-none-any.whl")) == "jax-privacy"
    assert preinstalled.wheel_project(Path("dm_tree-0.1.10-cp312-cp312-manylinux_2_17_x86_64.whl")) == "dm-tree"
    assert preinstalled.wheel_project(Path("Opacus-1.6.0-py3-none-any.whl")) == "opacus"


def test_download_fetches_every_carried_wheel_for_the_machines_python(tmp_path):
    cmd = preinstalled.download_command(tmp_path)
    assert cmd[1:5] == ["-m", "pip", "download", "-q"] and "--no-deps" in cmd and "--only-binary=:all:" in cmd
    assert cmd[cmd.index("--python-version") + 1] == "3.12" and cmd[-len(preinstalled.CARRIED):] == list(
        preinstalled.CARRIED)
    names = {c.split("==")[0] for c in preinstalled.CARRIED}
    assert {"opacus", "jax-privacy", "dp-accounting"} <= names
    # at the versions the locks pin (what the CPU study ran)
    for lock in ("jax", "torch"):
        pins = envs.parse_lock(envs.lock_path(lock).read_text())
        for c in preinstalled.CARRIED:
            name, version = c.split("==")
            if name in pins and name != "mpmath":
                assert pins[name] == version, (lock, c)


def test_only_missing_wheels_are_installed(tmp_path):
    for name in ("pytest-8.3.4-py3-none-any.whl", "surely_absent_dpbench_pkg-1.0-py3-none-any.whl"):
        (tmp_path / name).write_bytes(b"")
    missing, present = preinstalled.missing_wheels(tmp_path)
    assert [w.name for w in missing] == ["surely_absent_dpbench_pkg-1.0-py3-none-any.whl"]
    assert present == ["pytest"]
    assert preinstalled.missing_wheels(tmp_path / "none") == ([], [])


def test_a_python_without_pip_gets_the_wheels_unpacked(tmp_path, monkeypatch):
    import zipfile
    whl = tmp_path / "tinypkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("tinypkg/__init__.py", "X = 1\n")
        z.writestr("tinypkg-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\n")
    monkeypatch.setattr(preinstalled.importlib.util, "find_spec", lambda name: None)   # no pip
    site, lines = tmp_path / "site", []
    preinstalled.install([whl], site, lines.append)
    assert (site / "tinypkg" / "__init__.py").read_text() == "X = 1\n" and "no pip here" in lines[0]
    import importlib.metadata
    assert [d.version for d in importlib.metadata.distributions(path=[str(site)])] == ["1.0"]
    bad = tmp_path / "withdata-1.0-py3-none-any.whl"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("withdata-1.0.data/scripts/tool", "")
    with pytest.raises(ValueError, match="has a .data folder"):
        preinstalled.unpack(bad, site)


def test_a_stage_runs_to_its_end_or_is_cut_off(tmp_path, monkeypatch):
    lines = []
    log = tmp_path / "stage.log"
    done = preinstalled.run_until([sys.executable, "-c", "print('row 1')"], 30, log, lines.append)
    assert (done["code"], done["cut_off"]) == (0, False) and lines == ["row 1"] and log.read_text() == "row 1\n"
    # past its time: SIGINT (the runner then kills its worker and keeps its records), its exit code kept
    code = ("import time\ntry:\n    print('row 1', flush=True); time.sleep(30)\n"
            "except KeyboardInterrupt:\n    print('interrupted', flush=True); raise SystemExit(130)")
    # started from a background job (run_all.sh's test lanes, nohup ... &), SIGINT comes ignored:
    # the stage must still get it (launcher._default_sigint), as from a terminal
    ignored = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        cut = preinstalled.run_until([sys.executable, "-c", code], 2.0, log, lines.append)
    finally:
        signal.signal(signal.SIGINT, ignored)
    assert cut["cut_off"] and cut["code"] == 130 and cut["elapsed_s"] < 10
    assert lines[-3:-1] == ["row 1", "interrupted"] and "cut off" in lines[-1]
    # a stage that ignores SIGINT is killed after the grace period
    monkeypatch.setattr(preinstalled, "GRACE_S", 0.5)
    code = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(30)"
    killed = preinstalled.run_until([sys.executable, "-c", code], 0.5, log, lines.append)
    assert killed["cut_off"] and killed["code"] is None and killed["elapsed_s"] < 10


@pytest.fixture
def faked(tmp_path, monkeypatch):
    """Carried wheels (one present here, one not) and every stage faked: (what was
    installed, each stage's command, seconds and the environment it inherited)."""
    wheels = tmp_path / "whl"
    wheels.mkdir()
    for name in ("pytest-8.3.4-py3-none-any.whl", "surely_absent_dpbench_pkg-1.0-py3-none-any.whl"):
        (wheels / name).write_bytes(b"")
    installed, stages = [], []
    monkeypatch.setattr(preinstalled, "install", lambda ws, site, log: installed.append((ws, site)))
    monkeypatch.setattr(envs, "installed", lambda python: ("opacus==1.6.0", "torch==2.11.0+cu130"))

    def stage(cmd, seconds, log_path, log):
        stages.append((cmd, seconds, {k: os.environ.get(k) for k in (envs.INTERPRETER_VAR, accel.VAR,
                                                                      runner.COMMIT_VAR, "PYTHONPATH")}))
        if cmd[2] == "common.harness.runner":
            with open(Path(cmd[cmd.index("--out") + 1]) / runner.RECORDS, "a") as f:
                f.write(json.dumps({"status": "timeout"}) + "\n")
        return {"cmd": cmd[1:], "code": 0, "cut_off": False, "elapsed_s": 1.0}

    monkeypatch.setattr(preinstalled, "run_until", stage)
    args = ["--out", str(tmp_path / "out"), "--wheels", str(wheels), "--site", str(tmp_path / "site"),
            "--accelerator", "cpu", "--deadline-s", "300", "--parity-s", "60", "--commit", "abc123"]
    return installed, stages, args


def test_main_installs_the_missing_wheels_then_runs_rows_model_by_model_and_parity(tmp_path, faked):
    """The wiring: what gets installed, the environment every child inherits, one runner
    stage per model of the preset (each a share of the time left, --resume after the
    first), the verifier's command line, and device.json."""
    installed, stages, args = faked
    out = tmp_path / "out"
    assert preinstalled.main(args) == 0
    assert [w.name for w in installed[0][0]] == ["surely_absent_dpbench_pkg-1.0-py3-none-any.whl"]
    *rows, (parity_cmd, parity_s, _) = stages
    base = ["-m", "common.harness.runner", "--preset", "gpu", "--frameworks", "jax,torch", "--out", str(out / "run"),
            "--no-progress", "--retry-stolen", "0"]
    assert [cmd[1:] for cmd, _, _ in rows] == [base + ["--models", "small"],
                                               base + ["--models", "medium", "--resume"],
                                               base + ["--models", "wrn16_4", "--resume"]]
    for _, _, env in stages:
        assert env == {envs.INTERPRETER_VAR: sys.executable, accel.VAR: "cpu", runner.COMMIT_VAR: "abc123",
                       "PYTHONPATH": str(tmp_path / "site")}
    # (300 - 60) s for the rows: a third to the first model, half of what is left to the second, ...
    assert [round(s) for _, s, _ in rows] == [80, 120, 240] and parity_s > 0
    assert parity_cmd[1:] == ["-m", "common.harness.verify", str(out / "run"), "--frameworks", "jax,torch",
                              "--models", "small"]
    info = json.loads((out / "run" / preinstalled.INFO).read_text())
    assert info["installed_from_wheels"] == ["surely-absent-dpbench-pkg"] and info["carried_but_present"] == ["pytest"]
    assert info["packages"] == ["opacus==1.6.0", "torch==2.11.0+cu130"] and info["accelerator"] == "cpu"
    assert info["env_lock"].startswith("installed:") and [s["code"] for s in info["runner"]] == [0, 0, 0]
    assert (out / preinstalled.LOG).is_file()


def test_models_named_on_the_command_line_are_one_stage_and_a_second_call_resumes(tmp_path, faked):
    _, stages, args = faked
    assert preinstalled.main(args + ["--", "--models", "small"]) == 0
    assert [cmd[-2:] for cmd, _, _ in stages[:-1]] == [["--models", "small"]]
    assert 230 < stages[0][1] <= 240                           # the rows' whole time, the parity table's kept
    stages.clear()
    assert preinstalled.main(args + ["--", "--models", "small"]) == 0
    assert stages[0][0][-1] == "--resume"


def test_a_refused_run_is_not_followed_by_parity(tmp_path, monkeypatch):
    stages = []
    monkeypatch.setattr(envs, "installed", lambda python: ())
    monkeypatch.setattr(preinstalled, "run_until", lambda cmd, s, p, log: stages.append(cmd[2]) or {
        "cmd": cmd[1:], "code": 2, "cut_off": False, "elapsed_s": 0.1})
    assert preinstalled.main(["--out", str(tmp_path / "out"), "--wheels", str(tmp_path), "--accelerator", "cpu"]) == 2
    assert stages == ["common.harness.runner"]


def test_main_refuses_cuda_without_a_gpu(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(accel, "find_gpus", lambda: ([], "no nvidia-smi on PATH"))
    assert preinstalled.main(["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --accelerator cuda needs an NVIDIA GPU") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
