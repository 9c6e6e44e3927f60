"""Data-parallel PyTorch on torch.distributed: one process per device.

The worker process is rank 0: it builds its trainer on its shard of the
global batch and times the step as on one device. It starts ranks 1..N-1
itself (``torch.multiprocessing``, spawn), in its own process group, so the
runner's budget and kill cover them: one configuration is still one
launch. Backends: gloo on a CPU, NCCL on GPUs (rank r on cuda:r).

The ranks step in lockstep: each step of rank 0 starts with a broadcast of
a one-int command (step) that the other ranks wait on. That is how
the followers know how many steps rank 0's timing protocol takes, and it
costs one tiny collective per step, the same for every impl.

The step itself is the library's own (steps.make_trainer with ``world``):
DDP for standard, Opacus's DPDDP + its distributed optimizer, fastclip's
clipped sums all-reduced; the noise is drawn once, on rank 0.

On a CPU each rank gets ``threads.per_device`` threads and its own CPUs
(the worker's CPUs shared out in order), so N ranks use the cores one
device with all threads would.
"""
from __future__ import annotations

import datetime as dt
import os
import pickle
import socket
import tempfile
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from common.harness import threads
from common.harness.adapter import Bench, Unsupported
from common.harness.config import RunConfig
from common.reference.exchange import Weights, init_weights, make_batch
from common.reference.spec import get_model
from frameworks.torch import steps
from frameworks.torch.models import labels, nchw, to_exchange

# STEP: rank 0's command before each step; STOP only fills a follower's receive
# buffer (no rank sends it: the ranks end with the worker's process group).
STOP, STEP = 0, 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _device(rank: int, world: int) -> torch.device:
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if torch.cuda.device_count() < world:
        raise Unsupported(f"{world} devices asked, {torch.cuda.device_count()} GPUs visible")
    torch.cuda.set_device(rank)
    return torch.device("cuda", rank)


def _join(rank: int, world: int, port: int, threads_total: int, timeout_s: float) -> torch.device:
    """Pin this rank to its CPUs and threads, join the group; its device."""
    cpus = threads.allowed_cpus()
    k = threads.per_device(threads_total, world)
    mine = sorted({cpus[(rank * k + i) % len(cpus)] for i in range(k)})
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, mine)
    torch.set_num_threads(k)
    device = _device(rank, world)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=world, timeout=dt.timedelta(seconds=timeout_s))
    return device


def shard(x: np.ndarray, y: np.ndarray, rank: int, world: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank ``rank``'s examples of the global batch (in order, equal parts)."""
    b = x.shape[0] // world
    return nchw(x[rank * b:(rank + 1) * b], device), labels(y[rank * b:(rank + 1) * b], device)


def _trainer(cfg: RunConfig, rank: int, device: torch.device, calibrate_s: float):
    torch.manual_seed(cfg.seed)  # every rank's generator alike; only rank 0 draws noise
    spec = get_model(cfg.model)
    xn, yn = make_batch(spec, cfg.global_batch_size, cfg.seed)
    x, y = shard(xn, yn, rank, cfg.devices, device)
    trainer = steps.make_trainer(cfg.impl, spec, init_weights(spec, cfg.seed), x, y, lr=cfg.learning_rate,
                                 clip_norm=cfg.clip_norm, noise_multiplier=cfg.noise_multiplier,
                                 calibrate_s=calibrate_s, rank=rank, world=cfg.devices)
    return trainer, x, y


def _command(cmd: int, device: torch.device) -> int:
    t = torch.tensor([cmd], dtype=torch.int32, device=device)
    dist.broadcast(t, 0)
    return int(t.item())


def _follow(rank: int, cfg_dict: dict, port: int, threads_total: int, calibrate_s: float) -> None:
    """Ranks 1..N-1 of a timed configuration: step whenever rank 0 says so."""
    cfg = RunConfig.from_dict(cfg_dict)
    device = _join(rank, cfg.devices, port, threads_total, cfg.budget_s)
    trainer, x, y = _trainer(cfg, rank, device, calibrate_s)
    while _command(STOP, device) == STEP:
        trainer.step(x, y)
    dist.destroy_process_group()


class Group:
    """The ranks of one data-parallel configuration, seen from rank 0."""

    def __init__(self, cfg: RunConfig, threads_total: int, calibrate_s: float):
        port = _free_port()
        ctx = mp.get_context("spawn")
        self.procs = [ctx.Process(target=_follow, args=(r, cfg.to_dict(), port, threads_total, calibrate_s),
                                  daemon=True) for r in range(1, cfg.devices)]
        for p in self.procs:
            p.start()
        self.device = _join(0, cfg.devices, port, threads_total, cfg.budget_s)
        self.trainer, self.x, self.y = _trainer(cfg, 0, self.device, calibrate_s)

    def step(self) -> None:
        _command(STEP, self.device)
        self.trainer.step(self.x, self.y)


def build(cfg: RunConfig, threads_total: int, calibrate_s: float, sync: Callable[[Any], Any]) -> Bench:
    """A timed data-parallel configuration: rank 0's Bench. The other ranks
    end with the worker's process group (the runner kills it when the
    worker exits; a lost rank 0 also ends their broadcast)."""
    group = Group(cfg, threads_total, calibrate_s)
    params = dict(group.trainer.net.named_parameters())

    def step() -> dict[str, torch.Tensor]:
        group.step()
        return params

    notes = {**group.trainer.notes, "tf32": False,
             "data_parallel": {"engine": f"torch.distributed ({dist.get_backend()}), one process per device",
                               "step_command": "one int32 broadcast from rank 0 per step",
                               "threads_per_rank": threads.per_device(threads_total, cfg.devices),
                               "peak_mem_of": "rank 0 (one device's process)"}}
    def peak_memory() -> int | None:
        return torch.cuda.max_memory_allocated(group.device) if group.device.type == "cuda" else None

    return Bench(step=step, sync=sync, peak_memory=peak_memory, notes=notes)


# -- every rank a child: what the tests and the parity check run -------------

def _rank_main(rank: int, world: int, port: int, fn: Callable[..., Any], args: tuple, out_path: str) -> None:
    device = _join(rank, world, port, world, 600.0)
    result = fn(rank, world, device, *args)
    if rank == 0:
        with open(out_path, "wb") as f:
            pickle.dump(result, f)
    dist.destroy_process_group()


def run_ranks(fn: Callable[..., Any], world: int, *args: Any) -> Any:
    """``fn(rank, world, device, *args)`` on ``world`` spawned ranks (one
    thread each on a CPU); rank 0's return value. ``fn`` must be a
    module-level function (spawn pickles it)."""
    with tempfile.TemporaryDirectory(prefix="dpbench-ranks-") as tmp:
        out = os.path.join(tmp, "rank0.pkl")
        mp.start_processes(_rank_main, args=(world, _free_port(), fn, args, out), nprocs=world, join=True,
                           start_method="spawn")
        with open(out, "rb") as f:
            return pickle.load(f)


def _clipped_sums_rank(rank: int, world: int, device: torch.device, clips: dict[str, float], model: str,
                       weights: Weights, x: np.ndarray, y: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    xt, yt = shard(x, y, rank, world, device)
    out = {}
    for impl, clip_norm in clips.items():
        trainer = steps.make_trainer(impl, get_model(model), weights, xt, yt, lr=0.0, clip_norm=clip_norm,
                                     noise_multiplier=0.0, rank=rank, world=world)
        out[impl] = to_exchange(steps.gradient_sum(trainer, xt, yt), trainer.net.spec)
    return out


def clipped_sums(clips: dict[str, float], model: str, weights: Weights, x: np.ndarray, y: np.ndarray,
                 world: int) -> dict[str, dict[str, np.ndarray]]:
    """The data-parallel clipped sums (noise 0) of (x, y) over ``world`` ranks, per impl at its
    clip norm (``clips``), every impl in one launch of the ranks: spawning a rank (a fresh
    interpreter importing torch and Opacus, then gloo's rendezvous) costs seconds, the sums little."""
    return run_ranks(_clipped_sums_rank, world, dict(clips), model, weights, x, y)


def clipped_sum(impl: str, model: str, weights: Weights, x: np.ndarray, y: np.ndarray, clip_norm: float,
                world: int) -> dict[str, np.ndarray]:
    """The data-parallel clipped sum (noise 0) of (x, y) over ``world`` ranks."""
    return clipped_sums({impl: clip_norm}, model, weights, x, y, world)[impl]


def _step_noise_rank(rank: int, world: int, device: torch.device, impl: str, model: str, batch: int,
                     noise_multiplier: float, clip_norm: float, seed: int) -> dict[str, Any]:
    spec = get_model(model)
    w = init_weights(spec, seed)
    xn, yn = make_batch(spec, batch * world, seed)
    x, y = shard(xn, yn, rank, world, device)
    quiet = steps.make_trainer(impl, spec, w, x, y, lr=0.0, clip_norm=clip_norm, noise_multiplier=0.0,
                               rank=rank, world=world)
    s = to_exchange(steps.gradient_sum(quiet, x, y), spec)
    torch.manual_seed(seed + rank)  # different streams per rank: a second rank's noise would not cancel
    trainer = steps.make_trainer(impl, spec, w, x, y, lr=1.0, clip_norm=clip_norm,
                                 noise_multiplier=noise_multiplier, rank=rank, world=world)
    trainer.step(x, y)
    params = dict(trainer.net.named_parameters())
    spread = torch.zeros(1, dtype=torch.float64, device=device)
    for p in params.values():
        p0 = p.detach().clone()
        dist.broadcast(p0, 0)
        spread = torch.maximum(spread, (p.detach() - p0).abs().max().double().reshape(1))
    dist.all_reduce(spread, op=dist.ReduceOp.MAX)
    return {"p0": w, "p1": to_exchange(params, spec), "sum": s, "rank_spread": float(spread.item())}


def step_noise(impl: str, model: str, batch: int, noise_multiplier: float, clip_norm: float, world: int,
               seed: int = 0) -> dict[str, Any]:
    """One data-parallel step at learning rate 1 from the exchange weights of
    ``seed``: the weights before and after (rank 0's), the noise-0 clipped sum
    at the weights before, and the largest difference between any rank's
    parameters and rank 0's after the step (0: the ranks agree). The step's
    total noise is then -global_batch * (p1 - p0) - sum."""
    return run_ranks(_step_noise_rank, world, impl, model, batch, noise_multiplier, clip_norm, seed)
