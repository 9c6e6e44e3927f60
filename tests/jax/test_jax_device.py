"""The GPU code paths of the JAX adapter (allocator peak, float32 precision, sync on the
step's real output), rehearsed on a CPU: a fake device stands in where XLA:CPU has no stats."""
from types import SimpleNamespace

import jax
import pytest

from common.harness.config import RunConfig, Timing
from frameworks.jax import ADAPTER
from frameworks.jax.adapter import allocator_peak

pytestmark = pytest.mark.jax


def test_peak_memory_is_the_device_allocators():
    gpu = SimpleNamespace(platform="gpu", memory_stats=lambda: {"peak_bytes_in_use": 987_654, "bytes_in_use": 5})
    assert allocator_peak(gpu) == 987_654
    assert allocator_peak(SimpleNamespace(platform="gpu", memory_stats=lambda: None)) is None
    assert allocator_peak(jax.devices("cpu")[0]) is None      # XLA:CPU: the worker measures RSS


def test_float32_is_highest_precision_and_recorded():
    ADAPTER.setup(1)
    info = ADAPTER.accelerator()
    assert info["matmul_precision"] == "highest" and info["platform"] == jax.devices()[0].platform
    assert info["tf32"] is (None if info["platform"] == "cpu" else False)
    with jax.default_matmul_precision("default"):  # what a GPU would then run as TF32: recorded as such
        assert jax.config.jax_default_matmul_precision == "default"


def test_sync_blocks_on_the_steps_real_output():
    """The step returns the new state itself (no copy, no placeholder) and sync is
    block_until_ready on it: a window ends when its last step's parameters exist."""
    bench = ADAPTER.build(RunConfig("jax", "standard", "small", 2, budget_s=30, timing=Timing(1, 2, 0.01)))
    assert bench.sync is jax.block_until_ready
    first = bench.step()
    second = bench.step()
    assert first is not second
    arrays = [x for x in jax.tree.leaves(bench.sync(second)) if hasattr(x, "is_ready")]  # (PRNG keys: no)
    assert arrays and all(x.is_ready() for x in arrays)
