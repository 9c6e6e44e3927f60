"""The models of DESIGN.md §2, once, framework-neutral.

Every adapter builds its model from ``MODELS[name]``; every conv is 3x3,
stride 1, SAME, with bias, followed by ReLU and 2x2/2 max-pool; the flatten is
in NHWC (H, W, C) order everywhere so that weights are interchangeable.
Layer names (``conv0``.., ``dense0``..) are the keys of the exchange format.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod

NUM_CLASSES = 10
KERNEL = 3


@dataclass(frozen=True)
class Layer:
    """One parametrised layer: ``kind`` is ``conv`` or ``dense``.

    ``kernel_shape`` is HWIO for convs and (in, out) for dense layers.
    ``out_hw`` is the spatial size of a conv's output (before pooling);
    ``positions`` is T of DESIGN.md §8 (output positions per example).
    """

    name: str
    kind: str
    kernel_shape: tuple[int, ...]
    relu: bool
    out_hw: tuple[int, int] = (1, 1)

    @property
    def fan_in(self) -> int:
        """d of DESIGN.md §8: Cin*k*k for convs, input width for dense."""
        return prod(self.kernel_shape[:-1])

    @property
    def features(self) -> int:
        """p of DESIGN.md §8."""
        return self.kernel_shape[-1]

    @property
    def positions(self) -> int:
        return self.out_hw[0] * self.out_hw[1]

    @property
    def params(self) -> int:
        return prod(self.kernel_shape) + self.features


@dataclass(frozen=True)
class ModelSpec:
    name: str
    input_shape: tuple[int, int, int]  # H, W, C
    convs: tuple[int, ...]
    hidden: int
    expected_params: int
    num_classes: int = NUM_CLASSES

    def layers(self) -> list[Layer]:
        h, w, c = self.input_shape
        out: list[Layer] = []
        for i, f in enumerate(self.convs):
            out.append(Layer(f"conv{i}", "conv", (KERNEL, KERNEL, c, f), True, (h, w)))
            h, w, c = h // 2, w // 2, f
        flat = h * w * c
        out.append(Layer("dense0", "dense", (flat, self.hidden), True))
        out.append(Layer("dense1", "dense", (self.hidden, self.num_classes), False))
        return out

    @property
    def flatten_size(self) -> int:
        return self.layers()[-2].kernel_shape[0]

    @property
    def param_count(self) -> int:
        return sum(layer.params for layer in self.layers())


MODELS: dict[str, ModelSpec] = {
    "small": ModelSpec("small", (32, 32, 3), (32, 64), 256, expected_params=1_070_794),
    "medium": ModelSpec("medium", (64, 64, 3), (64, 128, 256), 1024, expected_params=17_159_306),
}


def get_model(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}") from None
