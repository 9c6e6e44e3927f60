"""Why is DP slower? The seed's hand-read JAXPR analysis, automated (issue 7).

``analyze(impl, model, batch_size, microbatch_size)`` builds the very jitted
step the benchmark times (``steps.make_step``) and reads two things from it:

* the JAXPR, walked recursively through every sub-jaxpr (jit/pjit,
  custom_jvp/vjp, remat, cond branches, scan and while bodies, with loop trip
  counts resolved where they are static or computable from constants):
  every ``conv_general_dilated`` and ``dot_general`` with shapes and group
  counts, which of them produce weight gradients, the largest intermediates,
  and, per model layer, whether a per-example kernel gradient is materialised
  (an intermediate holding ``k`` kernel-shaped gradients side by side: shape
  ``(k, *kernel)`` in any order, ``(k, fan_in, features)``, or a grouped conv
  whose output is the kernel with a feature dim ``k`` times too wide -- the
  seed's ``feature_group_count=2`` pattern);
* the compiled HLO: XLA's ``cost_analysis()`` and ``memory_analysis()``, and
  the convolutions that survive optimisation with their group counts.

Everything returned is plain JSON. ``python -m frameworks.jax.explain --json
--impl jax_privacy --model small --batch-size 64 --microbatch-size 64``
prints it (``frameworks.jax.analysis``, the analysis seam's JAX side, adds the summary every
framework's analysis has; ``common.report.explain`` runs that and renders
the Markdown).
"""
from __future__ import annotations

import os
import time
from math import prod
from typing import Any

import jax
import jax.numpy as jnp

from common.harness.config import RunConfig
from common.reference.exchange import init_weights, make_batch
from common.reference.spec import get_model
from frameworks.jax.explain.hlo import eigen_layout, hlo_facts
from frameworks.jax.explain.jaxpr import TOP_N, jaxpr_facts, walk
from frameworks.jax.explain.shapes import kernel_form, match_layer

__all__ = ["SCHEMA", "TOP_N", "analyze", "build", "eigen_layout", "hlo_facts", "jaxpr_facts", "kernel_form",
           "match_layer", "walk"]

SCHEMA = 1


def build(impl: str, model: str, batch_size: int, microbatch_size: int | None = None):
    """(config, jitted step, its arguments) exactly as the benchmark builds
    them: ``(state, x, y)`` for study rows (``steps.make_step``), the user's
    ``(params, opt_state, noise_state, images, labels)`` for direct-use rows
    (``direct.make``). ``microbatch_size`` None: jax-privacy's default."""
    from frameworks.jax import steps
    from frameworks.jax.models import params_from_exchange
    cfg = RunConfig(framework="jax", impl=impl, model=model, batch_size=batch_size,
                    microbatch_size=microbatch_size).validate()
    if cfg.impl_info.kind == "direct":
        from frameworks.jax import direct
        step, args = direct.make(cfg)
        return cfg, step, args
    spec = get_model(model)
    step, init = steps.make_step(cfg, spec)
    x, y = (jnp.asarray(a) for a in make_batch(spec, batch_size, cfg.seed))
    state = init(params_from_exchange(init_weights(spec, cfg.seed)))
    return cfg, step, (state, x, y)


def analyze(impl: str, model: str, batch_size: int, microbatch_size: int | None = None, *,
            top: int = TOP_N, hlo: bool = True) -> dict:
    """JSON-able analysis of the benchmark's jitted step for one configuration."""
    spec = get_model(model)
    layers = spec.layers()
    t0 = time.perf_counter()
    # The adapter sets this globally (float32 everywhere, no TF32); same here.
    with jax.default_matmul_precision("highest"):
        cfg, step, args = build(impl, model, batch_size, microbatch_size)
        closed = jax.make_jaxpr(step)(*args)
        t1 = time.perf_counter()
        facts = jaxpr_facts(closed, jax.tree.leaves(args), layers, batch_size, top)
        t2 = time.perf_counter()
        result: dict[str, Any] = {
            "schema": SCHEMA, "framework": "jax", "impl": impl, "mode": cfg.mode, "model": model,
            "batch_size": batch_size, "microbatch_size": microbatch_size, "status": "ok",
            "versions": _versions(), "device": _device(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "layers": [{"name": la.name, "kind": la.kind, "kernel_shape": list(la.kernel_shape),
                        "kernel_bytes": prod(la.kernel_shape) * 4} for la in layers],
            "jaxpr": facts,
        }
        timings = {"trace_s": t1 - t0, "jaxpr_walk_s": t2 - t1}
        if hlo:
            compiled = step.lower(*args).compile()
            timings["compile_s"] = time.perf_counter() - t2
            result["xla"] = hlo_facts(compiled, layers, batch_size)
    result["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    return result


def _versions() -> dict[str, str]:
    out = {"jax": jax.__version__}
    try:
        import jax_privacy
        out["jax-privacy"] = jax_privacy.__version__
    except Exception:
        pass
    return out


def _device() -> str:
    d = jax.devices()[0]
    return "cpu" if d.platform == "cpu" else d.device_kind

