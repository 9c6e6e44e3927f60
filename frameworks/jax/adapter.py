"""The JAX side of the seam (common.harness.adapter.Adapter)."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from common.harness.adapter import Adapter, Bench
from common.harness.config import IMPLS, XLA_DEFAULT, RunConfig
from common.reference.exchange import Weights, init_weights, make_batch
from common.reference.spec import get_model
from common.harness.threads import JAX_XLA_FLAGS
from frameworks.jax import data_parallel, steps
from frameworks.jax.models import CNN, params_from_exchange, params_to_exchange


def allocator_peak(device) -> int | None:
    """The device allocator's peak bytes in use since the process started
    (XLA's ``memory_stats``; JAX has no reset, so it includes the build and
    the compiling step: the worker reads it before a reference row is built).
    None on a CPU: XLA:CPU keeps no allocator statistics (the worker measures
    RSS there)."""
    stats = device.memory_stats() if device.platform != "cpu" else None
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


class JaxAdapter(Adapter):
    """jax-privacy ``clipped_grad``, the project's fastclip and standard
    training, each one jitted step.

    Phases (``RunConfig.phases``; ``steps.make_phases`` has the details):
    every prefix is its own jitted function of the current state and batch.
    standard: ``forward`` (loss), ``backward`` (gradient); DP: ``forward``,
    ``backward+clip`` (the impl's whole clipped sum, noise 0: XLA fuses
    per-example gradients/norms and clipping), ``noise`` (+ Gaussian noise);
    then ``update`` (divide by B, SGD) is the full step minus the last prefix.

    ``jax_privacy``'s ``microbatch_size`` None is the library's default (one
    vmap over the whole batch, no microbatch loop); an int is passed on as is.
    Direct-use impls (``kind`` "direct", frameworks/jax/direct.py) are built
    by ``direct.build_direct``: no phases, no ``clipped_sum``. The
    ``xla-default`` variant is the same step; only the worker's XLA_FLAGS
    differ (the runner starts it without the study's flag), which ``build``
    checks so that a row is never mislabelled.
    """

    framework = "jax"

    def setup(self, threads: int, devices: int = 1) -> None:
        # XLA:CPU reads its thread settings (XLA_FLAGS, see common/harness/threads.py)
        # from the environment at backend start; nothing to call here.
        del threads
        # float32 means float32 in every framework: no TF32 matmuls/convs on
        # GPUs (torch and tf adapters disable it too). No effect on CPU.
        jax.config.update("jax_default_matmul_precision", "highest")

    def versions(self) -> dict[str, str]:
        import flax
        import jax_privacy
        return {"jax": jax.__version__, "flax": flax.__version__, "jax-privacy": jax_privacy.__version__,
                "dpbench": "fastclip"}

    def device(self) -> str:
        d = jax.devices()[0]
        return "cpu" if d.platform == "cpu" else d.device_kind

    def accelerator(self) -> dict:
        d = jax.devices()[0]
        precision = jax.config.jax_default_matmul_precision
        info = {"platform": d.platform, "platform_version": d.client.platform_version,
                "matmul_precision": precision,
                # "highest" runs float32 dots and convs as float32; anything lower may use TF32 on a GPU.
                "tf32": None if d.platform == "cpu" else precision not in ("highest", "float32")}
        if d.platform != "cpu":
            import importlib.metadata
            info["plugins"] = {m.metadata["Name"]: m.version for m in importlib.metadata.distributions()
                               if (m.metadata["Name"] or "").startswith(("jax-cuda", "jax_cuda"))}
        return info

    def build(self, cfg: RunConfig) -> Bench:
        flags = os.environ.get("XLA_FLAGS", "")
        if cfg.variant == XLA_DEFAULT and JAX_XLA_FLAGS in flags:
            raise ValueError(f"variant {XLA_DEFAULT!r} must run with XLA's default flags, "
                             f"but XLA_FLAGS has {JAX_XLA_FLAGS!r}: {flags!r}")
        if cfg.impl_info.kind == "direct":
            from frameworks.jax.direct import build_direct
            return build_direct(cfg)
        spec = get_model(cfg.model)
        x, y = (jnp.asarray(a) for a in make_batch(spec, cfg.global_batch_size, cfg.seed))
        params = params_from_exchange(init_weights(spec, cfg.seed))
        mesh = data_parallel.mesh_of(cfg.devices) if cfg.devices > 1 else None
        if mesh is not None:
            params, x, y = data_parallel.place(mesh, params, x, y)
        step, init = steps.make_step(cfg, spec, mesh)
        holder = [init(params)]

        def run_step():
            holder[0] = step(holder[0], x, y)
            return holder[0]

        device = jax.devices()[0]
        peak_memory = lambda: allocator_peak(device)  # noqa: E731

        phases = {}
        if cfg.phases:  # prefixes of the step on the state the timed step is at when they run
            phases = {name: (lambda fn=fn: fn(holder[0], x, y)) for name, fn in steps.make_phases(cfg, spec).items()}

        noise_draw = None
        if cfg.impl == "fastclip" and cfg.noise_multiplier > 0:
            draw = steps.make_noise_draw(cfg, spec)
            noise_draw = lambda: draw(holder[0])  # noqa: E731

        notes = {"jit": True, "x64": bool(jax.config.jax_enable_x64)}
        if mesh is not None:
            notes["data_parallel"] = {"engine": "jax.shard_map + psum", "devices": [str(d) for d in mesh.devices],
                                      "peak_mem_of": "device 0 (GPU) / the one process of all host devices (CPU)"}
        return Bench(step=run_step, sync=jax.block_until_ready, peak_memory=peak_memory, notes=notes, phases=phases,
                     noise_draw=noise_draw)

    @jax.default_matmul_precision("highest")
    def forward(self, model: str, weights: Weights, x: np.ndarray) -> np.ndarray:
        logits = CNN(get_model(model)).apply({"params": params_from_exchange(weights)}, jnp.asarray(x))
        return np.asarray(logits)

    @jax.default_matmul_precision("highest")
    def clipped_sum(self, impl: str, model: str, weights: Weights, x: np.ndarray, y: np.ndarray,
                    clip_norm: float, microbatch_size: int | None = None, variant: str = "",
                    devices: int = 1) -> dict[str, np.ndarray]:
        info = IMPLS["jax"].get(impl)
        if info is not None and info.kind == "direct":
            raise NotImplementedError(f"{impl} is a direct-use row: no clipped_sum (the parity table skips it)")
        spec = get_model(model)
        fn = steps.plain_sum_fn(spec) if impl == "standard" else steps.clipped_sum_fn(impl, spec, clip_norm, microbatch_size)
        params, xj, yj = params_from_exchange(weights), jnp.asarray(x), jnp.asarray(y)
        if devices > 1:
            mesh = data_parallel.mesh_of(devices)
            fn = data_parallel.summed_over(mesh, fn)
            params, xj, yj = data_parallel.place(mesh, params, xj, yj)
        g = jax.jit(fn)(params, xj, yj)
        return params_to_exchange(g)
