"""Keras (Keras 2, ``tf.keras`` of TF 2.15) models built from the common spec.

Keras' native layouts are the exchange format's: Conv2D kernels are HWIO,
Dense kernels (in, out), and ``Flatten`` on NHWC tensors flattens in (H, W, C)
order, so exchange weights load without any transposition. Layer names are the
spec's (``conv0``.., ``dense0``..). The model starts with an ``Input`` so it is
built (weights exist) at construction: TF-Privacy's ``DPSequential`` decides
in its constructor whether its fast clipping path applies, by looking at the
layers' trainable variables.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from common.reference.exchange import Weights, check_weights
from common.reference.spec import KERNEL, ModelSpec


def spec_layers(spec: ModelSpec) -> list[tf.keras.layers.Layer]:
    """Input, then per spec layer Conv2D(3x3 SAME, bias, ReLU) + MaxPool 2x2 or
    (Flatten +) Dense."""
    out: list[tf.keras.layers.Layer] = [tf.keras.layers.InputLayer(input_shape=spec.input_shape)]
    for layer in spec.layers():
        act = "relu" if layer.relu else None
        if layer.kind == "conv":
            out += [tf.keras.layers.Conv2D(layer.features, KERNEL, padding="same", activation=act, name=layer.name),
                    tf.keras.layers.MaxPool2D(2, name=f"{layer.name}_pool")]
        else:
            if layer.name == "dense0":
                out.append(tf.keras.layers.Flatten(name="flatten"))
            out.append(tf.keras.layers.Dense(layer.features, activation=act, name=layer.name))
    return out


def build_model(spec: ModelSpec, weights: Weights | None = None,
                cls: type[tf.keras.Sequential] = tf.keras.Sequential, **kwargs: Any) -> tf.keras.Sequential:
    """The spec's model as ``cls`` (Sequential or TF-Privacy's DPSequential,
    whose DP arguments go in ``kwargs``), loaded with exchange ``weights``."""
    model = cls(layers=spec_layers(spec), name=spec.name, **kwargs)
    if weights is not None:
        load_weights(model, spec, weights)
    return model


def load_weights(model: tf.keras.Model, spec: ModelSpec, weights: Weights) -> None:
    check_weights(spec, weights)
    for layer in spec.layers():
        model.get_layer(layer.name).set_weights([weights[f"{layer.name}/kernel"], weights[f"{layer.name}/bias"]])


def export_weights(model: tf.keras.Model, spec: ModelSpec) -> Weights:
    out: Weights = {}
    for layer in spec.layers():
        kernel, bias = model.get_layer(layer.name).get_weights()
        out[f"{layer.name}/kernel"], out[f"{layer.name}/bias"] = kernel, bias
    return out


def param_count(model: tf.keras.Model) -> int:
    return int(sum(np.prod(v.shape) for v in model.trainable_variables))


def cross_entropy(y: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Per-example (unreduced) softmax cross-entropy."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
