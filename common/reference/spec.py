"""The models of docs/design.md §2, once, framework-neutral, as graphs.

A model is a list of ``Node``s in topological order, each an operation on
the outputs of earlier nodes (or of the model input, ``INPUT``): conv (kernel,
stride, symmetric zero padding, optional bias), GroupNorm (groups, learned
scale and shift), ReLU, 2x2/2 max and average pools, global average pool,
flatten (NHWC order), dense, residual add. The last node's output is the
logits. Every framework's model builder, the float64 reference and the
exchange format read the same nodes, so layer names (``conv0``, ``dense0``,
``s1b0_gn0``, ...) are the exchange keys' prefixes everywhere.

``chain_cnn`` writes the study's plain CNNs (3x3 conv + ReLU + max-pool
chains, dense head) as such graphs, with the names and parameters they had
when the spec could describe nothing else; ``wide_resnet`` writes WRN-16-4.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from math import prod

NUM_CLASSES = 10
KERNEL = 3
INPUT = "input"  # the name the first nodes read the model input by
GN_EPS = 1e-5  # GroupNorm's epsilon (PyTorch's default), passed explicitly in every framework

OPS = ("conv", "gn", "relu", "maxpool", "avgpool", "gap", "flatten", "dense", "add")
PARAM_OPS = ("conv", "gn", "dense")


def conv_out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output positions along one dim of a conv over ``size`` inputs zero-padded by ``padding`` on each side."""
    return (size + 2 * padding - kernel) // stride + 1


@dataclass(frozen=True)
class Node:
    """One operation. ``inputs`` name earlier nodes or ``INPUT``.

    conv: ``features`` out channels, ``kernel`` x ``kernel``, ``stride``,
    ``padding`` zeros on every side (explicit, so that a stride-2 conv pads
    the same in every framework: TF's SAME would pad (0, 1)), ``bias``.
    gn: ``groups``. dense: ``features``, ``bias``. Pools are 2x2, stride 2.
    """

    name: str
    op: str
    inputs: tuple[str, ...]
    features: int = 0
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    bias: bool = True
    groups: int = 0

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"{self.name}: unknown op {self.op!r}")
        if len(self.inputs) != (2 if self.op == "add" else 1):
            raise ValueError(f"{self.name}: {self.op} takes {'two inputs' if self.op == 'add' else 'one input'}")


@dataclass(frozen=True)
class Layer:
    """One weighted layer, as fast clipping plans it: ``kind`` is ``conv``,
    ``dense`` or ``gn``.

    ``kernel_shape`` is HWIO for convs, (in, out) for dense layers and (C,)
    (the scale's) for GroupNorm, whose shift is its ``bias``.
    ``out_hw`` is the spatial size of a conv's output (before pooling);
    ``positions`` is T of docs/design.md §7 (output positions per example).
    """

    name: str
    kind: str
    kernel_shape: tuple[int, ...]
    relu: bool
    out_hw: tuple[int, int] = (1, 1)
    bias: bool = True
    stride: int = 1
    padding: int = 1

    @property
    def fan_in(self) -> int:
        """d of docs/design.md §7: Cin*k*k for convs, input width for dense."""
        return prod(self.kernel_shape[:-1])

    @property
    def features(self) -> int:
        """p of docs/design.md §7."""
        return self.kernel_shape[-1]

    @property
    def positions(self) -> int:
        return self.out_hw[0] * self.out_hw[1]

    @property
    def params(self) -> int:
        return prod(self.kernel_shape) + (self.features if self.bias else 0)


@dataclass(frozen=True)
class ModelSpec:
    """A named graph of ``Node``s on an (H, W, C) input; ``expected_params``
    is the count every framework's model is pinned to."""

    name: str
    input_shape: tuple[int, int, int]  # H, W, C
    nodes: tuple[Node, ...]
    expected_params: int
    num_classes: int = NUM_CLASSES

    def __post_init__(self) -> None:
        seen = {INPUT}
        for n in self.nodes:
            missing = [i for i in n.inputs if i not in seen]
            if missing or not n.inputs or n.name in seen:
                raise ValueError(f"{self.name}: node {n.name} reads {missing or n.inputs} (not earlier) or repeats a name")
            seen.add(n.name)
        self.shapes  # noqa: B018 -- validates shapes at construction

    @cached_property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Output shape of every node (and of ``INPUT``) per example: (H, W, C) or (F,)."""
        out: dict[str, tuple[int, ...]] = {INPUT: self.input_shape}
        for n in self.nodes:
            ins = [out[i] for i in n.inputs]
            s = ins[0]
            if n.op == "conv":
                h, w, _ = s
                hw = [conv_out_size(d, n.kernel, n.stride, n.padding) for d in (h, w)]
                out[n.name] = (*hw, n.features)
            elif n.op in ("maxpool", "avgpool"):
                if s[0] % 2 or s[1] % 2:
                    raise ValueError(f"{n.name}: 2x2/2 pool of odd size {s}")
                out[n.name] = (s[0] // 2, s[1] // 2, s[2])
            elif n.op == "gap":
                out[n.name] = (s[2],)
            elif n.op == "flatten":
                out[n.name] = (prod(s),)
            elif n.op == "dense":
                if len(s) != 1:
                    raise ValueError(f"{n.name}: dense on an unflattened input {s}")
                out[n.name] = (n.features,)
            elif n.op == "add":
                if ins[0] != ins[1]:
                    raise ValueError(f"{n.name}: adds shapes {ins}")
                out[n.name] = s
            else:  # gn, relu
                if n.op == "gn" and s[-1] % n.groups:
                    raise ValueError(f"{n.name}: {s[-1]} channels in {n.groups} groups")
                out[n.name] = s
        return out

    def in_shape(self, node: Node) -> tuple[int, ...]:
        return self.shapes[node.inputs[0]]

    def consumers(self, name: str) -> list[Node]:
        return [n for n in self.nodes if name in n.inputs]

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Exchange key -> shape: ``<conv>/kernel`` HWIO, ``<dense>/kernel``
        (in, out), ``<layer>/bias``, ``<gn>/scale``; in node order."""
        out: dict[str, tuple[int, ...]] = {}
        for n in self.nodes:
            cin = self.in_shape(n)[-1]
            if n.op == "conv":
                out[f"{n.name}/kernel"] = (n.kernel, n.kernel, cin, n.features)
            elif n.op == "dense":
                out[f"{n.name}/kernel"] = (cin, n.features)
            elif n.op == "gn":
                out[f"{n.name}/scale"] = (cin,)
                out[f"{n.name}/bias"] = (cin,)
                continue
            else:
                continue
            if n.bias:
                out[f"{n.name}/bias"] = (n.features,)
        return out

    def layers(self) -> list[Layer]:
        """The weighted layers (what fast clipping plans), in order: conv,
        dense and GroupNorm (its scale's shape as the kernel's)."""
        out: list[Layer] = []
        for n in self.nodes:
            if n.op not in PARAM_OPS:
                continue
            relu = [c.op for c in self.consumers(n.name)] == ["relu"]
            shape = self.param_shapes()[f"{n.name}/{'scale' if n.op == 'gn' else 'kernel'}"]
            hw = self.shapes[n.name][:2] if n.op in ("conv", "gn") else (1, 1)
            out.append(Layer(n.name, n.op, shape, relu, hw, n.bias, n.stride, n.padding))
        return out

    @property
    def is_chain(self) -> bool:
        """Every node reads the one before it: a ``Sequential`` can express it."""
        prev = INPUT
        for n in self.nodes:
            if n.inputs != (prev,):
                return False
            prev = n.name
        return True

    @property
    def output_layer(self) -> str:
        """The last parametrised layer (the logits' dense)."""
        return [n.name for n in self.nodes if n.op in PARAM_OPS][-1]

    @property
    def flatten_size(self) -> int:
        return next(self.shapes[n.name][0] for n in self.nodes if n.op in ("flatten", "gap"))

    @property
    def param_count(self) -> int:
        return sum(prod(s) for s in self.param_shapes().values())


def chain_cnn(name: str, input_shape: tuple[int, int, int], convs: tuple[int, ...], hidden: int,
              expected_params: int) -> ModelSpec:
    """docs/design.md §2's plain CNN: per width, ``conv<i>`` (3x3, stride 1, pad 1
    = SAME, bias) + ReLU + ``conv<i>_pool``; ``flatten``; ``dense0`` (hidden,
    ReLU); ``dense1`` (logits)."""
    nodes: list[Node] = []
    prev = INPUT
    for i, f in enumerate(convs):
        nodes += [Node(f"conv{i}", "conv", (prev,), f, KERNEL, 1, KERNEL // 2),
                  Node(f"conv{i}_relu", "relu", (f"conv{i}",)),
                  Node(f"conv{i}_pool", "maxpool", (f"conv{i}_relu",))]
        prev = f"conv{i}_pool"
    nodes += [Node("flatten", "flatten", (prev,)),
              Node("dense0", "dense", ("flatten",), hidden),
              Node("dense0_relu", "relu", ("dense0",)),
              Node("dense1", "dense", ("dense0_relu",), NUM_CLASSES)]
    return ModelSpec(name, input_shape, tuple(nodes), expected_params)


def wide_resnet(name: str, depth: int, width: int, groups: int, expected_params: int,
                input_shape: tuple[int, int, int] = (32, 32, 3)) -> ModelSpec:
    """WRN-depth-width with GroupNorm, pre-activation blocks (He et al. 2016's
    ordering, as in De et al. 2022's JAX WideResNet): ``stem`` conv 3x3 to 16
    channels; three stages of (depth - 4) / 6 blocks of 16*width, 32*width,
    64*width channels, strides 1, 2, 2; each block is
    ``out = relu(gn0(x)); y = conv1(relu(gn1(conv0(out)))); y + shortcut``
    where the shortcut is ``x``, or a 1x1 conv (stride of the block) of
    ``out`` where the shape changes; then ``final_gn``, ReLU, global average
    pool, ``head`` dense to the classes. Convs have no bias (each feeds a
    GroupNorm or a residual add); 3x3 convs pad 1 on every side."""
    per_stage = (depth - 4) // 6
    if per_stage * 6 + 4 != depth:
        raise ValueError(f"WRN depth {depth} is not 6n + 4")
    nodes = [Node("stem", "conv", (INPUT,), 16, KERNEL, 1, 1, bias=False)]
    x, cin = "stem", 16
    for s, (w, stride) in enumerate(zip((16 * width, 32 * width, 64 * width), (1, 2, 2))):
        for b in range(per_stage):
            p, st = f"s{s}b{b}", stride if b == 0 else 1
            nodes += [Node(f"{p}_gn0", "gn", (x,), groups=groups), Node(f"{p}_relu0", "relu", (f"{p}_gn0",))]
            short = x
            if st != 1 or cin != w:
                short = f"{p}_short"
                nodes.append(Node(short, "conv", (f"{p}_relu0",), w, 1, st, 0, bias=False))
            nodes += [Node(f"{p}_conv0", "conv", (f"{p}_relu0",), w, KERNEL, st, 1, bias=False),
                      Node(f"{p}_gn1", "gn", (f"{p}_conv0",), groups=groups),
                      Node(f"{p}_relu1", "relu", (f"{p}_gn1",)),
                      Node(f"{p}_conv1", "conv", (f"{p}_relu1",), w, KERNEL, 1, 1, bias=False),
                      Node(f"{p}_add", "add", (f"{p}_conv1", short))]
            x, cin = f"{p}_add", w
    nodes += [Node("final_gn", "gn", (x,), groups=groups), Node("final_relu", "relu", ("final_gn",)),
              Node("gap", "gap", ("final_relu",)), Node("head", "dense", ("gap",), NUM_CLASSES)]
    return ModelSpec(name, input_shape, tuple(nodes), expected_params)


MODELS: dict[str, ModelSpec] = {
    "small": chain_cnn("small", (32, 32, 3), (32, 64), 256, expected_params=1_070_794),
    "medium": chain_cnn("medium", (64, 64, 3), (64, 128, 256), 1024, expected_params=17_159_306),
    # WRN-16-4, GroupNorm(16): 2,748,890 by hand (stem 432; stages 121,248 +
    # 525,184 + 2,098,944; final GroupNorm 512; head 2,570)
    "wrn16_4": wide_resnet("wrn16_4", 16, 4, 16, expected_params=2_748_890),
}


def get_model(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}") from None
