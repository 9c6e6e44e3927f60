"""The ``gpu`` preset's configuration list, and what a record says about the device it ran on."""
import collections

from common.harness import accel, machine, worker
from common.harness.config import IMPLS, PRESETS, expand, microbatch_sizes
from tests.common.harness import fakes

# every JAX and PyTorch study implementation (direct-use rows check the harness, not the device)
STUDY_IMPLS = {fw: {n for n, i in IMPLS[fw].items() if i.kind == "study"} for fw in ("jax", "torch")}


def test_gpu_preset_is_small_medium_wrn_at_64_and_256_every_jax_and_torch_impl():
    p = PRESETS["gpu"]
    assert p.needs_gpu and not any(q.needs_gpu for n, q in PRESETS.items() if n != "gpu")
    configs = expand(["jax", "torch"], "gpu")
    cells = collections.Counter((c.model, c.batch_size) for c in configs)
    assert set(cells) == {(m, b) for m in ("small", "medium", "wrn16_4") for b in (64, 256)}
    per_cell = {(c.framework, c.impl) for c in configs}
    assert per_cell == {(fw, i) for fw, names in STUDY_IMPLS.items() for i in names}
    assert set(cells.values()) == {len(per_cell)} == {9}              # each impl once per cell
    assert {("jax", "fastclip"), ("torch", "fastclip")} <= per_cell
    # each library at its default: jax-privacy without its microbatch loop, no A/B variant (CPU flags)
    assert {(c.microbatch_size, c.variant) for c in configs} == {(None, "")}
    assert len(microbatch_sizes(IMPLS["jax"]["jax_privacy"], 64)) > 1    # (the CPU study sweeps it)
    assert all(c.devices == 1 and c.threads == 0 for c in configs) and p.rounds == 1


def test_gpu_preset_slow_compiles_are_timeouts():
    """A budget bounds each configuration (process start + compile + timing): a slower
    compile ends as a timeout row and the run goes on; GPU windows are short. (The slot
    itself is bounded by common/harness/preinstalled.py's deadline, not by the preset.)"""
    configs = expand(["jax", "torch"], "gpu")
    assert {c.budget_s for c in configs} == {60.0}    # one budget: a run filled model by model resumes
    t = PRESETS["gpu"].timing
    assert t.window_s <= 0.25 and t.repeats == 3


def test_tf_rows_of_the_gpu_preset_come_only_when_asked():
    tf = expand(["tf"], "gpu")
    assert {c.impl for c in tf} and all(i.kind == "study" for i in (IMPLS["tf"][c.impl] for c in tf))


def test_machine_identity_names_the_gpus():
    gpus = [{"name": "NVIDIA H100 80GB HBM3", "driver": "580.65.06", "memory_mib": 81559}]
    ident = machine.identity(cpuinfo="", lscpu=None, gpus=gpus)
    assert ident["gpus"] == gpus and set(ident) == set(machine.IDENTITY_KEYS)
    if not accel.find_gpus()[0]:
        assert machine.identity(cpuinfo="", lscpu=None)["gpus"] is None


class GpuLikeAdapter(fakes.SleepAdapter):
    """What a GPU adapter reports, with the CPU standing in for the device."""

    def versions(self):
        return {"jax": "0.10.2", "jax-privacy": "2.0.0", "cuda": "13.0"}

    def accelerator(self):
        return {"tf32": False, "cuda_runtime": "13.0", "capability": "9.0"}


def test_a_record_says_its_versions_and_what_float32_meant(monkeypatch):
    from common.harness.config import RunConfig, Timing
    monkeypatch.setattr(worker.adapter_mod, "load", lambda fw: GpuLikeAdapter(0.002, 0.01))
    cfg = RunConfig("jax", "standard", "small", 4, budget_s=30, timing=Timing(1, 2, 0.01))
    out = worker.run(cfg, started=__import__("time").monotonic())
    assert out["status"] == "ok", out["error"]
    assert out["notes"]["versions"] == {"jax": "0.10.2", "jax-privacy": "2.0.0", "cuda": "13.0"}
    assert out["notes"]["accelerator"] == {"tf32": False, "cuda_runtime": "13.0", "capability": "9.0"}


def test_a_gpu_run_can_be_filled_model_by_model(monkeypatch):
    """common/harness/preinstalled.py runs the preset one model at a time into one run
    directory (--resume): every model's records share the settings --resume checks."""
    from dataclasses import replace
    from common.harness import runner, threads
    monkeypatch.setenv(accel.VAR, "cuda")
    by_model = {m: [c for c in expand(["jax", "torch"], "gpu") if c.model == m] for m in PRESETS["gpu"].models}
    done = [runner.base_record(c, "r", "abc", threads.worker_env(0, c.framework)) for c in by_model["small"]]
    for model in ("medium", "wrn16_4"):
        runner.check_resumable(by_model[model], done, "abc")   # raises on other settings
    other = [replace(c, budget_s=45.0) for c in by_model["wrn16_4"]]
    try:
        runner.check_resumable(other, done, "abc")
        raise AssertionError("a model with another budget resumed")
    except ValueError as exc:
        assert "budget_s" in str(exc)
