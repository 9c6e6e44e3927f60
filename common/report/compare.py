"""Do two runs agree? The study's reproducibility check, cell by cell.

    python -m common.report.compare RUN_A RUN_B [--threshold-pp 5]

A number in the study means something only if a second run, on another day
or another machine of the same kind, gives it back. For every DP (and
direct-use) configuration in both runs this prints each run's ratio to its
reference (median and 95 % interval over rounds and pairs, from
common/report/intervals.py), the difference B - A in percentage points and
whether the intervals overlap. A header gives the machines' canaries (B's
speed against A's, and each run's drift from start to end) and whether the
machine identities match, so that a disagreement can be told from a
different or drifting machine.

*Named rows* are the study's claims: every row the README's findings name in
either run (common.report.findings.pick's row of each option in each cell,
and each library's default that the recommendation sets beside it), whatever
its %. Two runs agree on a named row when |B - A| <= max(3 pp, 10 % of the
smaller median) and the two 95 % intervals overlap. The command exits 1 when
a named row disagrees (or is measured in one run only), 0 when none does, 2
on bad input.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from common.harness import machine, records
from common.harness.threads import DEFAULT_ALLOCATOR
import pandas as pd

from common.report import findings
from common.report.rows import row_label
from common.report.intervals import Interval, ratio_interval

THRESHOLD = 0.03  # 3 percentage points: the absolute floor of the agreement band
RELATIVE = 0.10  # ... or 10 % of the smaller median, whichever is larger: a 10 % row moves by 1 pp, not 5
CANARY_TOLERANCE = 0.10  # B/A canary outside 1 +- this: the machines are not equally fast


class CompareError(ValueError):
    """Input that cannot be compared (exit 2)."""


@dataclass
class Row:
    key: tuple
    framework: str
    model: str
    batch_size: int
    label: str
    status_a: str | None  # None: not in run A
    status_b: str | None
    a: Interval | None
    b: Interval | None
    headline: bool = False  # a named row: one the README's findings name in either run
    verdict: str = "-"  # "agree" / "DISAGREE" / "NO RATIO" / "ONE RUN" for named rows, else "-"
    note: str = ""

    @property
    def delta_pp(self) -> float | None:
        return None if self.a is None or self.b is None else (self.b.median - self.a.median) * 100

    @property
    def overlap(self) -> bool | None:
        return None if self.a is None or self.b is None else self.a.overlaps(self.b)

    @property
    def fails(self) -> bool:
        return self.verdict in ("DISAGREE", "NO RATIO", "ONE RUN")


@dataclass
class CompareResult:
    run_a: Path
    run_b: Path
    threshold: float
    rows: list[Row]
    header: list[str] = field(default_factory=list)

    @property
    def headline(self) -> list[Row]:
        return [r for r in self.rows if r.headline]

    @property
    def ok(self) -> bool:
        return not any(r.fails for r in self.rows)

    def text(self) -> str:
        out = [f"# Compare: A = {self.run_a}, B = {self.run_b}", ""] + [f"- {h}" for h in self.header] + [""]
        out += ["| framework | model | B | row | A % [lo, hi] | B % [lo, hi] | Δ pp | overlap | named | verdict |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for r in self.rows:
            d, ov = r.delta_pp, r.overlap
            out.append(f"| {r.framework} | {r.model} | {r.batch_size} | {r.label} | {_cell(r.a, r.status_a)} | "
                       f"{_cell(r.b, r.status_b)} | {'-' if d is None else f'{round(d, 1) + 0.0:+.1f}'} | "
                       f"{'-' if ov is None else ('yes' if ov else 'no')} | {'yes' if r.headline else 'no'} | "
                       f"{r.verdict}{f' ({r.note})' if r.note else ''} |")
        out += ["", self.summary()]
        return "\n".join(out) + "\n"

    def summary(self) -> str:
        bad = [r for r in self.headline if r.fails]
        widths = [(i.hi - i.lo) * 100 for r in self.rows for i in (r.a, r.b) if i is not None]
        deltas = [abs(r.delta_pp) for r in self.headline if r.delta_pp is not None]
        text = (f"{len(self.headline)} named row{'s' * (len(self.headline) != 1)} (every row the README's findings "
                f"name in either run), {len(bad)} disagree (|Δ| > max({self.threshold * 100:g} pp, "
                f"{RELATIVE:.0%} of the smaller), intervals apart, or measured in one run only)")
        if deltas:
            text += f"; largest |Δ| among them {max(deltas):.1f} pp"
        if widths:
            text += (f"; interval width median {statistics.median(widths):.1f} pp, max {max(widths):.1f} pp "
                     f"over {len(widths)} intervals")
        only = [r for r in self.rows if r.status_a is None or r.status_b is None]
        if only:
            text += f"; {len(only)} row{'s' * (len(only) != 1)} in one run only"
        return text + "."


def _cell(iv: Interval | None, status: str | None) -> str:
    if status is None:
        return "absent"
    if status != "ok":
        return status
    return "no pairs" if iv is None else iv.text()


def _load(run: Path) -> list[dict[str, Any]]:
    path = Path(run) / "records.jsonl"
    if not path.is_file():
        raise CompareError(f"{run}: no records.jsonl")
    return records.read(path)


def _cells(recs: list[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    """DP and direct-use records by configuration, one per round (records.per_round)."""
    return records.per_round(r for r in recs if r["mode"] == "dp" or r.get("row_kind") == "direct")


def _status(recs: list[dict[str, Any]]) -> str:
    """ok where any round is ok (its pairs count), else the last round's status."""
    return "ok" if any(r["status"] == "ok" for r in recs) else recs[-1]["status"]


def _label(rec: dict[str, Any]) -> str:
    text = row_label(rec)
    if rec.get("devices", 1) != 1:
        text += f", {rec['devices']} devices"
    if rec.get("allocator", DEFAULT_ALLOCATOR) != DEFAULT_ALLOCATOR:
        text += f", malloc {rec['allocator']}"
    return text + (" [direct]" if rec.get("row_kind") == "direct" else "")


def band(a: float, b: float, threshold: float = THRESHOLD) -> float:
    """The largest |B - A| (ratios, not %) at which two medians still agree."""
    return max(threshold, RELATIVE * min(a, b))


def _judge(row: Row, threshold: float) -> None:
    """A named row's verdict (only named rows can fail the comparison)."""
    row.headline = True
    if row.status_a is None or row.status_b is None:
        row.verdict = "ONE RUN"
        return
    if row.status_a != "ok" or row.status_b != "ok":
        row.verdict = "agree" if row.status_a == row.status_b else "DISAGREE"
        row.note = row.note or f"status {row.status_a} vs {row.status_b}"
        return
    if row.a is None or row.b is None:
        # A claim one run cannot check is not a reproduced claim.
        row.verdict, row.note = "NO RATIO", f"no paired ratios in run {'A' if row.a is None else 'B'}"
    elif abs(row.b.median - row.a.median) > band(row.a.median, row.b.median, threshold) or not row.overlap:
        row.verdict = "DISAGREE"
    else:
        row.verdict = "agree"
    wide = [f"{n}: {i.reason}" for n, i in (("A", row.a), ("B", row.b)) if i is not None and i.reason]
    if wide and not row.note:
        row.note = "; ".join(wide)


def named_keys(run: Path) -> set[tuple]:
    """The configurations (records.config_key) the README's findings of ``run``
    name: each option's pick in each cell and each library's default there."""
    from common.report import readme  # the findings' own reading of a run
    df, failed = readme.run_frame(run)
    if df.empty:
        return set()
    f = findings.frame(df, failed)
    keys = set()
    for r in f[f["status"] == "ok"].to_dict("records"):
        mb = None if pd.isna(r["microbatch_size"]) else int(r["microbatch_size"])
        keys.add((r["framework"], r["impl"], r["variant"], r["model"], int(r["batch_size"]), mb))
        d = findings.default_row(df, r["library"], r["model"], int(r["batch_size"]))
        if d is not None and d["status"] == "ok" and pd.notna(d["pct_lo"]):  # a default with an interval
            dmb = None if pd.isna(d["microbatch_size"]) else int(d["microbatch_size"])
            keys.add((d["framework"], d["impl"], d["variant"], d["model"], int(d["batch_size"]), dmb))
    return keys


# --- the machines ----------------------------------------------------------------------------

def _machine_file(run: Path) -> dict[str, Any]:
    return machine.read(Path(run) / machine.FILE)


def _identity(run: Path, recs: list[dict[str, Any]]) -> dict[str, Any]:
    """machine.json's identity, else the first record's ``machine``, else its cpu_model."""
    ident = _machine_file(run).get("machine")
    if not isinstance(ident, dict):
        ident = next((r["machine"] for r in recs if isinstance(r.get("machine"), dict)), None)
    if not isinstance(ident, dict):
        ident = {"cpu_model": recs[0]["cpu_model"]} if recs else {}
    return ident


def _ext(ident: dict[str, Any]) -> Any:
    v = ident.get("vector_extensions")
    return sorted(v) if isinstance(v, (list, tuple)) else v


def machine_line(id_a: dict[str, Any], id_b: dict[str, Any]) -> str:
    """Same machine identity (CPU model and vector extensions)?"""
    cpu_a, cpu_b = id_a.get("cpu_model"), id_b.get("cpu_model")
    ext_a, ext_b = _ext(id_a), _ext(id_b)
    if cpu_a is None or cpu_b is None:
        return "machine identity: unknown (no CPU model in " + ("A" if cpu_a is None else "B") + ")"
    if cpu_a != cpu_b or (ext_a is not None and ext_b is not None and ext_a != ext_b):
        return (f"machine identity: DIFFERENT: A {cpu_a} [{_ext_text(ext_a)}], "
                f"B {cpu_b} [{_ext_text(ext_b)}]")
    if ext_a is None or ext_b is None:
        return f"machine identity: same CPU model ({cpu_a}); vector extensions not recorded in both runs"
    return f"machine identity: same ({cpu_a}; {_ext_text(ext_a)})"


def _ext_text(ext: Any) -> str:
    if ext is None:
        return "extensions unknown"
    return ", ".join(map(str, ext)) if isinstance(ext, list) else str(ext)


def _canary(run: Path, when: str) -> dict[str, float]:
    c = _machine_file(run).get("canary")
    part = c.get(when) if isinstance(c, dict) else None
    if not isinstance(part, dict):
        return {}
    return {k: float(part[k]) for k in ("gemm_s", "conv_s") if isinstance(part.get(k), (int, float)) and part[k] > 0}


def _ratios(num: dict[str, float], den: dict[str, float]) -> dict[str, float]:
    return {k[:-2]: num[k] / den[k] for k in ("gemm_s", "conv_s") if k in num and k in den}


def _ratio_text(r: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}x" for k, v in r.items())


def canary_lines(run_a: Path, run_b: Path) -> list[str]:
    """B's start canary against A's (the machines' relative speed), and each run's end/start drift."""
    speed = _ratios(_canary(run_b, "start"), _canary(run_a, "start"))
    if speed:
        off = [k for k, v in speed.items() if abs(v - 1) > CANARY_TOLERANCE]
        line = f"canary B/A at start (seconds, > 1: B slower): {_ratio_text(speed)}"
        if off:
            line += f"; B's machine is not A's speed on {', '.join(off)}: ratios may differ for that reason"
    else:
        line = "canary B/A at start: " + ("not recorded in A" if not _canary(run_a, "start") else "not recorded in B")
    out = [line]
    for name, run in (("A", run_a), ("B", run_b)):
        drift = _ratios(_canary(run, "end"), _canary(run, "start"))
        out.append(f"drift of run {name} (canary end/start): {_ratio_text(drift) if drift else 'not recorded'}")
    return out


# --- the comparison --------------------------------------------------------------------------

def compare(run_a: Path, run_b: Path, threshold: float = THRESHOLD) -> CompareResult:
    """Compare the ratios of two run directories (raises CompareError on bad input)."""
    run_a, run_b = Path(run_a), Path(run_b)
    recs_a, recs_b = _load(run_a), _load(run_b)
    cells_a, cells_b = _cells(recs_a), _cells(recs_b)
    if not set(cells_a) & set(cells_b):
        raise CompareError(f"no DP or direct-use configuration is in both {run_a} and {run_b}")
    named = named_keys(run_a) | named_keys(run_b)
    rows = []
    for key in set(cells_a) | set(cells_b):
        ra, rb = cells_a.get(key), cells_b.get(key)
        rec = (ra or rb)[-1]
        row = Row(key, rec["framework"], rec["model"], rec["batch_size"], _label(rec),
                  _status(ra) if ra else None, _status(rb) if rb else None,
                  ratio_interval(ra) if ra else None, ratio_interval(rb) if rb else None)
        if ra is None or rb is None:
            row.note = f"only in {'A' if ra else 'B'}"
        if key[:6] in named and rec.get("devices", 1) == 1:
            _judge(row, threshold)
        rows.append(row)
    rows.sort(key=lambda r: (r.framework, r.model, r.batch_size, r.label))
    header = [machine_line(_identity(run_a, recs_a), _identity(run_b, recs_b))] + canary_lines(run_a, run_b)
    for name, run in (("A", run_a), ("B", run_b)):
        changed = _machine_file(run).get("machine_changed")
        if isinstance(changed, dict) and changed:  # machine.write keeps a resume's other identity here
            header.append(f"run {name} changed machine during the run (at {', '.join(changed)}): its rows mix machines")
    rounds = [max((r.get("round") or 1) for r in recs) for recs in (recs_a, recs_b)]
    header.append(f"rounds: A {rounds[0]}, B {rounds[1]}; ratio = % of the reference (DP rows: the framework's "
                  f"standard row of the cell; direct rows: the study row they check), paired in one process")
    return CompareResult(run_a, run_b, threshold, rows, header)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m common.report.compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_a", type=Path)
    ap.add_argument("run_b", type=Path)
    ap.add_argument("--threshold-pp", type=float, default=THRESHOLD * 100,
                    help="the absolute floor of the agreement band, in percentage points (default 3; the band is "
                         "max(this, 10 %% of the smaller median))")
    args = ap.parse_args(argv)
    try:
        result = compare(args.run_a, args.run_b, args.threshold_pp / 100)
    except CompareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(result.text())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
