"""Data-parallel steps on ``jax.sharding``: one jitted step over a mesh of devices.

Every device computes the impl's gradient sum of its own shard of the batch
(for DP impls: clips its own examples) inside ``jax.shard_map``, and one
``psum`` adds the per-device sums: the all-reduce that standard training
needs too, of the same size. Everything after it (noise, divide by the
global batch, SGD) runs on the replicated sum, so the noise is one draw from
one key per step, computed alike on every device, never one per device.

shard_map rather than sharding annotations on the whole step: it keeps each
device's per-example work local by construction (XLA's partitioner cannot
choose to gather the batch for some layer of fastclip), and the same one
line wraps every impl. jax-privacy's ``clipped_grad`` runs unchanged inside
it (its vmap is over the local shard; ``spmd_axis_name`` is for the other
route, a vmap partitioned by annotations).

On a CPU the devices are XLA:CPU's host devices
(``threads.JAX_HOST_DEVICES_FLAG``, set by the worker's environment); on
GPUs they are the first N visible GPUs.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from common.harness.adapter import Unsupported

AXIS = "data"


def mesh_of(devices: int) -> Mesh:
    """A 1-D mesh of the first ``devices`` devices; Unsupported when fewer are visible."""
    visible = jax.devices()
    if len(visible) < devices:
        raise Unsupported(f"{devices} devices asked, {len(visible)} visible to JAX "
                          f"({visible[0].platform}); on a CPU the worker's XLA_FLAGS must carry "
                          f"--xla_force_host_platform_device_count={devices}")
    return Mesh(np.array(visible[:devices]), (AXIS,))


def summed_over(mesh: Mesh, grad_sum: Callable[..., Any]) -> Callable[..., Any]:
    """``(params, x, y) -> sum over devices of grad_sum(params, x_d, y_d)``:
    parameters replicated, batch split in order along its first axis.

    ``check_vma=False``: the body is then one device's plain program on its
    shard. With shard_map's device-variance types on, a gradient with
    respect to anything device-invariant inside the body (the replicated
    parameters; fastclip's zero probes on the layer outputs) comes back
    already summed over the devices (the transpose of the implicit cast to
    varying is a psum): standard would be summed twice, and fastclip's
    per-example output gradients would mix examples of different devices."""
    def local_then_psum(p: Any, x: Any, y: Any) -> Any:
        return jax.lax.psum(grad_sum(p, x, y), AXIS)
    return jax.shard_map(local_then_psum, mesh=mesh, in_specs=(P(), P(AXIS), P(AXIS)), out_specs=P(),
                         check_vma=False)


def place(mesh: Mesh, params: Any, x: Any, y: Any) -> tuple[Any, Any, Any]:
    """Parameters replicated on every device, the batch split over them."""
    rep, split = NamedSharding(mesh, P()), NamedSharding(mesh, P(AXIS))
    return jax.device_put(params, rep), jax.device_put(x, split), jax.device_put(y, split)
