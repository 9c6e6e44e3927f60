"""Which accelerator a run measures on: the CPU, or NVIDIA GPUs through each
framework's CUDA build.

The CPU environments' locks pin CPU builds (torch ``+cpu``, jaxlib without a
CUDA plugin), so on a GPU machine they would time the CPU; the ``cuda``
accelerator runs every framework from its CUDA environment instead
(common/harness/envs.py: ``jax-cuda``, ``torch-cuda``, ``tf-cuda``).
run_all.sh asks ``choose`` once (``--accelerator auto|cpu|cuda``; ``auto``:
``cuda`` where a GPU is found) and exports the answer as ``DPBENCH_ACCELERATOR``;
``envs.env_for`` maps each framework to that accelerator's environment, and
the runner refuses ``cuda`` where no GPU is found and a preset that needs a
GPU (``gpu``) on the CPU, in one line, before anything is written.

A GPU is found by ``nvidia-smi`` (name, driver, memory of each), else by the
driver's ``/proc/driver/nvidia/gpus`` (containers without nvidia-smi); what
was found goes into every record's ``machine`` (``machine.identity``).
Stdlib only: run_all.sh runs this under whatever Python 3.11 the user has.

    python3 -m common.harness.accel choose auto|cpu|cuda   # prints cpu or cuda, or one error line (exit 2)
    python3 -m common.harness.accel gpus                   # what was found, as JSON
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

ACCELERATORS = ("cpu", "cuda")
CHOICES = ("auto", *ACCELERATORS)
VAR = "DPBENCH_ACCELERATOR"  # the accelerator in force; unset: cpu
PROC_NVIDIA = Path("/proc/driver/nvidia")
DEV = Path("/dev")  # /dev/nvidia0, /dev/nvidia1, ...: the GPUs a container was given
SMI_QUERY = ("--query-gpu=name,driver_version,memory.total", "--format=csv,noheader,nounits")
SMI_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Gpu:
    name: str
    driver: str | None
    memory_mib: int | None


def parse_smi(text: str) -> list[Gpu]:
    """GPUs from ``nvidia-smi --query-gpu=name,driver_version,memory.total
    --format=csv,noheader,nounits`` (one ``name, driver, MiB`` line each)."""
    out = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3 or not parts[0]:
            continue
        mem = parts[2]
        out.append(Gpu(parts[0], parts[1] or None, int(mem) if mem.isdigit() else None))
    return out


def parse_proc(root: Path) -> list[Gpu]:
    """GPUs from the driver's files: ``gpus/*/information`` ("Model: ...")
    and ``version`` ("NVRM version: ... Kernel Module  580.65.06 ...")."""
    driver = None
    try:
        words = (root / "version").read_text().split()
        driver = next((w for w in words if w[:1].isdigit() and w.count(".") >= 1), None)
    except OSError:
        pass
    out = []
    for info in sorted(root.glob("gpus/*/information")):
        try:
            fields = dict(ln.split(":", 1) for ln in info.read_text().splitlines() if ":" in ln)
        except OSError:
            continue
        out.append(Gpu(fields.get("Model", "NVIDIA GPU").strip(), driver, None))
    return out


def parse_dev(root: Path) -> list[Gpu]:
    """One unnamed GPU per ``/dev/nvidiaN`` device node (a container given GPUs
    without nvidia-smi or the driver's /proc files); the framework names it
    in each record's ``device``."""
    nodes = [p for p in root.glob("nvidia[0-9]*") if p.name[len("nvidia"):].isdigit()]
    return [Gpu(f"NVIDIA GPU ({p})", None, None) for p in sorted(nodes)]


def _run_smi(exe: str) -> str | None:
    from common.harness import launcher  # the one way the harness starts a child
    try:
        code, out = launcher.run_tool([exe, *SMI_QUERY], SMI_TIMEOUT_S, capture=True, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out if code == 0 else None


def find_gpus(proc_root: Path = PROC_NVIDIA, dev_root: Path = DEV) -> tuple[list[Gpu], str]:
    """(the NVIDIA GPUs of this machine, where they were read or why none
    were found). ``nvidia-smi`` on PATH first, then ``proc_root``, then the
    device nodes in ``dev_root``."""
    why = []
    exe = shutil.which("nvidia-smi")
    if exe is None:
        why.append("no nvidia-smi on PATH")
    else:
        text = _run_smi(exe)
        found = parse_smi(text or "")
        if found:
            return found, "nvidia-smi"
        why.append("nvidia-smi lists no GPU" if text is not None else "nvidia-smi failed")
    found = parse_proc(proc_root)
    if found:
        return found, str(proc_root)
    why.append(f"no {proc_root}/gpus")
    found = parse_dev(dev_root)
    if found:
        return found, f"{dev_root}/nvidia*"
    why.append(f"no {dev_root}/nvidia0")
    return [], "; ".join(why)


def choose(asked: str, found: tuple[list[Gpu], str] | None = None) -> str:
    """The accelerator for ``asked`` (auto | cpu | cuda): ``auto`` is cuda
    where a GPU is found, else cpu. Raises ValueError (one line) for cuda
    without a GPU, and for an unknown name."""
    if asked not in CHOICES:
        raise ValueError(f"unknown accelerator {asked!r}; choose from {', '.join(CHOICES)}")
    if asked == "cpu":
        return "cpu"
    gpus, why = found if found is not None else find_gpus()
    if gpus:
        return "cuda"
    if asked == "cuda":
        raise ValueError(f"--accelerator cuda needs an NVIDIA GPU with its driver; none found ({why})")
    return "cpu"


def selected() -> str:
    """The accelerator in force (``DPBENCH_ACCELERATOR``; unset: cpu). Cheap:
    no detection; ``check_selected`` verifies a cuda choice."""
    name = os.environ.get(VAR, "") or "cpu"
    if name not in ACCELERATORS:
        raise ValueError(f"{VAR}={name!r}: choose from {', '.join(ACCELERATORS)}")
    return name


def check_selected(found: tuple[list[Gpu], str] | None = None) -> str:
    """``selected()``, refused (ValueError, one line) when it is cuda and this
    machine has no GPU: the CUDA environments would time nothing real."""
    name = selected()
    if name == "cuda":
        gpus, why = found if found is not None else find_gpus()
        if not gpus:
            raise ValueError(f"{VAR}=cuda needs an NVIDIA GPU with its driver; none found ({why})")
    return name


def identity() -> list[dict] | None:
    """This machine's GPUs for the records (``machine.identity``): name,
    driver and memory of each; None where none is found."""
    gpus, _ = find_gpus()
    return [asdict(g) for g in gpus] or None


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "choose":
        try:
            print(choose(argv[1]))
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    if argv == ["gpus"]:
        gpus, where = find_gpus()
        print(json.dumps({"gpus": [asdict(g) for g in gpus], "source": where}))
        return 0
    print("usage: python3 -m common.harness.accel {choose auto|cpu|cuda | gpus}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
