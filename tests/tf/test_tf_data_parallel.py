"""Data-parallel TF steps (RunConfig.devices > 1, frameworks/tf/data_parallel.py).

The 2-device checks run in a fresh interpreter (tests/tf/data_parallel_checks.py,
the thread environment of a 2-device worker): TF's logical CPUs must be made
before its runtime starts, which the other tests in this process have done.
All on the small model, 4 examples per device (global batch 8).

Tolerances. Parity: float32 vs float64, measured 6.9e-7 .. 8.9e-7 (fastclip
and standard, graph and xla) through the timed step: TOL = 1e-5, as
test_tf_parity.py. Noise: the step's total noise is recovered per coordinate
(n ~ 1.07M of them) as -G (p1 - p0) / lr - clipped sum; its variance over the
coordinates estimates (sigma C)^2 with relative standard error sqrt(2/n)
(1.4e-3): 5 of those (measured 0.3 and 2.1), while one draw per replica (2x
the variance) is ~700 standard errors off.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.tf

pytest.importorskip("tensorflow_privacy")

from common.harness import launcher, worker  # noqa: E402
from common.harness.adapter import Unsupported  # noqa: E402
from common.harness.config import RunConfig, expand  # noqa: E402
from frameworks.tf import ADAPTER  # noqa: E402
from frameworks.tf.data_parallel import TFP_UNSUPPORTED, cpu_threads  # noqa: E402
from frameworks.tf.steps import DP_OPTIMIZERS  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TOL = 1e-5
TIMEOUT_S = 600
TFP_IMPLS = ("tfp_microbatch", "tfp_microbatch_mean", "tfp_vectorized", "tfp_dpmodel")


def two_device_env() -> dict[str, str]:
    """A 2-device TF worker's environment on the CPU (GPUs hidden: the checks
    are of the logical-CPU path)."""
    env = launcher.framework_env("tf", 2, devices=2)
    env["CUDA_VISIBLE_DEVICES"] = ""
    return env


@pytest.fixture(scope="module")
def checks() -> dict:
    p = subprocess.run([sys.executable, str(ROOT / "tests/tf/data_parallel_checks.py")], cwd=ROOT,
                       env=two_device_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_two_logical_cpus(checks):
    """setup(2 threads, 2 devices) made 2 logical CPUs sharing a 1-thread
    intra-op pool, with 2 inter-op threads (the replicas' kernels side by
    side: data_parallel.cpu_threads)."""
    assert checks["logical_cpus"] == 2
    s = checks["setup"]
    assert (s["device_kind"], s["logical_cpus"], s["intra_op_threads"], s["inter_op_threads"]) == \
        ("logical_cpu", 2, 1, 2)


def test_cpu_threads():
    """Pool + one busy inter-op thread per replica = the cores asked for."""
    assert cpu_threads(2, 2) == (1, 2)
    assert cpu_threads(16, 2) == (14, 2)
    assert cpu_threads(1, 2) == (1, 2)


@pytest.mark.parametrize("variant", ["graph", "xla"])
def test_parity(checks, variant):
    """The 2-device sums equal the float64 reference of the whole global batch:
    fastclip's clipped sum (half the examples clipped), standard's plain sum."""
    par = checks["parity"]
    assert 0 < par["clipped_examples"] < par["examples"]
    assert par[f"fastclip/{variant}"] < TOL
    assert par[f"standard/{variant}"] < TOL


def test_parity_can_fail(checks):
    """The comparison catches a clip norm 1 % off, and one device's half of the
    batch alone (a step without the all-reduce) is far from the whole's sum."""
    par = checks["parity"]
    assert par["fastclip/clip+1%"] > 10 * TOL
    assert par["clipped_vs_half"] > 10 * TOL


@pytest.mark.parametrize("variant", ["graph", "xla"])
def test_noise_drawn_once(checks, variant):
    """One step's total noise per coordinate has the variance of ONE
    N(0, (sigma C)^2) draw (module docstring: 5 standard errors; 2 draws, one
    per replica, would give twice it) and mean 0; the step's graph holds one
    normal draw per variable, not one per replica."""
    r = checks["noise"][variant]
    want = r["sigma_c"] ** 2
    assert r["p0_is_init"] and r["bias_is_p1"]
    assert abs(r["var"] / want - 1) < 5 * math.sqrt(2 / r["n"]), r
    assert abs(r["mean"]) < 5 * r["sigma_c"] / math.sqrt(r["n"]), r
    assert r["replicas"] == 2 and r["normal_draws"] == r["variables"] == 8, r


@pytest.mark.parametrize("variant", ["graph", "xla"])
def test_replicas_stay_equal(checks, variant):
    """Every replica applies the same noised update: the mirrored copies agree exactly."""
    assert checks["noise"][variant]["replicas_equal"]


def test_notes(checks):
    notes = checks["noise"]["graph"]["notes"]
    par = notes["data_parallel"]
    assert par["strategy"] == "MirroredStrategy" and par["devices"] == ["/device:CPU:0", "/device:CPU:1"]
    assert (par["global_batch_size"], par["per_device_batch"]) == (8, 4)
    assert notes["noise_sampler"] == "tf.random.normal" and "once per step" in notes["noise_call"]
    assert checks["noise"]["xla"]["notes"]["data_parallel"]["jit_compile"] == "per-replica local sum"


def test_standard_steps(checks):
    s = checks["standard"]
    assert s["changed"] and s["finite"] and s["replicas_equal"]


TFP_CONFIGS = [c for c in expand(["tf"], "tiny", devices=[2]) if c.impl in TFP_IMPLS]


def tfp_reason(impl: str) -> str:
    return TFP_UNSUPPORTED[DP_OPTIMIZERS[impl][0] if impl in DP_OPTIMIZERS else "DPSequential"]


@pytest.mark.parametrize("cfg", TFP_CONFIGS, ids=lambda c: f"{c.impl}-{c.variant}-mb{c.microbatch_size}")
def test_tfp_unsupported(cfg):
    """TF-Privacy adds noise on every replica (TFP_UNSUPPORTED): build and
    clipped_sum refuse, and the worker files the row as 'unsupported'."""
    assert cfg.devices == 2
    with pytest.raises(Unsupported) as exc:
        ADAPTER.build(cfg)
    assert str(exc.value) == tfp_reason(cfg.impl)
    assert worker.classify(exc.value) == "unsupported"
    with pytest.raises(Unsupported):
        ADAPTER.clipped_sum(cfg.impl, "small", {}, None, None, 1.0, cfg.microbatch_size, cfg.variant, devices=2)


def test_tfp_configs_cover_every_impl():
    assert {c.impl for c in TFP_CONFIGS} == set(TFP_IMPLS)


def test_worker_records_unsupported():
    """End to end, in a fresh 2-device worker: status 'unsupported', the reason as its error."""
    cfg = RunConfig("tf", "tfp_vectorized", "small", 4, 1, "graph", devices=2, budget_s=120.0).validate()
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path, result = Path(tmp) / "cfg.json", Path(tmp) / "result.json"
        cfg_path.write_text(json.dumps(cfg.to_dict()))
        p = subprocess.run([sys.executable, "-m", "common.harness.worker", str(cfg_path), str(result)], cwd=ROOT,
                           env=two_device_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
        assert p.returncode == 0, p.stderr[-3000:]
        rec = json.loads(result.read_text())
    assert rec["status"] == "unsupported"
    assert rec["error"] == f"Unsupported: {tfp_reason('tfp_vectorized')}"  # whole: one_line keeps 500 chars


def test_reasons_fit_the_record():
    """Each reason is one sentence that the record's error field keeps whole."""
    for reason in TFP_UNSUPPORTED.values():
        assert len(f"Unsupported: {reason}") <= 500 and reason.count(". ") == 0 and reason.endswith(".")


def test_too_few_devices_is_unsupported():
    """This process has one logical CPU (no setup for 2): a 2-device build says so."""
    import tensorflow as tf
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("the GPUs are the devices here")
    cfg = RunConfig("tf", "fastclip", "small", 4, None, "graph", devices=2).validate()
    with pytest.raises(Unsupported, match="devices=2 asked but TensorFlow sees 1"):
        ADAPTER.build(cfg)
