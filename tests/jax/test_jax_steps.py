"""Full training steps: noise of the configured scale, and the runner end to end."""
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.harness import records, runner, threads, worker
from common.harness.config import RunConfig, Timing, expand
from common.reference.exchange import init_weights, make_batch
from common.reference.spec import MODELS
from frameworks.jax import steps
from frameworks.jax.models import params_from_exchange

pytestmark = pytest.mark.jax


def one_step(cfg):
    spec = MODELS[cfg.model]
    step, init = steps.make_step(cfg, spec)
    x, y = (jnp.asarray(a) for a in make_batch(spec, cfg.batch_size, 0))
    params = params_from_exchange(init_weights(spec, 0))
    return jax.tree.map(np.asarray, step(init(params), x, y)[0])


def test_dp_step_adds_noise_of_configured_scale():
    """update difference noisy - noiseless ~ N(0, (lr sigma C / B)^2) per coordinate.

    Through jax-privacy's microbatch loop (2 microbatches of 2): the noise is
    steps._parts' privatizer after the clipped sum whatever the microbatch size,
    and a draw per microbatch would be sqrt(2) too large. (Until 2026-12-07 this
    ran at microbatch None and 4, B 4: one microbatch, which could not tell.)"""
    base = dict(framework="jax", impl="jax_privacy", model="small", batch_size=4, microbatch_size=2,
                clip_norm=0.5, learning_rate=0.1)
    noisy = one_step(RunConfig(noise_multiplier=2.0, **base))
    clean = one_step(RunConfig(noise_multiplier=0.0, **base))
    diff = np.concatenate([(noisy[k][l] - clean[k][l]).ravel() for k in noisy for l in noisy[k]])
    expected = 0.1 * 2.0 * 0.5 / 4
    assert diff.size > 1_000_000
    # std of 1M Gaussian samples is within 0.5 % of the truth (5 sigma ~ 0.35 %)
    assert abs(diff.std() / expected - 1) < 0.005
    assert abs(diff.mean()) < 5 * expected / np.sqrt(diff.size)


def test_runner_end_to_end_tiny(tmp_path):
    configs = expand(["jax"], "tiny", impls=["standard", "jax_privacy"], microbatch_sizes_override=[None, 2],
                     timing=Timing(warmup_steps=1, repeats=2, window_s=0.05))
    runner.run_study(configs, tmp_path, progress=False)
    recs = records.read(tmp_path / "records.jsonl")
    assert [(r["impl"], r["microbatch_size"], r["status"]) for r in recs] == [
        ("standard", None, "ok"), ("jax_privacy", None, "ok"), ("jax_privacy", 2, "ok")], recs
    for r in recs:
        assert r["framework_version"] == jax.__version__ and r["device"] == "cpu" and r["throughput_sps"] > 0
        assert threads.jax_xla_flags() in r["threads"]["env"]["XLA_FLAGS"]  # the workers' flags
        assert r["peak_mem_bytes"] > 0 and len(r["window_s"]) == 2
    assert recs[1]["dp_library_version"] == "2.0.0" and recs[2]["microbatch_size"] == 2


def test_fastclip_noise_draw_is_the_steps_privatizer():
    """``Bench.noise_draw`` (timed alone by the worker) is the step's Gaussian
    privatizer on zeros: N(0, (sigma C)^2) per parameter, every parameter;
    standard rows and noise 0 have none."""
    from frameworks.jax import ADAPTER as ad
    base = dict(framework="jax", model="small", batch_size=4, clip_norm=0.7)
    bench = ad.build(RunConfig(impl="fastclip", noise_multiplier=1.3, **base))
    drawn = np.concatenate([np.asarray(v).ravel() for v in jax.tree.leaves(bench.noise_draw())])
    assert drawn.size == MODELS["small"].param_count
    assert abs(drawn.std() / (1.3 * 0.7) - 1) < 0.01  # sample std of 1.07M draws: 0.07 % sd
    assert ad.build(RunConfig(impl="standard", **base)).noise_draw is None
    assert ad.build(RunConfig(impl="fastclip", noise_multiplier=0.0, **base)).noise_draw is None


def test_fastclip_runs_on_the_vit():
    """fastclip has rules for the ViT's layers (sequence dense layers, LayerNorms,
    embeddings): the worker times it like any other row (its parity with the float64
    reference is tests/jax/test_fastclip.py's)."""
    cfg = RunConfig("jax", "fastclip", "vit_tiny", 2, timing=Timing(warmup_steps=1, repeats=2, window_s=0.05)).validate()
    out = worker.run(cfg, time.monotonic())
    assert out["status"] == "ok" and out["error"] is None, out
    assert out["throughput_sps"] > 0 and len(out["window_s"]) == 2, out
