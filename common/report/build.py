"""report.md, tables/*.csv and plots/*.png of one run directory, from its records alone.

    python -m common.report RESULTS_DIR [--out DIR]

(Re)writes report.md, tables/ and plots/ in RESULTS_DIR (or in ``--out``,
reading RESULTS_DIR only). Nothing is typed by hand: every number comes from
a record. The report is a list of sections (``SECTIONS``), each a small
module that computes its frame, renders its lines and writes its CSV: the
answer first (Findings, every mode of each library, what did not run, how
sure the numbers are, the direct-use check), then an appendix. The frame
they share (one row per configuration, % of standard with its interval) and
the per-row text are in common/report/rows.py.

Which row of an option a cell names is common.report.findings.pick, the one
rule of the README, the Findings, the headline table and the headline figure.
*Direct-use* rows (``row_kind`` "direct": a minimal loop written the way the
library's README does it) are checks of a study row: they never enter a
pick, a percentage or a per-shape table, only their own table.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from common.harness import deployed as deployed_rows
from common.harness import records, verify
from common.report import allocator, deployed, findings, noise_share, readme, scaling
from common.report.rows import REDUCED, REDUCED_LEGEND, PRIVACY_NOTE, WIDE, frame  # noqa: F401  (frame: the API)
from common.report.sections import cross, direct, headline, jax_ab, modes, per_shape, precision, privacy_time
from common.report.sections import settings, status


@dataclass
class Run:
    """What every section reads, and where it writes its CSV."""

    run_dir: Path
    out_dir: Path
    recs: list[dict[str, Any]]
    df: pd.DataFrame  # one device, the study's allocator (rows.frame)
    every: pd.DataFrame  # the latest record of every configuration, every device count
    answer: pd.DataFrame = field(init=False)  # findings.frame(df): the Findings section and the headline figure
    cells: list[tuple[str, int]] = field(init=False)  # the (model, B) columns of every per-cell table
    settings: tuple[list[dict[str, Any]], list[str]] = field(init=False)  # settings_summary: groups, warnings
    plots: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        failed = findings.parity_failures(verify.read(self.run_dir))
        self.answer, self.cells = findings.frame(self.df, failed), findings.cells(self.df)
        self.settings = settings.settings_summary(self.recs)

    def csv(self, name: str, table: pd.DataFrame, index: bool = False, drop: Sequence[str] = ()) -> None:
        table.drop(columns=[c for c in drop if c in table.columns]).to_csv(self.out_dir / "tables" / name, index=index)

    def image(self, name: str) -> list[str]:
        p = self.plots.get(name)
        return [f"![{name}](plots/{p.name})", ""] if p is not None else []


SYMBOLS = [
    f"- {REDUCED} {REDUCED_LEGEND.removeprefix(REDUCED + ' ')}.",
    f"- † {PRIVACY_NOTE.removeprefix('† ')}",
    "- ★ the fastest standard row of any framework at that model and batch size.",
    "- ⚠ a warning: a study row slower than direct use of its library, or settings that differ within the run.",
    f"- {WIDE}: the 95 % interval's half-width is above 5 % of its median (Precision says why); "
    "\"≈ standard\": above 100 % but the interval reaches 100 %; (unpaired): no window pairs fitted the "
    "budget, a single number without an interval.",
    "- ↻ (analyses) a loop in the compiled program, with its trip counts; ✓ (fastclip's per-layer timing) the "
    "method chosen was also the fastest measured.",
]


def reading(run: Run) -> list[str]:
    return ["## Reading this report", "",
            "Throughput is samples/s, the median over the timed windows of every round. % of standard of a DP "
            "row is paired: its process timed its framework's standard row (same model, batch and variant) in "
            "alternating windows, ABBA order; the number is the median of the per-pair ratios over every round, "
            "with its 95 % interval [low, high] (two-level bootstrap: rounds, then pairs; "
            "common/report/intervals.py). Peak memory: steady-state peak RSS of the timed steps above the "
            "worker's idle baseline on CPU (under the study's allocator setting RSS also counts freed blocks "
            "glibc keeps for reuse), the allocator's peak on GPUs. A timeout that took steps before the budget "
            "ran out shows their median step time.", "", "Symbols (each means this one thing everywhere):", "",
            *SYMBOLS, ""]


def findings_section(run: Run) -> list[str]:
    f = run.answer
    if f.empty:
        return []
    run.csv("findings.csv", f)
    return (["## Findings", "",
             "Per framework, each DP library and the study's fastclip in each cell: the row "
             "common.report.findings.pick names (the mode that trains fastest among the rows repeated in fresh "
             "processes, paired and proven equal to the float64 reference: the highest % of its own standard, "
             "scaled by its variant's standard over the framework's fastest standard variant: TF graph or XLA), its setting, % of "
             "its own standard training throughput (same model, batch and variant) with its 95 % interval, its "
             "peak memory as a multiple of standard's, and both arms' samples/s in the same window pairs. The "
             "recommendation sets each library's winning setting beside its default. The README's findings "
             "tables are these tables of the runs results/CANONICAL names.", ""]
            + readme.recommendation_lines(run.df, f, findings.parity_failures(verify.read(run.run_dir))) + [""]
            + readme.table_lines(f, run.cells) + readme.flag_notes(run.df, f) + [""] + run.image("headline") + run.image("pct_of_standard")
            + run.image("memory_vs_standard"))


def modes_section(run: Run) -> list[str]:
    mf = modes.frame(run.df)
    if len(mf):
        run.csv("modes.csv", mf)
    return modes.lines(mf, run.cells)


def failures_section(run: Run) -> list[str]:
    run.csv("status_counts.csv", status.status_counts(run.every), index=True)
    return status.status_lines(run.every) + status.problems(run.df)


def direct_section(run: Run) -> list[str]:
    dd = direct.direct_frame(run.df)
    run.csv("direct.csv", dd, drop=("direct", "study"))
    return direct.direct_lines(dd)


def headline_section(run: Run) -> list[str]:
    h = headline.headline_frame(run.df, run.answer)
    run.csv("headline.csv", h)
    return headline.headline_lines(h)


def cross_section(run: Run) -> list[str]:
    c = cross.cross_framework(run.df)
    run.csv("cross_framework.csv", c, index=True)
    if c.empty:
        return []
    per_example = c[[col for col in c.columns if "†" not in col]]
    return ["## Cross-framework: every impl's best variant", "",
            "% of own framework's standard / % of the fastest standard of any framework (samples/s, best variant "
            "/ microbatch); per-example rows only (the † rows are in Every mode of each library).", "",
            per_example.reset_index().to_markdown(index=False), ""]


def jax_section(run: Run) -> list[str]:
    jp, ab = jax_ab.jax_privacy_frame(run.df), jax_ab.xla_ab_frame(run.df)
    run.csv("jax_privacy_default.csv", jp, drop=("default", "mb_b"))
    run.csv("xla_ab.csv", ab, drop=("flag", "default"))
    return jax_ab.jax_privacy_lines(jp) + jax_ab.xla_ab_lines(ab)


def noise_section(run: Run) -> list[str]:
    nf = noise_share.frame(run.df)
    run.csv("fastclip_noise_share.csv", nf)
    return noise_share.lines(nf, REDUCED, "")


def scaling_section(run: Run) -> list[str]:
    sf = scaling.frame(allocator.preferred(run.recs))
    if not sf.empty:
        run.csv("scaling.csv", sf)
    return scaling.lines(sf, REDUCED, "")


def allocator_section(run: Run) -> list[str]:
    af = allocator.frame(run.recs)
    if not af.empty:
        run.csv("allocator_ab.csv", af)
    return allocator.lines(af, REDUCED, "")


def settings_section(run: Run) -> list[str]:
    groups, warnings = run.settings
    return (["## Environment", ""] + settings.environment_lines(run.df, run.recs) + [""]
            + settings.settings_lines(groups, warnings) + settings.stage_lines(run.run_dir))


def analyses_section(run: Run) -> list[str]:
    from common.report import phases
    from common.report import explain, layer_timing
    out = settings.code_paths(run.recs) + phases.table(run.recs)
    if (run.run_dir / "explain.json").exists():
        out += [explain.render(json.loads((run.run_dir / "explain.json").read_text())), ""]
    if (run.run_dir / layer_timing.FILE).exists():
        out += layer_timing.table(json.loads((run.run_dir / layer_timing.FILE).read_text()))
    return out


def plots_section(run: Run) -> list[str]:
    return ["## Every plot", ""] + [f"![{name}](plots/{p.name})" for name, p in run.plots.items()] + [""]


# The report, in order: (section, in the appendix?).
SECTIONS: list[tuple[Callable[[Run], list[str]], bool]] = [
    (findings_section, False),
    (modes_section, False),
    (failures_section, False),
    (lambda run: precision.precision_lines(run.df, run.run_dir), False),
    (direct_section, False),
    (reading, False),
    (headline_section, True),
    (cross_section, True),
    (lambda run: per_shape.seed_tables(run.df), True),
    (jax_section, True),
    (noise_section, True),
    (scaling_section, True),
    (allocator_section, True),
    (lambda run: privacy_time.privacy_section(run.recs, run.out_dir), True),
    (settings_section, True),
    (analyses_section, True),
    (plots_section, True),
]


def anchor(heading: str) -> str:
    """GitHub's anchor of a markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lstrip("#").strip().lower()).replace(" ", "-")


def contents(main: list[str], appendix: list[str]) -> list[str]:
    """A table of contents of the level-2 headings, the appendix's nested under it."""
    link = lambda ln: f"[{ln[3:].strip()}](#{anchor(ln[3:])})"
    out = ["## Contents", ""] + [f"- {link(ln)}" for ln in main if ln.startswith("## ")]
    if appendix:
        out += ["- [Appendix](#appendix)"] + [f"  - {link(ln)}" for ln in appendix if ln.startswith("## ")]
    return out + [""]


def write_report(run_dir: Path, out_dir: Path | None = None) -> Path:
    """Read run_dir's records; write report.md, tables/ and plots/ into out_dir (default run_dir)."""
    from common.harness import maxbatch
    from common.report import maxbatch as maxbatch_table, parity as parity_table, plots
    out_dir = run_dir if out_dir is None else out_dir
    recs = records.read(run_dir / "records.jsonl")
    probes = records.read(run_dir / maxbatch.MAX_BATCH)
    parity = verify.read(run_dir)
    if not recs and not probes and not deployed_rows.read(run_dir):
        raise ValueError(f"no records in {run_dir / 'records.jsonl'}")
    out_dir.mkdir(parents=True, exist_ok=True)
    trained = deployed.section(run_dir, out_dir)
    extra = (parity_table.render(parity) if parity else []) + (maxbatch_table.table(probes) if probes else [])
    if not recs:
        out = out_dir / "report.md"
        head = [f"# What DP-SGD costs as trained — {run_dir.name}", "", deployed_scope(run_dir), ""] if trained \
            else [f"# dpbench — {run_dir.name}", ""]
        out.write_text("\n".join(head + trained + extra))
        return out
    (out_dir / "tables").mkdir(exist_ok=True)
    # Multi-device rows have their own section (scaling), the allocator A/B's other arm its own
    # (allocator); every other table is of one device under the study's allocator.
    run = Run(run_dir, out_dir, recs, frame(allocator.preferred([r for r in recs if r.get("devices", 1) == 1])),
              pd.DataFrame(records.latest(recs)))
    run.csv("throughput.csv", run.df[THROUGHPUT_COLUMNS])
    pngs = plots.write_all(run.df, out_dir / "plots", headline=run.answer)
    from common.report import phases
    phase_png = phases.plot(recs, out_dir / "plots" / "phases.png")
    run.plots = {p.stem: p for p in pngs + ([phase_png] if phase_png is not None else [])}
    main: list[str] = []
    appendix: list[str] = []
    for section, in_appendix in SECTIONS:
        # a section may return multi-line strings: one line each, so the contents see every heading
        (appendix if in_appendix else main).extend("\n".join(section(run)).split("\n"))
    main += trained  # DP-SGD as trained, where the run has deployed rows beside the study's
    appendix = extra + appendix  # parity and the max-batch probes first in the appendix
    groups, warnings = run.settings
    lines = [f"# What DP-SGD costs — {run_dir.name}", "", scope(run), ""]
    if warnings:
        lines += [f"> **⚠ This run mixes {len(groups)} distinct settings** ({'; '.join(warnings)}); see Settings.", ""]
    lines += contents(main, appendix) + main + (["# Appendix", ""] + appendix if appendix else [])
    out = out_dir / "report.md"
    out.write_text("\n".join(lines))
    return out


THROUGHPUT_COLUMNS = [
    "framework", "impl", "variant", "row_kind", "privacy_unit", "model", "batch_size", "microbatch_size", "status",
    "status_text", "throughput_sps", "sps_lo", "sps_hi", "reduced", "pct_of_standard", "pct_lo", "pct_hi", "pct_wide",
    "rounds", "pairs", "pct_of_fastest_standard", "step_s_median", "step_s_p10", "step_s_p90", "step_s_cv",
    "compile_s", "peak_mem_bytes", "mem_source", "device", "error"]


def scope(run: Run) -> str:
    """One line: the machine, models, precision, sampling and rounds of the run."""
    return readme.scope(run.recs) + (
        f" {int(run.df['rounds'].max() or 1)} round(s); commit(s) "
        + ", ".join(sorted({r['git_commit'][:7] for r in run.recs if r.get('git_commit')})) + ".")


def deployed_scope(run_dir: Path) -> str:
    """The scope line of a run of deployed rows only: machine, model, commits."""
    from common.harness import deployed as harness
    recs = harness.read(run_dir)
    commits = sorted({r["git_commit"][:7] for r in recs if r.get("git_commit")})
    return readme.scope(recs, sampling="Poisson-sampled logical batches") + f" Commit(s) {', '.join(commits)}."


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m common.report", description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path, help="run directory holding records.jsonl")
    ap.add_argument("--out", type=Path, default=None,
                    help="write report.md, tables/ and plots/ here instead of into RUN_DIR")
    a = ap.parse_args(argv)
    try:
        print(write_report(a.run_dir, a.out))
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
