"""jax-privacy's clipped sum (noise 0) equals the float64 per-example reference,
on the small CNN and on the tests' ViT (vit_tiny: patches, embeddings,
LayerNorm, attention, GELU, per-example through jax-privacy's vmap)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.reference import float64 as R
from common.reference.spec import MODELS
from frameworks.jax import ADAPTER, steps
from frameworks.jax.models import params_from_exchange, params_to_exchange
from tests.jax import ties

pytestmark = pytest.mark.jax

# model -> (batch, microbatch sizes: None is jax-privacy's default, one vmap;
# an int runs its microbatch loop). small: every loop shape (one trip of B,
# uneven 3, 2, per example). vit_tiny (a compile is ~5 s of CPU here): the
# default and a loop of two 2-wide vmaps; the run-time parity stage
# (common/harness/verify.py) runs every microbatch size of the sweep.
CASES = {"small": (6, (None, 6, 3, 2, 1)), "vit_tiny": (4, (None, 2))}
# small: measured 5.8e-7 (None) .. 1.2e-6 (mb 1) in float32 (seed 1); vit_tiny
# (B 4, seed 0): 6.2e-7 for every microbatch size, standard 6.6e-7 (its key
# bias at its layer's scale, float64.NULL_REL). 1e-5 is ~8x the largest; a clip
# norm 1 % off gives 7.3e-3 (vit_tiny) and more, well above it.
TOL = 1e-5


@functools.cache
def case(model: str) -> R.ClipCase:
    """The model's case at the median clip norm: some examples clipped, some not."""
    b, _ = CASES[model]
    # small: seeded off max-pool near-ties (ties.py); a ViT has none (float64.tie_free_case)
    c = ties.tie_free_case(model, b) if model == "small" else R.tie_free_case(model, b)
    assert (c.norms > c.clip).any() and (c.norms < c.clip).any()
    return c


@functools.cache
def clipped(model: str, microbatch: int | None):
    """Jitted ``(params, x, y, clip) -> clipped sum``: the study's
    ``steps.clipped_sum_fn`` (what ``ADAPTER.clipped_sum`` jits) with the clip
    norm traced, so that the negative control reuses the compile."""
    spec = MODELS[model]
    return jax.jit(lambda p, x, y, clip: steps.clipped_sum_fn("jax_privacy", spec, clip, microbatch)(p, x, y))


def clipped_sum(model: str, microbatch: int | None, clip: float) -> dict[str, np.ndarray]:
    c = case(model)
    with jax.default_matmul_precision("highest"):  # as ADAPTER.clipped_sum
        g = clipped(model, microbatch)(params_from_exchange(c.weights), jnp.asarray(c.x), jnp.asarray(c.y), clip)
    return params_to_exchange(g)


PARAMS = [(m, mb) for m, (_, mbs) in CASES.items() for mb in mbs]


@pytest.mark.parametrize("model,microbatch", PARAMS)
def test_clipped_sum_matches_reference(model, microbatch):
    c = case(model)
    assert R.max_rel_error(clipped_sum(model, microbatch, c.clip), c.want) < TOL


@pytest.mark.parametrize("model", CASES)
def test_standard_is_plain_sum(model):
    c = case(model)
    got = ADAPTER.clipped_sum("standard", model, c.weights, c.x, c.y, 1.0)
    assert R.max_rel_error(got, R.clipped_sum(c.spec, c.weights, c.x, c.y, np.inf)) < TOL


@pytest.mark.parametrize("model,microbatch", [("small", None), ("small", 6), ("vit_tiny", None), ("vit_tiny", 2)])
def test_clipping_is_active(model, microbatch):
    """A wrong clip norm must be detected: the test can fail (on compiles the parity test made)."""
    c = case(model)
    assert R.max_rel_error(clipped_sum(model, microbatch, c.clip * 1.01), c.want) > 1e-4


def test_direct_rows_have_no_clipped_sum():
    c = case("small")
    with pytest.raises(NotImplementedError, match="direct-use"):
        ADAPTER.clipped_sum("direct_jax_privacy", "small", c.weights, c.x, c.y, c.clip)
