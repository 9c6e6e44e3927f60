"""The one launcher: tools (git, venv, pip) run through it with a timeout that kills their whole group."""
import os
import subprocess
import sys
import time

import pytest

from common.harness import launcher

# A child that starts a grandchild (as pip starts build backends), prints its pid, then hangs.
SPAWNER = ("import subprocess, sys, time; "
           "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
           "print(p.pid, flush=True); time.sleep(60)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead
        return f.read().split()[2] != "Z"


def test_run_tool_returns_code_and_output():
    assert launcher.run_tool([sys.executable, "-c", "print('hi')"], 30, capture=True) == (0, "hi\n")
    assert launcher.run_tool([sys.executable, "-c", "raise SystemExit(3)"], 30, check=False)[0] == 3
    with pytest.raises(subprocess.CalledProcessError):
        launcher.run_tool([sys.executable, "-c", "raise SystemExit(3)"], 30)


def test_run_tool_timeout_kills_the_whole_group(tmp_path):
    out = tmp_path / "pid"
    cmd = [sys.executable, "-c", SPAWNER.replace("print(p.pid, flush=True)", f"open({str(out)!r}, 'w').write(str(p.pid))")]
    t0 = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        launcher.run_tool(cmd, 1.5)
    assert time.monotonic() - t0 < 10
    grandchild = int(out.read_text())
    for _ in range(50):
        if not _alive(grandchild):
            break
        time.sleep(0.1)
    assert not _alive(grandchild)


def test_no_other_subprocess_calls_in_the_harness_or_frameworks():
    """Every child process of the harness goes through common/harness/launcher.py."""
    root = launcher.ROOT
    offenders = []
    for d in ("common", "frameworks"):
        for path in (root / d).rglob("*.py"):
            if path == root / "common" / "harness" / "launcher.py":
                continue
            text = path.read_text()
            for needle in ("subprocess.Popen(", "subprocess.run(", "subprocess.call(", "subprocess.check_output(",
                           "os.system(", "os.popen("):
                if needle in text:
                    offenders.append(f"{path.relative_to(root)}: {needle}")
    assert offenders == []
