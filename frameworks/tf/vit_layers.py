"""The ViT's parameter-free Keras layers (common/reference/spec.py's
``patches``, ``attention``, ``token`` and the index input of ``embed``).

Every weighted ViT node is a stock Keras layer (Dense, Embedding,
LayerNormalization): TF-Privacy's fast clipping looks registry functions up
by a layer's exact class (``LayerRegistry.is_elem``: ``hash(layer.__class__)``),
so a subclass would not be registered. The layers here own no variables:
``clip_grads.get_registry_generator_fn`` calls a layer without trainable
variables as it is, so they neither need a registry function nor send
DPModel to its per-example fallback
(``gradient_clipping_utils.all_trainable_layers_are_registered`` skips them).
"""
from __future__ import annotations

import math
from typing import Any

import tensorflow as tf


class Patches(tf.keras.layers.Layer):
    """(B, H, W, C) -> (B, T, P*P*C): non-overlapping P x P patches in raster
    order, each flattened in (ph, pw, c) order (the HWI rows of a stride-P
    conv kernel, as the spec's ``patches``)."""

    def __init__(self, patch: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.patch = patch

    def call(self, x: tf.Tensor) -> tf.Tensor:
        _, h, w, c = x.shape
        p = self.patch
        x = tf.reshape(x, [-1, h // p, p, w // p, p, c])
        x = tf.transpose(x, [0, 1, 3, 2, 4, 5])  # (B, rows, cols, ph, pw, c)
        return tf.reshape(x, [-1, (h // p) * (w // p), p * p * c])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "patch": self.patch}


class EmbedIndices(tf.keras.layers.Layer):
    """The indices of the spec's ``embed``: 0..rows-1 for every example,
    shape (B, rows) int32, B read off the input (its only use). Made a layer
    of the graph so that the Embedding after it is an ordinary batched lookup
    (B examples of ``rows`` ids) that TF-Privacy clips per example: its
    embedding registry function reads the ids it is called with, and its
    vectorized path sees one example's (1, rows)."""

    def __init__(self, rows: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rows = rows

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return tf.tile(tf.range(self.rows, dtype=tf.int32)[None], [tf.shape(x)[0], 1])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "rows": self.rows}


class HeadAttention(tf.keras.layers.Layer):
    """Multi-head attention without parameters, on inputs [q, k, v], each
    (B, T, D): head h takes channels h*dh:(h+1)*dh (dh = D / heads) and
    computes softmax(q_h k_h^T / sqrt(dh)) v_h; the heads are concatenated
    back in order. The projections are the graph's own Dense layers (not
    Keras' MultiHeadAttention, whose (D, heads, dh) EinsumDense kernels are
    another layout and another registry function)."""

    def __init__(self, heads: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.heads = heads

    def _split(self, x: tf.Tensor) -> tf.Tensor:
        _, t, d = x.shape
        return tf.transpose(tf.reshape(x, [-1, t, self.heads, d // self.heads]), [0, 2, 1, 3])

    def call(self, inputs: list[tf.Tensor]) -> tf.Tensor:
        q, k, v = (self._split(a) for a in inputs)
        _, t, d = inputs[0].shape
        scores = tf.matmul(q, k, transpose_b=True) / math.sqrt(d // self.heads)
        out = tf.matmul(tf.nn.softmax(scores, axis=-1), v)  # (B, heads, T, dh)
        return tf.reshape(tf.transpose(out, [0, 2, 1, 3]), [-1, t, d])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "heads": self.heads}


class Token(tf.keras.layers.Layer):
    """Token 0 of a sequence: (B, T, F) -> (B, F)."""

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return x[:, 0]
