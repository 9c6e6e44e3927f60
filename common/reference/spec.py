"""The models of docs/design.md §2, once, framework-neutral, as graphs.

A model is a list of ``Node``s in topological order, each an operation on
the outputs of earlier nodes (or of the model input, ``INPUT``). The last
node's output is the logits. Every framework's model builder, the float64
reference and the exchange format read the same nodes, so layer names
(``conv0``, ``dense0``, ``s1b0_gn0``, ``b0_q``, ...) are the exchange keys'
prefixes everywhere.

Per example a value is an (H, W, C) image, a (T, F) token sequence or an
(F,) vector (the batch axis is never written in the spec). The ops, exactly:

- ``conv``: ``features`` out channels, ``kernel`` x ``kernel``, ``stride``,
  ``padding`` zeros on every side, optional ``bias``; image -> image.
- ``gn``: GroupNorm, ``groups``, biased variance over H, W and the group's
  channels, epsilon ``GN_EPS``, learned per-channel scale and shift.
- ``relu``; ``maxpool`` / ``avgpool`` (2x2, stride 2); ``gap`` (global
  average pool, image -> (C,)); ``flatten`` (image -> (H*W*C,), NHWC order).
- ``dense``: ``features`` outputs, optional ``bias``, on the last axis: (F,)
  -> (features,), or (T, F) -> (T, features), the same kernel at every token.
- ``add``: two inputs of one shape, summed.
- ``patches`` (``kernel`` = patch size P): (H, W, C) -> (T, P*P*C) with
  T = (H/P)*(W/P) non-overlapping P x P patches in raster order (patch
  (r, c) is token r*(W/P) + c), each flattened in (ph, pw, c) order: the
  order of a stride-P, P x P conv kernel's HWI rows, so that ``patches``
  then ``dense`` (kernel reshaped) is exactly that conv with padding 0
  (tests/common/reference/test_vit_reference.py checks it).
- ``embed``: a learned table of ``rows`` x ``features`` (exchange key
  ``<name>/embedding``, shape (rows, features)), looked up at the constant
  indices 0..rows-1 in every example: output (rows, features), the table
  itself. Its one input must be ``INPUT``, read only for the batch size:
  a framework looks it up as an embedding layer (nn.Embedding, flax
  nn.Embed, keras Embedding) at indices of shape (B, rows), so that every
  library sees a batched layer it can clip per example (the per-example
  gradient of the table is the output gradient itself).
- ``concat``: two sequences (T1, F) and (T2, F) -> (T1 + T2, F), the first
  input's tokens first.
- ``layernorm``: over the last axis, biased variance, epsilon ``LN_EPS``,
  learned per-feature ``scale`` and ``bias``:
  y = (x - mean) / sqrt(var + LN_EPS) * scale + bias.
- ``attention``: three inputs q, k, v, each (T, D); ``groups`` = heads;
  no parameters. Head h takes channels h*dh:(h+1)*dh, dh = D / heads, and
  computes softmax(q_h k_h^T / sqrt(dh)) v_h (softmax over the key axis);
  the heads' outputs are concatenated back in head order: (T, D).
- ``gelu``: exact (erf) GELU, 0.5 x (1 + erf(x / sqrt 2)), not the tanh
  approximation.
- ``token``: token 0 of a sequence, (T, F) -> (F,).

``chain_cnn`` writes the study's plain CNNs (3x3 conv + ReLU + max-pool
chains, dense head) as such graphs, with the names and parameters they had
when the spec could describe nothing else; ``wide_resnet`` writes WRN-16-4;
``vit`` the Vision Transformers.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from math import prod

NUM_CLASSES = 10
KERNEL = 3
INPUT = "input"  # the name the first nodes read the model input by
GN_EPS = 1e-5  # GroupNorm's epsilon (PyTorch's default), passed explicitly in every framework
# LayerNorm's epsilon: the original ViT's (google-research/vision_transformer,
# flax's LayerNorm default; timm's ViT passes it too). The frameworks'
# defaults differ (PyTorch nn.LayerNorm 1e-5, keras LayerNormalization 1e-3,
# flax nn.LayerNorm 1e-6), so every framework passes it explicitly.
LN_EPS = 1e-6

OPS = ("conv", "gn", "relu", "maxpool", "avgpool", "gap", "flatten", "dense", "add",
       "patches", "embed", "concat", "layernorm", "attention", "gelu", "token")
PARAM_OPS = ("conv", "gn", "dense", "embed", "layernorm")
# Inputs per op (the rest take one).
ARITY = {"add": 2, "concat": 2, "attention": 3}
# Ops on images, on sequences: the rank of their (per-example) input.
IMAGE_OPS = ("conv", "gn", "maxpool", "avgpool", "gap", "patches")
SEQUENCE_OPS = ("concat", "attention", "token")


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
    patches: ``kernel`` = patch size. embed: ``rows`` x ``features``, input
    ``INPUT``. attention: ``groups`` = heads. The module docstring gives
    every op's exact semantics.
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
    rows: int = 0

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"{self.name}: unknown op {self.op!r}")
        arity = ARITY.get(self.op, 1)
        if len(self.inputs) != arity:
            raise ValueError(f"{self.name}: {self.op} takes {arity} input{'s' if arity > 1 else ''}, "
                             f"got {len(self.inputs)}")
        if self.op == "embed" and (self.inputs != (INPUT,) or self.rows <= 0 or self.features <= 0):
            raise ValueError(f"{self.name}: embed reads {INPUT!r} (for the batch size) and needs rows and features")
        if self.op == "attention" and self.groups <= 0:
            raise ValueError(f"{self.name}: attention needs groups (heads) > 0")


@dataclass(frozen=True)
class Layer:
    """One weighted layer, as fast clipping plans it: ``kind`` is ``conv``,
    ``dense`` (on a vector: T = 1), ``seq_dense`` (a dense node on a (T, F)
    sequence: a 1x1 conv with T positions), ``gn``, ``layernorm`` or
    ``embed``.

    ``kernel_shape`` is HWIO for convs, (in, out) for dense layers, (C,)
    (the scale's) for GroupNorm and LayerNorm, whose shift is their
    ``bias``, and (rows, features) for embeddings (no bias).
    ``out_hw`` is the spatial size of a conv's output (before pooling), (T, 1)
    for a layer whose output is a T-token sequence, (1, 1) for a vector;
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
        """d of docs/design.md §7: Cin*k*k for convs, input width for dense
        (also on sequences); rows for an embedding."""
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
        """Output shape of every node (and of ``INPUT``) per example: (H, W, C),
        (T, F) or (F,); raises ValueError where a node's inputs do not fit it."""
        out: dict[str, tuple[int, ...]] = {INPUT: self.input_shape}
        for n in self.nodes:
            ins = [out[i] for i in n.inputs]
            s = ins[0]
            rank = 3 if n.op in IMAGE_OPS else 2 if n.op in SEQUENCE_OPS else None
            if rank is not None and any(len(i) != rank for i in ins):
                raise ValueError(f"{n.name}: {n.op} takes {'images' if rank == 3 else 'sequences'}, got {ins}")
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
                if len(s) == 3:
                    raise ValueError(f"{n.name}: dense on an unflattened input {s}")
                out[n.name] = (*s[:-1], n.features)
            elif n.op == "add":
                if ins[0] != ins[1]:
                    raise ValueError(f"{n.name}: adds shapes {ins}")
                out[n.name] = s
            elif n.op == "patches":
                h, w, c = s
                if n.kernel <= 0 or h % n.kernel or w % n.kernel:
                    raise ValueError(f"{n.name}: {n.kernel}x{n.kernel} patches do not tile {s}")
                out[n.name] = ((h // n.kernel) * (w // n.kernel), n.kernel * n.kernel * c)
            elif n.op == "embed":
                out[n.name] = (n.rows, n.features)
            elif n.op == "concat":
                if ins[0][1] != ins[1][1]:
                    raise ValueError(f"{n.name}: concatenates tokens of different widths {ins}")
                out[n.name] = (ins[0][0] + ins[1][0], s[1])
            elif n.op == "attention":
                if not ins[0] == ins[1] == ins[2] or s[1] % n.groups:
                    raise ValueError(f"{n.name}: attention of {n.groups} heads on q, k, v {ins}")
                out[n.name] = s
            elif n.op == "token":
                out[n.name] = (s[1],)
            else:  # gn, relu, layernorm, gelu
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
        (in, out), ``<layer>/bias``, ``<gn>/scale`` and ``<layernorm>/scale``
        (then their ``/bias``), ``<embed>/embedding`` (rows, features); in
        node order."""
        out: dict[str, tuple[int, ...]] = {}
        for n in self.nodes:
            cin = self.in_shape(n)[-1]
            if n.op == "conv":
                out[f"{n.name}/kernel"] = (n.kernel, n.kernel, cin, n.features)
            elif n.op == "dense":
                out[f"{n.name}/kernel"] = (cin, n.features)
            elif n.op in ("gn", "layernorm"):
                out[f"{n.name}/scale"] = (cin,)
                out[f"{n.name}/bias"] = (cin,)
                continue
            elif n.op == "embed":
                out[f"{n.name}/embedding"] = (n.rows, n.features)
                continue
            else:
                continue
            if n.bias:
                out[f"{n.name}/bias"] = (n.features,)
        return out

    def layers(self) -> list[Layer]:
        """The weighted layers (what fast clipping plans), in order: conv,
        dense (``seq_dense`` on a sequence, positions T), GroupNorm and
        LayerNorm (their scale's shape as the kernel's) and embeddings
        ((rows, features), positions rows, no bias)."""
        out: list[Layer] = []
        shapes = self.param_shapes()
        for n in self.nodes:
            if n.op not in PARAM_OPS:
                continue
            relu = [c.op for c in self.consumers(n.name)] == ["relu"]
            leaf = {"gn": "scale", "layernorm": "scale", "embed": "embedding"}.get(n.op, "kernel")
            y = self.shapes[n.name]
            hw = y[:2] if len(y) == 3 else (y[0], 1) if len(y) == 2 else (1, 1)
            kind = "seq_dense" if n.op == "dense" and len(y) == 2 else n.op
            out.append(Layer(n.name, kind, shapes[f"{n.name}/{leaf}"], relu, hw, n.bias and n.op != "embed",
                             n.stride, n.padding))
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


def vit(name: str, patch: int, width: int, depth: int, heads: int, mlp: int, expected_params: int,
        input_shape: tuple[int, int, int] = (32, 32, 3)) -> ModelSpec:
    """A Vision Transformer (Dosovitskiy et al. 2021; pre-LN blocks as in
    their code): ``patches`` (P = ``patch``) -> ``patch_embed`` dense to
    ``width`` (bias); ``cls`` (a 1-row embedding, the class token)
    concatenated before the T patch tokens (``tokens``), plus ``pos`` (a
    T+1-row embedding, the learned position embeddings) (``pos_add``);
    ``depth`` blocks ``b<i>``, each
    ``x = x + o(attention(q(ln0 x), k(ln0 x), v(ln0 x)))`` then
    ``x = x + fc2(gelu(fc1(ln1 x)))`` (q, k, v, o: width -> width; fc1:
    width -> ``mlp``; fc2: back; all dense with bias; attention of
    ``heads`` heads); ``final_ln``; ``cls_token`` (token 0);
    ``head`` dense to the classes."""
    h, w, _ = input_shape
    t = (h // patch) * (w // patch)
    nodes = [Node("patches", "patches", (INPUT,), kernel=patch),
             Node("patch_embed", "dense", ("patches",), width),
             Node("cls", "embed", (INPUT,), width, rows=1),
             Node("tokens", "concat", ("cls", "patch_embed")),
             Node("pos", "embed", (INPUT,), width, rows=t + 1),
             Node("pos_add", "add", ("tokens", "pos"))]
    x = "pos_add"
    for b in range(depth):
        p = f"b{b}"
        nodes += [Node(f"{p}_ln0", "layernorm", (x,)),
                  *(Node(f"{p}_{m}", "dense", (f"{p}_ln0",), width) for m in "qkv"),
                  Node(f"{p}_attn", "attention", (f"{p}_q", f"{p}_k", f"{p}_v"), groups=heads),
                  Node(f"{p}_o", "dense", (f"{p}_attn",), width),
                  Node(f"{p}_add0", "add", (x, f"{p}_o")),
                  Node(f"{p}_ln1", "layernorm", (f"{p}_add0",)),
                  Node(f"{p}_fc1", "dense", (f"{p}_ln1",), mlp),
                  Node(f"{p}_gelu", "gelu", (f"{p}_fc1",)),
                  Node(f"{p}_fc2", "dense", (f"{p}_gelu",), width),
                  Node(f"{p}_add1", "add", (f"{p}_add0", f"{p}_fc2"))]
        x = f"{p}_add1"
    nodes += [Node("final_ln", "layernorm", (x,)), Node("cls_token", "token", ("final_ln",)),
              Node("head", "dense", ("cls_token",), NUM_CLASSES)]
    return ModelSpec(name, input_shape, tuple(nodes), expected_params)


MODELS: dict[str, ModelSpec] = {
    "small": chain_cnn("small", (32, 32, 3), (32, 64), 256, expected_params=1_070_794),
    "medium": chain_cnn("medium", (64, 64, 3), (64, 128, 256), 1024, expected_params=17_159_306),
    # WRN-16-4, GroupNorm(16): 2,748,890 by hand (stem 432; stages 121,248 +
    # 525,184 + 2,098,944; final GroupNorm 512; head 2,570)
    "wrn16_4": wide_resnet("wrn16_4", 16, 4, 16, expected_params=2_748_890),
    # The frameworks' fast tests' WRN (issue 36): WRN-10-1, GroupNorm(8), the
    # same layer kinds and paths as WRN-16-4 (stem; an identity-shortcut
    # block in stage 0; 1x1 stride-2 shortcut convs in stages 1 and 2;
    # 2-8 channels per group), ~30x fewer FLOPs. By hand: stem 432; stage 0
    # 32 + 2,304 + 32 + 2,304 = 4,672; stage 1 32 + 512 + 4,608 + 64 + 9,216
    # = 14,432; stage 2 64 + 2,048 + 18,432 + 128 + 36,864 = 57,536;
    # final GroupNorm 128; head 64*10 + 10 = 650 -> 77,850
    "wrn10_1": wide_resnet("wrn10_1", 10, 1, 8, expected_params=77_850),
    # ViTs on 32x32x3, width 128, 4 blocks of 4 heads, MLP 256; by hand: each
    # block 132,480 (ln0 256; q, k, v, o 4 x (128*128 + 128) = 66,048; ln1
    # 256; fc1 128*256 + 256 = 33,024; fc2 256*128 + 128 = 32,896), 4 blocks
    # 529,920; cls 128; final_ln 256; head 128*10 + 10 = 1,290; then per
    # patch size P (T = (32/P)^2 patches, T + 1 tokens):
    # P 4: T 64, patch_embed 48*128 + 128 = 6,272, pos 65*128 = 8,320 -> 546,186
    "vit": vit("vit", 4, 128, 4, 4, 256, expected_params=546_186),
    # P 8: T 16, patch_embed 192*128 + 128 = 24,704, pos 17*128 = 2,176 -> 558,474
    "vit_p8": vit("vit_p8", 8, 128, 4, 4, 256, expected_params=558_474),
    # P 2: T 256, patch_embed 12*128 + 128 = 1,664, pos 257*128 = 32,896 -> 566,154
    "vit_p2": vit("vit_p2", 2, 128, 4, 4, 256, expected_params=566_154),
    # The frameworks' fast tests' ViT: P 8 (T 16), width 16, 1 block of 2
    # heads, MLP 32: patch_embed 192*16 + 16 = 3,088; cls 16; pos 17*16 = 272;
    # block 32 + 4 x (16*16 + 16) + 32 + (16*32 + 32) + (32*16 + 16) = 2,224;
    # final_ln 32; head 16*10 + 10 = 170 -> 5,802
    "vit_tiny": vit("vit_tiny", 8, 16, 1, 2, 32, expected_params=5_802),
}


def get_model(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}") from None
