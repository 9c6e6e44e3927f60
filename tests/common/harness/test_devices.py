"""The data-parallel ``devices`` dimension (issue 16) through config, threads,
worker and records, with fake adapters (no framework)."""
import pytest

from common.harness import threads, worker
from common.harness.adapter import Unsupported
from common.harness.config import PRESETS, RunConfig, expand
from common.harness.threads import JAX_HOST_DEVICES_FLAG, JAX_XLA_FLAGS, worker_env
from tests.common.harness import fakes
from tests.common.harness.test_phases import run_worker


def test_global_batch_is_per_device_batch_times_devices():
    c = RunConfig("torch", "fastclip", "small", 64, devices=2).validate()
    assert c.global_batch_size == 128
    assert c.key() != RunConfig("torch", "fastclip", "small", 64).key()


@pytest.mark.parametrize("kw,msg", [
    ({"devices": 0}, "devices must be a positive integer"),
    ({"devices": True}, "devices must be a positive integer"),
    ({"devices": 2, "phases": True}, "phases are timed on one device"),
])
def test_bad_devices_are_refused(kw, msg):
    with pytest.raises(ValueError, match=msg):
        RunConfig("jax", "fastclip", "small", 64, **kw).validate()


def test_direct_use_rows_run_on_one_device_only():
    with pytest.raises(ValueError, match="direct-use row"):
        RunConfig("torch", "direct_opacus", "small", 64, devices=2).validate()
    cfgs = expand(["torch"], "full", models=["small"], batch_sizes=[64], devices=[1, 2])
    assert {c.devices for c in cfgs if c.impl == "direct_opacus"} == {1}
    assert {c.devices for c in cfgs if c.impl == "fastclip"} == {1, 2}


def test_scaling_preset_one_and_two_devices_library_defaults_no_direct_rows():
    p = PRESETS["scaling"]
    assert p.devices == (1, 2) and p.models == ("small",) and p.batch_sizes == (64,)
    cfgs = expand(["jax", "torch", "tf"], "scaling")
    assert all(c.impl_info.kind == "study" for c in cfgs)
    assert {c.microbatch_size for c in cfgs if c.impl == "jax_privacy"} == {None}
    by_impl = {}
    for c in cfgs:
        by_impl.setdefault((c.framework, c.impl, c.variant, c.microbatch_size), set()).add(c.devices)
    assert all(d == {1, 2} for d in by_impl.values())
    with pytest.raises(ValueError, match="devices must be positive"):
        expand(["jax"], "scaling", devices=[0])


def test_each_device_gets_its_share_of_the_threads():
    assert threads.per_device(2, 2) == 1 and threads.per_device(4, 2) == 2 and threads.per_device(1, 2) == 1
    jax2 = worker_env(2, "jax", base={}, devices=2)
    assert f"{JAX_HOST_DEVICES_FLAG}=2" in jax2["XLA_FLAGS"].split() and JAX_XLA_FLAGS in jax2["XLA_FLAGS"]
    assert jax2["PJRT_NPROC"] == "1"
    assert JAX_HOST_DEVICES_FLAG not in worker_env(2, "jax", base={})["XLA_FLAGS"]
    # an inherited device count is replaced, never doubled
    again = worker_env(2, "jax", base={"XLA_FLAGS": f"{JAX_HOST_DEVICES_FLAG}=8"}, devices=2)["XLA_FLAGS"]
    assert again.count(JAX_HOST_DEVICES_FLAG) == 1 and f"{JAX_HOST_DEVICES_FLAG}=2" in again
    assert worker_env(2, "torch", base={}, devices=2)["OMP_NUM_THREADS"] == "1"
    # TF's logical devices share one process's pools: they keep every thread
    tf2 = worker_env(2, "tf", base={}, devices=2)
    assert tf2["TF_NUM_INTRAOP_THREADS"] == "2" and JAX_HOST_DEVICES_FLAG not in tf2["XLA_FLAGS"]
    assert threads.recorded(2, {}, devices=2)["per_device"] == 1


class DataParallelAdapter(fakes.SleepAdapter):
    def __init__(self, refuse: bool = False):
        super().__init__(step_s=0.02, compile_s=0.02)
        self.refuse, self.devices = refuse, None

    def setup(self, threads_n, devices=1):
        self.devices = devices

    def build(self, cfg):
        if self.refuse:
            raise Unsupported("the library has no data-parallel mode")
        return super().build(cfg)


def test_worker_counts_the_global_batch_and_tells_the_adapter_the_devices(monkeypatch):
    from tests.common.harness.test_phases import cfg
    a = DataParallelAdapter()
    rec = run_worker(monkeypatch, a, cfg(devices=2))
    assert rec["status"] == "ok" and a.devices == 2
    assert (rec["devices"], rec["global_batch_size"]) == (2, 8)
    assert rec["throughput_sps"] == pytest.approx(8 / rec["step_s_median"])
    assert rec["threads"]["per_device"] == threads.per_device(0, 2)


def test_unsupported_configuration_is_a_status_row(monkeypatch):
    from tests.common.harness.test_phases import cfg
    rec = run_worker(monkeypatch, DataParallelAdapter(refuse=True), cfg(devices=2))
    assert rec["status"] == "unsupported"
    assert rec["error"] == "Unsupported: the library has no data-parallel mode"
    assert worker.classify(Unsupported("x")) == "unsupported"
