"""Data-parallel JAX (frameworks/jax/data_parallel.py) on 2 of XLA:CPU's host
devices, in a child process started as the runner starts a 2-device worker
(``launcher.framework_env(..., devices=2)``: the device count is read when
JAX starts its backend, and this suite's process has one device).

- The sum over devices of each device's clipped sum is the float64
  reference's clipped sum of the whole global batch (noise 0), for standard,
  jax-privacy and fastclip; tolerance as the in-process parity tests (1e-5,
  float32 sums of a few terms).
- The noise is drawn once: one timed 2-device step at learning rate 1 gives
  the step's noise as -G (p1 - p0) - S (G the global batch, S the clipped sum
  at p0); over the small model's 1.07M coordinates its variance estimates
  (sigma C)^2 to a relative standard error sqrt(2/n) = 0.14 %, so 2 % tells
  one draw (ratio 1) from one per device (ratio 2) at once.
"""
import json
import subprocess
import sys

import pytest

from common.harness import launcher

pytestmark = pytest.mark.jax

TOL = 1e-5
NOISE_TOL = 0.02

CHILD = r"""
import json
import jax, numpy as np
jax.config.update("jax_default_matmul_precision", "highest")
from common.harness.config import RunConfig
from common.reference import float64 as R
from frameworks.jax import ADAPTER
from frameworks.jax.models import params_to_exchange
from tests.jax.ties import tie_free_case
c = tie_free_case("small", 6)  # 3 examples on each of 2 devices
out = {"devices": len(jax.devices()),
       "standard": R.max_rel_error(ADAPTER.clipped_sum("standard", "small", c.weights, c.x, c.y, 1.0, devices=2),
                                   R.clipped_sum(c.spec, c.weights, c.x, c.y, float("inf")))}
for impl in ("jax_privacy", "fastclip"):
    out[impl] = R.max_rel_error(ADAPTER.clipped_sum(impl, "small", c.weights, c.x, c.y, c.clip, None, devices=2), c.want)
sigma, clip = 1.0, 1.0
for impl in ("fastclip", "jax_privacy"):
    cfg = RunConfig("jax", impl, "small", 3, devices=2, learning_rate=1.0, noise_multiplier=sigma, clip_norm=clip).validate()
    bench = ADAPTER.build(cfg)
    from common.reference.exchange import init_weights, make_batch
    p0 = init_weights(c.spec, cfg.seed)
    x, y = make_batch(c.spec, cfg.global_batch_size, cfg.seed)
    s = ADAPTER.clipped_sum(impl, "small", p0, x, y, clip, None, devices=2)
    state = bench.sync(bench.step())
    p1 = params_to_exchange(state[0])
    noise = np.concatenate([(-cfg.global_batch_size * (p1[k].astype(np.float64) - p0[k]) - s[k]).ravel() for k in p0])
    out[impl + "_noise_var_ratio"] = float(noise.var() / (sigma * clip) ** 2)
    out[impl + "_replicated"] = all(v.sharding.is_fully_replicated and len(v.sharding.device_set) == 2
                                    for v in jax.tree.leaves(state[0]))
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def child():
    env = launcher.framework_env("jax", devices=2)
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, cwd=launcher.ROOT, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_child_has_two_devices(child):
    assert child["devices"] == 2


@pytest.mark.parametrize("impl", ["standard", "jax_privacy", "fastclip"])
def test_sum_over_devices_is_the_global_batch_sum(child, impl):
    assert child[impl] < TOL, child


@pytest.mark.parametrize("impl", ["fastclip", "jax_privacy"])
def test_noise_is_drawn_once_per_step(child, impl):
    assert abs(child[impl + "_noise_var_ratio"] - 1.0) < NOISE_TOL, child
    assert child[impl + "_replicated"], child  # the parameters stay replicated on both devices
