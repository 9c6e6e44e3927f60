"""Bad input: one-line error, non-zero exit, nothing written."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(args, tmp_path):
    return subprocess.run([sys.executable, "-m", "common.runner", *args], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))


@pytest.mark.parametrize("args,msg", [
    (["--frameworks", "caffe"], "unknown framework 'caffe'"),
    (["--models", "huge"], "unknown model 'huge'"),
    (["--impls", "magic"], "unknown impl 'magic'"),
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--batch-sizes", "0"], "batch size must be positive"),
    (["--batch-sizes", "-4"], "batch size must be positive"),
    (["--batch-sizes", "32", "--microbatch-sizes", "5"], "does not divide batch size 32"),
    (["--microbatch-sizes", "0"], "microbatch size must be positive"),
    (["--budget-s", "0"], "budget must be positive"),
    (["--repeats", "0"], "repeats"),
])
def test_bad_input(tmp_path, args, msg):
    out = tmp_path / "run"
    p = run(["--frameworks", "jax", *args, "--out", str(out)] if "--frameworks" not in args else [*args, "--out", str(out)], tmp_path)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and msg in p.stderr
    assert not out.exists()


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    p = run(["--frameworks", "jax", "--out", str(blocker / "run")], tmp_path)
    assert p.returncode == 2 and "cannot write" in p.stderr and p.stderr.count("\n") == 1
    p = run(["--frameworks", "jax", "--out", "/proc/dpbench"], tmp_path)
    assert p.returncode == 2 and "cannot write" in p.stderr


def test_run_all_rejects_bad_input_before_provisioning(tmp_path):
    out = tmp_path / "run"
    p = subprocess.run(["bash", "run_all.sh", "caffe", "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2 and "unknown framework" in p.stderr
    p = subprocess.run(["bash", "run_all.sh", "jax", "--batch-sizes", "12", "--microbatch-sizes", "5", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2 and "does not divide" in p.stderr
    assert not out.exists()
