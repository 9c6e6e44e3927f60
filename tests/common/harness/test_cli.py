"""Bad input: one-line error, non-zero exit, nothing written."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def run(args, tmp_path):
    return subprocess.run([sys.executable, "-m", "common.harness.runner", *args], cwd=ROOT, capture_output=True, text=True,
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


def test_resume_needs_out(tmp_path):
    p = run(["--frameworks", "jax", "--resume"], tmp_path)
    assert p.returncode == 2 and "--resume needs --out" in p.stderr and p.stderr.count("\n") == 1
    p = run(["--frameworks", "jax", "--resume", "--out", str(tmp_path / "nothing")], tmp_path)
    assert p.returncode == 2 and "does not exist" in p.stderr
    assert not (tmp_path / "nothing").exists()


def test_dirty_tree_is_refused_unless_allowed(tmp_path, monkeypatch):
    from common.harness import runner
    out = tmp_path / "run"
    monkeypatch.setattr(runner, "git_commit", lambda: "abc123-dirty")
    assert runner.main(["--frameworks", "jax", "--preset", "tiny", "--out", str(out), "--no-progress"]) == 2
    assert not out.exists()
    # --allow-dirty passes that check (and the next one: a missing environment, here faked)
    monkeypatch.setattr(runner.envs, "python_for", lambda fw: tmp_path / "no-such-python")
    assert runner.main(["--frameworks", "jax", "--preset", "tiny", "--out", str(out), "--allow-dirty"]) == 2
    assert not out.exists()


def test_dirty_tree_message(tmp_path, monkeypatch, capsys):
    from common.harness import runner
    monkeypatch.setattr(runner, "git_commit", lambda: "abc123-dirty")
    runner.main(["--frameworks", "jax", "--preset", "tiny", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert "uncommitted changes" in err and err.count("\n") == 1


@pytest.mark.parametrize("args,msg", [
    (["--phases", "caffe"], "unknown framework or argument 'caffe'"),   # a flag never swallows the next word
    (["--resume", "caffe"], "unknown framework or argument 'caffe'"),
    (["jax", "--budget-s"], "--budget-s needs a value"),
    (["jax", "--budget-s", "--phases"], "--budget-s needs a value"),
    (["jax", "--analyses", "jax,caffe"], "--analyses: unknown framework 'caffe'"),
    (["jax", "--analyses"], "--analyses needs a value"),
])
def test_run_all_flag_order(tmp_path, args, msg):
    p = subprocess.run(["bash", "run_all.sh", *args, "--out", str(tmp_path / "run")], cwd=ROOT, capture_output=True,
                       text=True)
    assert p.returncode == 2 and msg in p.stderr, p.stderr
    assert not (tmp_path / "run").exists()


def test_run_all_flag_without_value_keeps_framework(tmp_path):
    """`--phases jax` selects jax (dry-run through the runner shows only jax configurations)."""
    p = subprocess.run(["bash", "-c", f"sed -n '/^frameworks=()/,/^\\[\\[ \\${{#frameworks/p' run_all.sh > {tmp_path}/parse.sh; "
                        f"set -- --phases jax --preset tiny; source {tmp_path}/parse.sh; "
                        "echo \"fw=${frameworks[*]} args=${runner_args[*]}\""],
                       cwd=ROOT, capture_output=True, text=True)
    assert "fw=jax args=--phases" in p.stdout, p.stdout + p.stderr


def run_all(args, **env):
    return subprocess.run(["bash", "run_all.sh", *args], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, **env))


@pytest.mark.parametrize("value", ["-1", "-0.5"])
def test_run_all_passes_negative_number_to_runner(tmp_path, value):
    """`--budget-s -1` is a value, not a missing one: the runner's --dry-run refuses it before provisioning."""
    out = tmp_path / "run"
    p = run_all(["jax", "--budget-s", value, "--out", str(out)])
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().count("\n") == 0 and "budget must be positive" in p.stderr, p.stderr
    assert not out.exists()


@pytest.mark.parametrize("args", [["--budget-s"], ["--budget-s", "--models", "small"], ["--budget-s", "-x"]])
def test_run_all_missing_value_still_refused(tmp_path, args):
    out = tmp_path / "run"
    p = run_all(["jax", "--out", str(out), *args])
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "--budget-s needs a value" in p.stderr, p.stderr
    assert not out.exists()


def test_run_all_resume_hint_repeats_the_command_line(tmp_path):
    """The Ctrl-C hint is the command as given (shell-quoted) plus --resume --out DIR (test hook: the env var)."""
    import shlex
    given = ["jax", "torch", "--impls", "opacus,fast clip", "--batch-sizes", "32,64", "--no-analysis",
             "--preset", "quick", "--budget-s", "-1", "--allow-dirty"]
    p = run_all(given, DPBENCH_PRINT_RESUME_HINT="1")
    assert p.returncode == 0, p.stderr
    words = shlex.split(p.stdout)
    assert words[0] == "./run_all.sh" and words[1:len(given) + 1] == given, p.stdout
    assert words.count("--resume") == 1 and words.count("--out") == 1, p.stdout
    assert words[words.index("--out") + 1].startswith("results/quick-"), p.stdout
    # --out and --resume already given: not repeated
    out = str(tmp_path / "my run")
    # (each command carries --budget-s -1: without the hook it would stop at validation, running nothing)
    for given in (["jax", "--out", out, "--resume", "--rounds", "3", "--budget-s", "-1"],
                  ["--out=" + out, "--impls", "opacus", "--budget-s", "-1"]):
        p = run_all(given, DPBENCH_PRINT_RESUME_HINT="1")
        words = shlex.split(p.stdout)
        assert words[1:len(given) + 1] == given, p.stdout
        assert words.count("--resume") + words.count("--out") == 1 + ("--out" in given), p.stdout
        assert words.count("--resume") == 1 and not (tmp_path / "my run").exists(), p.stdout
    # both places that print it (the INT trap, the runner's exit 130) use the one function
    text = (ROOT / "run_all.sh").read_text()
    assert text.count("continue with:") == 1 and text.count("resume_hint;") == 2


@pytest.mark.parametrize("args, msg", [
    (["--impls", "fastclip"], "--preset deployed takes no --impls"),
    (["--budget-s", "-1"], "budget must be positive"),
    (["--rounds", "0"], "--rounds must be >= 1"),
    (["mxnet"], "unknown framework or argument"),
])
def test_run_all_deployed_refuses_bad_input_and_writes_nothing(tmp_path, args, msg):
    out = tmp_path / "run"
    p = run_all(["--preset", "deployed", "--out", str(out), *args])
    assert p.returncode == 2 and msg in p.stderr and not out.exists(), p.stderr
