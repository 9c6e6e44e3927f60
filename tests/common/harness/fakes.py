"""Fake worker and adapter for testing the harness without any framework."""
from __future__ import annotations

import json
import os
import signal
import sys
import time

import numpy as np

from common.harness.adapter import Adapter, Bench


class SleepAdapter(Adapter):
    """A step that sleeps ``step_s`` (first step ``compile_s``) and may hold
    ``alloc_mb`` (from the first step on) or touch ``transient_mb`` (first step
    only, then freed: a compiler's working set)."""

    framework = "jax"

    def __init__(self, step_s: float = 0.01, compile_s: float = 0.2, alloc_mb: int = 0, fail: Exception | None = None,
                 transient_mb: int = 0):
        self.step_s, self.compile_s, self.alloc_mb, self.fail = step_s, compile_s, alloc_mb, fail
        self.transient_mb = transient_mb
        self.held: list[np.ndarray] = []

    def setup(self, threads: int, devices: int = 1) -> None:
        pass

    def versions(self) -> dict[str, str]:
        return {"jax": "fake", "jax-privacy": "fake"}

    def device(self) -> str:
        return "cpu"

    def build(self, cfg) -> Bench:
        if self.fail is not None:
            raise self.fail
        calls = [0]

        def step():
            time.sleep(self.compile_s if calls[0] == 0 else self.step_s)
            if calls[0] == 0 and self.alloc_mb:
                a = np.ones(self.alloc_mb * 2**20 // 8)  # touched: resident
                self.held.append(a)
            if calls[0] == 0 and self.transient_mb:
                t = np.ones(self.transient_mb * 2**20 // 8)  # large: its own mmap, returned on free
                del t
            calls[0] += 1
            return calls[0]

        return Bench(step=step, sync=lambda out: out)

    def forward(self, model, weights, x):
        raise NotImplementedError

    def clipped_sum(self, *a, **k):
        raise NotImplementedError


def main() -> None:
    """``python fakes.py MODE CONFIG RESULT``: a worker that misbehaves on request."""
    mode, _cfg, result = sys.argv[1:4]
    mode, _, arg = mode.partition(":")
    if mode in ("ok", "teardown", "stolen"):
        step = 0.5 if mode == "stolen" else float(arg or 0.5)  # ok:STEP_S: a measured step time
        notes = {"cpu_steal_share": float(arg)} if mode == "stolen" else {}  # stolen:SHARE
        with open(result + ".tmp", "w") as f:  # atomically, as common.harness.worker writes it
            json.dump({"status": "ok", "error": None, "framework_version": "fake", "device": "cpu",
                       "compile_s": 0.1, "step_s_median": step, "step_s_min": step, "step_s_max": step,
                       "step_s_p10": step, "step_s_p90": step, "step_s_cv": 0.1, "steps_per_window": 2,
                       "window_s": [2 * step, 2 * step], "throughput_sps": 4.0 / step, "peak_mem_bytes": 1,
                       "mem_source": "fake", "notes": notes}, f)
        os.replace(result + ".tmp", result)
        if mode == "teardown":  # finished, then a framework's slow teardown past the budget
            time.sleep(60)
    elif mode == "partial":  # compiled and took steps, then ran out of budget
        with open(result + ".partial", "w") as f:
            json.dump({"compile_s": 1.5, "step_s": [2.0, 2.5]}, f)
        time.sleep(60)
    elif mode == "compiled":  # compiled:DELAY: wrote its first step DELAY s in, then a step never ends
        time.sleep(float(arg or 0))
        with open(result + ".partial.tmp", "w") as f:
            json.dump({"compile_s": 0.1, "step_s": []}, f)
        os.replace(result + ".partial.tmp", result + ".partial")
        time.sleep(60)
    elif mode == "badresult":
        with open(result, "w") as f:
            f.write("null")
    elif mode == "sleep":
        if os.environ.get("DPBENCH_FAKE_PIDFILE"):
            with open(os.environ["DPBENCH_FAKE_PIDFILE"], "w") as f:
                f.write(str(os.getpid()))
        time.sleep(60)
    elif mode == "crash":
        print("Segmentation fault in fake kernel", flush=True)
        os._exit(3)
    elif mode == "oom":
        print("jaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory allocating 123 bytes", flush=True)
        sys.exit(1)
    elif mode == "killed":
        os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    main()
