"""Keras (Keras 2, ``tf.keras`` of TF 2.15) models built from the common spec.

Keras' native layouts are the exchange format's: Conv2D kernels are HWIO,
Dense kernels (in, out), Embedding tables (rows, features), and ``Flatten``
on NHWC tensors flattens in (H, W, C) order, so exchange weights load without
any transposition. Layer names are the spec's nodes' (``conv0``..,
``dense0``.., ``s1b0_gn0``.., ``b0_q``..); a GroupNorm's or LayerNorm's
gamma/beta are the exchange ``scale``/``bias`` (the GroupNorm layer is
:class:`CenteredGroupNormalization`, Keras' own in the centred form; its
docstring says why). A chain spec is a ``Sequential``, a graph (WRN, the
ViTs) a functional ``Model``. The ViT's weighted layers are stock Dense,
Embedding and LayerNormalization (TF-Privacy's fast-clipping registry matches
exact classes), its other ops the parameter-free layers of
frameworks/tf/vit_layers.py. The model starts with an ``Input`` so it is
built (weights exist) at construction: TF-Privacy's ``DPSequential`` decides
in its constructor whether its fast clipping path applies, by looking at the
layers' trainable variables.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from common.reference.exchange import Weights, check_weights
from common.reference.spec import GN_EPS, INPUT, LN_EPS, ModelSpec, Node
from frameworks.tf.vit_layers import EmbedIndices, HeadAttention, Patches, Token


class CenteredGroupNormalization(tf.keras.layers.GroupNormalization):
    """Keras' GroupNormalization, normalising in the centred form
    ``(x - mean) * rsqrt(var + eps) * gamma + beta`` (flax's and PyTorch's).

    Why: Keras normalises with ``tf.nn.batch_normalization``, which computes
    ``x * inv + (beta - mean * inv)``; on a 2-core AVX2 EPYC its float32
    gradient on the wrn16_4 parity case was 0.99e-2 relative off the float64
    reference (float64 Keras: 4e-15): its rounding put one ReLU input 1.8e-7
    below zero on the other side. The centred form's was 1.0e-6 (JAX 5e-6,
    PyTorch 3e-5 on the same case). On an AVX-512 EPYC the stock form does not
    flip that near-tie (3.7e-6): a rounding accident either form can meet, not
    a worse form (tests/tf/test_tf_wrn.py). Kept: it is the other frameworks'
    formula. Same weights (gamma, beta); no masks (the study has none).
    """

    def _apply_normalization(self, *, reshaped_inputs: tf.Tensor, reshaped_mask: tf.Tensor,
                             input_shape: tf.Tensor) -> tf.Tensor:
        axes = list(range(1, reshaped_inputs.shape.rank))
        axes.pop(self.axis - 1)  # the channels-in-group axis is reduced, the groups axis kept, as Keras does
        mean, variance = tf.nn.moments(reshaped_inputs, axes, keepdims=True)
        gamma, beta = self._get_reshaped_weights(input_shape)
        return (reshaped_inputs - mean) * tf.math.rsqrt(variance + self.epsilon) * gamma + beta


def _fused_relu(spec: ModelSpec, node: Node) -> bool:
    """A conv or dense whose only consumer is a ReLU takes it as its
    ``activation`` (the chain CNNs' Keras layers, as before the spec was a graph)."""
    return node.op in ("conv", "dense") and [c.op for c in spec.consumers(node.name)] == ["relu"]


def _node_layers(spec: ModelSpec, node: Node) -> list[tf.keras.layers.Layer]:
    """The Keras layers of one node, applied in order (none for a ReLU fused
    into its producer; a node of several inputs is one layer called on their
    list); an op without a layer here raises. A conv with other than SAME-at-stride-1
    padding pads explicitly (``<name>_pad``) and convolves VALID: Keras' SAME
    at stride 2 would pad (0, 1), the spec pads both sides."""
    if node.op == "conv":
        act = "relu" if _fused_relu(spec, node) else None
        if node.stride == 1 and node.padding == node.kernel // 2:
            return [tf.keras.layers.Conv2D(node.features, node.kernel, padding="same", use_bias=node.bias,
                                           activation=act, name=node.name)]
        pad = [tf.keras.layers.ZeroPadding2D(node.padding, name=f"{node.name}_pad")] if node.padding else []
        return pad + [tf.keras.layers.Conv2D(node.features, node.kernel, strides=node.stride, padding="valid",
                                             use_bias=node.bias, activation=act, name=node.name)]
    if node.op == "dense":
        act = "relu" if _fused_relu(spec, node) else None
        return [tf.keras.layers.Dense(node.features, activation=act, use_bias=node.bias, name=node.name)]
    if node.op == "relu":
        src = spec.node(node.inputs[0]) if node.inputs[0] != INPUT else None
        return [] if src is not None and _fused_relu(spec, src) else [tf.keras.layers.ReLU(name=node.name)]
    if node.op == "embed":  # (B, rows) indices from the input's batch size, then the table
        return [EmbedIndices(node.rows, name=f"{node.name}_ids"),
                tf.keras.layers.Embedding(node.rows, node.features, name=node.name)]
    make = {"gn": lambda: CenteredGroupNormalization(node.groups, epsilon=GN_EPS, name=node.name),
            "maxpool": lambda: tf.keras.layers.MaxPool2D(2, name=node.name),
            "avgpool": lambda: tf.keras.layers.AveragePooling2D(2, name=node.name),
            "gap": lambda: tf.keras.layers.GlobalAveragePooling2D(name=node.name),
            "flatten": lambda: tf.keras.layers.Flatten(name=node.name),
            "add": lambda: tf.keras.layers.Add(name=node.name),
            "patches": lambda: Patches(node.kernel, name=node.name),
            "concat": lambda: tf.keras.layers.Concatenate(axis=1, name=node.name),
            # Stock LayerNormalization (its class is what TF-Privacy's registry
            # matches); Keras' default epsilon is 1e-3, the spec's is passed.
            "layernorm": lambda: tf.keras.layers.LayerNormalization(epsilon=LN_EPS, name=node.name),
            "attention": lambda: HeadAttention(node.groups, name=node.name),
            # Keras' gelu defaults to approximate=False: the exact erf form.
            "gelu": lambda: tf.keras.layers.Activation(tf.keras.activations.gelu, name=node.name),
            "token": lambda: Token(name=node.name)}
    if node.op not in make:
        raise ValueError(f"{node.name}: the Keras builder has no layer for op {node.op!r}")
    return [make[node.op]()]


def spec_layers(spec: ModelSpec) -> list[tf.keras.layers.Layer]:
    """A chain spec as Sequential layers: Input, then per node its layers (the
    chain CNNs: Conv2D(3x3 SAME, bias, ReLU) + MaxPool 2x2, Flatten, Dense)."""
    if not spec.is_chain:
        raise ValueError(f"{spec.name} is a graph, not a chain: build it with build_model")
    out: list[tf.keras.layers.Layer] = [tf.keras.layers.InputLayer(input_shape=spec.input_shape)]
    for node in spec.nodes:
        out += _node_layers(spec, node)
    return out


def _graph(spec: ModelSpec) -> tuple[tf.Tensor, tf.Tensor]:
    """The spec's graph as Keras functional tensors: (input, logits)."""
    inp = tf.keras.Input(shape=spec.input_shape)
    vals = {INPUT: inp}
    for node in spec.nodes:
        ins = [vals[i] for i in node.inputs]
        x = ins if len(ins) > 1 else ins[0]  # add, concat, attention take the list
        for layer in _node_layers(spec, node):
            x = layer(x)
        vals[node.name] = x
    return inp, vals[spec.nodes[-1].name]


def build_model(spec: ModelSpec, weights: Weights | None = None, cls: type[tf.keras.Model] | None = None,
                **kwargs: Any) -> tf.keras.Model:
    """The spec's model, loaded with exchange ``weights``: a chain as ``cls``
    (default Sequential; TF-Privacy's DPSequential), a graph as a functional
    ``cls`` (default Model; TF-Privacy's DPModel) on ``Input`` -> logits. DP
    arguments go in ``kwargs``."""
    if spec.is_chain:
        model = (cls or tf.keras.Sequential)(layers=spec_layers(spec), name=spec.name, **kwargs)
    else:
        inp, out = _graph(spec)
        model = (cls or tf.keras.Model)(inputs=inp, outputs=out, name=spec.name, **kwargs)
    if weights is not None:
        load_weights(model, spec, weights)
    return model


def _leaves(spec: ModelSpec, node: Node) -> list[str]:
    """Exchange keys of a node's weights, in Keras' ``get_weights`` order
    (Conv2D/Dense: kernel, bias; GroupNormalization: gamma, beta)."""
    return [k for k in spec.param_shapes() if k.split("/")[0] == node.name]


def load_weights(model: tf.keras.Model, spec: ModelSpec, weights: Weights) -> None:
    check_weights(spec, weights)
    for node in spec.nodes:
        if keys := _leaves(spec, node):
            model.get_layer(node.name).set_weights([weights[k] for k in keys])


def export_weights(model: tf.keras.Model, spec: ModelSpec) -> Weights:
    out: Weights = {}
    for node in spec.nodes:
        if keys := _leaves(spec, node):
            out.update(zip(keys, model.get_layer(node.name).get_weights()))
    return out


def param_count(model: tf.keras.Model) -> int:
    return int(sum(np.prod(v.shape) for v in model.trainable_variables))


def cross_entropy(y: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Per-example (unreduced) softmax cross-entropy."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
