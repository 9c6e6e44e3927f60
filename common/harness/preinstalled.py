"""Run a preset on a machine whose one Python already holds the frameworks:
no virtual environments, no package registry (a lent GPU machine: Python 3.12
with CUDA builds of torch and jax installed, reaching no index).

    python3 -m common.harness.preinstalled --download-wheels    # once, where a registry is reachable
    python3 -m common.harness.preinstalled --out $OUT [--deadline-s 540] [--commit SHA]   # on the machine

1. Installs, from the wheels carried with the tree (``--wheels``, default
   ``.whl/``, git-ignored), the ones whose distribution this Python lacks
   (opacus, jax-privacy, dp-accounting, ...): ``pip install --no-index
   --no-deps`` into ``--site``, which goes on PYTHONPATH. What is installed
   already is used as it is, whatever its version.
2. Runs every framework with this interpreter (``envs.INTERPRETER_VAR``):
   the records' ``env_lock`` is then ``installed:<hash>`` of its packages
   (no lock was used; ``device.json`` lists them, and each record's
   ``notes.versions`` names its framework's and libraries' versions), and
   their ``git_commit`` the commit the tree was copied from (``--commit``,
   ``runner.COMMIT_VAR``) where the copy has no ``.git``.
3. Runs the preset (default ``gpu``: jax and torch, the frameworks such a
   machine has) with the study's runner on ``--accelerator`` (default cuda,
   which the runner refuses without a GPU), one model after another (each an
   equal share of the time left, with ``--resume`` into one run directory),
   then the parity table on the same device. The runner appends each record
   as its configuration ends, and each stage is stopped by SIGINT at its
   share of ``--deadline-s`` (the runner then kills its worker and keeps
   every record written), so a run cut off by the machine's time limit
   still returns what it measured, of every model.
4. Writes ``device.json``: interpreter, accelerator, GPUs, packages, what
   was installed from the carried wheels, each stage's exit and whether it
   was cut off.

Everything goes under OUT: the run directory ``OUT/run`` (records.jsonl,
machine.json, parity.jsonl, device.json) and the logs ``OUT/device.log``
(this script), ``OUT/runner.log`` and ``OUT/parity.log``; seven files at
most, as a lent machine returns at most 8. The report is built where
the environments are: ``.venvs/study/bin/python -m common.report OUT/run``.

Rehearsal on a CPU (what the README's GPU section ran): the same command with
``--accelerator cpu --preset tiny`` and a short deadline, in a Python that
lacks the DP libraries, with the same carried wheels.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Sequence

from common.harness import accel, envs, launcher, records, runner
from common.harness.config import PRESETS

ROOT = Path(__file__).resolve().parents[2]
WHEELS = ROOT / ".whl"
SITE = Path("/tmp/dpbench-site")
RUN = "run"  # OUT/run: the run directory
LOG = "device.log"  # this script's lines; each stage's output in OUT/<stage>.log
INFO = "device.json"
# What the study needs beyond what such a machine has (torch, jax, flax, optax,
# chex, numpy, scipy, pandas, matplotlib, tabulate, tqdm, pytest): the DP
# libraries and what they import, at the jax lock's versions (mpmath at the
# torch lock's: sympy, which torch imports, needs < 1.4), for Python 3.12 on
# x86-64 Linux (``--download-wheels``). Only those the machine lacks are installed.
CARRIED = ("opacus==1.6.0", "jax-privacy==2.0.0", "dp-accounting==0.6.0", "dm-tree==0.1.10", "wrapt==2.5.2",
           "attrs==23.2.0", "absl-py==2.5.1", "mpmath==1.3.0", "pydantic==2.14.4", "pydantic-core==2.50.5",
           "annotated-types==0.8.0", "typing-inspection==0.4.5", "opt-einsum==3.4.0", "toolz==1.2.0",
           "typing-extensions==4.16.0")
WHEEL_TARGET = ("--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64")
# Seconds of the deadline kept for the parity table after the timed rows
# (on a GPU: one process per framework, each compiling every impl once).
PARITY_S = 120.0
# Seconds a stage has to end after its SIGINT before its process group is killed.
GRACE_S = 20.0


def wheel_project(path: Path) -> str:
    """The canonical project name of a wheel file (PEP 427: the name is
    everything before the first '-')."""
    return re.sub(r"[-_.]+", "-", path.name.split("-", 1)[0]).lower()


def missing_wheels(wheels: Path) -> tuple[list[Path], list[str]]:
    """(the wheels in ``wheels`` whose project this Python cannot import
    metadata for, the projects it has already)."""
    missing, present = [], []
    for whl in sorted(wheels.glob("*.whl")):
        try:
            importlib.metadata.version(wheel_project(whl))
            present.append(wheel_project(whl))
        except importlib.metadata.PackageNotFoundError:
            missing.append(whl)
    return missing, present


def download_command(dest: Path) -> list[str]:
    """pip's command that fetches ``CARRIED`` into ``dest`` as the machine's
    Python needs them (binary wheels only, no dependency resolution)."""
    return [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", *WHEEL_TARGET,
            "-d", str(dest), *CARRIED]


def install(wheels: list[Path], site: Path, log) -> None:
    """``pip install --no-index --no-deps`` of ``wheels`` into ``site``: no
    registry is asked, no dependency is resolved (the carried set is the
    closure of what is missing). A Python without pip gets each wheel
    unpacked into ``site`` (``unpack``)."""
    if not wheels:
        return
    if importlib.util.find_spec("pip") is None:
        log(f"[preinstalled] no pip here: unpacking {len(wheels)} carried wheels into {site}")
        for whl in wheels:
            unpack(whl, site)
        return
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index", "--no-deps",
           "--no-compile", "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, wheels)]
    log(f"[preinstalled] installing {len(wheels)} carried wheels into {site}: "
        f"{', '.join(wheel_project(w) for w in wheels)}")
    launcher.run_tool(cmd, 600)


def unpack(whl: Path, site: Path) -> None:
    """A wheel unpacked into ``site`` as ``pip install --target`` lays it out
    (its packages and its .dist-info at the top), for a Python without pip.
    The carried wheels hold no ``.data`` folder (scripts, headers): only
    importable files, which is all a worker needs."""
    with zipfile.ZipFile(whl) as z:
        if any(".data/" in n for n in z.namelist()):
            raise ValueError(f"{whl.name} has a .data folder: install it with pip")
        z.extractall(site)


def run_until(cmd: Sequence[str], seconds: float, log_path: Path, log) -> dict[str, Any]:
    """Run ``cmd`` (its output appended to ``log_path``, then echoed to ``log``) until
    it ends or ``seconds`` pass; then SIGINT (the runner and the verifier
    kill their own children on it and keep what they wrote) and, after
    ``GRACE_S``, SIGKILL to its process group (launcher.launch). Returns its
    exit code, seconds and whether it was cut off."""
    with tempfile.TemporaryDirectory(prefix="dpbench-stage-") as tmp:  # launch writes a fresh log
        o = launcher.launch(cmd, dict(os.environ), max(seconds, 0.0), Path(tmp) / "stage.log", grace_s=GRACE_S)
    with open(log_path, "a") as f:
        f.write(o.log)
    for line in o.log.splitlines():
        log(line)
    if o.stopped == "timeout":
        log(f"[preinstalled] {cmd[2]} cut off after {seconds:.0f} s")
    return {"cmd": list(cmd[1:]), "code": o.code, "cut_off": o.stopped == "timeout", "elapsed_s": round(o.elapsed_s, 1)}


def stage_models(preset: str, runner_args: Sequence[str]) -> list[str | None]:
    """The runner's stages: one per model of the preset (in its order), or
    one stage (None: no --models added) where the arguments name models or
    the preset has no model list (deployed)."""
    if any(arg == "--models" or arg.startswith("--models=") for arg in runner_args) or preset not in PRESETS:
        return [None]
    return list(PRESETS[preset].models)


def git_available() -> bool:
    try:
        launcher.run_tool(["git", "rev-parse", "HEAD"], 30, capture=True)
        return True
    except (OSError, subprocess.SubprocessError):
        return False


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python3 -m common.harness.preinstalled",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--download-wheels", action="store_true",
                    help="fetch the carried wheels into --wheels (where a registry is reachable) and stop")
    ap.add_argument("--out", type=Path, help="output folder (the run directory is OUT/run)")
    ap.add_argument("--wheels", type=Path, default=WHEELS, help="carried wheels (default .whl/)")
    ap.add_argument("--site", type=Path, default=SITE, help="where missing wheels are installed (default %(default)s)")
    ap.add_argument("--preset", default="gpu")
    ap.add_argument("--frameworks", default="jax,torch")
    ap.add_argument("--accelerator", default="cuda", choices=accel.CHOICES)
    ap.add_argument("--deadline-s", type=float, default=540.0,
                    help="seconds for everything (rows, then parity); default %(default)s")
    ap.add_argument("--parity-s", type=float, default=PARITY_S,
                    help="seconds of the deadline kept for the parity table; 0: none")
    ap.add_argument("--parity-models", default="small")
    ap.add_argument("--commit", help="the commit the tree was copied from (records: <sha>-copy)")
    ap.add_argument("runner_args", nargs="*", help="after --: more runner options (e.g. --models small)")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(sys.argv[1:] if argv is None else argv)
    if a.download_wheels:
        launcher.run_tool(download_command(a.wheels), 1800)
        print(f"[preinstalled] {len(list(a.wheels.glob('*.whl')))} wheels in {a.wheels}")
        return 0
    if a.out is None:
        print("error: --out is required", file=sys.stderr)
        return 2
    start = time.monotonic()
    try:
        accelerator = accel.choose(a.accelerator)
    except ValueError as exc:  # before anything is written
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run_dir = a.out / RUN
    run_dir.mkdir(parents=True, exist_ok=True)
    log_file = open(a.out / LOG, "a")

    def log(line: str) -> None:
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    info: dict[str, Any] = {"python": sys.executable, "python_version": platform.python_version(),
                            "preset": a.preset, "frameworks": a.frameworks, "deadline_s": a.deadline_s}
    missing, present = missing_wheels(a.wheels)
    install(missing, a.site, log)
    if missing:
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(a.site), os.environ.get("PYTHONPATH")) if p)
    os.environ[envs.INTERPRETER_VAR] = sys.executable
    os.environ[accel.VAR] = accelerator
    extra = list(a.runner_args)
    if a.commit:
        os.environ[runner.COMMIT_VAR] = a.commit
    elif not git_available() and "--allow-dirty" not in extra:
        extra.append("--allow-dirty")  # no .git and no --commit: records say git_commit None
    info.update(accelerator=accelerator, gpus=accel.identity(), commit=runner.git_commit(),
                installed_from_wheels=[wheel_project(w) for w in missing], carried_but_present=present,
                packages=list(envs.installed(sys.executable)), env_lock=envs.lock_label("study"))
    log(f"[preinstalled] {sys.executable} (Python {info['python_version']}), accelerator {accelerator}"
        f"{' on ' + info['gpus'][0]['name'] if info['gpus'] else ''}; env_lock {info['env_lock']}")

    runner_cmd = [sys.executable, "-m", "common.harness.runner", "--preset", a.preset, "--frameworks", a.frameworks,
                  "--out", str(run_dir), "--no-progress", "--retry-stolen", "0", *extra]
    info["runner"] = []
    for i, model in enumerate(models := stage_models(a.preset, extra)):
        # Each model an equal share of the rows' time left (what one leaves goes to the next), so
        # that a deadline too short for the preset still measures every model's first rows.
        left = a.deadline_s - (time.monotonic() - start) - a.parity_s
        cmd = runner_cmd + (["--models", model] if model else [])
        if (run_dir / runner.RECORDS).exists() and "--resume" not in extra:
            cmd.append("--resume")  # continues the records of the models (or the call) before
        info["runner"].append(stage := run_until(cmd, left / (len(models) - i), a.out / "runner.log", print))
        if stage["code"] == 2 and not stage["cut_off"]:
            break  # refused (bad input, dirty tree): nothing ran
    left = a.deadline_s - (time.monotonic() - start)
    refused = info["runner"][-1]["code"] == 2 and not info["runner"][-1]["cut_off"]
    if a.parity_s > 0 and left > 0 and not refused:
        verify_cmd = [sys.executable, "-m", "common.harness.verify", str(run_dir), "--frameworks", a.frameworks,
                      "--models", a.parity_models]
        info["parity"] = run_until(verify_cmd, left, a.out / "parity.log", print)
    log_file.close()
    recs = records.read(run_dir / runner.RECORDS, warn=False)
    info["records"] = {s: sum(r["status"] == s for r in recs) for s in records.STATUSES if any(
        r["status"] == s for r in recs)}
    info["elapsed_s"] = round(time.monotonic() - start, 1)
    (run_dir / INFO).write_text(json.dumps(info, indent=2) + "\n")
    print(f"[preinstalled] {len(recs)} records {info['records']}, {info['elapsed_s']:.0f} s; "
          f"report: .venvs/study/bin/python -m common.report {run_dir}", flush=True)
    return 2 if refused else max((0 if s["cut_off"] else s["code"] or 0) for s in info["runner"])


if __name__ == "__main__":
    sys.exit(main())
