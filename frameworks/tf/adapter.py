"""The TensorFlow side of the seam (common.adapter.Adapter)."""
from __future__ import annotations

import contextlib
import importlib.metadata
from typing import Iterator

import numpy as np
import tensorflow as tf

from common.adapter import Adapter, Bench
from common.config import IMPLS, RunConfig
from common.exchange import Weights, init_weights, make_batch
from common.spec import get_model
from frameworks.tf.models import build_model, export_weights
from frameworks.tf.steps import PforFallbackCounter, compile_step, make_train, num_units

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


class TfAdapter(Adapter):
    framework = "tf"

    def setup(self, threads: int) -> None:
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

    def build(self, cfg: RunConfig) -> Bench:
        spec = get_model(cfg.model)
        gpu = bool(tf.config.list_physical_devices("GPU"))
        if gpu:
            tf.config.experimental.reset_memory_stats("GPU:0")
        x, y = (tf.constant(a) for a in make_batch(spec, cfg.batch_size, cfg.seed))
        t = make_train(cfg.impl, cfg.variant, spec, init_weights(spec, cfg.seed), cfg.batch_size,
                       cfg.microbatch_size, cfg.clip_norm, cfg.noise_multiplier, cfg.learning_rate)
        notes = dict(t.notes)
        if cfg.mode == "dp":
            notes["pfor_while_loop_fallbacks"] = 0
        PFOR.notes = notes  # counts are added when the first step traces
        return Bench(step=compile_step(t, x, y), sync=lambda out: out.numpy(),
                     peak_memory=lambda: tf.config.experimental.get_memory_info("GPU:0")["peak"] if gpu else None,
                     notes=notes)

    def forward(self, model: str, weights: Weights, x: np.ndarray) -> np.ndarray:
        with full_float32():
            return build_model(get_model(model), weights)(tf.constant(x), training=False).numpy()

    def clipped_sum(self, impl: str, model: str, weights: Weights, x: np.ndarray, y: np.ndarray,
                    clip_norm: float, microbatch_size: int | None = None, variant: str = "") -> dict[str, np.ndarray]:
        """One timed-path step with noise 0 and lr 1: the update is the
        library's mean over its clipping units, times their number is the sum
        (TF-Privacy's own dp_keras_model_test.testClippingNorm also reads the
        clipped gradient off the weights after one SGD step)."""
        spec = get_model(model)
        if not variant and impl in IMPLS["tf"]:
            variant = IMPLS["tf"][impl].variants[0]
        units = num_units(impl, len(y), microbatch_size)
        PFOR.notes = {}
        with full_float32():
            t = make_train(impl, variant, spec, weights, len(y), microbatch_size, clip_norm, 0.0, 1.0)
            compile_step(t, tf.constant(x), tf.constant(y))().numpy()
            after = export_weights(t.model, spec)
        return {k: (weights[k].astype(np.float64) - after[k]) * units for k in weights}
