"""Parity table: every impl of every framework against the float64 reference.

    python -m common.harness.verify OUT_DIR [--frameworks jax,torch,tf] [--models small]

For each framework a child process (that framework's interpreter) computes
each implementation's clipped gradient sum with noise 0 (``Adapter.clipped_sum``,
the code path the benchmark times) on exchange weights, with the clip norm at
the median per-example norm so examples lie above and below it, and compares it
with ``common.reference.float64`` (the microbatch-mean reference for TF-Privacy's
microbatch-mean unit). Rows go to OUT_DIR/parity.jsonl; the report shows them.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Collection, Mapping, Sequence

import numpy as np

from common.harness import launcher, threads
from common.reference import float64 as reference
from common.harness.adapter import Adapter, Unsupported, load
from common.harness.config import FRAMEWORKS, IMPLS, microbatch_sizes
from common.reference.exchange import init_weights, make_batch
from common.reference.spec import get_model

ROOT = Path(__file__).resolve().parents[2]
PARITY = "parity.jsonl"
# Each model's parity case, (batch, seed): the first seed from 0 whose float64
# forward keeps every max-pool window's top two and every ReLU input more than
# reference.MIN_POOL_GAP / MIN_RELU_GAP (1e-6, relative) apart from a tie, so
# that float32 rounding cannot flip one and a parity error means a wrong
# gradient (WRN B 4 seed 0 had a ReLU input 3.4e-8 from 0: every JAX row failed,
# 2.7e-2). Found once by reference.tie_free_seed(model, batch, relus=True) and
# recorded so that runs do not search; tests/common/harness/test_verify.py checks
# the margins. Measured min_pool_gap / min_relu_gap:
# - small B 8, seed 4: 1.2e-6 / 1.2e-6 (18 free seeds in 0..99).
# - medium B 2, seed 51: 1.9e-6 / 1.5e-6. B 4 had no free seed in 0..99; B 2 has
#   2 in 0..199 (51, 108). (Few examples anyway: 16.8M-float per-example grads.)
# - wrn16_4 B 2, seed 63: no max-pool / 1.4e-6, the tests' case (float64.SEARCH_FROM).
#   B 4 had no free seed in 0..99; B 2 has 3 in 0..95 (63, 81, 95).
# B 2 still clips at the median: one example clipped, one not.
# - vit, vit_p8, vit_p2 B 2, seed 0: no max-pool, no ReLU (GELU, softmax and LayerNorm are
#   smooth: nothing for float32 to flip), the first seed.
CASES: dict[str, tuple[int, int]] = {"small": (8, 4), "medium": (2, 51), "wrn16_4": (2, 63),
                                     "vit": (2, 0), "vit_p8": (2, 0), "vit_p2": (2, 0)}
BATCH = {m: b for m, (b, _) in CASES.items()}  # examples per parity case
# float32 sums over <= 16k terms give ~1e-6 relative error (measured 5e-7..8e-6
# on the small model in every framework); 1e-4 flags real disagreement, not
# rounding. Medium: Opacus's per-sample-gradient modes take norms with torch's
# float32 CPU Tensor.norm, which sums the 16.8M-element dense0 gradient without
# cascade summation (measured 1.5e-4 off, tests/torch/test_torch_adapter.py):
# 1e-3, still 5x below what a clip norm 1 % off gives.
# wrn16_4: Opacus's float32 norms over 2.7M parameters put every mode 2.9e-5
# off (tests/torch/test_torch_wrn.py): 2e-4, ~70x below a clip norm 1 % off.
# vit (B 2, seed 0): 2.4e-5..3.7e-5 for every JAX and PyTorch row, standard included (the
# largest on blocks 2-3's q/k kernels, whose gradients are small, ~5e-3: float32 rounding),
# measured once per framework; a clip norm 1 % off gives 4.6e-2. 2e-4 as for WRN, ~5x
# headroom; the sweep's models share it (same widths, T from 17 to 257).
TOLERANCE = {"small": 1e-4, "medium": 1e-3, "wrn16_4": 2e-4, "vit": 2e-4, "vit_p8": 2e-4, "vit_p2": 2e-4}


def parity_case(model: str, batch: int | None = None) -> tuple[int, int]:
    """(batch, seed) of ``model``'s parity case: ``CASES``'s, or at another
    ``batch`` (tests) the first seed free of both near-ties (a search). The
    recorded seed is checked again here (a float64 forward per gap, 0.1 to 1 s
    measured, next to minutes of framework parity): a change to the
    exchange weights, batches or model would otherwise turn it into a tie that
    fails every framework's rows for no fault of theirs; it raises instead."""
    b, seed = CASES[model]
    if batch is not None and batch != b:
        return batch, reference.tie_free_seed(model, batch, relus=True)
    return b, reference.tie_free_seed(model, b, seed, tries=1, relus=True)


def verify_adapter(adapter: Adapter, framework: str, model: str = "small", batch: int | None = None,
                   seed: int | None = None, tolerance: float | None = None,
                   devices: int = 1, only: Collection[str] | None = None) -> list[dict[str, Any]]:
    """Parity rows for every (impl, variant, microbatch size) of ``framework``
    (``only``: just the "impl:variant" rows named, e.g. the rows a run measures on this model).

    ``devices`` > 1: the data-parallel sums (the batch split over that many
    devices, reduced as the step reduces it) of every impl at the library's
    default microbatch size, against the same single-batch reference; an
    impl the adapter cannot run data-parallel (``Unsupported``) is a row that
    says so, neither pass nor failure."""
    spec = get_model(model)
    batch, seed = parity_case(model, batch) if seed is None else (batch or BATCH[model], seed)
    tolerance = tolerance or TOLERANCE[model]
    w = init_weights(spec, seed)
    x, y = make_batch(spec, batch, seed)
    grads = reference.per_example_grads(spec, w, x, y)
    clip = float(np.median(reference.per_example_norms(grads)))
    device = adapter.device()  # where the sums are computed: the timed rows' device (a GPU under cuda)
    rows = []
    for impl in IMPLS[framework].values():
        if impl.kind == "direct":  # checks of the harness's speed; tests prove they compute the study row's update
            continue
        for variant in impl.variants:
            if variant in impl.ab_variants:  # same code, other flags: covered by the variant it A/Bs
                continue
            if only is not None and f"{impl.name}:{variant}" not in only:
                continue
            mbs = microbatch_sizes(impl, batch)
            for mb in (mbs[:1] if devices > 1 else mbs):
                if impl.mode == "standard":
                    want, c = {k: v.sum(0) for k, v in grads.items()}, None
                elif impl.privacy_unit == "microbatch_mean":
                    want, c = reference.microbatch_mean_clipped_sum(spec, w, x, y, clip, batch // mb), clip
                else:
                    want, c = reference.clipped_sum(spec, w, x, y, clip), clip
                row = {"framework": framework, "impl": impl.name, "variant": variant, "microbatch_size": mb,
                       "model": model, "batch_size": batch, "seed": seed, "clip_norm": c, "tolerance": tolerance,
                       "devices": devices, "device": device}
                try:
                    got = adapter.clipped_sum(impl.name, model, w, x, y, clip if c else 1.0, mb, variant,
                                              devices=devices)
                    err = reference.max_rel_error(got, want)
                    row.update(max_rel_error=err, passed=bool(err <= tolerance), error=None)
                except Unsupported as exc:
                    row.update(max_rel_error=None, passed=None, error=f"unsupported: {exc}"[:300])
                except Exception as exc:  # noqa: BLE001 - a failing impl is a row, not a crash
                    row.update(max_rel_error=None, passed=False, error=f"{type(exc).__name__}: {exc}"[:300])
                rows.append(row)
    return rows


# Seconds one framework's parity run may take (TF's per-example rows trace slowly).
TIMEOUT_S = 900.0


def run(frameworks: Sequence[str], out: Path, models: Sequence[str] = ("small",),
        timeout_s: float = TIMEOUT_S, devices: int = 1,
        only: Mapping[tuple[str, str], Collection[str]] | None = None) -> list[dict[str, Any]]:
    """Run each framework's verification in its own interpreter; append rows
    (``devices`` > 1: also the data-parallel rows on that many devices). ``only``:
    per (framework, model), the "impl:variant" rows to check (a sweep's models run a
    few rows; tracing every other TF row there was most of a ViT run's parity time)."""
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for fw in frameworks:
        env = launcher.framework_env(fw, devices=devices)
        for model in models:
            picked = None if only is None else only.get((fw, model))
            if only is not None and not picked:
                continue
            extra = [] if picked is None else ["--only", ",".join(sorted(picked))]
            with tempfile.TemporaryDirectory(prefix="dpbench-verify-") as tmp:
                o = launcher.launch(launcher.python_cmd(fw, "common.harness.verify", "--worker", fw, model,
                                                        "--devices", str(devices), *extra), env, timeout_s,
                                    Path(tmp) / "verify.log")
            lines = [ln for ln in o.log.splitlines() if ln.startswith("{")]
            if o.code != 0 or not lines:
                tail = f"ran past {timeout_s:.0f} s" if o.stopped else (o.tail() or "no output")
                lines = [json.dumps({"framework": fw, "impl": "*", "variant": "", "microbatch_size": None,
                                     "model": model, "batch_size": BATCH[model], "seed": CASES[model][1],
                                     "clip_norm": None,
                                     "tolerance": TOLERANCE[model],
                                     "max_rel_error": None, "passed": False, "error": f"verifier failed: {tail}"[:300]})]
            with open(out / PARITY, "a") as f:
                f.write("\n".join(lines) + "\n")
            rows += [json.loads(ln) for ln in lines]
    return rows


def read(run_dir: Path) -> list[dict[str, Any]]:
    p = run_dir / PARITY
    return [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()] if p.exists() else []


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m common.harness.verify", description=__doc__.splitlines()[0])
    ap.add_argument("--worker", nargs=2, metavar=("FRAMEWORK", "MODEL"), help=argparse.SUPPRESS)
    ap.add_argument("out", nargs="?", type=Path)
    ap.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    ap.add_argument("--models", default="small")
    ap.add_argument("--devices", type=int, default=1, help="also check the data-parallel sums on this many devices")
    ap.add_argument("--only", help=argparse.SUPPRESS)  # the worker's "impl:variant" rows (run's --only)
    a = ap.parse_args(argv)
    if a.worker:
        fw, model = a.worker
        adapter = load(fw)
        adapter.setup(threads.resolve(0), a.devices)
        for n in sorted({1, a.devices}):
            for row in verify_adapter(adapter, fw, model, devices=n,
                                      only=None if a.only is None else set(a.only.split(","))):
                print(json.dumps(row), flush=True)
        return 0
    if a.out is None:
        ap.error("OUT directory required")
    rows = run([f for f in a.frameworks.split(",") if f], a.out, a.models.split(","), devices=a.devices)
    bad = [r for r in rows if r["passed"] is False]  # the table: common.report.parity renders parity.jsonl
    print(f"[verify] {len(rows)} parity rows in {a.out / PARITY}, {len(bad)} failed"
          + "".join(f"\n  FAIL {r['framework']} {r['impl']} {r['variant']} {r['model']}: {r.get('error') or r['max_rel_error']}"
                    for r in bad))
    return 0 if all(r["passed"] is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
