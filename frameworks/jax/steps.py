"""Training steps for JAX: standard, jax-privacy ``clipped_grad``, fastclip.

Every DP step is: clipped gradient sum -> Gaussian noise N(0, (sigma C)^2)
(jax-privacy's ``gaussian_privatizer``) -> divide by B -> the same plain SGD
update (optax.sgd, no momentum) as ``standard`` (DESIGN.md §3). Only the
clipped-sum implementation differs between DP impls.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax_privacy import clipped_grad
from jax_privacy.noise_addition import gaussian_privatizer

from common.config import RunConfig
from common.spec import ModelSpec
from frameworks.jax.models import CNN, cross_entropy

GradFn = Callable[[dict, jnp.ndarray, jnp.ndarray], dict]


def loss_fn(model: CNN) -> Callable[[dict, jnp.ndarray, jnp.ndarray], jnp.ndarray]:
    """Summed per-example cross-entropy of a batch (a batch of 1 inside vmap)."""
    def loss(params: dict, x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
        return cross_entropy(model.apply({"params": params}, x), y).sum()
    return loss


def clipped_sum_fn(impl: str, spec: ModelSpec, clip_norm: float, microbatch_size: int | None) -> GradFn:
    """``(params, x, y) -> sum_i clip(g_i, C)`` for a DP impl (noise 0)."""
    model = CNN(spec)
    if impl == "jax_privacy":
        return clipped_grad(loss_fn(model), l2_clip_norm=clip_norm, batch_argnums=(1, 2),
                            microbatch_size=microbatch_size)
    if impl == "fastclip":
        from frameworks.jax.fastclip import fastclip_grad
        return fastclip_grad(model, clip_norm)
    raise ValueError(f"no clipped-sum implementation {impl!r} in jax")


def plain_sum_fn(spec: ModelSpec) -> GradFn:
    """Gradient of the summed loss = sum of per-example gradients."""
    return jax.grad(loss_fn(CNN(spec)))


def make_step(cfg: RunConfig, spec: ModelSpec) -> tuple[Callable[..., Any], Callable[[dict], Any]]:
    """Jitted ``step(state, x, y) -> state`` and ``init(params) -> state``."""
    b = cfg.batch_size
    sgd = optax.sgd(cfg.learning_rate)
    if cfg.mode == "standard":
        grad_sum = plain_sum_fn(spec)
        noise = optax.identity()
    else:
        grad_sum = clipped_sum_fn(cfg.impl, spec, cfg.clip_norm, cfg.microbatch_size)
        noise = gaussian_privatizer(stddev=cfg.noise_multiplier * cfg.clip_norm, prng_key=cfg.seed)

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
