"""DP-SGD as it is trained, in TensorFlow (issue 28; common/harness/deployed.py,
docs/design.md §8): Poisson-sampled logical batches, cut into physical
batches, clipped sums accumulated, noise drawn once per logical step,
divided by L = qN, one SGD update.

Sampler. TF-Privacy 0.9.0 has no Poisson sampler (its tutorials feed
fixed-size ``tf.data`` batches), so both TF rows draw their logical batches
with the study's (``common.reference.sampling.poisson_indices``, the stream
``Plan(...).logical_batches(k, cfg.seed)`` yields: one
``numpy.random.default_rng(cfg.seed)``). The dataset
(``make_batch(spec, N, seed)``) is put on the device once; each physical
batch is a ``tf.gather`` of it by index inside the step's ``tf.function``.

``tfp/variable``: why not the library's own accumulation. TF-Privacy's large
batch emulation is ``gradient_accumulation_steps`` of ``DPKerasSGDOptimizer``
(optimizers/dp_optimizer_keras.py; the vectorized optimizer has none): a
constructor constant k; every ``_compute_gradients`` call (each physical
batch) runs ``GaussianSumQuery.get_noised_result`` (a noise draw) and
divides by that call's ``num_microbatches``; ``_resource_apply_dense`` adds
grad / k into a ``grad_acc`` slot and applies when ``(iterations + 1) % k
== 0``. So it noises every physical batch (its docstring: effective noise
``noise_multiplier * sqrt(k)``), normalises by the physical batch (times k),
not by L, and takes a fixed count k, where a Poisson logical batch needs
ceil(n / P) physical batches, a different count every step. It cannot run
the row, so this is the nearest honest equivalent built from the library's
own per-example clipping, on the study's fixed reference's path
(``tfp_vectorized``, ``VectorizedDPKerasSGDOptimizer._compute_gradients``
with one example per microbatch): per physical batch of n <= P examples
(the last one short, never padded: nothing here needs a fixed shape), the
library's jacobian of the per-example losses (``steps.microbatch_jacobian``,
as its ``_compute_gradients`` computes it, ``num_microbatches`` = n read at
run time) clipped by the library's ``clip_gradients_vmap`` in
``tf.vectorized_map`` and summed over the examples, inside one
``tf.function`` whose index input has batch dimension None (variable n does
not retrace); added into accumulators. Not the optimizer's
``_compute_gradients`` at noise 0 per physical batch: that would still call
``tf.random.normal`` (stddev 0) on every variable per physical batch and
divide by n (to be multiplied back), work a real run does not need.
Then once per logical step: the sum + N(0, (sigma C)^2) from ``steps.add_noise``
(``tf.random.normal`` per variable, the sampler of every TF DP row), divided
by L (TF-Privacy's order: (sum + noise) / count), and the update of
``tf.keras.optimizers.legacy.SGD`` (the DP optimizers' base class, the
study's update). An empty logical batch runs no physical batch and still
draws its noise.

``fastclip/pad``: each logical batch is ``split_padded`` to physical
batches of exactly P (``PAD`` indices gathered as example 0 and masked:
their clip factor is 0, ``FastClip.clipped_sum(mask=...)``), the study's
fastclip (graph, no XLA) at batch P with 1/L folded into the clip factors,
accumulated; once per logical step + ``add_noise`` scaled by 1/L (the
study's fastclip step's order), the same SGD update. One traced shape.

Counters: physical batches, real and padding examples are counted from the
index arrays each physical step is given; noise draws by an in-graph counter
that ``add_noise``'s one call site increments each time it runs (a Python
counter would count traces); compiles are the ``tf.function``s'
``experimental_get_tracing_count()`` (one each: the optimizer's variables
are made before the first trace). ``tfp/variable`` counts pfor's while_loop
fallbacks in its notes, as the adapter's DP rows do.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import tensorflow as tf
from tensorflow_privacy.privacy.optimizers.dp_optimizer_keras_vectorized import clip_gradients_vmap

from common.harness.deployed import COUNTERS, DeployedBench, DeployedConfig
from common.reference.exchange import init_weights, make_batch
from common.reference.sampling import PAD, poisson_indices, split_padded
from common.reference.spec import get_model
from frameworks.tf.adapter import PFOR
from frameworks.tf.fastclip import FastClip
from frameworks.tf.models import build_model
from frameworks.tf.steps import NOISE_SAMPLER, add_noise, microbatch_jacobian

NOISE_CALL = ("frameworks/tf/deployed.py Deployed.finish: steps.add_noise (tf.random.normal(shape, stddev), "
              "per variable) once per logical step on the accumulated clipped sum, drawn at noise 0 too")
SAMPLER = "dpbench: common.reference.sampling.poisson_indices (TF-Privacy 0.9.0 has no Poisson sampler)"


def split_variable(indices: np.ndarray, physical: int) -> list[np.ndarray]:
    """``indices`` as consecutive physical batches of at most ``physical``
    (the last one short; an empty logical batch is no physical batch)."""
    return [indices[i:i + physical] for i in range(0, indices.size, physical)]


def on_device(a: np.ndarray) -> tf.Tensor:
    """``a`` in the first GPU's memory where there is one (an eager
    ``tf.constant`` from NumPy lives in host memory, and a graph that
    gathers from it on a GPU would copy all of it every call), else the CPU's."""
    device = "/GPU:0" if tf.config.list_logical_devices("GPU") else "/CPU:0"
    with tf.device(device):
        return tf.identity(tf.constant(a))


class Deployed:
    """One deployed TF row, built: the model, the on-device dataset, the
    accumulators and the two ``tf.function``s (``physical``: one physical
    batch's clipped sum into the accumulators; ``finish``: noise once,
    divide, update, reset). Tests drive ``run_physical`` directly."""

    def __init__(self, cfg: DeployedConfig) -> None:
        cfg.validate()
        if cfg.framework != "tf" or (cfg.impl, cfg.strategy) not in (("tfp", "variable"), ("fastclip", "pad")):
            raise ValueError(f"no TF deployed row {cfg.framework}/{cfg.impl}/{cfg.strategy}")
        self.cfg = cfg
        self.spec = get_model(cfg.model)
        self.padded = cfg.strategy == "pad"
        self.x, self.y = (on_device(a) for a in make_batch(self.spec, cfg.dataset_size, cfg.seed))
        self.model = build_model(self.spec, init_weights(self.spec, cfg.seed))
        self.opt = tf.keras.optimizers.legacy.SGD(cfg.learning_rate)
        self.rng = np.random.default_rng(cfg.seed)  # Plan.logical_batches' stream
        self.q = cfg.sampling_rate
        self.logical = float(cfg.logical_batch)
        self.std = cfg.noise_multiplier * cfg.clip_norm
        self.noise_calls = tf.Variable(0, dtype=tf.int64, trainable=False, name="noise_calls")
        self.counts = {k: 0 for k in COUNTERS}
        self.drawn: list[int] = []
        self.last_batch = np.zeros(0, np.int64)  # the last logical batch's indices
        self.last_physical: list[np.ndarray] = []  # and its physical batches
        if self.padded:
            self.fc = FastClip(self.model, cfg.physical_batch, cfg.clip_norm, xla=False)
            self.variables = list(self.fc.variables)
            size: int | None = cfg.physical_batch
            body: Callable[[tf.Tensor], list[tf.Tensor]] = self._fastclip_sum
        else:
            self.variables = list(self.model.trainable_variables)
            size, body = None, self._tfp_sum
        self.acc = [tf.Variable(tf.zeros_like(v), trainable=False) for v in self.variables]
        # The optimizer makes its variables (iterations, hyperparameters) on
        # its first apply_gradients; a tf.function whose first call creates
        # variables is traced twice (once more without creating them), so
        # they are made here and ``finish`` traces once.
        self.opt._create_all_weights(self.variables)  # pylint: disable=protected-access

        @tf.function(input_signature=[tf.TensorSpec([size], tf.int64)])
        def physical(idx: tf.Tensor) -> None:
            for a, s in zip(self.acc, body(idx)):
                a.assign_add(s)

        self.physical_fn = physical
        self.finish = tf.function(self._finish)
        self.notes: dict[str, Any] = {
            "sampler": SAMPLER, "noise_sampler": NOISE_SAMPLER, "noise_call": NOISE_CALL,
            "physical_batch_shape": [size], "divide_by": "L = cfg.logical_batch",
            "update": "tf.keras.optimizers.legacy.SGD.apply_gradients"}
        if self.padded:
            self.notes.update({"clipping": "frameworks/tf/fastclip.py FastClip.clipped_sum(scale=1/L, mask=idx != PAD)",
                               "padding": "common.reference.sampling.split_padded; PAD gathered as example 0, masked",
                               "fastclip_plan": self.fc.notes(), "jit_compile": False})
        else:
            self.notes.update({
                "clipping": "steps.microbatch_jacobian (VectorizedDPKerasSGDOptimizer._compute_gradients' "
                            "tape.jacobian, one example per microbatch) + tf.vectorized_map(tensorflow_privacy "
                            "clip_gradients_vmap) + sum, per physical batch of <= P",
                "gradient_accumulation": "not TF-Privacy's gradient_accumulation_steps: a fixed count, noise "
                                         "and normalisation per physical batch (module docstring)",
                "jit_compile": False, "pfor_while_loop_fallbacks": 0})
            PFOR.notes = self.notes  # pfor's fallbacks, counted when ``physical`` traces (as the adapter's rows)

    def _tfp_sum(self, idx: tf.Tensor) -> list[tf.Tensor]:
        x, y = tf.gather(self.x, idx), tf.gather(self.y, idx)
        jacobian = microbatch_jacobian(self.model, x, y, None)
        clipped = tf.vectorized_map(lambda g: clip_gradients_vmap(g, self.cfg.clip_norm), jacobian)
        return [tf.reduce_sum(g, axis=0) for g in clipped]

    def _fastclip_sum(self, idx: tf.Tensor) -> list[tf.Tensor]:
        safe = tf.maximum(idx, 0)  # PAD (-1) gathers example 0, masked out
        mask = tf.cast(idx != PAD, tf.float32)
        return self.fc.clipped_sum(tf.gather(self.x, safe), tf.gather(self.y, safe), 1.0 / self.logical, mask)

    def _noise(self, grads: list[tf.Tensor], scale: float) -> list[tf.Tensor]:
        """``steps.add_noise``, counted in the graph each time it runs."""
        self.noise_calls.assign_add(1)
        return add_noise(grads, self.std, scale)

    def _finish(self) -> tf.Tensor:
        acc = [a.read_value() for a in self.acc]
        if self.padded:  # 1/L already in the clipped sums (the study's fastclip order)
            grads = self._noise(acc, 1.0 / self.logical)
        else:  # TF-Privacy's order: (sum + noise) / count
            grads = [g / self.logical for g in self._noise(acc, 1.0)]
        self.opt.apply_gradients(zip(grads, self.variables))
        for a in self.acc:
            a.assign(tf.zeros_like(a))
        return self.model.layers[-1].bias.read_value()

    def run_physical(self, idx: np.ndarray) -> None:
        """One physical batch into the accumulators, counted."""
        real = int((idx != PAD).sum())
        self.physical_fn(tf.constant(idx, tf.int64))
        self.counts["physical_steps"] += 1
        self.counts["real_examples"] += real
        self.counts["padded_examples"] += int(idx.size) - real

    def reset(self) -> None:
        """Zero the accumulators (tests that drive ``run_physical`` alone)."""
        for a in self.acc:
            a.assign(tf.zeros_like(a))

    def step(self) -> tf.Tensor:
        """One logical step: sample, its physical batches, noise once, update."""
        idx = poisson_indices(self.cfg.dataset_size, self.q, self.rng, self.cfg.cap)
        self.last_batch = idx
        self.drawn.append(int(idx.size))
        self.last_physical = (split_padded(idx, self.cfg.physical_batch) if self.padded
                              else split_variable(idx, self.cfg.physical_batch))
        for b in self.last_physical:
            self.run_physical(b)
        out = self.finish()
        self.counts["logical_steps"] += 1
        return out

    def counters(self) -> dict[str, int]:
        return {**self.counts, "noise_draws": int(self.noise_calls.numpy()),
                "compiles": self.physical_fn.experimental_get_tracing_count()
                + self.finish.experimental_get_tracing_count()}

    def sizes(self) -> list[int]:
        return list(self.drawn)

    def bench(self) -> DeployedBench:
        return DeployedBench(step=self.step, sync=lambda out: out.numpy(), counters=self.counters,
                             sizes=self.sizes, notes=self.notes)


def build(cfg: DeployedConfig) -> DeployedBench:
    """The deployed row ``cfg`` names (tf/tfp/variable or tf/fastclip/pad)."""
    return Deployed(cfg).bench()
