"""The GPU code paths of the PyTorch adapter (sync, allocator peak, TF32, the device's
build), rehearsed on a CPU: torch.cuda's calls are replaced where no GPU exists."""
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

from common.harness.config import RunConfig, Timing  # noqa: E402
from frameworks.torch import ADAPTER  # noqa: E402
from frameworks.torch import adapter as torch_adapter  # noqa: E402

pytestmark = pytest.mark.torch


def test_sync_waits_for_the_gpu_and_only_there(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: calls.append(a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    torch_adapter._sync(object())
    assert calls == [()]                       # kernels are asynchronous: the window waits for them
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    torch_adapter._sync(object())
    assert calls == [()]                       # CPU ops run synchronously: nothing to wait for


def test_peak_memory_is_the_cuda_allocators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 123_456_789)
    assert torch_adapter.allocator_peak(torch.device("cuda")) == 123_456_789
    assert torch_adapter.allocator_peak(torch.device("cpu")) is None
    # on the CPU a built row has no allocator peak: the worker measures RSS instead
    bench = ADAPTER.build(RunConfig("torch", "standard", "small", 2, budget_s=30, timing=Timing(1, 2, 0.01)))
    assert bench.peak_memory() is None


def test_float32_is_float32_and_the_record_reads_it_back(monkeypatch):
    assert torch_adapter.tf32_allowed() is False
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert torch_adapter.tf32_allowed() is True      # read back, not assumed


def test_accelerator_names_the_cuda_build_on_a_gpu(monkeypatch):
    assert ADAPTER.accelerator() == {"tf32": None} or torch.cuda.is_available()
    props = SimpleNamespace(major=9, minor=0, total_memory=85_045_854_208)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 92000)
    assert ADAPTER.accelerator() == {"tf32": False, "cuda_runtime": "13.0", "cudnn": 92000, "capability": "9.0",
                                     "memory_bytes": 85_045_854_208}
