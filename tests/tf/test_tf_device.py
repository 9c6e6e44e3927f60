"""The GPU code paths of the TF adapter (TF32 off and recorded, allocator peak, sync on
the step's real output), rehearsed on a CPU."""
import pytest

tf = pytest.importorskip("tensorflow")

from common.harness.config import RunConfig, Timing  # noqa: E402
from frameworks.tf import ADAPTER  # noqa: E402
from frameworks.tf import adapter as tf_adapter  # noqa: E402

pytestmark = pytest.mark.tf


def test_tf32_is_off_after_setup_and_recorded_on_a_gpu(monkeypatch):
    # thread pools are settable once per process (other tests may have started TF): not this test's business
    for name in ("set_intra_op_parallelism_threads", "set_inter_op_parallelism_threads"):
        monkeypatch.setattr(tf.config.threading, name, lambda n: None)
    tf.config.experimental.enable_tensor_float_32_execution(True)   # TF's default
    ADAPTER.setup(1)
    assert tf.config.experimental.tensor_float_32_execution_enabled() is False
    gpu = bool(tf.config.list_physical_devices("GPU"))
    assert ADAPTER.accelerator()["tf32"] is (False if gpu else None)


def test_peak_memory_and_sync_on_the_cpu():
    bench = ADAPTER.build(RunConfig("tf", "standard", "small", 2, variant="graph", budget_s=30,
                                    timing=Timing(1, 2, 0.01)))
    assert tf_adapter.peak_memory() is None and bench.peak_memory() is None   # the worker measures RSS
    out = bench.step()
    assert bench.sync(out) is not None          # the window ends by reading the step's real output
