"""One pinned virtual environment per framework, provisioned from pyproject extras.

TF-Privacy needs numpy < 2 and dp-accounting 0.4.3 while jax-privacy needs
numpy >= 2 and dp-accounting 0.6.0, so each framework runs in its own venv
(``.venvs/<name>``) with its own interpreter. Provisioning is idempotent: a
stamp file holds the hash of the requirement list and pip runs only when the
list changed. Stdlib only: this runs under whatever ``python3`` the user has.

    python3 -m common.envs ensure jax     # prints the interpreter path
    python3 -m common.envs python jax     # path only, no install
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV_NAMES = ("study", "jax", "torch", "tf")


def venv_dir(name: str) -> Path:
    base = Path(os.environ.get("DPBENCH_VENVS", ROOT / ".venvs"))
    return base / name


def python_for(name: str) -> Path:
    """Interpreter of environment ``name`` (which may not exist yet)."""
    return venv_dir(name) / "bin" / "python"


def requirements(name: str) -> list[str]:
    """Core deps + the env's extra + test deps, as pinned in pyproject.toml."""
    if name not in ENV_NAMES:
        raise ValueError(f"unknown environment {name!r}; choose from {', '.join(ENV_NAMES)}")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return list(project["dependencies"]) + list(extras[name]) + list(extras["test"])


def ensure(name: str, quiet: bool = True) -> Path:
    """Create/update the venv for ``name`` if its pinned requirements changed."""
    reqs = requirements(name)
    digest = hashlib.sha256("\n".join(reqs).encode()).hexdigest()
    vdir = venv_dir(name)
    stamp = vdir / ".dpbench-stamp"
    if stamp.exists() and stamp.read_text().strip() == digest and python_for(name).exists():
        return python_for(name)
    print(f"[envs] provisioning {vdir} ({len(reqs)} pinned requirements)...", file=sys.stderr, flush=True)
    # Python 3.11 is required by TF-Privacy; prefer it when the caller runs another.
    subprocess.run([sys.executable, "-m", "venv", str(vdir)], check=True)
    pip = [str(python_for(name)), "-m", "pip", "install", "--disable-pip-version-check"]
    if quiet:
        pip.append("-q")
    subprocess.run(pip + reqs, check=True)
    stamp.write_text(digest + "\n")
    return python_for(name)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("ensure", "python", "requirements"):
        print("usage: python3 -m common.envs {ensure|python|requirements} NAME", file=sys.stderr)
        return 2
    cmd, name = argv
    try:
        if cmd == "requirements":
            print("\n".join(requirements(name)))
        elif cmd == "python":
            requirements(name)  # validates the name
            print(python_for(name))
        else:
            print(ensure(name))
    except (ValueError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
