"""The graph spec and the float64 reference on every op beyond the chain CNNs'
(GroupNorm, strided and 1x1 convs, residual add, average and global average
pools), checked by finite differences like test_float64.py does for small."""
import numpy as np
import pytest

from common.reference import float64 as R
from common.reference.exchange import check_weights, init_weights, make_batch
from common.reference.spec import INPUT, ModelSpec, Node, get_model

# Every op kind on an 8x8 input: conv (bias) -> GroupNorm(2) -> ReLU, then a
# strided 3x3 conv and a strided 1x1 shortcut added; max-pool and avg-pool
# of the sum added; global average pool; dense.
TINY = ModelSpec("tiny_graph", (8, 8, 3), (
    Node("c0", "conv", (INPUT,), 4, 3, 1, 1),
    Node("g0", "gn", ("c0",), groups=2),
    Node("r0", "relu", ("g0",)),
    Node("c1", "conv", ("r0",), 4, 3, 2, 1, bias=False),
    Node("sc", "conv", ("r0",), 4, 1, 2, 0, bias=False),
    Node("a0", "add", ("c1", "sc")),
    Node("mp", "maxpool", ("a0",)),
    Node("ap", "avgpool", ("a0",)),
    Node("a1", "add", ("mp", "ap")),
    Node("gap", "gap", ("a1",)),
    Node("head", "dense", ("gap",), 10),
), expected_params=3 * 3 * 3 * 4 + 4 + 8 + 3 * 3 * 4 * 4 + 4 * 4 + 4 * 10 + 10)


def _fd(spec, w64, x, y, key, idx, eps):
    plus, minus = dict(w64), dict(w64)
    plus[key] = w64[key].copy(); plus[key][idx] += eps
    minus[key] = w64[key].copy(); minus[key][idx] -= eps
    lp = R.per_example_losses(R.forward(spec, plus, x), y)[0]
    lm = R.per_example_losses(R.forward(spec, minus, x), y)[0]
    return (lp - lm) / (2 * eps)


def _fd_check(spec, w, x, y, grads, key, idx):
    """Central differences in float64 (error ~eps^2 * third derivative +
    1e-16/eps, ~1e-9 at eps 1e-6). Two step sizes: WRN's stem GroupNorm
    normalises single channels over 1024 positions, so some ReLU input lies
    within 1e-6 of its kink for some weights (measured: s0b0_gn0/scale[3] is
    7e-5 off at 1e-6, 1e-8 at 1e-8); a wrong gradient is off at both step
    sizes, a kink spoils one."""
    w64 = {k: v.astype(np.float64) for k, v in w.items()}
    for i in range(len(y)):
        want = grads[key][i][idx]
        errs = [abs(_fd(spec, w64, x[i:i + 1], y[i:i + 1], key, idx, eps) - want) for eps in (1e-6, 1e-7)]
        assert min(errs) <= 1e-6 * max(1.0, abs(want)), (key, idx, i, errs, want)


def _case(spec, batch: int, seed: int):
    """(weights, x, y, float64 per-example grads) of ``spec`` at ``batch`` and ``seed``."""
    w = init_weights(spec, seed)
    x, y = make_batch(spec, batch, seed)
    return w, x, y, R.per_example_grads(spec, w, x, y)


@pytest.fixture(scope="module")
def tiny():
    return _case(TINY, 3, 2)


def test_tiny_graph_params_and_shapes():
    assert TINY.param_count == TINY.expected_params
    assert TINY.shapes["c1"] == TINY.shapes["sc"] == (4, 4, 4) and TINY.shapes["gap"] == (4,)
    assert not TINY.is_chain and get_model("small").is_chain


def fd_check_key(spec, case, key: str, points: int = 3) -> None:
    """``_fd_check`` at ``points`` indices of ``key`` drawn by a generator seeded per key."""
    w, x, y, grads = case
    rng = np.random.default_rng(len(key))
    for _ in range(points):
        idx = tuple(int(rng.integers(0, d)) for d in w[key].shape)
        _fd_check(spec, w, x, y, grads, key, idx)


@pytest.mark.parametrize("key", list(TINY.param_shapes()))
def test_tiny_graph_grads_match_finite_differences(tiny, key):
    fd_check_key(TINY, tiny, key)


WRN = get_model("wrn16_4")


@pytest.fixture(scope="module")
def wrn():
    return _case(WRN, 2, 1)


def test_wrn10_1_the_tests_wrn_has_wrn16_4s_layer_kinds():
    small = get_model("wrn10_1")
    assert small.param_count == small.expected_params == 77_850
    shapes = small.param_shapes()
    # stage 0 keeps its identity shortcut (16 -> 16 channels); stages 1 and 2 open with a 1x1 stride-2 conv
    assert [k for k in shapes if "short" in k] == ["s1b0_short/kernel", "s2b0_short/kernel"]
    assert {n.op for n in small.nodes} == {n.op for n in WRN.nodes}


def test_wrn16_4_layout():
    shapes = WRN.param_shapes()
    assert WRN.param_count == WRN.expected_params == 2_748_890
    # 1x1 shortcuts exactly where a block changes shape: each stage's first block
    assert [k for k in shapes if "short" in k] == ["s0b0_short/kernel", "s1b0_short/kernel", "s2b0_short/kernel"]
    assert shapes["s1b0_short/kernel"] == (1, 1, 64, 128) and shapes["s2b0_conv0/kernel"] == (3, 3, 128, 256)
    assert WRN.shapes["s1b0_conv0"] == (16, 16, 128) and WRN.shapes["s2b1_add"] == (8, 8, 256)
    assert shapes["final_gn/scale"] == (256,) and shapes["head/kernel"] == (256, 10)
    assert not any(k.endswith("/bias") and shapes[k.split("/")[0] + "/kernel"][0] > 1
                   for k in shapes if "conv" in k or "stem" in k or "short" in k)  # bias-free convs
    check_weights(WRN, init_weights(WRN, 0))


@pytest.mark.parametrize("key,idx", [("stem/kernel", (1, 2, 0, 5)), ("s0b0_gn0/scale", (3,)),
                                     ("s0b0_short/kernel", (0, 0, 7, 9)), ("s1b0_short/kernel", (0, 0, 11, 100)),
                                     ("s1b0_conv0/kernel", (2, 0, 5, 17)), ("s2b1_gn1/bias", (200,)),
                                     ("final_gn/scale", (17,)), ("head/kernel", (100, 3)), ("head/bias", (4,))])
def test_wrn16_4_grads_match_finite_differences(wrn, key, idx):
    w, x, y, grads = wrn
    _fd_check(WRN, w, x, y, grads, key, idx)


def test_wrn16_4_has_no_max_pool_ties(wrn):
    w, x, _, _ = wrn
    assert R.min_pool_gap(WRN, w, x) == np.inf
