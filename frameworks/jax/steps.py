"""Training steps for JAX: standard, jax-privacy ``clipped_grad``, fastclip.

Every DP step is: clipped gradient sum -> Gaussian noise N(0, (sigma C)^2)
(jax-privacy's ``gaussian_privatizer``) -> divide by B -> the same plain SGD
update (optax.sgd, no momentum) as ``standard`` (docs/design.md §3). Only the
clipped-sum implementation differs between DP impls.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax_privacy import clipped_grad
from jax.sharding import Mesh
from jax_privacy.noise_addition import gaussian_privatizer

from common.harness.adapter import Unsupported
from common.harness.config import RunConfig
from common.reference import fastclip_plan
from common.reference.spec import ModelSpec
from frameworks.jax import data_parallel
from frameworks.jax.models import CNN, cross_entropy

GradFn = Callable[[dict, jnp.ndarray, jnp.ndarray], dict]


def loss_fn(model: CNN) -> Callable[[dict, jnp.ndarray, jnp.ndarray], jnp.ndarray]:
    """Summed per-example cross-entropy of a batch (a batch of 1 inside vmap)."""
    def loss(params: dict, x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
        return cross_entropy(model.apply({"params": params}, x), y).sum()
    return loss


def clipped_sum_fn(impl: str, spec: ModelSpec, clip_norm: float, microbatch_size: int | None) -> GradFn:
    """``(params, x, y) -> sum_i clip(g_i, C)`` for a DP impl (noise 0).

    jax_privacy: ``microbatch_size`` None is the library's default: optax's
    ``micro_vmap`` is then a plain ``jax.vmap`` + sum (no loop). An int k
    (B included) runs ``microbatch``'s ``lax.fori_loop`` over B/k chunks of a
    k-wide vmap, with a traced trip count; on XLA:CPU even the one-trip loop
    of k = B is slower than None: the convs are inside the loop body when
    XLA:CPU canonicalises conv layouts (entry computation only), so they
    stay XLA's elemental loops instead of Eigen calls
    (``explain.eigen_layout``).
    """
    model = CNN(spec)
    if impl == "jax_privacy":
        return clipped_grad(loss_fn(model), l2_clip_norm=clip_norm, batch_argnums=(1, 2),
                            microbatch_size=microbatch_size)
    if impl == "fastclip":
        from frameworks.jax.fastclip import SUPPORTED_OPS
        if gap := fastclip_plan.model_gap(spec, SUPPORTED_OPS):
            raise Unsupported(gap)
        from frameworks.jax.fastclip import fastclip_grad
        return fastclip_grad(model, clip_norm)
    raise ValueError(f"no clipped-sum implementation {impl!r} in jax")


def plain_sum_fn(spec: ModelSpec) -> GradFn:
    """Gradient of the summed loss = sum of per-example gradients."""
    return jax.grad(loss_fn(CNN(spec)))


def _parts(cfg: RunConfig, spec: ModelSpec, mesh: Mesh | None = None) -> tuple[GradFn, Any, Any]:
    """What a step is made of: gradient sum, noise transform, SGD. With a
    ``mesh`` the gradient sum is each device's sum of its shard, summed over
    the devices (``data_parallel.summed_over``); noise and SGD follow on the
    replicated total, so the noise is drawn once."""
    sgd = optax.sgd(cfg.learning_rate)
    if cfg.mode == "standard":
        grad_sum, noise = plain_sum_fn(spec), optax.identity()
    else:
        grad_sum = clipped_sum_fn(cfg.impl, spec, cfg.clip_norm, cfg.microbatch_size)
        noise = gaussian_privatizer(stddev=cfg.noise_multiplier * cfg.clip_norm, prng_key=cfg.seed)
    if mesh is not None:
        grad_sum = data_parallel.summed_over(mesh, grad_sum)
    return grad_sum, noise, sgd


def make_step(cfg: RunConfig, spec: ModelSpec, mesh: Mesh | None = None) -> tuple[Callable[..., Any], Callable[[dict], Any]]:
    """Jitted ``step(state, x, y) -> state`` and ``init(params) -> state``
    (``mesh``: data-parallel over its devices, x and y the global batch)."""
    b = cfg.global_batch_size
    grad_sum, noise, sgd = _parts(cfg, spec, mesh)

    def step(state: tuple, x: jnp.ndarray, y: jnp.ndarray) -> tuple:
        params, noise_state, opt_state = state
        g = grad_sum(params, x, y)
        g, noise_state = noise.update(g, noise_state)
        g = jax.tree.map(lambda t: t / b, g)  # batch mean (standard: mean loss)
        updates, opt_state = sgd.update(g, opt_state, params)
        return optax.apply_updates(params, updates), noise_state, opt_state

    def init(params: dict) -> tuple:
        return params, noise.init(params), sgd.init(params)

    return jax.jit(step, donate_argnums=0), init


def make_noise_draw(cfg: RunConfig, spec: ModelSpec) -> Callable[[tuple], Any]:
    """Jitted ``draw(state) -> noised zeros``: the step's Gaussian privatizer
    alone (``Bench.noise_draw``), on a zero gradient tree shaped like the
    parameters, from the state's noise state (left as it is; replicated
    parameters give a replicated draw)."""
    _, noise, _ = _parts(cfg, spec)

    def draw(state: tuple) -> dict:
        return noise.update(jax.tree.map(jnp.zeros_like, state[0]), state[1])[0]
    return jax.jit(draw)


def make_phases(cfg: RunConfig, spec: ModelSpec) -> dict[str, Callable[[tuple, jnp.ndarray, jnp.ndarray], Any]]:
    """Jitted cumulative prefixes of ``make_step``'s step, in order, each a
    function of the same ``(state, x, y)`` that returns its real output and
    leaves the state alone (no donation, new noise state dropped):

    - ``forward``: the summed cross-entropy of the batch (one batched forward);
    - standard ``backward``: + its gradient (``plain_sum_fn``);
    - DP ``backward+clip``: the impl's clipped sum instead (jax-privacy
      ``clipped_grad``: per-example gradients in vmap over microbatches, clip,
      sum; fastclip: one backward for the layer output gradients, norms,
      clipped sum). It is one function that XLA compiles and fuses as a
      whole, so per-example gradients and clipping have no honest cut;
      the forward pass inside it is not the batched ``forward`` above;
    - DP ``noise``: + the Gaussian privatizer's noise.

    The rest of the step (``FULL_STEP_PHASE``): divide by B, SGD update.
    """
    grad_sum, noise, _ = _parts(cfg, spec)
    loss = loss_fn(CNN(spec))

    def forward(state: tuple, x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
        return loss(state[0], x, y)

    def backward(state: tuple, x: jnp.ndarray, y: jnp.ndarray) -> dict:
        return grad_sum(state[0], x, y)

    def noised(state: tuple, x: jnp.ndarray, y: jnp.ndarray) -> tuple:
        return noise.update(grad_sum(state[0], x, y), state[1])

    if cfg.mode == "standard":
        fns = {"forward": forward, "backward": backward}
    else:
        fns = {"forward": forward, "backward+clip": backward, "noise": noised}
    return {name: jax.jit(fn) for name, fn in fns.items()}
