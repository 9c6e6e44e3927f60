"""Privacy (epsilon) and time to train beside throughput (issue 8).

Throughput alone does not say what a DP run buys or costs: a reader wants
"to train this plan to (epsilon, delta) takes H hours with this implementation,
X more than standard training". This module turns a :class:`TrainingPlan`
(dataset size, epochs, delta, noise multiplier, batch size) into epsilon with
dp-accounting's own accountants (RDP and PLD), calibrates the noise multiplier
with dp-accounting's own calibration, and combines a plan with measured step
times from result records (common/harness/records.py) into a time-to-train table.

Nothing here imports a framework; dp-accounting and pandas are imported where
they are used, so ``import common.report.privacy`` works in every environment.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Iterable, Literal

from common.harness import records as _records

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

Accountant = Literal["rdp", "pld"]
ACCOUNTANTS: tuple[str, ...] = ("rdp", "pld")

# Calibration searches sigma upward from here: below it epsilon is in the
# thousands for any DP-SGD plan worth running and the RDP series converges badly.
SIGMA_FLOOR = 0.1

FIXED_BATCH_NOTE = (
    "Epsilon assumes Poisson sampling; the throughput runs do not. Every timed step uses a fixed batch of B "
    "examples (docs/design.md §3). The epsilon is from dp-accounting for Poisson subsampling: at each step every "
    "example is included independently with probability q = B/N, so the batch size varies around an expected B. "
    "This is composed over the plan's steps, with add-or-remove-one neighbouring datasets. So epsilon is the "
    "guarantee of a Poisson-sampled DP-SGD run with the same expected batch size B, noise multiplier and number "
    "of steps. It is not a guarantee of the fixed-batch loop that was timed. The fixed-batch step time stands in "
    "for that run's per-step cost, because step time depends on the batch size and a Poisson batch has B "
    "examples on average. An implementation that pads Poisson batches to a larger fixed shape (as compiled "
    "steps must) pays for the padded size instead. Fixed-size batches (sampling without replacement, or "
    "shuffling into disjoint batches) have a different accounting: it is usually stated for replace-one "
    "neighbours, and its epsilon is in general not equal to this one. For shuffled batches it can be "
    "substantially larger (Chua et al., \"How Private are DP-SGD Implementations?\", ICML 2024). Do not quote "
    "this epsilon for a run that really uses fixed-size batches."
)


@dataclass(frozen=True)
class TrainingPlan:
    """A DP-SGD training run to account for and to time.

    Defaults are a CIFAR-10-sized plan (50,000 examples, 30 epochs, sigma 1.0 =
    the records' noise multiplier). ``batch_size`` None means "take it from the
    record" (see :meth:`for_record`); accounting needs it set. ``delta`` None
    means 1/N (:attr:`target_delta`).
    """

    dataset_size: int = 50_000
    epochs: float = 30
    delta: float | None = None
    noise_multiplier: float = 1.0
    batch_size: int | None = None

    @property
    def sampling_rate(self) -> float:
        """q = B/N: the Poisson inclusion probability, for an expected batch of B."""
        return self._b() / self.dataset_size

    q = sampling_rate

    @property
    def steps(self) -> int:
        """Number of DP-SGD steps: ceil(epochs * N / B).

        This is the number of steps that process epochs * N examples in
        expectation, with a last partial step counted as a full one. TF-Privacy's
        ``compute_dp_sgd_privacy`` counts steps the same way. It can be a few
        steps fewer than ``epochs * steps_per_epoch`` when B does not divide N.
        """
        return math.ceil(self.epochs * self.dataset_size / self._b())

    @property
    def steps_per_epoch(self) -> int:
        """ceil(N / B): steps of one pass over the data, with a last partial batch counted as a step."""
        return math.ceil(self.dataset_size / self._b())

    @property
    def target_delta(self) -> float:
        """The delta epsilon is reported at: ``delta``, or 1/N when it is None."""
        return 1.0 / self.dataset_size if self.delta is None else self.delta

    def with_batch_size(self, batch_size: int) -> "TrainingPlan":
        return replace(self, batch_size=batch_size)

    def for_record(self, record: dict[str, Any]) -> "TrainingPlan":
        """This plan at the record's batch size. A timed step time only holds for its own B,
        so a plan that names a different B is an error."""
        b = record["batch_size"]
        if self.batch_size is not None and self.batch_size != b:
            raise ValueError(f"record batch size {b} differs from the plan's batch size {self.batch_size}")
        return self.with_batch_size(b)

    def validate(self) -> "TrainingPlan":
        """Return self, or raise ValueError with a one-line message naming the bad field."""
        n, b = self.dataset_size, self.batch_size
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ValueError(f"dataset size must be a positive integer, got {n!r}")
        if b is None:
            raise ValueError("batch size is not set: use TrainingPlan(batch_size=B) or plan.with_batch_size(B)")
        if isinstance(b, bool) or not isinstance(b, int) or b <= 0:
            raise ValueError(f"batch size must be a positive integer, got {b!r}")
        if b > n:
            raise ValueError(f"batch size {b} exceeds dataset size {n}: sampling rate q = B/N = {b / n:.3g} > 1")
        if not isinstance(self.epochs, (int, float)) or not self.epochs > 0 or not math.isfinite(self.epochs):
            raise ValueError(f"epochs must be positive, got {self.epochs!r}")
        if not self.noise_multiplier > 0 or not math.isfinite(self.noise_multiplier):
            raise ValueError(f"noise multiplier must be positive for a finite epsilon, got {self.noise_multiplier!r}")
        if self.delta is not None and not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta!r}")
        return self

    def _b(self) -> int:
        if self.batch_size is None:
            raise ValueError("batch size is not set: use TrainingPlan(batch_size=B) or plan.with_batch_size(B)")
        return self.batch_size


def dp_event(plan: TrainingPlan, noise_multiplier: float | None = None):
    """The DP-SGD run as a dp-accounting event: a Poisson-sampled (rate q) Gaussian
    mechanism (noise multiplier sigma, relative to the clip norm) composed ``steps`` times."""
    import dp_accounting

    sigma = plan.noise_multiplier if noise_multiplier is None else noise_multiplier
    step = dp_accounting.PoissonSampledDpEvent(plan.sampling_rate, dp_accounting.GaussianDpEvent(sigma))
    return dp_accounting.SelfComposedDpEvent(step, plan.steps)


def _accountant(kind: str):
    """A fresh dp-accounting accountant, defaults throughout (add-or-remove-one neighbours;
    RDP: dp-accounting's default orders and its improved RDP-to-DP conversion; PLD:
    pessimistic discretisation 1e-4, an upper bound on the true epsilon)."""
    import dp_accounting

    if kind == "rdp":
        return dp_accounting.rdp.RdpAccountant()
    if kind == "pld":
        return dp_accounting.pld.PLDAccountant()
    raise ValueError(f"unknown accountant {kind!r}; choose from {', '.join(ACCOUNTANTS)}")


def epsilon(plan: TrainingPlan, accountant: Accountant = "rdp") -> float:
    """Epsilon at the plan's delta, from dp-accounting's RDP or PLD accountant.

    Both are upper bounds. PLD is the tighter one (smaller epsilon) but slower:
    about a second for a CIFAR plan at sigma 1, more at small sigma.
    """
    plan.validate()
    return _epsilon_cached(plan, accountant)


@lru_cache(maxsize=256)
def _epsilon_cached(plan: TrainingPlan, accountant: str) -> float:
    acc = _accountant(accountant)
    return float(acc.compose(dp_event(plan)).get_epsilon(plan.target_delta))


def epsilons(plan: TrainingPlan) -> dict[str, float]:
    """``{"rdp": eps, "pld": eps}`` for the plan."""
    return {a: epsilon(plan, a) for a in ACCOUNTANTS}


def calibrate_sigma(plan: TrainingPlan, target_epsilon: float, accountant: Accountant = "rdp") -> float:
    """The smallest noise multiplier whose epsilon (at the plan's delta, for the plan's q
    and steps) does not exceed ``target_epsilon``, within 1e-6. The search is
    dp-accounting's own ``calibrate_dp_mechanism``.

    RDP brackets sigma upward from SIGMA_FLOOR. PLD is tighter, so its sigma is at
    most the RDP one: PLD searches [0.8 * sigma_rdp, sigma_rdp] (typically 5-10 %
    apart), widening the lower end to 0.5 * sigma_rdp, then SIGMA_FLOOR, only if it
    does not bracket. This keeps PLD, which is slow at small sigma, away from there.
    """
    import dp_accounting

    plan.validate()
    if not target_epsilon > 0 or not math.isfinite(target_epsilon):
        raise ValueError(f"target epsilon must be positive and finite, got {target_epsilon!r}")
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"unknown accountant {accountant!r}; choose from {', '.join(ACCOUNTANTS)}")

    def make_event(sigma: float):
        return dp_event(plan, sigma)

    if accountant == "rdp":
        if epsilon(replace(plan, noise_multiplier=SIGMA_FLOOR), "rdp") <= target_epsilon:
            raise ValueError(f"target epsilon {target_epsilon} is met with noise multiplier <= {SIGMA_FLOOR}; "
                             "no calibration below that")
        bracket = dp_accounting.LowerEndpointAndGuess(SIGMA_FLOOR, max(1.0, 2 * SIGMA_FLOOR))
    else:
        upper = calibrate_sigma(plan, target_epsilon, "rdp")
        lower = next((f * upper for f in (0.8, 0.5) if epsilon(replace(plan, noise_multiplier=f * upper), "pld")
                      > target_epsilon), SIGMA_FLOOR)
        bracket = dp_accounting.ExplicitBracketInterval(lower, upper)
    return float(dp_accounting.calibrate_dp_mechanism(
        lambda: _accountant(accountant), make_event, target_epsilon, plan.target_delta, bracket))


# --- time to train --------------------------------------------------------------------------

def epoch_time_s(record: dict[str, Any], plan: TrainingPlan) -> float:
    """Seconds per epoch: steps_per_epoch * median step time, with steps_per_epoch = ceil(N/B).
    B is the record's batch size."""
    return plan.for_record(record).steps_per_epoch * _step_s(record)


def train_time_s(record: dict[str, Any], plan: TrainingPlan) -> float:
    """Seconds to run the plan: plan.steps (ceil(epochs*N/B), the steps the epsilon is for)
    * median step time. Compile time and input pipeline are not included."""
    return plan.for_record(record).steps * _step_s(record)


def _step_s(record: dict[str, Any]) -> float:
    if record.get("status") != "ok" or not record.get("step_s_median"):
        raise ValueError(f"record {_name(record)} has no measured step time (status {record.get('status')!r})")
    return float(record["step_s_median"])


def _name(r: dict[str, Any]) -> str:
    return f"{r.get('framework')}/{r.get('impl')} {r.get('model')} B={r.get('batch_size')}"


TABLE_COLUMNS = ("framework", "impl", "variant", "model", "batch_size", "microbatch_size", "mode",
                 "privacy_unit", "steps", "epsilon_rdp", "epsilon_pld", "epoch_s", "train_h",
                 "extra_h_vs_standard")


def privacy_table(recs: Iterable[dict[str, Any]], plan: TrainingPlan = TrainingPlan()) -> "pd.DataFrame":
    """One row per ok configuration (latest record): epsilon and time to train the plan.

    Each row uses the plan at the record's batch size (q = B/N, sigma from the plan).
    ``epsilon_rdp`` / ``epsilon_pld`` are NaN for standard rows. They are also NaN for rows
    whose privacy unit is a microbatch mean (TF-Privacy num_microbatches < B). Those rows
    clip each microbatch's mean gradient, so the per-example epsilon does not describe
    them. ``extra_h_vs_standard`` (DP rows) is train_h minus the train_h of that
    framework's fastest ok standard row at the same model and batch size: the cost of
    privacy in hours. It is NaN when there is no such row.
    """
    import pandas as pd

    ok = [r for r in _records.latest(recs) if r.get("status") == "ok"]
    if not ok:
        return pd.DataFrame(columns=list(TABLE_COLUMNS))
    rows = []
    for r in ok:
        p = plan.for_record(r).validate()
        dp = r["mode"] == "dp"
        per_example = dp and r.get("privacy_unit", "example") in ("example", None)
        eps = epsilons(p) if per_example else {"rdp": None, "pld": None}
        rows.append({
            "framework": r["framework"], "impl": r["impl"], "variant": r["variant"], "model": r["model"],
            "batch_size": r["batch_size"], "microbatch_size": r["microbatch_size"], "mode": r["mode"],
            "privacy_unit": r.get("privacy_unit") if dp else None, "steps": p.steps,
            "epsilon_rdp": eps["rdp"], "epsilon_pld": eps["pld"],
            "epoch_s": epoch_time_s(r, p), "train_h": train_time_s(r, p) / 3600.0,
        })
    df = pd.DataFrame(rows)
    for c in ("epsilon_rdp", "epsilon_pld"):
        df[c] = df[c].astype(float)
    keys = ["framework", "model", "batch_size"]
    std = df[df["mode"] == "standard"].groupby(keys)["train_h"].min().rename("_std_h")
    df = df.join(std, on=keys)
    df["extra_h_vs_standard"] = (df["train_h"] - df["_std_h"]).where(df["mode"] == "dp")
    df["_o"] = (df["mode"] == "dp").astype(int)
    df["_mb"] = -df["microbatch_size"].astype(float).fillna(1e9)
    df = df.sort_values(["model", "batch_size", "framework", "_o", "impl", "variant", "_mb"])
    return df[list(TABLE_COLUMNS)].reset_index(drop=True)
