"""DP-SGD as it is trained, in JAX (issue 28; common/harness/deployed.py).

Every row samples its logical batches with jax-privacy's own sampler,
``batch_selection.CyclicPoissonSampling(sampling_prob=q, iterations=...,
truncated_batch_size=cap)`` (cycle length 1: plain Poisson sampling), one
iterator per pass of ceil(N / L) logical steps, all passes drawing from one
``numpy`` generator seeded by ``cfg.seed``. A logical step is then:

- ``pad`` / ``truncate``: ``batch_selection.split_and_pad_global_batch(idx, P)``
  cuts it into physical batches of exactly P indices, the last padded with -1
  (an empty logical batch is one all-padding batch); each runs the jitted
  ``accumulate``: gather (padding slots read example 0, a real, finite
  example) and add the impl's clipped sum with ``is_padding_example=idx < 0``
  (jax-privacy's ``clipped_grad`` zeroes those examples' clipped gradients;
  fastclip gives them clip factor 0) into the accumulator. One shape: one
  compile.
- ``recompile``: the whole logical batch is one physical batch of its own
  size (no padding), so ``accumulate`` compiles once per distinct size.

then the jitted ``finish``: the study's Gaussian privatizer
(``steps._parts``: jax-privacy's ``gaussian_privatizer``, stddev sigma C,
keyed by the seed) once on the summed clipped gradients, divide by
L = ``cfg.logical_batch`` (jax-privacy's normalisation by the expected
batch size), the study's SGD update; it also hands back a zeroed accumulator
for the next step.

Counters are read from what ran: the index arrays given to ``accumulate``
(real and padding slots, physical steps), the calls of ``finish`` (logical
steps), the compile caches of both jitted functions (``_cache_size()``), and
the noise draws counted by a ``jax.debug.callback`` inside the privatizer's
``update`` (it fires each time the compiled ``finish`` actually adds noise, so
``noise_draws`` is current once the step's result has been synced).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax_privacy import batch_selection

from common.harness.deployed import COUNTERS, DeployedBench, DeployedConfig
from common.reference.exchange import init_weights, make_batch
from common.reference.spec import get_model
from frameworks.jax import steps
from frameworks.jax.models import params_from_exchange


class Sampler:
    """jax-privacy's Poisson sampler as an endless stream of logical batches
    (int32 indices): a new ``batch_iterator`` per pass when one is exhausted,
    the same seeded generator throughout (so passes do not repeat)."""

    def __init__(self, cfg: DeployedConfig):
        self.n = cfg.dataset_size
        self.strategy = batch_selection.CyclicPoissonSampling(
            sampling_prob=cfg.sampling_rate, iterations=max(1, math.ceil(cfg.dataset_size / cfg.logical_batch)),
            truncated_batch_size=cfg.cap)
        self.rng = np.random.default_rng(cfg.seed)
        self._it: Iterator[np.ndarray] = iter(())

    def __call__(self) -> np.ndarray:
        for _ in range(2):
            try:
                # int32 always: the sampler's dtype follows N (np.min_scalar_type), and a
                # different index dtype would be a different compiled shape.
                return np.asarray(next(self._it), dtype=np.int32)
            except StopIteration:
                self._it = self.strategy.batch_iterator(self.n, rng=self.rng)
        raise RuntimeError("jax-privacy's sampler yielded no batch")


def counted_privatizer(noise: optax.GradientTransformation, count: Callable[[], None]
                       ) -> optax.GradientTransformation:
    """``noise`` whose ``update`` also calls ``count`` on the host each time
    the compiled code runs it (``jax.debug.callback``): noise draws counted
    where they happen, not where they are traced."""
    def update(updates, state, params=None):
        jax.debug.callback(count)
        return noise.update(updates, state, params)
    return optax.GradientTransformation(noise.init, update)


def physical_batches(cfg: DeployedConfig, idx: np.ndarray) -> list[np.ndarray]:
    """The physical batches of one logical batch: padded to P by jax-privacy's
    ``split_and_pad_global_batch``, or (``recompile``) the batch itself, none
    where it is empty."""
    if cfg.strategy == "recompile":
        return [idx] if idx.size else []
    return batch_selection.split_and_pad_global_batch(idx, cfg.physical_batch)


def build(cfg: DeployedConfig, batches: Callable[[], np.ndarray] | None = None) -> DeployedBench:
    """One deployed JAX row (``cfg.impl``: jax_privacy or fastclip; strategy
    pad, truncate or recompile), on the study's model, weights and SGD.
    ``batches``: where the logical batches come from (default jax-privacy's
    sampler, ``Sampler(cfg)``; tests pass chosen index batches)."""
    cfg.validate()
    if cfg.framework != "jax":
        raise ValueError(f"not a jax row: {cfg.framework}")
    spec = get_model(cfg.model)
    rc = cfg.reference()  # the study's RunConfig of the same impl: its clipped sum, privatizer, SGD
    grad_sum, noise, sgd = steps._parts(rc, spec)
    x_all, y_all = (jnp.asarray(a) for a in make_batch(spec, cfg.dataset_size, cfg.seed))
    params = params_from_exchange(init_weights(spec, cfg.seed))
    count = {k: 0 for k in COUNTERS}
    sizes: list[int] = []

    def drew() -> None:
        count["noise_draws"] += 1

    noise = counted_privatizer(noise, drew)
    norm = float(cfg.logical_batch)

    def accumulate(acc: dict, params: dict, x_all: jnp.ndarray, y_all: jnp.ndarray, idx: jnp.ndarray) -> dict:
        pad = idx < 0
        safe = jnp.where(pad, 0, idx)  # padding reads example 0; its clipped gradient is zeroed
        g = grad_sum(params, x_all[safe], y_all[safe], is_padding_example=pad)
        return jax.tree.map(jnp.add, acc, g)

    def finish(state: tuple, acc: dict) -> tuple[tuple, dict]:
        params, noise_state, opt_state = state
        g, noise_state = noise.update(acc, noise_state)
        g = jax.tree.map(lambda t: t / norm, g)
        updates, opt_state = sgd.update(g, opt_state, params)
        return (optax.apply_updates(params, updates), noise_state, opt_state), jax.tree.map(jnp.zeros_like, acc)

    accumulate_j = jax.jit(accumulate, donate_argnums=0)
    finish_j = jax.jit(finish, donate_argnums=(0, 1))
    holder = {"state": (params, noise.init(params), sgd.init(params)),
              "acc": jax.tree.map(jnp.zeros_like, params)}
    sample = Sampler(cfg) if batches is None else batches

    def step() -> dict:
        idx = np.asarray(sample(), dtype=np.int32)
        sizes.append(int(idx.size))
        acc, params = holder["acc"], holder["state"][0]
        for batch in physical_batches(cfg, idx):
            acc = accumulate_j(acc, params, x_all, y_all, jnp.asarray(batch))
            real = int(np.count_nonzero(batch >= 0))
            count["real_examples"] += real
            count["padded_examples"] += int(batch.size) - real
            count["physical_steps"] += 1
        holder["state"], holder["acc"] = finish_j(holder["state"], acc)
        count["logical_steps"] += 1
        return holder["state"][0]

    def counters() -> dict[str, int]:
        return dict(count, compiles=accumulate_j._cache_size() + finish_j._cache_size())

    notes = {"sampler": "jax_privacy.batch_selection.CyclicPoissonSampling",
             "split": "none (one physical batch per logical batch)" if cfg.strategy == "recompile"
             else "jax_privacy.batch_selection.split_and_pad_global_batch",
             "clipped_sum": "jax_privacy.clipped_grad" if cfg.impl == "jax_privacy" else "dpbench fastclip_grad",
             "padding_mask": None if cfg.strategy == "recompile" else "is_padding_example",
             "noise": "jax_privacy.noise_addition.gaussian_privatizer, once per logical step",
             "normalised_by": cfg.logical_batch, "truncated_batch_size": cfg.cap,
             "x64": bool(jax.config.jax_enable_x64)}
    return DeployedBench(step=step, sync=jax.block_until_ready, counters=counters, sizes=lambda: list(sizes),
                         notes=notes)

