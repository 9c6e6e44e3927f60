"""Where a TensorFlow step's time goes: the analysis seam's TF side.

``analyze(cfg)`` builds the very step the benchmark times (the adapter's
``build``), runs it a few times untimed, then ``STEPS`` more under TF's own
profiler (``tf.profiler.experimental``), and reads its op statistics (the
``tensorflow_stats`` tool TensorBoard's profile plugin shows, converted from
the trace by ``_pywrap_profiler.xspace_to_tools_data``). It answers the
questions every framework's analysis answers (``common.report.analysis``):

* ``weight_grad_ops``: the op types that make weight gradients
  (``Conv2DBackpropFilter``, ``MatMul``, ``BatchMatMulV2``, ``Einsum``) with
  their self time and occurrences per step, and the traced graph's count of
  each (nested functions included);
* ``per_example_grads``: whether the impl's code path keeps per-example
  gradients and how many bytes at once: TF-Privacy's vectorized paths
  (``tfp_vectorized``, the DP Keras model's ``vectorized_map``) hold all B,
  its microbatch optimizer one microbatch at a time inside a while loop,
  fastclip its instantiated convs' kernels and its GroupNorms' scale and
  shift (its plan);
* ``top_ops``: op types by self time per step (host CPU), with their share;
  and the pfor while-loop fallbacks the step traced.

    python -m frameworks.tf.analysis --impl tfp_vectorized --variant graph --model small --batch-size 64
"""
from __future__ import annotations

import glob
import os
import struct
import sys
import tempfile
from typing import Any, Iterator

import tensorflow as tf

from common.harness import threads
from common.harness.config import RunConfig
from common.reference import fastclip_plan
from common.reference.spec import get_model
from common.harness.analysis import TOP_N, base_record, cli

FRAMEWORK = "tf"
WARMUP = 2
STEPS = 3
# Op types that make weight gradients, as the graph names them and as oneDNN
# runs them (its remapper fuses a conv's filter gradient with the bias gradient).
PRODUCTS = ("Conv2DBackpropFilter", "Conv2DBackpropFilterWithBias", "MatMul", "FusedMatMul", "BatchMatMulV2",
            "BatchMatMulV3", "Einsum")


def _pb_fields(buf: bytes) -> Iterator[tuple[int, Any]]:
    """(field number, value) of a serialized protobuf message: varints as int,
    64-bit as double, length-delimited as bytes (all ``TfStatsDatabase`` uses)."""
    i = 0

    def varint() -> int:
        nonlocal i
        v = shift = 0
        while True:
            b = buf[i]
            i += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return v

    while i < len(buf):
        key = varint()
        num, wire = key >> 3, key & 7
        if wire == 0:
            yield num, varint()
        elif wire == 1:
            yield num, struct.unpack("<d", buf[i:i + 8])[0]
            i += 8
        elif wire == 2:
            n = varint()
            yield num, buf[i:i + n]
            i += n
        elif wire == 5:
            yield num, struct.unpack("<f", buf[i:i + 4])[0]
            i += 4
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")


# tensorflow/core/profiler/protobuf/tf_stats.proto: TfStatsDatabase.without_idle = 5;
# TfStatsTable.tf_stats_record = 1; TfStatsRecord: host_or_device 2, op_type 3,
# op_name 4, occurrences 5, total_time_in_us 6, total_self_time_in_us 8.
_WITHOUT_IDLE, _RECORD = 5, 1
_REC_FIELDS = {2: "host_or_device", 3: "type", 4: "operation", 5: "occurrences", 6: "total_us", 8: "self_us"}


def op_stats(logdir: str) -> list[dict[str, Any]]:
    """Rows of the profiler's ``tensorflow_stats`` table (the op statistics
    TensorBoard's profile plugin shows) for the trace in ``logdir``:
    ``{"type", "operation", "occurrences", "self_us", "host_or_device"}``.

    The tool returns a serialized ``TfStatsDatabase``; the TF 2.15 wheel ships
    no Python class for it (only ``xplane_pb2``), so its few fields are read
    off the protobuf wire format here."""
    from tensorflow.python.profiler.internal import _pywrap_profiler
    paths = glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb"))
    if not paths:
        raise RuntimeError(f"the profiler wrote no trace under {logdir}")
    data, ok = _pywrap_profiler.xspace_to_tools_data(paths, "tensorflow_stats")
    if not ok:
        raise RuntimeError("the profiler's tensorflow_stats conversion failed")
    rows = []
    for num, table in _pb_fields(data):
        if num != _WITHOUT_IDLE:
            continue
        for n, rec in _pb_fields(table):
            if n != _RECORD:
                continue
            row = {"occurrences": 0, "self_us": 0.0}
            for k, v in _pb_fields(rec):
                if k in _REC_FIELDS:
                    row[_REC_FIELDS[k]] = v.decode() if isinstance(v, bytes) else v
            row["type"] = _op_type(row.get("type", "?"))
            rows.append(row)
    return rows


def _op_type(t: str) -> str:
    """The op type without oneDNN's kernel prefix (``_MklMatMul`` is a MatMul)."""
    for prefix in ("_MklNative", "_Mkl"):
        if t.startswith(prefix):
            return t[len(prefix):].lstrip("_") or t
    return t


def by_type(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        e = out.setdefault(r["type"], {"self_us": 0.0, "occurrences": 0})
        e["self_us"] += r["self_us"]
        e["occurrences"] += r["occurrences"]
    return out


def graph_op_counts(bench) -> dict[str, int]:
    """Op types of the traced step, nested functions (while bodies, pfor, the DP
    model's own train_step) included."""
    graph_def = bench.step.get_concrete_function().graph.as_graph_def()
    counts: dict[str, int] = {}
    for n in list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]:
        counts[n.op] = counts.get(n.op, 0) + 1
    return counts


def per_example_bytes(cfg: RunConfig, notes: dict[str, Any]) -> tuple[bool, int | None]:
    """(materialised, bytes at once) from the impl's code path (module docstring)."""
    spec = get_model(cfg.model)
    params = sum(la.params for la in spec.layers())
    if cfg.mode == "standard":
        return False, None
    if cfg.impl in ("tfp_vectorized", "tfp_dpmodel") and notes.get("tfp_dpmodel_path") != "fast_gradient_clipping":
        return True, cfg.batch_size * params * 4
    if cfg.impl in ("tfp_microbatch", "tfp_microbatch_mean"):
        return True, params * 4  # one microbatch's gradient per while-loop iteration
    if cfg.impl == "fastclip":
        layers = {la.name: la for la in spec.layers()}
        # per example: an instantiated conv's kernel grad, a GroupNorm's (always) 2C scale and shift grads
        kept = [k for n, p in (notes.get("fastclip_plan") or {}).items()
                if (k := fastclip_plan.kept_floats(p.get("method"), layers[n].fan_in, layers[n].features))]
        return bool(kept), sum(cfg.batch_size * k * 4 for k in kept) or None
    return False, None


def analyze(cfg: RunConfig, top: int = TOP_N) -> dict[str, Any]:
    from frameworks.tf import ADAPTER
    ADAPTER.setup(threads.resolve(cfg.threads))
    bench = ADAPTER.build(cfg)
    for _ in range(WARMUP):
        bench.sync(bench.step())
    with tempfile.TemporaryDirectory(prefix="dpbench-tfprof-") as logdir:
        tf.profiler.experimental.start(logdir)
        try:
            for _ in range(STEPS):
                bench.sync(bench.step())
        finally:
            tf.profiler.experimental.stop()
        types = by_type(op_stats(logdir))
    total = sum(e["self_us"] for e in types.values())
    ranked = sorted(types.items(), key=lambda kv: -kv[1]["self_us"])
    top_ops = [{"op": t, "self_s": e["self_us"] / STEPS / 1e6, "share": e["self_us"] / total if total else None,
                "calls": int(e["occurrences"]) // STEPS, "mem_bytes": None} for t, e in ranked[:top]]
    counts = graph_op_counts(bench)
    products = [{"op": t, "shapes": [], "calls": int(types[t]["occurrences"]) // STEPS if t in types else 0,
                 "self_s": types[t]["self_us"] / STEPS / 1e6 if t in types else 0.0, "in_graph": counts.get(t, 0),
                 "per_example": t in ("BatchMatMulV2", "BatchMatMulV3", "Einsum")}
                for t in PRODUCTS if counts.get(t) or t in types]
    notes = bench.notes
    materialised, kept = per_example_bytes(cfg, notes)
    rec = base_record(FRAMEWORK, cfg, ADAPTER.versions(), ADAPTER.device())
    rec["summary"] = {
        "weight_grad_ops": sorted(products, key=lambda p: -p["self_s"]),
        "per_example_grads": {"materialised": materialised, "bytes": kept},
        "top_ops": top_ops,
        "top_by": f"self time per step (TF profiler op stats, {STEPS} steps after {WARMUP} untimed)",
        "profiled_step_s": total / STEPS / 1e6,
    }
    rec["notes"] = {"pfor_while_loop_fallbacks": notes.get("pfor_while_loop_fallbacks"),
                    "while_loops_in_graph": counts.get("While", 0) + counts.get("StatelessWhile", 0),
                    "tfp_dpmodel_path": notes.get("tfp_dpmodel_path"), "noise_sampler": notes.get("noise_sampler")}
    return rec


def main(argv: list[str] | None = None) -> int:
    return cli(FRAMEWORK, analyze, argv, __doc__, default_variant="graph")


if __name__ == "__main__":
    sys.exit(main())
