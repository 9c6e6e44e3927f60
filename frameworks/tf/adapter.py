"""The TensorFlow side of the seam (common.harness.adapter.Adapter)."""
from __future__ import annotations

import contextlib
import importlib.metadata
from typing import Callable, Iterator

import numpy as np
import tensorflow as tf

from common.harness.adapter import Adapter, Bench
from common.harness.config import IMPLS, RunConfig
from common.reference.exchange import Weights, init_weights, make_batch
from common.reference.spec import get_model
from frameworks.tf.data_parallel import DataParallel, make_data_parallel, setup_devices
from frameworks.tf.models import build_model, export_weights
from frameworks.tf.steps import PforFallbackCounter, compile_phases, compile_step, make_train, num_units

PFOR = PforFallbackCounter()
PFOR.install()


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """Full float32 matmuls/convs (GPUs default to TF32) for parity runs,
    which may run without ``setup``; timed steps get it from ``setup``."""
    was = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(False)
    try:
        yield
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(was)


def _own_pfor_notes(fn: Callable[[], tf.Tensor]) -> Callable[[], tf.Tensor]:
    """``fn`` whose tracing (its first call) counts pfor fallbacks apart from
    the step's (PFOR.notes is the Bench's notes while the step traces)."""
    traced = [False]

    def call() -> tf.Tensor:
        if traced[0]:
            return fn()
        traced[0] = True
        keep, PFOR.notes = PFOR.notes, {}
        try:
            return fn()
        finally:
            PFOR.notes = keep

    return call


def is_direct(impl: str) -> bool:
    """A direct-use row (common.harness.config ``Impl.kind``): frameworks/tf/direct.py builds it."""
    info = IMPLS["tf"].get(impl)
    return info is not None and info.kind == "direct"


def peak_memory() -> int | None:
    """The GPU allocator's peak since ``build`` reset it; None on CPU."""
    if not tf.config.list_physical_devices("GPU"):
        return None
    return tf.config.experimental.get_memory_info("GPU:0")["peak"]


class TfAdapter(Adapter):
    """Standard SGD, TF-Privacy (DP Keras optimizers, vectorized optimizer,
    DP Keras model) and the study's fast clipping, each step one
    ``tf.function`` (``xla``: jit-compiled).

    Phases (``RunConfig.phases``; ``steps`` module docstring has the details),
    each its own ``tf.function`` (``xla`` variants jit-compiled) on the same
    model and batch: standard ``forward``, ``backward`` (tape gradient);
    DP optimizers ``forward``, ``backward`` (the library's per-microbatch
    jacobian), ``clip+noise`` (the optimizer's whole ``_compute_gradients``);
    DP model ``forward``, ``backward+clip`` (its vectorized_map of clipped
    per-example gradients), ``noise`` (+ sum, noise, divide); fastclip
    ``forward``, ``backward+clip`` (clipped sum), ``noise`` (+ noise, divide); then
    ``update`` (``apply_gradients``; DP model: also its metrics forward) is
    the full step minus the last prefix.

    ``devices`` > 1 (standard, fastclip): one MirroredStrategy step over N
    logical CPUs or GPUs, noise drawn once on the all-reduced sum
    (frameworks/tf/data_parallel.py); the TF-Privacy impls raise
    ``Unsupported`` there (the library noises each replica's share).

    Direct-use rows (catalogue ``kind`` "direct": ``direct_tfp_optimizer``,
    ``direct_tfp_dpsequential``) are built by frameworks/tf/direct.py: the
    library's tutorial loop (``compile`` + ``train_on_batch``), timed beside
    the study row it checks; they have no phases and no ``clipped_sum``.
    """

    framework = "tf"
    # What setup put in force for devices > 1 (notes["data_parallel"]).
    data_parallel_setup: dict = {}
    # The last data-parallel build: its model and each replica's variable
    # copies (tests/tf/test_tf_data_parallel.py reads them off a Bench's step).
    data_parallel: DataParallel | None = None

    def setup(self, threads: int, devices: int = 1) -> None:
        if devices > 1:  # logical CPUs / GPUs and their threads (frameworks/tf/data_parallel.py)
            self.data_parallel_setup = setup_devices(threads, devices)
        else:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        # float32 means float32 in every framework (jax/torch adapters agree).
        tf.config.experimental.enable_tensor_float_32_execution(False)

    def versions(self) -> dict[str, str]:
        return {"tf": tf.__version__, "tensorflow-privacy": importlib.metadata.version("tensorflow-privacy")}

    def device(self) -> str:
        gpus = tf.config.list_physical_devices("GPU")
        if not gpus:
            return "cpu"
        return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "gpu")

    def accelerator(self) -> dict:
        gpus = tf.config.list_physical_devices("GPU")
        if not gpus:
            return {"tf32": None}
        build = tf.sysconfig.get_build_info()
        cap = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability")
        return {"tf32": bool(tf.config.experimental.tensor_float_32_execution_enabled()),
                "cuda": build.get("cuda_version"), "cudnn": build.get("cudnn_version"),
                "capability": ".".join(map(str, cap)) if cap else None}

    def build(self, cfg: RunConfig) -> Bench:
        gpu = bool(tf.config.list_physical_devices("GPU"))
        if gpu:
            tf.config.experimental.reset_memory_stats("GPU:0")
        if cfg.devices > 1:
            return self._build_data_parallel(cfg)
        if is_direct(cfg.impl):
            from frameworks.tf.direct import build_direct  # imports this module: lazily
            bench = build_direct(cfg)
            bench.notes["pfor_while_loop_fallbacks"] = 0
            PFOR.notes = bench.notes  # counted when the first train_on_batch traces
            return bench
        spec = get_model(cfg.model)
        x, y = (tf.constant(a) for a in make_batch(spec, cfg.batch_size, cfg.seed))
        t = make_train(cfg.impl, cfg.variant, spec, init_weights(spec, cfg.seed), cfg.batch_size,
                       cfg.microbatch_size, cfg.clip_norm, cfg.noise_multiplier, cfg.learning_rate)
        notes = dict(t.notes)
        if cfg.mode == "dp":
            notes["pfor_while_loop_fallbacks"] = 0
        PFOR.notes = notes  # counts are added when the first step traces
        phases = {}
        if cfg.phases:
            phases = {name: _own_pfor_notes(fn) for name, fn in
                      compile_phases(t, x, y, jit_compile=cfg.variant == "xla").items()}
        noise_draw = None if t.noise_draw is None else tf.function(t.noise_draw, jit_compile=cfg.variant == "xla")
        return Bench(step=compile_step(t, x, y), sync=lambda out: out.numpy(), peak_memory=peak_memory,
                     notes=notes, phases=phases, noise_draw=noise_draw)

    def _build_data_parallel(self, cfg: RunConfig) -> Bench:
        """``cfg.devices`` MirroredStrategy replicas (frameworks/tf/data_parallel.py);
        no phases, no noise_draw (one device only)."""
        spec = get_model(cfg.model)
        x, y = make_batch(spec, cfg.global_batch_size, cfg.seed)
        dp = make_data_parallel(cfg.impl, cfg.variant, spec, init_weights(spec, cfg.seed), x, y, cfg.devices,
                                cfg.clip_norm, cfg.noise_multiplier, cfg.learning_rate)
        self.data_parallel = dp
        notes = dict(dp.notes)
        notes["data_parallel"] = {**self.data_parallel_setup, **notes["data_parallel"]}
        if cfg.mode == "dp":
            notes["pfor_while_loop_fallbacks"] = 0
        PFOR.notes = notes
        return Bench(step=dp.step, sync=lambda out: out.numpy(), peak_memory=peak_memory, notes=notes)

    def forward(self, model: str, weights: Weights, x: np.ndarray) -> np.ndarray:
        with full_float32():
            return build_model(get_model(model), weights)(tf.constant(x), training=False).numpy()

    def clipped_sum(self, impl: str, model: str, weights: Weights, x: np.ndarray, y: np.ndarray,
                    clip_norm: float, microbatch_size: int | None = None, variant: str = "",
                    devices: int = 1) -> dict[str, np.ndarray]:
        """One timed-path step with noise 0 and lr 1: the update is the
        library's mean over its clipping units, times their number is the sum
        (TF-Privacy's own dp_keras_model_test.testClippingNorm also reads the
        clipped gradient off the weights after one SGD step). ``devices`` > 1:
        the data-parallel step on x split in order, its update the mean over
        the global batch."""
        if is_direct(impl):
            raise NotImplementedError(f"tf/{impl} is a direct-use row (frameworks/tf/direct.py): it is timed, "
                                      f"not verified; its study row {IMPLS['tf'][impl].direct_of[0]} is")
        spec = get_model(model)
        if not variant and impl in IMPLS["tf"]:
            variant = IMPLS["tf"][impl].variants[0]
        PFOR.notes = {}
        if devices > 1:
            with full_float32():
                dp = make_data_parallel(impl, variant, spec, weights, x, y, devices, clip_norm, 0.0, 1.0)
                dp.step().numpy()
                after = export_weights(dp.model, spec)
            return {k: (weights[k].astype(np.float64) - after[k]) * len(y) for k in weights}
        units = num_units(impl, len(y), microbatch_size)
        with full_float32():
            t = make_train(impl, variant, spec, weights, len(y), microbatch_size, clip_norm, 0.0, 1.0)
            compile_step(t, tf.constant(x), tf.constant(y))().numpy()
            after = export_weights(t.model, spec)
        return {k: (weights[k].astype(np.float64) - after[k]) * units for k in weights}
