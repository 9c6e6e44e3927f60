"""Accelerator detection and refusal (common/harness/accel.py), rehearsed without a GPU:
nvidia-smi is a fake script on PATH, /proc/driver/nvidia a folder in tmp_path."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.harness import accel, runner

ROOT = Path(__file__).resolve().parents[3]
SMI_TWO = "NVIDIA H100 80GB HBM3, 580.65.06, 81559\nNVIDIA H100 80GB HBM3, 580.65.06, 81559\n"


def fake_smi(folder: Path, output: str = "", code: int = 0) -> Path:
    """An ``nvidia-smi`` that prints ``output`` and exits ``code`` (6: "No devices were found")."""
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "nvidia-smi"
    exe.write_text(f"#!/bin/sh\nprintf '%s' '{output}'\nexit {code}\n")
    exe.chmod(0o755)
    return exe


def fake_proc(root: Path, models: list[str], driver: str = "535.104.05") -> Path:
    for i, m in enumerate(models):
        d = root / "gpus" / f"0000:0{i}:00.0"
        d.mkdir(parents=True)
        (d / "information").write_text(f"Model: \t\t {m}\nIRQ:   \t\t 42\nBus Location: \t 0000:0{i}:00.0\n")
    root.mkdir(parents=True, exist_ok=True)
    (root / "version").write_text(f"NVRM version: NVIDIA UNIX x86_64 Kernel Module  {driver}  Sat Aug 19 2023\n"
                                  "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n")
    return root


@pytest.fixture
def no_gpu_path(tmp_path, monkeypatch):
    """PATH whose nvidia-smi finds no device (exit 6, as the real one does)."""
    fake_smi(tmp_path / "bin", "No devices were found", 6)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / "bin"


def test_parse_smi_reads_name_driver_memory():
    gpus = accel.parse_smi(SMI_TWO + "\n garbage line\n")
    assert gpus == [accel.Gpu("NVIDIA H100 80GB HBM3", "580.65.06", 81559)] * 2
    assert accel.parse_smi("No devices were found") == []
    assert accel.parse_smi("NVIDIA A100, 550.1, [N/A]\n") == [accel.Gpu("NVIDIA A100", "550.1", None)]


def test_parse_proc_reads_models_and_driver(tmp_path):
    root = fake_proc(tmp_path / "nvidia", ["NVIDIA A100-SXM4-40GB", "NVIDIA A100-SXM4-40GB"])
    assert accel.parse_proc(root) == [accel.Gpu("NVIDIA A100-SXM4-40GB", "535.104.05", None)] * 2
    assert accel.parse_proc(tmp_path / "absent") == []


def test_find_gpus_prefers_nvidia_smi(tmp_path, monkeypatch):
    fake_smi(tmp_path / "bin", SMI_TWO)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    gpus, where = accel.find_gpus(fake_proc(tmp_path / "nvidia", ["OTHER"]))
    assert where == "nvidia-smi" and [g.name for g in gpus] == ["NVIDIA H100 80GB HBM3"] * 2


def test_find_gpus_falls_back_to_proc_then_says_why_none(tmp_path, no_gpu_path):
    gpus, where = accel.find_gpus(fake_proc(tmp_path / "nvidia", ["NVIDIA L4"]))
    assert [g.name for g in gpus] == ["NVIDIA L4"] and where.endswith("nvidia")
    gpus, why = accel.find_gpus(tmp_path / "absent", tmp_path / "dev")
    assert gpus == [] and why == f"nvidia-smi failed; no {tmp_path / 'absent'}/gpus; no {tmp_path / 'dev'}/nvidia0"
    # a container given GPUs without nvidia-smi or /proc files: its device nodes
    (tmp_path / "dev").mkdir()
    for node in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm"):
        (tmp_path / "dev" / node).write_text("")
    gpus, where = accel.find_gpus(tmp_path / "absent", tmp_path / "dev")
    assert [g.name for g in gpus] == [f"NVIDIA GPU ({tmp_path / 'dev' / n})" for n in ("nvidia0", "nvidia1")]


def test_choose():
    none = ([], "no nvidia-smi on PATH")
    one = ([accel.Gpu("NVIDIA H100", "580.65.06", 81559)], "nvidia-smi")
    assert accel.choose("cpu", one) == "cpu"           # asked for: the CPU even on a GPU machine
    assert accel.choose("auto", one) == "cuda" and accel.choose("auto", none) == "cpu"
    assert accel.choose("cuda", one) == "cuda"
    with pytest.raises(ValueError, match=r"^--accelerator cuda needs an NVIDIA GPU .*none found \(no nvidia-smi"):
        accel.choose("cuda", none)
    with pytest.raises(ValueError, match="unknown accelerator 'gpu'"):
        accel.choose("gpu", one)


def test_selected_and_its_check(monkeypatch):
    none = ([], "no nvidia-smi on PATH")
    monkeypatch.delenv(accel.VAR, raising=False)
    assert accel.selected() == "cpu" == accel.check_selected(none)
    monkeypatch.setenv(accel.VAR, "cuda")
    assert accel.selected() == "cuda"
    with pytest.raises(ValueError, match="DPBENCH_ACCELERATOR=cuda needs an NVIDIA GPU"):
        accel.check_selected(none)
    assert accel.check_selected(([accel.Gpu("G", None, None)], "nvidia-smi")) == "cuda"
    monkeypatch.setenv(accel.VAR, "rocm")
    with pytest.raises(ValueError, match="choose from cpu, cuda"):
        accel.selected()


def test_runner_refuses_the_gpu_preset_on_the_cpu(monkeypatch):
    monkeypatch.setenv(accel.VAR, "cpu")
    monkeypatch.setattr(accel, "find_gpus", lambda: ([], "no nvidia-smi on PATH; no /proc/driver/nvidia/gpus"))
    assert runner.check_accelerator("full") == "cpu"
    with pytest.raises(ValueError, match=r"--preset gpu needs an NVIDIA GPU .*none found \(no nvidia-smi"):
        runner.check_accelerator("gpu")
    # a GPU machine asked for the CPU: the gpu preset says to drop that
    monkeypatch.setattr(accel, "find_gpus", lambda: ([accel.Gpu("NVIDIA H100", "580", 1)], "nvidia-smi"))
    with pytest.raises(ValueError, match=r"measures the GPU \(NVIDIA H100\).*--accelerator cuda"):
        runner.check_accelerator("gpu")
    monkeypatch.setenv(accel.VAR, "cuda")
    assert runner.check_accelerator("gpu") == "cuda"


def _gpu_here() -> bool:
    return bool(accel.parse_proc(accel.PROC_NVIDIA))


@pytest.mark.skipif(_gpu_here(), reason="this machine has a GPU: the refusal is for machines without one")
@pytest.mark.parametrize("args,msg", [
    (["--preset", "gpu"], "error: --preset gpu needs an NVIDIA GPU with its driver; none found (nvidia-smi failed; "),
    (["--accelerator", "cuda"], "error: --accelerator cuda needs an NVIDIA GPU with its driver; none found"),
    (["jax", "--accelerator", "cuda", "--preset", "gpu"], "error: --accelerator cuda needs an NVIDIA GPU"),
])
def test_run_all_refuses_cuda_without_a_gpu_in_one_line(tmp_path, no_gpu_path, args, msg):
    """No GPU: one line, exit 2, no run directory and no environment provisioned."""
    out, venvs = tmp_path / "run", tmp_path / "venvs"
    p = subprocess.run(["bash", "run_all.sh", *args, "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, DPBENCH_VENVS=str(venvs)))
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and p.stderr.startswith(msg), p.stderr
    assert p.stdout == "" and not out.exists() and not venvs.exists()


def test_accel_cli(tmp_path, no_gpu_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "common.harness.accel", *a], cwd=ROOT,  # noqa: E731
                                    capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    p = run("choose", "cpu")
    assert (p.returncode, p.stdout) == (0, "cpu\n")
    if not _gpu_here():
        p = run("choose", "auto")
        assert (p.returncode, p.stdout) == (0, "cpu\n")
        p = run("choose", "cuda")
        assert p.returncode == 2 and p.stdout == "" and p.stderr.count("\n") == 1
    fake_smi(no_gpu_path, SMI_TWO)  # now nvidia-smi lists two GPUs
    p = run("choose", "cuda")
    assert (p.returncode, p.stdout) == (0, "cuda\n")
    p = run("gpus")
    assert '"name": "NVIDIA H100 80GB HBM3", "driver": "580.65.06", "memory_mib": 81559' in p.stdout
