"""Data-parallel steps (``RunConfig.devices`` > 1) on ``tf.distribute.MirroredStrategy``.

Devices: on a CPU, ``setup_devices`` splits the one physical CPU into N
logical CPUs (``tf.config.set_logical_device_configuration``, before the
runtime starts), with one intra-op pool shared by them and one inter-op
thread per replica (``cpu_threads``, measured); on GPUs the first N visible
GPUs. Variables are mirrored (the model and optimizer are built under
``strategy.scope()``).

One step, per impl ``standard`` / ``fastclip`` (``DataParallel.step``):
1. ``strategy.run``: each replica computes its LOCAL sum on its B examples
   (device i: examples [i*B, (i+1)*B) of the global batch), scaled by 1/G
   (G = N*B, the global batch): standard the optimizer's gradient of
   sum(loss)/G (``tf.nn.compute_average_loss``'s scaling), fastclip
   ``FastClip.clipped_sum(x, y, 1/G)``, the very function the
   single-device step calls;
2. ``strategy.reduce(SUM)``: the strategy's own cross-device reduction of
   the per-replica sums (its default cross_device_ops: ``CollectiveAllReduce``
   on logical CPUs, recorded in the notes);
3. fastclip only: ``steps.add_noise`` ONCE, in cross-replica context, on the
   reduced sum: one N(0, (sigma C)^2) draw per coordinate, times 1/G, from
   ``tf.random.normal`` (the sampler of every TF DP row);
4. ``strategy.run``: every replica applies that same tensor with the legacy
   SGD ``apply_gradients(..., experimental_aggregate_gradients=False)`` (it
   is already the global update: no second all-reduce), so the mirrored
   copies stay identical.
``xla``: each replica's local sum is jit-compiled (``tf.function(jit_compile=
True)`` inside ``strategy.run``, as Keras' ``jit_compile`` does under a
strategy); the reduction, noise and update run in TF's executor, where the
strategy's collective spans the devices (an outer ``jit_compile`` asks XLA to
compile the whole step, both replicas and the collective, as one
computation: not the strategy's data-parallel run). Each replica traces its
own jit function (``local_xla``): one shared ``tf.function`` was traced once
for both, with one replica's variable copies captured (TF then failed reading
a replica_1 variable from CPU:0).

TF-Privacy's rows are ``Unsupported`` (``TFP_UNSUPPORTED`` says why, from
the 0.9.0 source): each replica noises and normalises its own share and
Keras then sums the replicas' gradients. Checked as the library's users
would run it (2 logical CPUs, model and optimizer under ``strategy.scope()``,
``strategy.run`` of tape + ``minimize``; DPSequential ``fit``; zero
gradients, sigma C = 1, B = 4 per replica): the variance of G * update per
coordinate was 7.9-8.1 for all three, N^3 = 8 (N draws, each divided by B
not G), where one draw per step gives 1; the library has no strategy code
(its only multi-replica tests, fast_gradient_clipping/*_tpu_test.py, check
per-replica squared norms, not noise).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from common.harness.adapter import Unsupported
from common.reference import fastclip_plan
from common.reference.exchange import Weights
from common.reference.spec import ModelSpec
from frameworks.tf.fastclip import SUPPORTED_OPS, FastClip
from frameworks.tf.models import build_model, cross_entropy
from frameworks.tf.steps import DP_OPTIMIZERS, add_noise, noise_notes

# impls that run data-parallel here
DATA_PARALLEL_IMPLS = ("standard", "fastclip")

_HEAD = "TF-Privacy 0.9.0 has no MirroredStrategy support: "
_TAIL = (", then Keras' apply_gradients sums the replicas (optimizers/utils.py all_reduce_sum_gradients), so a step "
         "adds N noise draws (N x the variance) to N x the global mean")
# One sentence per library class, under the record's 500-character error field.
TFP_UNSUPPORTED = {
    "DPKerasSGDOptimizer": _HEAD + (
        "DPKerasSGDOptimizer._compute_gradients (optimizers/dp_optimizer_keras.py) noises each replica's share "
        "(GaussianSumQuery.get_noised_result) and divides it by the local num_microbatches") + _TAIL + ".",
    "VectorizedDPKerasSGDOptimizer": _HEAD + (
        "VectorizedDPKerasSGDOptimizer._compute_gradients (optimizers/dp_optimizer_keras_vectorized.py) noises "
        "each replica's share (tf.random.normal) and divides it by the local num_microbatches") + _TAIL + ".",
    "DPSequential": _HEAD + (
        "DPSequential.train_step (keras_models/dp_keras_model.py) noises each replica's share "
        "(_reduce_per_example_grads) and divides it by the local batch") + _TAIL + (
        "; with use_xla=True, its default, the jit-compiled train_step fails (merge_call in a nested tf.function)."),
}


def cpu_threads(threads: int, devices: int) -> tuple[int, int]:
    """(intra-op, inter-op) threads for ``devices`` logical CPUs on ``threads`` cores.

    TF gives every CPU device the same intra-op pool (one process-wide
    Eigen pool), and a kernel's calling thread (an inter-op thread) computes
    its own shard too. Inter-op = ``devices``: with 1 the executor runs the
    replicas' kernels one after the other (each spread over the pool); with
    N each replica's kernels run side by side. Intra-op = ``threads -
    devices`` (at least 1): pool + one busy caller per replica = the
    configuration's cores, as 1 device gets them.

    Measured (small model, B 64 per device, fastclip graph, 2 cores, 2
    devices; samples/s, CPU use in cores): (intra 1, inter 2) 3570-3880,
    1.86; (2, 2) 3650-3690, 1.9; (2, 1) 3050-3070, 1.72; (1, 1) 1970-2360,
    1.0 (everything on one core); standard (1, 2) 6190-6420 vs (2, 2)
    5730-6150. Only 2 cores could be measured: at 2N cores and more the
    rule is the reasoning above, not a measurement."""
    return max(1, threads - devices), devices


def setup_devices(threads: int, devices: int) -> dict[str, Any]:
    """Make ``devices`` data-parallel devices before the TF runtime starts;
    returns what is in force (``notes["data_parallel"]`` of every row).

    CPU: ``devices`` logical CPUs, threads from :func:`cpu_threads`. GPU: the
    visible GPUs (build refuses fewer than asked), threads as for 1 device."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        return {"device_kind": "gpu", "visible_gpus": len(gpus), "intra_op_threads": threads,
                "inter_op_threads": 1}
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
    intra, inter = cpu_threads(threads, devices)
    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)
    return {"device_kind": "logical_cpu", "logical_cpus": devices, "threads": threads,
            "intra_op_threads": intra, "inter_op_threads": inter,
            "threads_rule": "one intra-op pool shared by the logical CPUs, of threads - devices (>= 1) threads, "
                            "+ one inter-op thread per replica (frameworks/tf/data_parallel.py cpu_threads)"}


def device_names(devices: int) -> list[str]:
    """The first ``devices`` GPUs, else logical CPUs; ``Unsupported`` when there are fewer."""
    gpus = tf.config.list_logical_devices("GPU")
    pool = gpus or tf.config.list_logical_devices("CPU")
    if len(pool) < devices:
        kind = "GPUs" if gpus else "logical CPUs (TfAdapter.setup makes them)"
        raise Unsupported(f"devices={devices} asked but TensorFlow sees {len(pool)} {kind}: "
                          f"MirroredStrategy runs one replica per device.")
    return [d.name for d in pool[:devices]]


def check_supported(impl: str) -> None:
    """``Unsupported`` for the TF-Privacy impls (``TFP_UNSUPPORTED``)."""
    if impl in DP_OPTIMIZERS:
        raise Unsupported(TFP_UNSUPPORTED[DP_OPTIMIZERS[impl][0]])
    if impl == "tfp_dpmodel":
        raise Unsupported(TFP_UNSUPPORTED["DPSequential"])
    if impl not in DATA_PARALLEL_IMPLS:
        raise ValueError(f"unknown tf impl {impl!r} for devices > 1")


@dataclass
class DataParallel:
    """One impl's data-parallel step over ``strategy``'s replicas (module
    docstring); ``step()`` returns the new dense1 bias (primary copy), which
    the function returns only once every replica's update has run."""

    strategy: tf.distribute.MirroredStrategy
    model: tf.keras.Model
    step: Callable[[], tf.Tensor]
    notes: dict[str, Any] = field(default_factory=dict)

    def replica_weights(self, name: str) -> list[np.ndarray]:
        """Each replica's copy of the variable ``name`` (e.g. ``dense1/kernel``)."""
        layer, kind = name.split("/")
        var = getattr(self.model.get_layer(layer), kind)
        return [v.numpy() for v in self.strategy.experimental_local_results(var)]


def _split(strategy: tf.distribute.MirroredStrategy, devices: list[str], a: np.ndarray) -> Any:
    """``a`` split in order, one slice per replica, each placed on its device once."""
    parts = np.split(a, len(devices))
    local = []
    for d, p in zip(devices, parts):
        with tf.device(d):
            local.append(tf.identity(tf.constant(p)))
    return strategy.experimental_distribute_values_from_function(lambda ctx: local[ctx.replica_id_in_sync_group])


def make_data_parallel(impl: str, variant: str, spec: ModelSpec, weights: Weights, x: np.ndarray, y: np.ndarray,
                       devices: int, clip_norm: float, noise_multiplier: float, learning_rate: float) -> DataParallel:
    """The ``devices``-replica step of ``impl`` on the global batch (x, y)."""
    check_supported(impl)
    if impl == "fastclip" and (gap := fastclip_plan.model_gap(spec, SUPPORTED_OPS)):
        raise Unsupported(gap)
    names = device_names(devices)
    if len(y) % devices:
        raise ValueError(f"global batch {len(y)} does not split over {devices} devices")
    b, inv_g = len(y) // devices, 1.0 / len(y)
    xla = variant == "xla"
    strategy = tf.distribute.MirroredStrategy(names)
    with strategy.scope():
        model = build_model(spec, weights)
        opt = tf.keras.optimizers.legacy.SGD(learning_rate)
        if impl == "fastclip":
            fc = FastClip(model, b, clip_norm, xla=xla)
            variables = fc.variables

            def local(xr: tf.Tensor, yr: tf.Tensor) -> list[tf.Tensor]:
                return fc.clipped_sum(xr, yr, inv_g)
        else:
            variables = model.trainable_variables

            def local(xr: tf.Tensor, yr: tf.Tensor) -> list[tf.Tensor]:
                # What opt.minimize computes before apply_gradients, of the
                # replica's summed loss / G (tf.nn.compute_average_loss's scaling).
                with tf.GradientTape() as tape:
                    loss = tf.reduce_sum(cross_entropy(yr, model(xr, training=True))) * inv_g
                return [g for g, _ in opt._compute_gradients(loss, variables, tape=tape)]  # pylint: disable=protected-access
    std = noise_multiplier * clip_norm if impl == "fastclip" else 0.0

    def local_xla(xr: tf.Tensor, yr: tf.Tensor) -> list[tf.Tensor]:
        # A new jit-compiled function per replica trace: one shared tf.function
        # is traced once, with one replica's variable copies captured (module docstring).
        return tf.function(local, jit_compile=True)(xr, yr)

    local_fn = local_xla if xla else local
    xs, ys = _split(strategy, names, x), _split(strategy, names, y)
    bias = model.layers[-1].bias  # the output layer (dense1; WRN: head)

    def apply(grads: list[tf.Tensor]) -> None:
        opt.apply_gradients(zip(grads, variables), experimental_aggregate_gradients=False)

    @tf.function
    def step() -> tf.Tensor:
        total = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(local_fn, args=(xs, ys)), axis=None)
        if impl == "fastclip":
            total = add_noise(total, std, inv_g)  # once per step, cross-replica
        strategy.run(apply, args=(total,))
        return bias.read_value()

    par: dict[str, Any] = {
        "strategy": "MirroredStrategy", "devices": names, "global_batch_size": len(y), "per_device_batch": b,
        "cross_device_ops": type(getattr(strategy.extended, "_cross_device_ops", None)).__name__,
        "reduction": "strategy.reduce(SUM) of each replica's local sum / G",
        "jit_compile": "per-replica local sum" if xla else "none",
    }
    notes: dict[str, Any] = {"jit_compile": xla, "data_parallel": par}
    if impl == "fastclip":
        par["noise"] = "once per step, on the reduced sum (cross-replica context)"
        notes.update(fastclip_plan=fc.notes(), **noise_notes("fastclip_data_parallel"))
    return DataParallel(strategy, model, step, notes)
