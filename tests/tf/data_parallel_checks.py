"""The 2-device checks of tests/tf/test_tf_data_parallel.py, run in a fresh
interpreter: TF's logical CPUs must be made before its runtime starts, and the
other TF tests have started it in the pytest process.

    python tests/tf/data_parallel_checks.py   (PYTHONPATH = the repo root)

Prints one JSON object of raw results; the test file asserts on them.
"""
from __future__ import annotations

import json

import numpy as np

from frameworks.tf import ADAPTER

DEVICES = 2
ADAPTER.setup(2, DEVICES)  # before anything else touches TF's runtime

import tensorflow as tf  # noqa: E402

from common.harness.config import RunConfig  # noqa: E402
from common.reference import float64 as reference  # noqa: E402
from common.reference.exchange import init_weights, make_batch  # noqa: E402
from common.reference.spec import get_model  # noqa: E402
from frameworks.tf import analysis  # noqa: E402
from frameworks.tf.models import export_weights  # noqa: E402

MODEL = "small"
PER_DEVICE = 4
G = PER_DEVICE * DEVICES


def parity() -> dict:
    """Max relative errors of the 2-device sums vs the float64 reference of
    the whole global batch (clip norm: the median per-example norm)."""
    spec = get_model(MODEL)
    seed = reference.tie_free_seed(MODEL, G)
    w = init_weights(spec, seed)
    x, y = make_batch(spec, G, seed)
    grads = reference.per_example_grads(spec, w, x, y)
    norms = reference.per_example_norms(grads)
    clip = float(np.median(norms))
    clipped = reference.clipped_sum(spec, w, x, y, clip)
    plain = {k: v.sum(0) for k, v in grads.items()}
    # Each device's half alone: what a step that dropped the all-reduce would give.
    first_half = reference.clipped_sum(spec, w, x[:PER_DEVICE], y[:PER_DEVICE], clip)
    out = {"clipped_examples": int((norms > clip).sum()), "examples": G,
           "clipped_vs_half": reference.max_rel_error(first_half, clipped)}
    sums = {}
    for variant in ("graph", "xla"):
        sums[variant] = ADAPTER.clipped_sum("fastclip", MODEL, w, x, y, clip, None, variant, devices=DEVICES)
        out[f"fastclip/{variant}"] = reference.max_rel_error(sums[variant], clipped)
        out[f"standard/{variant}"] = reference.max_rel_error(
            ADAPTER.clipped_sum("standard", MODEL, w, x, y, clip, None, variant, devices=DEVICES), plain)
    # The negative control: the same step's sum against the float64 sum at a clip norm 1 % off (the
    # comparison tells the two apart), without tracing a second 2-device step at that clip norm.
    out["fastclip/clip+1%"] = reference.max_rel_error(
        sums["graph"], reference.clipped_sum(spec, w, x, y, clip * 1.01))
    return out


def noise(variant: str) -> dict:
    """One lr-1 step of a 2-device fastclip Bench: the total noise per
    coordinate, -G (p1 - p0) / lr - clipped sum at p0, and what the replicas hold."""
    spec = get_model(MODEL)
    cfg = RunConfig("tf", "fastclip", MODEL, PER_DEVICE, None, variant, learning_rate=1.0, noise_multiplier=1.0,
                    clip_norm=1.0, devices=DEVICES).validate()
    w0 = init_weights(spec, cfg.seed)
    x, y = make_batch(spec, cfg.global_batch_size, cfg.seed)
    bench = ADAPTER.build(cfg)
    dp = ADAPTER.data_parallel
    p0 = export_weights(dp.model, spec)
    bias = np.array(bench.sync(bench.step()))
    p1 = export_weights(dp.model, spec)
    s = ADAPTER.clipped_sum("fastclip", MODEL, w0, x, y, cfg.clip_norm, None, variant, devices=DEVICES)
    z = np.concatenate([(-G * (p1[k].astype(np.float64) - p0[k]) / cfg.learning_rate - s[k]).ravel() for k in s])
    replicas_equal = all(all(np.array_equal(r[0], c) for c in r[1:])
                         for r in (dp.replica_weights(k) for k in w0))
    ops = analysis.graph_op_counts(bench)
    return {"sigma_c": cfg.noise_multiplier * cfg.clip_norm, "n": int(z.size), "var": float(z.var()),
            "mean": float(z.mean()), "p0_is_init": all(np.array_equal(p0[k], w0[k]) for k in w0),
            "bias_is_p1": bool(np.array_equal(bias, p1["dense1/bias"])), "replicas_equal": replicas_equal,
            "variables": len(w0), "normal_draws": ops.get("RandomStandardNormal", 0),
            "replicas": len(dp.strategy.extended.worker_devices),
            "notes": {k: v for k, v in bench.notes.items() if k != "fastclip_plan"}}


def standard_step() -> dict:
    """A 2-device standard Bench steps and keeps its replicas equal."""
    cfg = RunConfig("tf", "standard", MODEL, PER_DEVICE, None, "graph", devices=DEVICES).validate()
    bench = ADAPTER.build(cfg)
    first, second = (np.array(bench.sync(bench.step())) for _ in range(2))
    dp = ADAPTER.data_parallel
    names = init_weights(get_model(MODEL), cfg.seed)
    return {"changed": not np.array_equal(first, second), "finite": bool(np.isfinite(second).all()),
            "replicas_equal": all(np.array_equal(*dp.replica_weights(k)[:2]) for k in names)}


if __name__ == "__main__":
    print(json.dumps({"logical_cpus": len(tf.config.list_logical_devices("CPU")),
                      "setup": ADAPTER.data_parallel_setup, "parity": parity(),
                      "noise": {v: noise(v) for v in ("graph", "xla")}, "standard": standard_step()}))
