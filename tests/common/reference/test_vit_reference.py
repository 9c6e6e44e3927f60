"""The ViT ops of the spec and their float64 reference: exact semantics
(against independent per-example loops and known values), each op's
backward against finite differences, patches + dense == a stride-P conv,
the ViTs' layout and parameter counts, and vit_tiny's per-example gradients
against finite differences."""
import math

import numpy as np
import pytest

from common.reference import float64 as R
from common.reference.exchange import check_weights, init_weights
from common.reference.spec import INPUT, LN_EPS, MODELS, ModelSpec, Node, get_model
from tests.common.reference.test_graph_reference import _case, fd_check_key

# --- layout and parameter counts ----------------------------------------------


@pytest.mark.parametrize("name,params,tokens", [("vit", 546_186, 65), ("vit_p8", 558_474, 17),
                                                ("vit_p2", 566_154, 257), ("vit_tiny", 5_802, 17)])
def test_vit_param_counts_pinned(name, params, tokens):
    spec = get_model(name)
    assert spec.param_count == spec.expected_params == params
    assert sum(la.params for la in spec.layers()) == params
    assert spec.shapes["pos_add"][0] == tokens and spec.shapes["head"] == (10,)


def _vit_keys(depth: int, width: int, mlp: int, patch_dim: int, tokens: int) -> dict[str, tuple[int, ...]]:
    """The ViT's exchange keys as docs/design.md §2 states them, written out."""
    keys = {"patch_embed/kernel": (patch_dim, width), "patch_embed/bias": (width,),
            "cls/embedding": (1, width), "pos/embedding": (tokens, width)}
    for b in range(depth):
        keys |= {f"b{b}_ln0/scale": (width,), f"b{b}_ln0/bias": (width,)}
        for m in "qkvo":
            keys |= {f"b{b}_{m}/kernel": (width, width), f"b{b}_{m}/bias": (width,)}
        keys |= {f"b{b}_ln1/scale": (width,), f"b{b}_ln1/bias": (width,),
                 f"b{b}_fc1/kernel": (width, mlp), f"b{b}_fc1/bias": (mlp,),
                 f"b{b}_fc2/kernel": (mlp, width), f"b{b}_fc2/bias": (width,)}
    return keys | {"final_ln/scale": (width,), "final_ln/bias": (width,), "head/kernel": (width, 10),
                   "head/bias": (10,)}


def test_vit_exchange_keys_and_layers():
    spec = MODELS["vit"]
    want = _vit_keys(4, 128, 256, 4 * 4 * 3, 65)
    assert spec.param_shapes() == want and list(spec.param_shapes()) == list(want)  # node order too
    check_weights(spec, init_weights(spec, 0))
    assert MODELS["vit_tiny"].param_shapes() == _vit_keys(1, 16, 32, 8 * 8 * 3, 17)
    layers = {la.name: la for la in spec.layers()}
    kinds = [la.kind for la in spec.layers()]
    # patch_embed + 6 dense per block on sequences; 2 LayerNorms per block + final; cls, pos; the head
    assert (kinds.count("seq_dense"), kinds.count("layernorm"), kinds.count("embed"), kinds.count("dense")) == \
        (1 + 4 * 6, 4 * 2 + 1, 2, 1)
    assert (layers["patch_embed"].positions, layers["patch_embed"].fan_in) == (64, 48)
    assert (layers["b2_fc2"].positions, layers["b2_fc2"].fan_in, layers["b2_fc2"].features) == (65, 256, 128)
    assert layers["pos"].kernel_shape == (65, 128) and not layers["pos"].bias and layers["pos"].params == 65 * 128
    assert layers["head"].positions == 1 and layers["b0_ln0"].kernel_shape == (128,)
    assert spec.output_layer == "head" and not spec.is_chain


def test_nodes_refuse_what_the_ops_do_not_take():
    with pytest.raises(ValueError, match="attention takes 3 inputs"):
        Node("a", "attention", ("q", "k"), groups=2)
    with pytest.raises(ValueError, match="concat takes 2 inputs"):
        Node("c", "concat", ("x",))
    with pytest.raises(ValueError, match="gelu takes 1 input"):
        Node("g", "gelu", ("x", "y"))
    with pytest.raises(ValueError, match="embed reads"):
        Node("e", "embed", ("patches",), 4, rows=2)
    with pytest.raises(ValueError, match="heads"):
        Node("a", "attention", ("q", "k", "v"))
    seq = [Node("patches", "patches", (INPUT,), kernel=2), Node("d", "dense", ("patches",), 6)]
    for bad, match in [(Node("x", "dense", (INPUT,), 4), "unflattened"),
                       (Node("x", "attention", ("d", "d", "d"), groups=4), "attention of 4 heads"),
                       (Node("x", "concat", ("d", "patches")), "different widths"),
                       (Node("x", "token", (INPUT,)), "takes sequences"),
                       (Node("x", "patches", ("d",), kernel=2), "takes images")]:
        with pytest.raises(ValueError, match=match):
            ModelSpec("bad", (4, 4, 3), (*seq, bad), 0)
    with pytest.raises(ValueError, match="do not tile"):
        ModelSpec("bad", (6, 6, 3), (Node("p", "patches", (INPUT,), kernel=4),), 0)


# --- exact semantics -----------------------------------------------------------

def test_patches_are_raster_order_hwc_and_patches_plus_dense_is_a_stride_p_conv():
    """A non-square input (8 x 12, P 4: 2 x 3 patches) so that a transposed
    raster order shows; the conv is the spec's own conv op, float64."""
    p, c, d = 4, 3, 5
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 12, c))
    pd = ModelSpec("pd", (8, 12, c), (Node("patches", "patches", (INPUT,), kernel=p),
                                      Node("embed", "dense", ("patches",), d)), 0)
    conv = ModelSpec("conv", (8, 12, c), (Node("embed", "conv", (INPUT,), d, p, p, 0),), 0)
    kernel = rng.standard_normal((p, p, c, d))
    bias = rng.standard_normal(d)
    tokens = R.forward(pd, {"embed/kernel": kernel.reshape(p * p * c, d), "embed/bias": bias}, x)
    image = R.forward(conv, {"embed/kernel": kernel, "embed/bias": bias}, x)
    assert pd.shapes["patches"] == (6, 48) and tokens.shape == (2, 6, d) and image.shape == (2, 2, 3, d)
    np.testing.assert_allclose(tokens, image.reshape(2, 6, d), rtol=1e-12, atol=1e-12)
    patches = R.forward(ModelSpec("p", (8, 12, c), (pd.nodes[0],), 0), {}, x)
    for r in range(2):
        for col in range(3):  # patch (r, col) is token r * (W/P) + col, flattened (ph, pw, c)
            np.testing.assert_array_equal(patches[:, r * 3 + col], x[:, r * p:(r + 1) * p, col * p:(col + 1) * p]
                                          .reshape(2, -1))


def test_attention_is_per_head_scaled_softmax_heads_in_channel_order():
    rng = np.random.default_rng(1)
    b, t, d, heads = 2, 5, 6, 3
    dh = d // heads
    q, k, v = (rng.standard_normal((b, t, d)) for _ in range(3))
    got, _ = R._attention(q, k, v, heads)
    for i in range(b):
        for h in range(heads):
            ch = slice(h * dh, (h + 1) * dh)
            s = q[i][:, ch] @ k[i][:, ch].T / math.sqrt(dh)
            w = np.exp(s) / np.exp(s).sum(axis=1, keepdims=True)  # softmax over the keys
            np.testing.assert_allclose(got[i][:, ch], w @ v[i][:, ch], rtol=1e-13, atol=1e-14)


def test_layernorm_normalises_each_token_over_features_with_ln_eps():
    """One token's features vary by ~1e-3 (variance ~ LN_EPS): there the
    epsilon changes the output by ~30 %, so a wrong epsilon shows."""
    assert LN_EPS == 1e-6
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 8)) * 3 + 1
    x[1, 2] = 5 + 1e-3 * rng.standard_normal(8)
    scale, bias = rng.standard_normal(8), rng.standard_normal(8)
    node = Node("ln", "layernorm", ("x",))
    got, _ = R._forward_node(None, node, {"scale": scale, "bias": bias}, [x])
    for i in range(2):
        for j in range(3):
            xs = x[i, j]
            var = sum((xs - xs.mean()) ** 2) / 8  # biased
            np.testing.assert_allclose(got[i, j], (xs - xs.mean()) / math.sqrt(var + 1e-6) * scale + bias,
                                       rtol=1e-12, atol=1e-12)


def test_gelu_is_the_exact_erf_form():
    """x * Phi(x) at known values of the normal CDF (not the tanh form:
    0.8411919906 at 1, 1.5e-4 off)."""
    x = np.array([1.0, -1.0, 2.0, -3.0, 0.0])
    phi = np.array([0.8413447460685429, 0.15865525393145707, 0.9772498680518208, 0.0013498980316301035, 0.5])
    np.testing.assert_allclose(R.gelu(x), x * phi, rtol=1e-15, atol=1e-18)


def test_embed_concat_token_are_lookup_order_and_selection():
    table = np.arange(6.0).reshape(3, 2)
    emb, _ = R._forward_node(None, Node("e", "embed", (INPUT,), 2, rows=3), {"embedding": table},
                             [np.zeros((4, 8, 8, 3))])
    assert emb.shape == (4, 3, 2) and all(np.array_equal(e, table) for e in emb)  # rows 0..2, every example
    a, b = np.ones((2, 1, 2)), np.zeros((2, 3, 2))
    cat, _ = R._forward_node(None, Node("c", "concat", ("a", "b")), {}, [a, b])
    assert cat.shape == (2, 4, 2) and (cat[:, 0] == 1).all() and (cat[:, 1:] == 0).all()  # first input first
    tok, _ = R._forward_node(None, Node("t", "token", ("c",)), {}, [np.arange(8.0).reshape(1, 4, 2)])
    assert np.array_equal(tok, [[0.0, 1.0]])


# --- each op's backward against finite differences -----------------------------

# (node, per-example input shapes, parameter shapes); inputs (B, ...) random.
OPS = [
    (Node("p", "patches", ("x",), kernel=2), [(4, 6, 3)], {}),
    (Node("d", "dense", ("x",), 5), [(4, 3)], {"kernel": (3, 5), "bias": (5,)}),
    (Node("e", "embed", (INPUT,), 3, rows=4), [(2, 2, 1)], {"embedding": (4, 3)}),
    (Node("c", "concat", ("x", "y")), [(1, 3), (4, 3)], {}),
    (Node("l", "layernorm", ("x",)), [(4, 6)], {"scale": (6,), "bias": (6,)}),
    (Node("l1", "layernorm", ("x",)), [(6,)], {"scale": (6,), "bias": (6,)}),  # on a vector
    (Node("a", "attention", ("x", "y", "z"), groups=2), [(5, 4)] * 3, {}),
    (Node("g", "gelu", ("x",)), [(4, 3)], {}),
    (Node("t", "token", ("x",)), [(4, 3)], {}),
]


@pytest.mark.parametrize("node,in_shapes,param_shapes", OPS, ids=[n.name for n, _, _ in OPS])
def test_op_backward_matches_finite_differences(node, in_shapes, param_shapes):
    """Directional derivatives of L = <G, op(inputs, params)> (random G, over
    a batch of 3): each input's gradient, and each parameter's per-example
    gradients summed over the batch, against central differences. Float64
    at eps 1e-6: error ~eps^2 * L''' + 1e-16 / eps, ~1e-10 relative."""
    rng = np.random.default_rng(len(node.name) + 7 * len(in_shapes))
    b, eps = 3, 1e-6
    ins = [rng.standard_normal((b, *s)) for s in in_shapes]
    params = {k: rng.standard_normal(s) for k, s in param_shapes.items()}
    out, cache = R._forward_node(None, node, params, ins)
    g = rng.standard_normal(out.shape)
    grads: dict[str, np.ndarray] = {}
    back = R._backward_node(node, params, cache, g, grads)

    def loss(ins_, params_):
        return float((g * R._forward_node(None, node, params_, ins_)[0]).sum())

    checked = 0
    for i, gi in enumerate(back):
        if gi is None:  # embed: its input gives only the batch size
            continue
        d = rng.standard_normal(ins[i].shape)
        plus, minus = list(ins), list(ins)
        plus[i], minus[i] = ins[i] + eps * d, ins[i] - eps * d
        fd = (loss(plus, params) - loss(minus, params)) / (2 * eps)
        assert abs(fd - (gi * d).sum()) <= 1e-8 * max(1.0, abs(fd)), (node.name, i, fd, (gi * d).sum())
        checked += 1
    for key, shape in param_shapes.items():
        per_example = grads[f"{node.name}/{key}"]
        assert per_example.shape == (b, *shape)
        d = rng.standard_normal(shape)
        fd = (loss(ins, {**params, key: params[key] + eps * d})
              - loss(ins, {**params, key: params[key] - eps * d})) / (2 * eps)
        assert abs(fd - (per_example.sum(0) * d).sum()) <= 1e-8 * max(1.0, abs(fd)), (node.name, key)
        checked += 1
    assert checked == len(in_shapes) + len(param_shapes) - (node.op == "embed")


def test_op_per_example_param_grads_are_each_examples_own():
    """Per-example (not batch-summed) parameter gradients: example i's
    gradient is the batch-of-one gradient of example i alone."""
    rng = np.random.default_rng(3)
    for node, in_shapes, param_shapes in OPS:
        if not param_shapes:
            continue
        ins = [rng.standard_normal((3, *s)) for s in in_shapes]
        params = {k: rng.standard_normal(s) for k, s in param_shapes.items()}
        out, cache = R._forward_node(None, node, params, ins)
        g = rng.standard_normal(out.shape)
        batch: dict[str, np.ndarray] = {}
        R._backward_node(node, params, cache, g, batch)
        for i in range(3):
            one: dict[str, np.ndarray] = {}
            _, c1 = R._forward_node(None, node, params, [a[i:i + 1] for a in ins])
            R._backward_node(node, params, c1, g[i:i + 1], one)
            for k in one:
                np.testing.assert_allclose(batch[k][i], one[k][0], rtol=1e-12, atol=1e-13)


# --- the whole ViT --------------------------------------------------------------

TINY_VIT = get_model("vit_tiny")


@pytest.fixture(scope="module")
def vit_tiny():
    return _case(TINY_VIT, 2, 0)


@pytest.mark.parametrize("key", list(TINY_VIT.param_shapes()))
def test_vit_tiny_per_example_grads_match_finite_differences(vit_tiny, key):
    fd_check_key(TINY_VIT, vit_tiny, key)


def test_vit_tiny_class_token_gradient_is_position_zeros(vit_tiny):
    """cls and pos row 0 are added into the same token: equal gradients,
    and each example's own."""
    _, _, _, grads = vit_tiny
    np.testing.assert_array_equal(grads["cls/embedding"][:, 0], grads["pos/embedding"][:, 0])
    assert not np.allclose(grads["pos/embedding"][0], grads["pos/embedding"][1])


def test_vit_parity_case_has_no_ties_to_avoid():
    """GELU, softmax and LayerNorm are smooth (no max-pool, no ReLU kink):
    there is no near-tie float32 rounding could flip, so the tie-free case
    is the first seed, and its median clip leaves one example clipped and
    one not."""
    case = R.tie_free_case("vit_tiny", 2)
    w = init_weights(TINY_VIT, 0)
    assert np.array_equal(case.weights["pos/embedding"], w["pos/embedding"])  # seed 0
    assert R.min_pool_gap(TINY_VIT, case.weights, case.x) == np.inf == R.min_relu_gap(TINY_VIT, case.weights, case.x)
    s = R.clip_factors(case.norms, case.clip)
    assert (s < 1).sum() == 1 and (s == 1).sum() == 1


def test_only_the_attention_key_biases_are_zero_gradients():
    """float64.max_rel_error judges a tensor zero up to rounding (NULL_REL) against the
    largest gradient: on the ViT exactly the key projections' biases are such tensors
    (the softmax ignores a per-query shift of its scores), no other."""
    spec = get_model("vit_tiny")
    case = R.tie_free_case("vit_tiny", 2)
    top = max(float(np.abs(v).max()) for v in case.want.values())
    null = {k for k, v in case.want.items() if np.abs(v).max() <= R.NULL_REL * top}
    keys = {f"{n.inputs[1]}/bias" for n in spec.nodes if n.op == "attention"}
    assert null == keys and keys
