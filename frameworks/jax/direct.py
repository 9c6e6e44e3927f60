"""Direct use of jax-privacy: the study's ``jax_privacy`` row (its default
``microbatch_size=None``) written the way jax-privacy 2.x documents a DP-SGD
loop for a Flax Linen CNN (``examples/dp_sgd_flax_linen_mnist.py``; the
``jax_api_example.py`` shown on Read the Docs has the same shape), with
nothing of the harness (frameworks/jax/steps.py) in it:

    grad_fn = jax_privacy.clipped_grad(loss_fn, l2_clip_norm=C, batch_argnums=(1, 2),
                                       normalize_by=B)
    privatizer = noise_addition.gaussian_privatizer(
        stddev=sigma * grad_fn.l2_norm_bound, prng_key=jax.random.key(seed))
    optimizer = optax.sgd(lr)

    @jax.jit
    def train_step(params, opt_state, noise_state, images, labels):
        clipped_grads = grad_fn(params, images, labels)
        noisy_grads, noise_state = privatizer.update(clipped_grads, noise_state)
        updates, opt_state = optimizer.update(noisy_grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, noise_state

Every other ``clipped_grad`` option is at its default (``microbatch_size``
None: one vmap over the batch, ``keep_batch_dim``, ``nan_safe``, no
``rescale_to_unit_norm``: the study clips to C, it does not rescale). The
batch mean is the library's ``normalize_by=B`` with the noise calibrated to
the callable's own ``l2_norm_bound`` (C/B), as the example does; that is the
study's "noise N(0, (sigma C)^2) on the sum, then / B" (docs/design.md §3) in
distribution, and with the same key the very same noise draws. The loss is
optax's integer-label cross-entropy, ``.mean()`` as in the example (inside
``clipped_grad`` each call sees one example). No buffer donation, as a user
writes it.

Same model (frameworks/jax/models.py CNN), initial weights
(``common.reference.exchange.init_weights``), batch (``make_batch``) and seed as the
study's rows; the matmul precision is the adapter's process-wide setting
(``JaxAdapter.setup``: float32 "highest").
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import jax_privacy
import optax
from jax_privacy import noise_addition

from common.harness.adapter import Bench
from common.harness.config import IMPLS, RunConfig
from common.reference.exchange import init_weights, make_batch
from common.reference.spec import get_model
from frameworks.jax.models import CNN, params_from_exchange

DIRECT = tuple(name for name, impl in IMPLS["jax"].items() if impl.kind == "direct")


def make(cfg: RunConfig) -> tuple[Callable[..., Any], tuple]:
    """The user's jitted ``train_step`` and its first arguments
    ``(params, opt_state, noise_state, images, labels)``."""
    if cfg.impl != "direct_jax_privacy":
        raise NotImplementedError(f"jax direct impl {cfg.impl!r} is not implemented; available: direct_jax_privacy")
    spec = get_model(cfg.model)
    model = CNN(spec)
    params = params_from_exchange(init_weights(spec, cfg.seed))
    images, labels = (jnp.asarray(a) for a in make_batch(spec, cfg.batch_size, cfg.seed))

    def loss_fn(params, images, labels):
        logits = model.apply({"params": params}, images)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    grad_fn = jax_privacy.clipped_grad(
        loss_fn,
        l2_clip_norm=cfg.clip_norm,
        batch_argnums=(1, 2),
        normalize_by=cfg.batch_size,
    )
    privatizer = noise_addition.gaussian_privatizer(
        stddev=cfg.noise_multiplier * grad_fn.l2_norm_bound, prng_key=jax.random.key(cfg.seed)
    )
    optimizer = optax.sgd(cfg.learning_rate)
    opt_state = optimizer.init(params)
    noise_state = privatizer.init(params)

    @jax.jit
    def train_step(params, opt_state, noise_state, images, labels):
        clipped_grads = grad_fn(params, images, labels)
        noisy_grads, noise_state = privatizer.update(clipped_grads, noise_state)
        updates, opt_state = optimizer.update(noisy_grads, opt_state)
        params = optax.apply_updates(params, updates)
        return params, opt_state, noise_state

    return train_step, (params, opt_state, noise_state, images, labels)


def build_direct(cfg: RunConfig) -> Bench:
    """The direct-use loop for ``cfg``; ``step()`` runs one ``train_step`` and
    returns its real output ``(params, opt_state, noise_state)``."""
    train_step, (params, opt_state, noise_state, images, labels) = make(cfg)
    holder = [(params, opt_state, noise_state)]

    def step():
        holder[0] = train_step(*holder[0], images, labels)
        return holder[0]

    device = jax.devices()[0]

    def peak_memory() -> int | None:
        stats = device.memory_stats() if device.platform != "cpu" else None
        return stats.get("peak_bytes_in_use") if stats else None

    notes = {"jit": True, "x64": bool(jax.config.jax_enable_x64), "direct_of": list(cfg.impl_info.direct_of),
             "normalize_by": cfg.batch_size}
    return Bench(step=step, sync=jax.block_until_ready, peak_memory=peak_memory, notes=notes)
