"""Medians with 95 % intervals for the study's ratios and throughputs.

The variance sits at two levels: between processes (a round: a fresh worker,
its own memory layout, thread placement and the machine's state at that
time) and between windows inside one process. The interval is a two-level
(hierarchical) percentile bootstrap: resample the rounds with replacement,
then the pairs (or windows) within each resampled round, and take the median
of the pooled values; 2.5 and 97.5 percentiles over ``N_BOOT`` resamples.
Resampling only the pairs would treat one process's pairs as independent
draws of the machine and give intervals too narrow when rounds disagree
(Kalibera & Jones, "Rigorous benchmarking in reasonable time", 2013, make
the same case for their multi-level designs); with a single round the
interval is the within-process one and the row says so. The generator is
seeded: a report rendered twice from the same records is identical.

The point estimate is the median of all pooled values (robust to a stray
window that the steal rule did not catch).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from common.harness.pairing import pair_ratios

N_BOOT = 2000
LEVEL = 0.95
SEED = 0
# An interval whose half-width exceeds this share of its median is marked
# wide: at that precision a row at 85 % of standard cannot be told from one
# at 77 % or 93 %, more than the study's 5-point reproducibility target.
WIDE_REL = 0.05


@dataclass(frozen=True)
class Interval:
    median: float
    lo: float
    hi: float
    rounds: int
    n: int  # pairs (ratios) or windows (throughput) pooled over the rounds
    reason: str | None = None  # why the interval is wide, where it is

    @property
    def wide(self) -> bool:
        return self.reason is not None

    def scaled(self, k: float) -> "Interval":
        return Interval(self.median * k, self.lo * k, self.hi * k, self.rounds, self.n, self.reason)

    def inverted(self) -> "Interval":
        """1/x: the interval of the reciprocal ratio (bounds swap)."""
        return Interval(1 / self.median, 1 / self.hi, 1 / self.lo, self.rounds, self.n, self.reason)

    def overlaps(self, other: "Interval") -> bool:
        return self.lo <= other.hi and other.lo <= self.hi

    def text(self, pct: bool = True, digits: int = 1) -> str:
        k = 100.0 if pct else 1.0
        unit = " %" if pct else ""
        return f"{self.median * k:.{digits}f}{unit} [{self.lo * k:.{digits}f}, {self.hi * k:.{digits}f}]"


def hierarchical(groups: Sequence[Sequence[float]], n_boot: int = N_BOOT, seed: int = SEED,
                 level: float = LEVEL) -> Interval | None:
    """Median and two-level bootstrap interval of ``groups`` (one list of values
    per round); None where no group has a value."""
    groups = [np.asarray(g, dtype=float) for g in groups if len(g)]
    if not groups:
        return None
    pooled = np.concatenate(groups)
    med = float(np.median(pooled))
    k = len(groups)
    stats = boot_medians(groups, n_boot, np.random.default_rng(seed))
    a = (1 - level) / 2
    lo, hi = (float(v) for v in np.quantile(stats, [a, 1 - a]))
    lo, hi = min(lo, med), max(hi, med)
    reason = None
    if (hi - lo) / 2 > WIDE_REL * med:
        if k == 1:
            reason = f"one round of {len(pooled)} value{'s' * (len(pooled) != 1)}"
        elif k > 1 and _rounds_disagree(groups):
            reason = f"the {k} rounds disagree (medians {', '.join(f'{np.median(g):.3g}' for g in groups)})"
        else:
            reason = f"values spread (CV {float(np.std(pooled) / np.mean(pooled)):.2f} over {len(pooled)})"
    return Interval(med, lo, hi, k, int(len(pooled)), reason)


def boot_medians(groups: Sequence[np.ndarray], n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """The ``n_boot`` medians of two-level resamples of ``groups``, all drawn at once.

    Resample b picks k rounds with replacement (``picks[b]``), then n_i values
    with replacement from each picked round i (index floor(u * n_i) of a uniform
    u), and takes the median of the pooled draws. Vectorised because a report
    takes a few hundred intervals and the per-resample loop (2000 small
    ``np.median`` calls each) made rendering one README block take 15 s on
    2 cores; this takes well under one. The median of a row of unequal length:
    the padding slots are +inf, so after a sort the row's real draws come first
    and its median is the mean of the two middle ones (``np.median``'s rule)."""
    k = len(groups)
    sizes = np.array([len(g) for g in groups])
    width = int(sizes.max())
    table = np.zeros((k, width))
    for i, g in enumerate(groups):
        table[i, :len(g)] = g
    picks = rng.integers(0, k, size=(n_boot, k))
    n = sizes[picks]  # (n_boot, k): values drawn from each picked round
    idx = (rng.random((n_boot, k, width)) * n[..., None]).astype(np.intp)
    draws = table[picks[..., None], idx]
    draws[np.arange(width) >= n[..., None]] = np.inf
    draws = np.sort(draws.reshape(n_boot, k * width), axis=1)
    count, rows = n.sum(1), np.arange(n_boot)
    return (draws[rows, (count - 1) // 2] + draws[rows, count // 2]) / 2


def _rounds_disagree(groups: list[np.ndarray]) -> bool:
    meds = [float(np.median(g)) for g in groups]
    return (max(meds) - min(meds)) > 2 * WIDE_REL * statistics.median(meds)


def ratio_interval(recs: Iterable[dict[str, Any]]) -> Interval | None:
    """% of reference of one configuration: its records' paired ratios, one group
    per record (a round); records without pairs do not count."""
    return hierarchical([pair_ratios(r.get("paired")) for r in recs if r.get("status") == "ok"])


def _window_groups(recs: Iterable[dict[str, Any]]) -> list[list[float]]:
    groups = []
    for r in recs:
        if r.get("status") != "ok" or not r.get("window_s") or not r.get("steps_per_window"):
            continue
        b, n = r["global_batch_size"], r["steps_per_window"]
        groups.append([b * n / w for w in r["window_s"] if w > 0])
    return groups


def throughput_interval(recs: Iterable[dict[str, Any]]) -> Interval | None:
    """Samples/s of one configuration: each ok record's windows (global batch /
    step time of the window), one group per record."""
    return hierarchical(_window_groups(recs))


def window_throughputs(recs: Iterable[dict[str, Any]]) -> list[float]:
    """Every ok record's window throughputs pooled: what ``throughput_interval``'s median is the median of."""
    return [v for g in _window_groups(recs) for v in g]


def paired_throughputs(recs: Iterable[dict[str, Any]]) -> tuple[float, float] | None:
    """(subject, reference) samples/s in the same kept window pairs, over every
    ok record (round): the medians of global batch / step time of each arm.
    Their quotient is close to the median ratio, as two numbers measured side by
    side in one process must be; None where no pair was kept."""
    subj, ref = [], []
    for r in recs:
        if r.get("status") != "ok" or not r.get("paired"):
            continue
        b = r.get("global_batch_size") or r.get("batch_size")
        for p in r["paired"].get("pairs") or []:
            if p.get("subject_step_s") and p.get("ref_step_s"):
                subj.append(b / p["subject_step_s"])
                ref.append(b / p["ref_step_s"])
    return (float(np.median(subj)), float(np.median(ref))) if subj else None
