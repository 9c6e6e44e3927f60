"""Training steps for TensorFlow: standard SGD, the TF-Privacy variants and
the study's own fast clipping (``fastclip``, frameworks/tf/fastclip.py).

Every impl is a ``train(x, y)`` function that runs one full update (gradient,
clip, noise, average, plain SGD without momentum: ``tf.keras.optimizers.legacy
.SGD``, the base class of TF-Privacy's DP Keras optimizers, so standard and DP
rows share the update code). ``compile_step`` wraps it in one ``tf.function``
(``jit_compile`` for the ``xla`` variant) that returns the updated
``dense1/bias``: a real output, computed only once the step's gradient (which
every layer's clipping factor feeds) is done.

What each library step computes (read from the TF-Privacy 0.9.0 source):
- ``DPKerasSGDOptimizer._compute_gradients``: ``tape.jacobian`` of the
  per-microbatch mean losses of one batched forward pass, then a while_loop
  that clips each microbatch's gradient (``GaussianSumQuery``) and sums; add
  noise, divide by ``num_microbatches`` (optimizers/dp_optimizer_keras.py).
- ``VectorizedDPKerasSGDOptimizer._compute_gradients``: the same jacobian,
  clipped in ``tf.vectorized_map``, sum + noise, divide by
  ``num_microbatches`` (optimizers/dp_optimizer_keras_vectorized.py).
  The jacobian is pfor over the loss rows, each backpropagated through the
  whole batch: activation gradients of shape (num_microbatches, B, H, W, C),
  so both optimizers cost O(num_microbatches * B) in time and memory.
- ``DPSequential.train_step`` (``DPModel``'s for a graph): fast clipping
  when every trainable layer is in its ``layer_registry`` (``layer_registry()``:
  the ViT's layers all are): the registry functions' per-example norms in one
  batched pass, then the gradient of the clip-weighted loss, + noise / B
  (fast_gradient_clipping/clip_grads.py); else (a Conv2D or GroupNorm: the
  CNNs, the WRN) per-example grads in ``tf.vectorized_map``, clip, sum +
  noise, divide by the number of examples (keras_models/dp_keras_model.py).
So ``num_units`` (what the mean is over) turns an update into a sum.

One noise sampler: every DP row draws its Gaussian noise with
``tf.random.normal`` (one call per variable, no op seed: the global seed's
stream), TF-Privacy's rows inside the library (``NOISE_CALLS`` says where),
``fastclip`` likewise, so that two TF rows differ in their clipping only;
under ``jit_compile`` (``xla`` variants) XLA compiles that same op for every
row. Each DP row's notes name it (``noise_sampler``, ``noise_call``).

Phases (``Train.phases``, compiled by ``compile_phases``): cumulative
prefixes of the step, each its own ``tf.function`` on the same model and
batch, none updating the model:
- every impl: ``forward``: the batched forward pass and the mean loss;
- ``standard``: ``backward``: + the optimizer's ``_compute_gradients`` (what
  ``minimize`` runs before ``apply_gradients``: ``tape.gradient``);
- DP optimizers: ``backward``: + the per-microbatch gradients, the library's
  own ``tape.jacobian`` of the per-microbatch mean losses, as its
  ``_compute_gradients`` calls it; ``clip+noise``: the optimizer's whole
  ``_compute_gradients`` instead (that jacobian, clip, sum, noise, divide by
  ``num_microbatches``): the difference is clip + sum + noise + divide;
- ``tfp_dpmodel``, vectorized_map path (the CNNs', the WRN's):
  ``backward+clip``: + ``tf.vectorized_map(model._compute_per_example_grads)``
  (per-example forward, gradient and clip, fused by pfor: no honest cut
  between them); ``noise``: + ``_reduce_per_example_grads`` (sum, noise,
  divide by B). Fast-clipping path (the ViT's): ``backward+clip``: +
  ``clip_grads.compute_clipped_gradients_and_outputs`` (the registry's
  norms pass, then the clip-weighted loss's forward and gradient);
  ``noise``: + ``add_aggregate_noise``.
- ``fastclip``: ``forward`` (its functional forward pass and mean loss);
  ``backward+clip``: + the clipped sum (one backward pass to the layers'
  pre-activations, per-example norms, book-keeping sums); ``noise``: + the
  Gaussian noise and the division by B.
The rest of the step (``update``): ``apply_gradients`` (dpmodel's vectorized path: also its
second forward pass for the metrics, loss and metrics). A prefix returns
one scalar that sums each of its output tensors (``tf.function`` prunes
ops whose outputs go nowhere, and XLA would skip them), so each prefix
but ``forward`` carries one extra read of its outputs (for ``backward`` of
a DP optimizer: of the num_microbatches x params jacobian).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import tensorflow as tf
import tensorflow_privacy as tfp
from tensorflow_privacy.privacy.fast_gradient_clipping import clip_grads, common_manip_utils, gradient_clipping_utils
from tensorflow_privacy.privacy.fast_gradient_clipping import layer_registry as tfp_registry
from tensorflow_privacy.privacy.fast_gradient_clipping.registry_functions.layer_normalization import (
    layer_normalization_computation)

from common.harness.adapter import Unsupported
from common.reference import fastclip_plan
from common.reference.exchange import Weights
from common.reference.spec import ModelSpec
from frameworks.tf.fastclip import SUPPORTED_OPS, FastClip
from frameworks.tf.models import build_model, cross_entropy

DP_OPTIMIZERS = {
    "tfp_microbatch": ("DPKerasSGDOptimizer", tfp.DPKerasSGDOptimizer),
    "tfp_microbatch_mean": ("DPKerasSGDOptimizer", tfp.DPKerasSGDOptimizer),
    "tfp_vectorized": ("VectorizedDPKerasSGDOptimizer", tfp.VectorizedDPKerasSGDOptimizer),
}

# The one Gaussian sampler of every TF DP row (module docstring), and where
# each code path calls it (TF-Privacy 0.9.0 source; TF 2.15's
# tf.random_normal_initializer without a seed calls tf.random.normal:
# tensorflow/python/ops/init_ops_v2.py, _RandomGenerator.random_normal).
NOISE_SAMPLER = "tf.random.normal"
NOISE_CALLS = {
    "DPKerasSGDOptimizer": "dp_query/gaussian_query.py GaussianSumQuery.get_noised_result: "
                           "tf.random_normal_initializer(stddev)(shape) -> tf.random.normal, per variable, "
                           "drawn at noise 0 too",
    "VectorizedDPKerasSGDOptimizer": "optimizers/dp_optimizer_keras_vectorized.py _compute_gradients: "
                                     "tf.random.normal(shape, stddev), per variable, drawn at noise 0 too",
    "DPSequential": "keras_models/dp_keras_model.py _reduce_per_example_grads: tf.random.normal(shape, stddev), "
                    "per variable, skipped at noise 0",
    "DPSequential_fast": "fast_gradient_clipping/gradient_clipping_utils.py add_aggregate_noise: "
                         "tf.random.normal(shape, stddev / B) on the clipped mean, per variable, skipped at noise 0",
    "fastclip": "frameworks/tf/steps.py _fastclip: tf.random.normal(shape, stddev), per variable, drawn at noise 0 too",
    "fastclip_data_parallel": "frameworks/tf/data_parallel.py step: steps.add_noise (tf.random.normal(shape, stddev), "
                              "per variable) once per step on the all-reduced sum, drawn at noise 0 too",
}


def noise_notes(path: str) -> dict[str, str]:
    """``noise_sampler`` and ``noise_call`` notes of a DP row whose noise is
    drawn by ``path`` (a key of :data:`NOISE_CALLS`)."""
    return {"noise_sampler": NOISE_SAMPLER, "noise_call": NOISE_CALLS[path]}


@dataclass
class Train:
    """One impl, ready to step: ``train(x, y)`` updates ``model`` in place.

    ``jit_compile``: what ``compile_step`` passes to ``tf.function`` (the DP
    model compiles its own train_step). ``notes``: what the record should say
    about the path.
    """

    model: tf.keras.Model
    train: Callable[[tf.Tensor, tf.Tensor], Any]
    jit_compile: bool
    notes: dict[str, Any] = field(default_factory=dict)
    # name -> (x, y) -> scalar: the step's cumulative prefixes (module docstring)
    phases: dict[str, Callable[[tf.Tensor, tf.Tensor], tf.Tensor]] = field(default_factory=dict)
    # () -> scalar: the step's noise alone, drawn and added to zeros (Bench.noise_draw)
    noise_draw: Callable[[], tf.Tensor] | None = None


def _minimize(model: tf.keras.Model, opt: tf.keras.optimizers.legacy.Optimizer,
              loss_fn: Callable[[tf.Tensor], tf.Tensor]) -> Callable[[tf.Tensor, tf.Tensor], Any]:
    """The documented optimizer use: loss under a tape, ``opt.minimize(loss,
    vars, tape=tape)`` (a DP optimizer's ``_compute_gradients`` then clips)."""
    def train(x: tf.Tensor, y: tf.Tensor) -> None:
        with tf.GradientTape() as tape:
            loss = loss_fn(cross_entropy(y, model(x, training=True)))
        opt.minimize(loss, model.trainable_variables, tape=tape)
    return train


def num_units(impl: str, batch_size: int, microbatch_size: int | None) -> int:
    """How many clipped (standard: per-example) gradients one update averages."""
    return batch_size // (microbatch_size or 1) if impl in DP_OPTIMIZERS else batch_size


def make_train(impl: str, variant: str, spec: ModelSpec, weights: Weights, batch_size: int,
               microbatch_size: int | None, clip_norm: float, noise_multiplier: float,
               learning_rate: float) -> Train:
    """Model with ``weights`` and its one-step update for ``impl``."""
    xla = variant == "xla"
    dp = dict(l2_norm_clip=clip_norm, noise_multiplier=noise_multiplier)
    if impl == "standard":
        model = build_model(spec, weights)
        opt = tf.keras.optimizers.legacy.SGD(learning_rate)
        return Train(model, _minimize(model, opt, tf.reduce_mean), xla, {"jit_compile": xla},
                     _optimizer_phases(model, opt, tf.reduce_mean, None))
    if impl in DP_OPTIMIZERS:
        n = num_units(impl, batch_size, microbatch_size)
        name, cls = DP_OPTIMIZERS[impl]
        model = build_model(spec, weights)
        # The documented loss is the vector of per-example losses: the
        # optimizer reshapes it to (num_microbatches, -1) and means each row.
        opt = cls(num_microbatches=n, learning_rate=learning_rate, **dp)
        return Train(model, _minimize(model, opt, tf.identity), xla,
                     {"optimizer": name, "num_microbatches": n, "jit_compile": xla, **noise_notes(name)},
                     _optimizer_phases(model, opt, tf.identity, n))
    if impl == "tfp_dpmodel":
        return _dp_model(spec, weights, batch_size, xla, dp, learning_rate)
    if impl == "fastclip":
        if gap := fastclip_plan.model_gap(spec, SUPPORTED_OPS):
            raise Unsupported(gap)
        return _fastclip(spec, weights, batch_size, xla, clip_norm, noise_multiplier, learning_rate)
    raise ValueError(f"unknown tf impl {impl!r}")


def dp_model_class(spec: ModelSpec) -> type[tf.keras.Model]:
    """TF-Privacy's DP Keras model for ``spec``: ``DPSequential`` for a chain;
    for a graph (WRN's residual adds) ``DPModel``, the same
    ``make_dp_model_class`` applied to the functional ``tf.keras.Model``
    (keras_models/dp_keras_model.py: ``DPModel = make_dp_model_class(tf.keras.Model)``),
    so the row is the library's own DP model either way."""
    return tfp.DPSequential if spec.is_chain else tfp.DPModel


def layer_registry() -> tfp_registry.LayerRegistry:
    """TF-Privacy's fast-clipping registry holding every registry function
    the library ships for a layer the study's models use, built as its own
    tests build a non-default one (registry_functions/layer_normalization_test.py:
    ``LayerRegistry.insert(layer class, function)``): the default
    (``make_default_layer_registry``: Dense, Embedding) plus
    LayerNormalization. The library's other functions are for layers no
    model here has: EinsumDense and MultiHeadAttention (the ViT's attention
    is plain Dense layers, docs/design.md §2) and tf-models-official's
    OnDeviceEmbedding / PositionEmbedding (not installed). Lookup is by exact
    class, so the models use stock Dense, Embedding, LayerNormalization.

    Which model takes the fast path: the ViT (every trainable layer is one
    of the three; its parameter-free layers need no function); the CNNs and
    the WRN not (Conv2D, and WRN's GroupNorm, have no function in the
    library: DPModel falls back to its vectorized per-example path, all or
    nothing)."""
    registry = tfp_registry.make_default_layer_registry()
    registry.insert(tf.keras.layers.LayerNormalization, layer_normalization_computation)
    return registry


REGISTERED_LAYERS = "Dense, Embedding (make_default_layer_registry) + LayerNormalization"


def _dp_model(spec: ModelSpec, weights: Weights, batch_size: int, xla: bool, dp: dict[str, float],
              learning_rate: float) -> Train:
    """TF-Privacy's DPSequential / DPModel with :func:`layer_registry`,
    ``use_xla`` per variant: ``xla`` (the library's default) wraps its
    ``train_step`` in ``tf.function(experimental_compile=True)`` in the
    constructor, ``graph`` leaves it a plain method, traced into
    ``compile_step``'s ``tf.function`` (so ``Train.jit_compile`` is False for
    both: the model compiles its own step or nobody does).

    The model decides its own path in its constructor
    (``_enable_fast_peg_computation``: every trainable layer registered and a
    functional graph); we record that decision, not a guess.
    """
    registry = layer_registry()
    model = build_model(spec, weights, dp_model_class(spec), use_xla=xla, layer_registry=registry, **dp)
    model.compile(optimizer=tf.keras.optimizers.legacy.SGD(learning_rate),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    # What train_step makes on its first call (a Keras metric: variables),
    # made here so that a phase traced before the step finds it.
    model._make_clipping_loss()  # pylint: disable=protected-access
    fast = bool(model._enable_fast_peg_computation)  # pylint: disable=protected-access
    notes = {
        "tfp_dpmodel_path": "fast_gradient_clipping" if fast else "vectorized_map_per_example",
        "layer_registry": REGISTERED_LAYERS,
        "unregistered_trainable_layers": [l.name for l in model.layers
                                          if l.trainable_variables and not registry.is_elem(l)],
        "num_microbatches": batch_size,
        "use_xla": xla,
        **noise_notes("DPSequential_fast" if fast else "DPSequential"),
    }
    return Train(model, lambda x, y: model.train_step((x, y)), False, notes, _dp_model_phases(model))


def add_noise(grads: list[tf.Tensor], std: float, scale: float | tf.Tensor) -> list[tf.Tensor]:
    """``grads`` + ``scale`` * N(0, std^2) per variable from ``tf.random.normal``
    (fastclip's one draw per step; the data-parallel step calls it once, on
    the all-reduced sum: frameworks/tf/data_parallel.py)."""
    return [g + tf.random.normal(tf.shape(g), stddev=std * scale) for g in grads]


def _fastclip(spec: ModelSpec, weights: Weights, batch_size: int, xla: bool, clip_norm: float,
              noise_multiplier: float, learning_rate: float) -> Train:
    """The study's own fast clipping (frameworks/tf/fastclip.py): clipped sum,
    + N(0, (sigma C)^2) per variable from ``tf.random.normal``, the sampler
    of every TF-Privacy row (drawn at sigma 0 too, so the parity runs take
    the timed path), divided by B, then the same legacy SGD update as
    standard. Notes: the per-layer plan (method, chunk, unfold)."""
    model = build_model(spec, weights)
    fc = FastClip(model, batch_size, clip_norm, xla=xla)
    opt = tf.keras.optimizers.legacy.SGD(learning_rate)
    std = noise_multiplier * clip_norm

    def noised(x: tf.Tensor, y: tf.Tensor) -> list[tf.Tensor]:
        # (sum + noise) / B, with 1/B folded into the clip factors and the
        # noise's scale: two fewer passes over the parameters.
        inv_b = 1.0 / tf.cast(tf.shape(y)[0], tf.float32)
        return add_noise(fc.clipped_sum(x, y, inv_b), std, inv_b)

    def noise_draw() -> tf.Tensor:  # added to the variables' values (no zeros to fill), read by one sum
        return _total(add_noise([v.read_value() for v in fc.variables], std, tf.constant(1.0 / batch_size)))

    def train(x: tf.Tensor, y: tf.Tensor) -> None:
        opt.apply_gradients(zip(noised(x, y), fc.variables))

    phases = {"forward": fc.mean_loss, "backward+clip": lambda x, y: _total(fc.clipped_sum(x, y)),
              "noise": lambda x, y: _total(noised(x, y))}
    notes = {"jit_compile": xla, "fastclip_plan": fc.notes(), **noise_notes("fastclip")}
    return Train(model, train, xla, notes, phases, noise_draw if std > 0 else None)


def compile_step(t: Train, x: tf.Tensor, y: tf.Tensor) -> Callable[[], tf.Tensor]:
    """One ``tf.function`` step on the fixed batch, returning the new bias of
    the output layer (``dense1``; WRN's ``head``)."""
    bias = t.model.layers[-1].bias

    @tf.function(jit_compile=t.jit_compile)
    def step() -> tf.Tensor:
        t.train(x, y)
        return bias.read_value()

    return step


def _total(tensors: Any) -> tf.Tensor:
    """One scalar that reads every element of every tensor in ``tensors``."""
    return tf.add_n([tf.reduce_sum(t) for t in tf.nest.flatten(tensors)])


def _forward(model: tf.keras.Model) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    def forward(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        return tf.reduce_mean(cross_entropy(y, model(x, training=True)))
    return forward


def microbatch_jacobian(model: tf.keras.Model, x: tf.Tensor, y: tf.Tensor,
                        num_microbatches: int | None) -> list[tf.Tensor]:
    """The per-microbatch gradients as DPKerasSGDOptimizer /
    VectorizedDPKerasSGDOptimizer._compute_gradients compute them: ``tape.jacobian``
    of the per-microbatch mean losses of one batched forward pass, one
    (num_microbatches, *var.shape) tensor per trainable variable
    (``num_microbatches`` None: one per example, the batch read at run time,
    as the library's default)."""
    with tf.GradientTape() as tape:
        loss = cross_entropy(y, model(x, training=True))
        n = tf.shape(loss)[0] if num_microbatches is None else num_microbatches
        microbatch_losses = tf.reduce_mean(tf.reshape(loss, [n, -1]), axis=1)
    return tape.jacobian(microbatch_losses, model.trainable_variables,
                         unconnected_gradients=tf.UnconnectedGradients.ZERO)


def _optimizer_phases(model: tf.keras.Model, opt: tf.keras.optimizers.legacy.Optimizer,
                      loss_fn: Callable[[tf.Tensor], tf.Tensor], num_microbatches: int | None
                      ) -> dict[str, Callable[[tf.Tensor, tf.Tensor], tf.Tensor]]:
    """Phases of ``_minimize`` (standard: ``num_microbatches`` None)."""
    def gradients(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = loss_fn(cross_entropy(y, model(x, training=True)))
        # A DP optimizer stores its (unchanged) query state on itself while
        # tracing: keep the one the timed step was traced with.
        saved = opt.__dict__.get("_global_state")
        grads_and_vars = opt._compute_gradients(loss, model.trainable_variables, tape=tape)  # pylint: disable=protected-access
        if saved is not None:
            opt._global_state = saved  # pylint: disable=protected-access
        return _total([g for g, _ in grads_and_vars])

    if num_microbatches is None:
        return {"forward": _forward(model), "backward": gradients}

    def jacobian(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        return _total(microbatch_jacobian(model, x, y, num_microbatches))

    return {"forward": _forward(model), "backward": jacobian, "clip+noise": gradients}


def _dp_model_phases(model: tf.keras.Model) -> dict[str, Callable[[tf.Tensor, tf.Tensor], tf.Tensor]]:
    """Phases of ``DPSequential.train_step`` on the path the model took: the
    same names on both, each prefix the library's own calls as train_step
    makes them (keras_models/dp_keras_model.py)."""
    # pylint: disable=protected-access
    if model._enable_fast_peg_computation:
        def clipped(x: tf.Tensor, y: tf.Tensor) -> list[tf.Tensor]:
            # The registry functions' per-example norms, then the gradient of the clip-weighted loss.
            grads, _, _ = clip_grads.compute_clipped_gradients_and_outputs(
                input_model=model, x_batch=x, y_batch=y, l2_norm_clip=model._l2_norm_clip,
                layer_registry=model._layer_registry, num_microbatches=model._num_microbatches,
                clipping_loss=model._clipping_loss)
            return grads

        def noised_fast(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
            grads = clipped(x, y)
            if model._noise_multiplier > 0:
                grads = gradient_clipping_utils.add_aggregate_noise(
                    grads, model._num_microbatches or tf.shape(y)[0], model._l2_norm_clip,
                    model._noise_multiplier, loss_model=model)
            return _total(grads)

        return {"forward": _forward(model), "backward+clip": lambda x, y: _total(clipped(x, y)),
                "noise": noised_fast}

    def per_example(x: tf.Tensor, y: tf.Tensor) -> Any:
        n = model._num_microbatches or tf.shape(y)[0]
        data = tf.nest.map_structure(lambda z: common_manip_utils.maybe_add_microbatch_axis(z, n), (x, y))
        return tf.vectorized_map(model._compute_per_example_grads, data)

    def noised(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        return _total(tf.nest.map_structure(model._reduce_per_example_grads, per_example(x, y)))

    return {"forward": _forward(model), "backward+clip": lambda x, y: _total(per_example(x, y)), "noise": noised}


def compile_phases(t: Train, x: tf.Tensor, y: tf.Tensor, jit_compile: bool) -> dict[str, Callable[[], tf.Tensor]]:
    """Each of ``t.phases`` as one ``tf.function`` on the fixed batch."""
    return {name: tf.function(lambda fn=fn: fn(x, y), jit_compile=jit_compile) for name, fn in t.phases.items()}


class PforFallbackCounter(logging.Filter):
    """Counts (and keeps off the console) pfor's while_loop fallbacks.

    When TF vectorizes per-example gradients (``tape.jacobian``,
    ``tf.vectorized_map``) an op without a vectorized rule for its inputs runs
    as a while_loop over examples, and pfor says so: "Using a while_loop for
    converting <Op> ..." (debug level) or "<Op> uses a while_loop. Fix that!"
    (warning, e.g. Conv2DBackpropFilter when each example has its own input:
    tensorflow/python/ops/parallel_for/pfor.py). Those are what make a
    vectorized path slow, so they go into ``notes`` (the current Bench's) as
    ``pfor_while_loop_fallbacks`` (messages seen while tracing) and
    ``pfor_fallback_ops``. Installed on the ``tensorflow`` logger at DEBUG;
    other records below the logger's previous level are dropped, so the
    console shows what it showed before, minus these.
    """

    PATTERN = re.compile(r"Using a while_loop for converting (\w+)|(\w+) uses a while_loop")

    def __init__(self) -> None:
        super().__init__()
        self.logger = logging.getLogger("tensorflow")
        self.level = self.logger.getEffectiveLevel()
        self.notes: dict[str, Any] = {}

    def install(self) -> None:
        if self not in self.logger.filters:
            self.logger.addFilter(self)
            self.logger.setLevel(logging.DEBUG)

    def filter(self, record: logging.LogRecord) -> bool:
        match = self.PATTERN.match(record.getMessage())
        if match is None:
            return record.levelno >= self.level
        op = match.group(1) or match.group(2)
        self.notes["pfor_while_loop_fallbacks"] = self.notes.get("pfor_while_loop_fallbacks", 0) + 1
        ops = self.notes.setdefault("pfor_fallback_ops", [])
        if op not in ops:
            ops.append(op)
        return False
