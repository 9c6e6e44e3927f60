"""Direct use of TF-Privacy: the study rows ``tfp_microbatch`` (graph, one
example per microbatch) and ``tfp_dpmodel`` (xla: DPSequential's default) written the way
TF-Privacy's README and classification tutorial write a training loop, with
nothing of the harness in them.

``direct_tfp_optimizer`` (the tutorial, ``DPKerasSGDOptimizer``)::

    optimizer = tfp.DPKerasSGDOptimizer(l2_norm_clip=C, noise_multiplier=sigma,
                                        num_microbatches=B, learning_rate=lr)
    loss = tf.keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction=tf.losses.Reduction.NONE)
    model.compile(optimizer=optimizer, loss=loss)
    model.train_on_batch(x, y)

``direct_tfp_dpsequential`` (``DPSequential``'s docstring: a standard
optimizer and a standard reduced loss)::

    model = tfp.DPSequential(l2_norm_clip=C, noise_multiplier=sigma, layers=[...])
    model.compile(optimizer=tf.keras.optimizers.SGD(learning_rate=lr),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.train_on_batch(x, y)

Everything else is left at its default: Keras picks the step's compilation
(``compile(jit_compile=None)``: ``Model.make_train_function`` wraps
``train_step`` in a plain ``tf.function``, no XLA; the notes record
``model.jit_compile``), ``tf.keras.optimizers.SGD`` is Keras 2.15's new
optimizer (it jit-compiles its own update only where a GPU is present:
keras/src/optimizers/optimizer.py; the notes record its ``jit_compile``),
DPSequential gets no ``layer_registry`` (the study row passes
``steps.layer_registry()``; neither registers Conv2D, so on the CNNs both
take the same vectorized_map path; on a ViT the study row takes the fast
path and this one, without a registry, the vectorized one: recorded in the
notes), no metrics. DPSequential's own default
``use_xla=True`` is kept, so the row it checks is the study's ``xla`` variant
(common/harness/config.py ``direct_of``); the study's ``graph`` variant
(``use_xla=False``) is the one a user who sets that option gets.

Same model (frameworks/tf/models.py), initial weights
(``common.reference.exchange.init_weights(spec, cfg.seed)``) and fixed batch
(``make_batch(spec, B, cfg.seed)``, on the device as constant tensors, given
to every ``train_on_batch`` call as the study's step reuses its batch) as the
study rows; noise from ``tf.random.normal`` inside the library, as theirs.
``train_on_batch`` also does what the study's step does not: per call it
wraps the batch in a one-element ``tf.data`` iterator
(``data_adapter.single_batch_iterator``) and converts the logs to Python
(keras/src/engine/training.py ``train_on_batch``); that is the documented
cost of the documented loop.
"""
from __future__ import annotations

import inspect

from dataclasses import dataclass
from typing import Any, Callable

import tensorflow as tf
import tensorflow_privacy as tfp

from common.harness.adapter import Bench
from common.harness.config import IMPLS, RunConfig
from common.reference.exchange import init_weights, make_batch
from common.reference.spec import get_model
from frameworks.tf.adapter import peak_memory
from frameworks.tf.models import build_model
from frameworks.tf.steps import dp_model_class, noise_notes

DIRECT_IMPLS = ("direct_tfp_optimizer", "direct_tfp_dpsequential")


@dataclass
class DirectLoop:
    """One direct-use loop: ``step()`` is one ``model.train_on_batch(x, y)``."""

    model: tf.keras.Model
    step: Callable[[], Any]
    notes: dict[str, Any]


def direct_loop(cfg: RunConfig) -> DirectLoop:
    """The direct-use loop for ``cfg`` (one of :data:`DIRECT_IMPLS`)."""
    if cfg.impl not in DIRECT_IMPLS:
        raise NotImplementedError(f"tf direct impl {cfg.impl!r} is not implemented; "
                                  f"available: {', '.join(DIRECT_IMPLS)}")
    study_impl, variant, microbatch_size = IMPLS["tf"][cfg.impl].direct_of
    spec = get_model(cfg.model)
    weights = init_weights(spec, cfg.seed)
    xn, yn = make_batch(spec, cfg.batch_size, cfg.seed)
    x, y = tf.constant(xn), tf.constant(yn)
    notes: dict[str, Any] = {"direct_of": [study_impl, variant, microbatch_size],
                             "train_function": "Model.train_on_batch"}

    if cfg.impl == "direct_tfp_optimizer":
        num_microbatches = cfg.batch_size // (microbatch_size or 1)
        model = build_model(spec, weights)
        optimizer = tfp.DPKerasSGDOptimizer(
            l2_norm_clip=cfg.clip_norm,
            noise_multiplier=cfg.noise_multiplier,
            num_microbatches=num_microbatches,
            learning_rate=cfg.learning_rate,
        )
        loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=tf.losses.Reduction.NONE)
        model.compile(optimizer=optimizer, loss=loss)
        notes.update(optimizer="DPKerasSGDOptimizer", num_microbatches=num_microbatches,
                     loss_reduction="none", **noise_notes("DPKerasSGDOptimizer"))
    else:
        model = build_model(spec, weights, dp_model_class(spec), l2_norm_clip=cfg.clip_norm,
                            noise_multiplier=cfg.noise_multiplier)  # use_xla: the library's default
        use_xla = inspect.signature(tfp.DPSequential.__init__).parameters["use_xla"].default
        optimizer = tf.keras.optimizers.SGD(learning_rate=cfg.learning_rate)
        model.compile(optimizer=optimizer, loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        fast = bool(model._enable_fast_peg_computation)  # pylint: disable=protected-access
        notes.update(optimizer=f"{type(optimizer).__module__}.{type(optimizer).__name__}",
                     optimizer_jit_compile=bool(optimizer.jit_compile), use_xla=use_xla, layer_registry=None,
                     tfp_dpmodel_path="fast_gradient_clipping" if fast else "vectorized_map_per_example",
                     num_microbatches=cfg.batch_size, **noise_notes("DPSequential"))
    # What Keras chose for the step: compile(jit_compile=None) leaves it None
    # (no XLA); run_eagerly False: train_on_batch runs one tf.function.
    notes.update(keras_jit_compile=model.jit_compile, keras_run_eagerly=bool(model.run_eagerly))

    def step() -> float:
        return model.train_on_batch(x, y)

    return DirectLoop(model, step, notes)


def build_direct(cfg: RunConfig) -> Bench:
    """The direct-use row for ``cfg``: ``step()`` is one ``train_on_batch``
    call and returns its loss."""
    loop = direct_loop(cfg)
    # train_on_batch returns the loss as a Python float, converted from the
    # step's output tensors (tf_utils.sync_to_numpy_or_python_type) after the
    # whole step (gradient, clip, noise, update, loss metric) has run: the
    # value is already synchronised, so sync is the identity.
    return Bench(step=loop.step, sync=lambda out: out, peak_memory=peak_memory, notes=loop.notes)
