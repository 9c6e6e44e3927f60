"""The one way the harness starts a child process (workers, parity, analyses,
and the tools it calls: git, venv, pip, pip-compile).

``launch`` runs a command in a framework's environment (its interpreter,
common/harness/threads.py's worker environment, PYTHONPATH at the project root), in
its own process group, under a wall-clock budget and optionally a resident
memory limit. Whatever ends the wait (the child exits, the budget or the
memory limit runs out, the user's Ctrl-C, any exception) the whole process
group is killed before ``launch`` returns or raises, so no child outlives the
harness. Output goes to a log file whose tail comes back for error rows.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from common.harness import memory, threads

ROOT = Path(__file__).resolve().parents[2]
POLL_S = 0.1


@dataclass
class Outcome:
    """How a launch ended: ``code`` (exit status; negative: killed by that
    signal; None when the harness stopped it), ``stopped`` ("timeout" /
    "oom" when the harness stopped it, else None), ``oom_kills`` (the
    kernel's OOM-kill count in this cgroup during the launch), the log."""

    code: int | None
    stopped: str | None
    elapsed_s: float
    log: str
    oom_kills: int = 0

    def tail(self, n: int = 400) -> str:
        lines = [ln for ln in self.log.strip().splitlines() if ln.strip()]
        return (lines[-1] if lines else "")[-n:]


def framework_env(framework: str, threads_n: int = 0, variant: str = "", devices: int = 1,
                  allocator: str = threads.DEFAULT_ALLOCATOR) -> dict[str, str]:
    """The environment every child of ``framework`` runs with."""
    env = threads.worker_env(threads_n, framework, variant=variant, devices=devices, allocator=allocator)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def python_cmd(framework: str, module: str, *args: str) -> list[str]:
    """``<framework's venv python> -m module args``: the framework's environment
    for the accelerator in force (envs.env_for; jax-cuda under cuda)."""
    from common.harness import envs  # here: envs calls run_tool, and must import without this module
    return [str(envs.python_for(envs.env_for(framework))), "-m", module, *args]


def cgroup_oom_kills() -> int | None:
    """The kernel's ``oom_kill`` count for this process's cgroup (v2), else the
    machine's (``/proc/vmstat``: where the harness runs in the root cgroup,
    which has no memory.events), or None."""
    candidates = []
    try:
        rel = next(ln.split("::", 1)[1] for ln in Path("/proc/self/cgroup").read_text().splitlines()
                   if ln.startswith("0::"))
        candidates.append(Path("/sys/fs/cgroup", rel.lstrip("/"), "memory.events"))
    except (OSError, StopIteration):
        pass
    candidates.append(Path("/proc/vmstat"))
    for path in candidates:
        try:
            text = path.read_text()
        except OSError:
            continue
        for ln in text.splitlines():
            k, _, v = ln.partition(" ")
            if k == "oom_kill":
                return int(v)
    return None


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child's whole process group and reap the child."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def interrupt(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGINT to the child alone, and up to ``grace_s`` for it to end: a
    runner or verifier then kills its own workers and keeps what it wrote."""
    try:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=grace_s)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass


def _default_sigint() -> None:
    """In the child, before exec: SIGINT at its default action. A process started in the
    background by a non-interactive shell (run_all.sh's test lanes, ``nohup ... &``)
    inherits SIGINT *ignored*, and Python then installs no KeyboardInterrupt handler, so
    the interrupt an interruptible child (``grace_s``) is stopped with would be lost and it
    would be killed instead, its exit code gone."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def launch(cmd: Sequence[str], env: dict[str, str], budget_s: float, log_path: str | Path,
           mem_limit: int | None = None, stop_early: "callable | None" = None,
           grace_s: float | None = None) -> Outcome:
    """Run ``cmd`` to completion or until ``budget_s`` / ``mem_limit`` (bytes
    of resident memory) is exceeded; ``stop_early()`` returning True also ends
    the wait (the group is then killed and ``code`` is None, ``stopped`` None:
    e.g. a worker that wrote its result but is slow to tear down).
    ``grace_s``: at the budget, ``interrupt`` the child before its group is
    killed (a stage of common/harness/preinstalled.py; ``code`` is then its exit)."""
    before = cgroup_oom_kills()
    start = time.monotonic()
    deadline = start + budget_s
    stopped: str | None = None
    code: int | None = None
    with open(log_path, "w") as log:
        proc = subprocess.Popen(list(cmd), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=_default_sigint if grace_s else None)
        try:
            while True:
                try:
                    code = proc.wait(timeout=POLL_S)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if stop_early is not None and stop_early():
                    break
                if time.monotonic() >= deadline:
                    stopped = "timeout"
                    if grace_s:
                        interrupt(proc, grace_s)
                        code = proc.poll()
                    break
                if mem_limit is not None:
                    rss = memory.process_rss_bytes(proc.pid)
                    if rss is not None and rss > mem_limit:
                        stopped = "oom"
                        break
        finally:
            kill_group(proc)  # also on Ctrl-C (KeyboardInterrupt) and any other exception
    after = cgroup_oom_kills()
    kills = (after - before) if before is not None and after is not None else 0
    return Outcome(code, stopped, time.monotonic() - start, Path(log_path).read_text(errors="replace"), kills)


def run_tool(cmd: Sequence[str], timeout_s: float, *, cwd: str | Path = ROOT, env: dict[str, str] | None = None,
             capture: bool = False, check: bool = True) -> tuple[int, str]:
    """Run a tool (git, venv, pip) to completion in its own process group,
    killed with its children on timeout, Ctrl-C or any exception, like every
    other child of the harness; returns (exit code, stdout if ``capture``).
    Raises subprocess.TimeoutExpired on timeout and, with ``check``,
    subprocess.CalledProcessError on a non-zero exit."""
    proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdin=subprocess.DEVNULL, start_new_session=True,
                            stdout=subprocess.PIPE if capture else None, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    finally:
        kill_group(proc)
    if check and proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, list(cmd), out)
    return proc.returncode, out or ""
