"""One locked virtual environment per framework, provisioned from lock files.

TF-Privacy needs numpy < 2 and dp-accounting 0.4.3 while jax-privacy needs
numpy >= 2 and dp-accounting 0.6.0, so each framework runs in its own venv
(``.venvs/<name>``) with its own interpreter.

``pyproject.toml`` pins the top-level packages of each environment (core deps
+ the env's extra + test). ``common/harness/locks/<name>.txt`` pins *every* package,
transitive ones included, as resolved by pip-tools' ``pip-compile`` from those
top-level pins; ``ensure`` installs exactly that lock with ``pip install -r``.
Regenerate a lock after changing a pin in pyproject (``ensure`` refuses to
install a lock that disagrees with pyproject):

    python3.11 -m common.harness.envs lock NAME        # NAME: study, jax, torch, tf or all
    python3.11 -m common.harness.envs lock NAME --upgrade   # also move unpinned transitive deps

``lock`` keeps the existing lock's transitive pins where they still fit (as
``pip-compile`` does); ``--upgrade`` re-resolves them to the newest releases.
It runs ``pip-compile`` from a throwaway venv with a pinned pip-tools, so the
lock does not depend on what is installed anywhere else.

Accelerators (common/harness/accel.py): the locks of ``jax``, ``torch`` and
``tf`` pin CPU builds (``torch==2.13.0+cpu``, jaxlib without a CUDA plugin);
``jax-cuda``, ``torch-cuda`` and ``tf-cuda`` are the same stacks' CUDA builds
with their ``nvidia-*`` wheels, each in its own lock file. ``env_for`` maps a
framework to its environment for the accelerator in force
(``DPBENCH_ACCELERATOR``, which run_all.sh sets). Those locks resolve against
PyPI alone, and ``ensure`` installs them from it (``PYPI_ONLY_LOCKS``: no
pip config, no local sources): a machine's own wheel folders must not reach
them, as this one's torch 2.13.0+cpu would (a local label sorts above PyPI's
CUDA build of the same version, and ``==2.13.0`` matches both).

A machine whose one Python already holds every framework (no venvs, no
registry: a lent GPU machine, common/harness/preinstalled.py) names it in
``DPBENCH_INTERPRETER``: every environment is then that interpreter, nothing
is provisioned, and records name what it has installed instead of a lock
(``lock_label``).

Provisioning is idempotent: a stamp file in the venv holds the hash of the lock
file and pip runs only when the lock changed (then the venv is recreated, so it
holds exactly the lock). Every record names its environment's lock by
``lock_label(name)`` (``<env>:<lock_hash>``). Stdlib only: this runs under whatever ``python3`` the user
has.

    python3 -m common.harness.envs ensure jax     # prints the interpreter path (jax-cuda under DPBENCH_ACCELERATOR=cuda)
    python3 -m common.harness.envs python jax     # path only, no install
    python3 -m common.harness.envs check jax      # does the lock agree with pyproject?
    python3 -m common.harness.envs check all      # every lock, CUDA ones included
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from common.harness import accel, launcher  # stdlib only, as this module must be

ROOT = Path(__file__).resolve().parents[2]
ENV_NAMES = ("study", "jax", "torch", "tf", "jax-cuda", "torch-cuda", "tf-cuda")
# The environment of each framework on each accelerator (accel.ACCELERATORS).
FRAMEWORK_ENVS = {
    "cpu": {"jax": "jax", "torch": "torch", "tf": "tf"},
    "cuda": {"jax": "jax-cuda", "torch": "torch-cuda", "tf": "tf-cuda"},
}
# Locks resolved against PyPI only: what a GPU user's pip sees. pip-compile
# runs with no pip config file (PIP_CONFIG_FILE=os.devnull) and without the
# PIP_* variables that add sources (``_pypi_only``); pip's --isolated would
# not do it, since pip-tools builds its pip command without reading that flag.
PYPI_ONLY_LOCKS = frozenset(FRAMEWORK_ENVS["cuda"].values())
# An accelerator environment's CPU sibling (its first lock starts from the sibling's pins).
CPU_SIBLING = {FRAMEWORK_ENVS["cuda"][fw]: cpu for fw, cpu in FRAMEWORK_ENVS["cpu"].items()}
PIP_SOURCE_VARS = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX", "PIP_CONSTRAINT",
                   "PIP_CONFIG_FILE")
# One interpreter for every environment (a machine with the frameworks preinstalled).
INTERPRETER_VAR = "DPBENCH_INTERPRETER"
LOCK_DIR = ROOT / "common" / "harness" / "locks"

# The lock tool and everything it runs on, pinned (pip-tools 7.4.1 supports
# pip 22.2-24.x; pip 23.2.1 is what Python 3.11.7's ensurepip ships).
LOCK_TOOL = (
    "pip==23.2.1",
    "pip-tools==7.4.1",
    "build==1.6.1",
    "click==8.5.1",
    "packaging==26.4",
    "pyproject_hooks==1.3.3",
    "wheel==0.48.0",
)
LOCK_PYTHON = (3, 11)  # pyproject: requires-python >=3.11,<3.12; locks resolve for it


def lock_command(name: str) -> str:
    return f"python3.11 -m common.harness.envs lock {name}"


def venv_dir(name: str) -> Path:
    base = Path(os.environ.get("DPBENCH_VENVS", ROOT / ".venvs"))
    return base / name


def python_for(name: str) -> Path:
    """Interpreter of environment ``name`` (which may not exist yet);
    ``DPBENCH_INTERPRETER`` where set."""
    one = os.environ.get(INTERPRETER_VAR)
    return Path(one) if one else venv_dir(name) / "bin" / "python"


def env_for(framework: str, accelerator: str | None = None) -> str:
    """The environment ``framework`` runs in on ``accelerator`` (default: the
    one in force, ``accel.selected()``); ``study`` is the same everywhere, and
    an environment's own name maps to itself."""
    if framework in ENV_NAMES and framework not in FRAMEWORK_ENVS["cpu"]:
        return framework
    envs = FRAMEWORK_ENVS[accelerator or accel.selected()]
    if framework not in envs:
        raise ValueError(f"unknown framework {framework!r}; choose from {', '.join(envs)}")
    return envs[framework]


def _check_name(name: str) -> None:
    if name not in ENV_NAMES:
        raise ValueError(f"unknown environment {name!r}; choose from {', '.join(ENV_NAMES)}")


def requirements(name: str) -> list[str]:
    """Core deps + the env's extra + test deps, as pinned in pyproject.toml."""
    _check_name(name)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return list(project["dependencies"]) + list(extras[name]) + list(extras["test"])


def _rel(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it (for messages)."""
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def lock_path(name: str) -> Path:
    _check_name(name)
    return LOCK_DIR / f"{name}.txt"


def pins_digest(path: Path) -> str:
    """sha256 of a lock file's requirement lines (comments and blank lines
    dropped): what it installs, so that a comment edit (e.g. the regenerate
    command pip-compile writes in its header) neither re-provisions a venv nor
    changes the records' ``env_lock``."""
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    pins = [ln for ln in lines if ln and not ln.startswith("#")]
    return hashlib.sha256("\n".join(pins).encode()).hexdigest()


def lock_hash(name: str) -> str | None:
    """First 16 hex chars of ``pins_digest`` of ``name``'s lock file; None without one."""
    path = lock_path(name)
    if not path.is_file():
        return None
    return pins_digest(path)[:16]


LIST_DISTRIBUTIONS = ("import importlib.metadata as m; "
                      "print('\\n'.join(sorted({f\"{d.metadata['Name']}=={d.version}\" for d in m.distributions()})))")


@functools.lru_cache(maxsize=4)
def installed(python: str) -> tuple[str, ...]:
    """``name==version`` of every distribution ``python`` imports from (its
    PYTHONPATH included), sorted: what a run without a lock ran on."""
    _, out = launcher.run_tool([python, "-c", LIST_DISTRIBUTIONS], VENV_TIMEOUT_S, capture=True)
    return tuple(ln for ln in out.splitlines() if ln.strip())


def lock_label(name: str) -> str | None:
    """What a record's ``env_lock`` says: ``<env>:<lock_hash>`` of the lock
    its environment was installed from (None without a lock file); under
    ``DPBENCH_INTERPRETER``, ``installed:<hash>`` of that interpreter's
    ``installed`` list (no lock: the machine's own packages)."""
    one = os.environ.get(INTERPRETER_VAR)
    if one:
        return "installed:" + hashlib.sha256("\n".join(installed(one)).encode()).hexdigest()[:16]
    h = lock_hash(name)
    return None if h is None else f"{name}:{h}"


# --- lock <-> pyproject agreement -------------------------------------------

_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*==\s*([^\s;#\\]+)")


def _canon(project: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", project).lower()


def _version_matches(pin: str, locked: str) -> bool:
    """PEP 440 ``==pin`` against a locked version: a local label (``+cpu``) in
    the lock is ignored unless the pin names one itself."""
    if "+" not in pin:
        locked = locked.split("+", 1)[0]
    return pin == locked


def parse_lock(text: str) -> dict[str, str]:
    """``{canonical name: version}`` of the ``name==version`` lines of a lock."""
    pins: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith(("#", "-")):
            continue
        m = _PIN.match(line)
        if m:
            pins[_canon(m.group(1))] = m.group(2)
    return pins


def check_lock(name: str) -> list[str]:
    """Top-level pins of pyproject that are missing from, or differ in, the lock.

    An empty list means the lock agrees with pyproject (a missing lock file
    reports every pin as missing).
    """
    path = lock_path(name)
    locked = parse_lock(path.read_text()) if path.is_file() else {}
    problems = []
    for req in requirements(name):
        m = _PIN.match(req)
        if not m:
            problems.append(f"{req} (not an exact == pin in pyproject.toml)")
            continue
        have = locked.get(_canon(m.group(1)))
        if have is None:
            problems.append(f"{req} (missing from the lock)")
        elif not _version_matches(m.group(2), have):
            problems.append(f"{req} (lock has {have})")
    return problems


# --- provisioning -------------------------------------------------------------

# Wall-clock limits of the tools provisioning runs (every child of the
# harness has one): creating a venv; one pip install or pip-compile (a fresh
# jax or tf environment takes ~5 min here).
VENV_TIMEOUT_S = 300.0
INSTALL_TIMEOUT_S = 3600.0


def _run(cmd: list[str], timeout_s: float, **kw) -> None:
    """A tool run through the harness's one launcher (process group, timeout)."""
    launcher.run_tool(cmd, timeout_s, **kw)


def _install_plan(name: str) -> tuple[str, list[str], str]:
    """(stamp digest, pip install arguments, description) for ``name``.

    Raises ValueError when the lock disagrees with pyproject.
    """
    path = lock_path(name)
    if path.is_file():
        problems = check_lock(name)
        if problems:
            raise ValueError(
                f"{_rel(path)} disagrees with pyproject.toml: {'; '.join(problems)}"
                f"; regenerate it with: {lock_command(name)}")
        digest = "lock:" + pins_digest(path)
        return digest, ["-r", str(path)], f"lock {_rel(path)}"
    reqs = requirements(name)
    print(f"[envs] warning: no lock file {_rel(path)}; installing the {len(reqs)} "
          f"top-level pins of pyproject.toml with floating transitive versions "
          f"(create the lock with: {lock_command(name)})", file=sys.stderr, flush=True)
    digest = "reqs:" + hashlib.sha256("\n".join(reqs).encode()).hexdigest()
    return digest, reqs, f"{len(reqs)} top-level pins, no lock"


def stamp_digest(name: str) -> str:
    """What the venv's stamp must hold for ``ensure`` to skip installing."""
    return _install_plan(name)[0]


def ensure(name: str, quiet: bool = True) -> Path:
    """Create/update the venv for ``name`` if its lock file changed."""
    if os.environ.get(INTERPRETER_VAR):  # the machine's own Python: nothing to install
        return python_for(name)
    digest, pip_args, what = _install_plan(name)
    vdir = venv_dir(name)
    stamp = vdir / ".dpbench-stamp"
    if stamp.exists() and stamp.read_text().strip() == digest and python_for(name).exists():
        return python_for(name)
    print(f"[envs] provisioning {vdir} ({what})...", file=sys.stderr, flush=True)
    # Recreate it, so that nothing outside the lock survives from an older one.
    # Python 3.11 is required by TF-Privacy; run this module with it.
    _run([sys.executable, "-m", "venv", "--clear", str(vdir)], VENV_TIMEOUT_S)
    pip = [str(python_for(name)), "-m", "pip", "install", "--disable-pip-version-check"]
    if quiet:
        pip.append("-q")
    # A CUDA lock is installed from where it was resolved, PyPI alone: its
    # torch==2.13.0 would also match a local folder's or index's 2.13.0+cpu
    # (PEP 440 ignores a local label the pin lacks), and pip prefers that one.
    _run(pip + pip_args, INSTALL_TIMEOUT_S, **({"env": _pypi_only(dict(os.environ))} if name in PYPI_ONLY_LOCKS else {}))
    stamp.write_text(digest + "\n")
    return python_for(name)


# --- lock generation ----------------------------------------------------------

def _lock_python() -> str:
    if sys.version_info[:2] == LOCK_PYTHON:
        return sys.executable
    found = shutil.which("python%d.%d" % LOCK_PYTHON)
    if not found:
        raise ValueError("the locks resolve for Python %d.%d; none found on PATH" % LOCK_PYTHON)
    return found


def _pypi_only(env: dict[str, str]) -> dict[str, str]:
    """``env`` with no pip config file and no PIP_* variable that adds a
    package source: pip then resolves against https://pypi.org/simple alone.
    (PIP_CERT, PIP_DEFAULT_TIMEOUT and the like stay: they add no package.)"""
    out = {k: v for k, v in env.items() if k not in PIP_SOURCE_VARS}
    out["PIP_CONFIG_FILE"] = os.devnull
    return out


def lock(names: list[str], upgrade: bool = False) -> list[Path]:
    """Regenerate ``common/harness/locks/<name>.txt`` for each name with pip-compile."""
    for name in names:
        _check_name(name)
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory(prefix="dpbench-lock-") as tmp:
        tool = Path(tmp) / "piptools"
        print(f"[envs] installing {' '.join(LOCK_TOOL)} into a throwaway venv...",
              file=sys.stderr, flush=True)
        _run([_lock_python(), "-m", "venv", str(tool)], VENV_TIMEOUT_S)
        pip = [str(tool / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        _run(pip + [LOCK_TOOL[0]], INSTALL_TIMEOUT_S)   # pip first: it resolves the rest
        _run(pip + list(LOCK_TOOL[1:]), INSTALL_TIMEOUT_S)
        for name in names:
            work = Path(tmp) / name
            work.mkdir()
            (work / f"{name}.in").write_text(
                f"# top-level pins of pyproject.toml for the {name!r} environment\n"
                + "\n".join(requirements(name)) + "\n")
            out = work / f"{name}.txt"
            seed = lock_path(name) if lock_path(name).is_file() else lock_path(CPU_SIBLING.get(name, name))
            if seed.is_file() and not upgrade:
                # Keep transitive pins that still fit: the lock's own, or for a new
                # accelerator lock its CPU sibling's, so the two differ in the builds only.
                shutil.copyfile(seed, out)
            print(f"[envs] compiling {_rel(lock_path(name))}...", file=sys.stderr, flush=True)
            cmd = [str(tool / "bin" / "pip-compile"), "--quiet",
                   "--resolver=backtracking", "--allow-unsafe", "--strip-extras",
                   "--no-emit-index-url", "--no-emit-find-links", "--no-emit-trusted-host",
                   "--no-emit-options", "--newline=lf",
                   "--output-file", out.name, f"{name}.in"]
            if upgrade:
                cmd.insert(1, "--upgrade")
            # Relative paths, so the annotations ("via -r NAME.in") hold no temp path.
            # The header's "regenerate with" line (pip-tools 7 reads it from the environment).
            env = dict(os.environ, CUSTOM_COMPILE_COMMAND=lock_command(name))
            if name in PYPI_ONLY_LOCKS:
                env = _pypi_only(env)
            _run(cmd, INSTALL_TIMEOUT_S, cwd=work, env=env)
            shutil.copyfile(out, lock_path(name))
            problems = check_lock(name)
            if problems:  # pip-compile honours the == pins, so this is a bug here
                raise ValueError(f"generated lock disagrees with pyproject: {'; '.join(problems)}")
            written.append(lock_path(name))
    return written


USAGE = ("usage: python3 -m common.harness.envs {ensure|python} NAME   (an environment, or a framework: its\n"
         "                                                             environment on DPBENCH_ACCELERATOR)\n"
         "       python3 -m common.harness.envs requirements NAME\n"
         "       python3 -m common.harness.envs check {NAME|all}\n"
         "       python3.11 -m common.harness.envs lock {NAME|all} [--upgrade]")


def main(argv: list[str]) -> int:
    upgrade = "--upgrade" in argv
    args = [a for a in argv if a != "--upgrade"]
    cmds = ("ensure", "python", "requirements", "check", "lock")
    if len(args) != 2 or args[0] not in cmds or (upgrade and args[0] != "lock"):
        print(USAGE, file=sys.stderr)
        return 2
    cmd, name = args
    try:
        if cmd == "requirements":
            print("\n".join(requirements(name)))
        elif cmd == "python":
            print(python_for(env_for(name)))
        elif cmd == "check":
            bad = 0
            for one in (ENV_NAMES if name == "all" else (name,)):
                _check_name(one)
                if not lock_path(one).is_file():
                    print(f"error: no lock file {_rel(lock_path(one))}; create it with: "
                          f"{lock_command(one)}", file=sys.stderr)
                    bad += 1
                    continue
                problems = check_lock(one)
                if problems:
                    print(f"error: {_rel(lock_path(one))} disagrees with pyproject.toml: "
                          f"{'; '.join(problems)}; regenerate it with: {lock_command(one)}", file=sys.stderr)
                    bad += 1
                    continue
                print(f"{_rel(lock_path(one))} agrees with pyproject.toml ({lock_hash(one)})")
            if bad:
                return 1
        elif cmd == "lock":
            for path in lock(list(ENV_NAMES) if name == "all" else [name], upgrade=upgrade):
                print(_rel(path))
        else:
            print(ensure(env_for(name)))
    except (ValueError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
