"""The report's "DP-SGD as trained" section and the README's line for it,
from RUN_DIR/deployed.jsonl alone (common/harness/deployed.py writes it).

Each row: a strategy of a framework at one sampling rate, its real
(non-padding) examples per second as % of the same implementation's
fixed-batch step at B = P (paired in one process: median and 95 % interval
of the pairs), the padding share, physical batches and noise draws per
logical step, the compiles of the first cycle, epsilon, and how well the
logical batch sizes it drew fit Binomial(N, q).
"""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import pandas as pd

from common.harness import deployed
from common.report import findings, intervals
from common.report.analysis import fmt_bytes

FRAMEWORK_NAMES = findings.FRAMEWORK_NAMES
# Fewest drawn sizes a goodness-of-fit test is run on (fewer: "-").
MIN_SIZES_FOR_FIT = 20


def _fit(rec: dict[str, Any]) -> float | None:
    from common.reference.sampling import binomial_fit_pvalue
    sizes = rec.get("sizes") or []
    if len(sizes) < MIN_SIZES_FOR_FIT or rec.get("cap") is not None:
        return None  # truncated sizes are not Binomial by design
    try:
        return binomial_fit_pvalue(sizes, rec["dataset_size"], rec["sampling_rate"])
    except ValueError:
        return None


def pair_rates(rec: dict[str, Any], field: str = "paired") -> list[float]:
    """Real examples per second of each kept pair's deployed window (``field``: which pairing)."""
    return deployed.arm_rates(rec.get(field), rec["physical_batch"])[0]


def _ref_rates(rec: dict[str, Any], field: str) -> list[float]:
    """The reference's examples per second in the same pairs."""
    return deployed.arm_rates(rec.get(field), rec["physical_batch"])[1]


def _median(values: list[float]) -> float | None:
    return float(pd.Series(values).median()) if values else None


def frame(recs: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per deployed row (key), pooled over its rounds (one record per
    round: a round's last), in the catalogue's order: % of the fixed DP step
    and % of standard training, each the median of its pairs over every round
    with a two-level bootstrap interval, and the absolute examples/s of each arm."""
    per_key: dict[tuple, dict[int, dict[str, Any]]] = {}
    for r in recs:
        per_key.setdefault(deployed.key(r), {})[r.get("round") or 1] = r
    order = {(s.framework, s.impl, s.strategy): i for i, s in enumerate(deployed.STRATEGIES)}
    rows = []
    for by_round in per_key.values():
        rounds = [by_round[k] for k in sorted(by_round)]
        oks = [x for x in rounds if x["status"] == "ok"]
        r = oks[-1] if oks else rounds[-1]
        iv = intervals.ratio_interval(oks)
        std = intervals.hierarchical([[float(v) for v in (x.get("paired_standard") or {}).get("ratios") or []]
                                      for x in oks])
        ok = bool(oks)
        rate = intervals.hierarchical([pair_rates(x) for x in oks]) if ok else None
        rows.append({
            "framework": r["framework"], "impl": r["impl"], "strategy": r["strategy"], "model": r["model"],
            "dataset_size": r["dataset_size"], "logical_batch": r["logical_batch"],
            "physical_batch": r["physical_batch"], "sampling_rate": r["sampling_rate"], "cap": r.get("cap"),
            "sampler": r.get("sampler"), "status": r["status"], "error": r.get("error"),
            "rounds": len(oks),
            "real_examples_per_s": _median([v for x in oks for v in pair_rates(x)]) if ok and iv else (
                r.get("real_examples_per_s") if ok else None),
            "fixed_examples_per_s": _median([v for x in oks for v in _ref_rates(x, "paired")]) if ok else None,
            "standard_examples_per_s": _median([v for x in oks for v in _ref_rates(x, "paired_standard")])
            if ok else None,
            "real_beside_standard_per_s": _median([v for x in oks for v in pair_rates(x, "paired_standard")])
            if ok else None,
            "pct_of_fixed": iv.median * 100 if iv else None, "pct_lo": iv.lo * 100 if iv else None,
            "pct_hi": iv.hi * 100 if iv else None, "pairs": iv.n if iv else 0,
            "wide": iv.reason if iv else None,
            "pct_of_standard": std.median * 100 if std else None, "std_lo": std.lo * 100 if std else None,
            "std_hi": std.hi * 100 if std else None, "std_pairs": std.n if std else 0,
            "std_wide": std.reason if std else None,
            "rate_lo": rate.lo if rate else None, "rate_hi": rate.hi if rate else None,
            "padding_share": r.get("padding_share"), "physical_per_logical": r.get("physical_per_logical"),
            "noise_draws_per_logical": r.get("noise_draws_per_logical"),
            "compiles": r.get("compiles"), "first_cycle_s": r.get("first_cycle_s"), "peak_rss_bytes": r.get("peak_rss_bytes"),
            "steady_compiles": r.get("steady_compiles"), "cycle": r.get("cycle"),
            "sizes_drawn": len(r.get("sizes") or []), "binomial_p": _fit(r) if ok else None,
            "epsilon": (r.get("privacy") or {}).get("epsilon"),
            "order": order.get((r["framework"], r["impl"], r["strategy"]), 99),
        })
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    return df.sort_values(["logical_batch", "framework", "order"], key=lambda c: c.map(
        {f: i for i, f in enumerate(findings.FRAMEWORK_NAMES)}) if c.name == "framework" else c).reset_index(drop=True)


def correct(row: dict[str, Any]) -> bool:
    """A row a finding may name: it ran, was paired, and drew its noise once per logical step."""
    return row["status"] == "ok" and row["pairs"] > 0 and row["noise_draws_per_logical"] == 1


def pct_text(row: dict[str, Any], of: str = "fixed") -> str:
    """% of the fixed DP step (``of`` "fixed") or of standard training ("standard"), with its interval."""
    if row["status"] != "ok":
        return f"{row['status']}"
    med, lo, hi, n, wide = ((row["pct_of_fixed"], row["pct_lo"], row["pct_hi"], row["pairs"], row["wide"]) if of == "fixed"
                            else (row.get("pct_of_standard"), row.get("std_lo"), row.get("std_hi"),
                                  row.get("std_pairs") or 0, row.get("std_wide")))
    if not n or med is None or pd.isna(med):
        return "unpaired (not a finding)" if of == "fixed" else "-"
    text = f"{med:.1f} % [{lo:.1f}, {hi:.1f}]"
    return text + (" (wide)" if isinstance(wide, str) and wide else "")


def cheapest(df: pd.DataFrame, library_only: bool = False) -> list[dict[str, Any]]:
    """Per framework and logical batch, the correct row that trains fastest:
    the highest real examples per second (median of its pairs' deployed
    windows), and whether its 95 % interval clears every other row's. Rows
    are separate processes, so a margin inside the machine's drift (up to 2x
    within a day) is no finding: ``clear`` also needs ``CLEAR_FACTOR``."""
    out = []
    for (L, fw), g in df.groupby(["logical_batch", "framework"], sort=False):
        ok = [r for r in g.to_dict("records") if correct(r) and not (library_only and r["impl"] == "fastclip")]
        if not ok:
            continue
        best = max(ok, key=lambda r: r["real_examples_per_s"])
        rest = [r for r in ok if r is not best]
        runner_up = max((r["real_examples_per_s"] for r in rest), default=None)
        clear = all(best["rate_lo"] > r["rate_hi"] for r in rest) and (
            runner_up is None or best["real_examples_per_s"] > CLEAR_FACTOR * runner_up)
        out.append({**best, "clear": clear, "of": len(ok), "runner_up": runner_up})
    return out


# How many times faster than the next row the fastest must be to be named
# clearly fastest across processes: the study's VMs drift up to 2x within a day.
CLEAR_FACTOR = 2.0


def _g(v: Any, fmt: str) -> str:
    return "-" if v is None or pd.isna(v) else format(v, fmt)


def section(run_dir: Path, out_dir: Path | None = None) -> list[str]:
    """The report's section (empty where the run has no deployed rows); its
    plot goes to ``out_dir`` (default ``run_dir``)/plots/deployed.png."""
    recs = deployed.read(run_dir)
    if not recs:
        return []
    df = frame(recs)
    first = recs[0]
    png = plot(df, (out_dir or run_dir) / "plots" / "deployed.png")
    out = ["## DP-SGD as trained", "",
           f"Poisson-sampled logical batches (each of N = {first['dataset_size']:,} examples joins a step with "
           f"probability q) cut into physical batches of P, noise once per logical step, on the "
           f"`{first['model']}` model. Each row: real (non-padding) examples per second as % of the same "
           "implementation's fixed-batch step at B = P, timed in alternating windows in one process (median "
           "and 95 % interval of the pairs); padding share of the physical slots; physical batches and noise "
           f"draws per logical step (counted from the code: must be 1); the compiles and seconds of the first "
           f"{first.get('cycle')} logical steps (untimed, before the pairs) and the compiles during the timed "
           "steps (a strategy that compiles per batch size meets new sizes there: its compiles are in its "
           "number); epsilon after "
           f"{deployed.EPOCHS} epochs at delta {deployed.DELTA:g} (dp-accounting PLD, truncation accounted as "
           "such); peak RSS: the process's resident memory above its baseline in the steady state, the "
           f"dataset ({first['dataset_size']:,} examples) included (\"-\": not recorded); p: chi-square fit of the drawn sizes to Binomial(N, q) (\"-\": too few sizes, or truncated).",
           ""] + ([f"![DP-SGD as trained](plots/{png.name})", ""] if png else []) + [
           "% of standard: the same deployed step paired the same way with the framework's standard (non-private) "
           "step at B = P: what DP as trained costs against training without privacy. Examples/s: the medians of "
           "each arm in its pairs (real / fixed-batch DP / standard), over every round.", "",
           "| Framework | Row | L (q) | P | rounds | examples/s: real / fixed DP / standard | % of fixed-batch ex/s "
           "| % of standard | padding | phys./logical "
           "| noise draws | compiles: first cycle (s), timed | peak RSS | epsilon | p |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in df.to_dict("records"):
        out.append(
            f"| {FRAMEWORK_NAMES.get(r['framework'], r['framework'])} | {r['impl']} / {r['strategy']} | "
            f"{r['logical_batch']} ({r['sampling_rate']:.4f}) | {r['physical_batch']} | {r.get('rounds', 1)} | "
            f"{_g(r['real_examples_per_s'], '.0f')} / {_g(r.get('fixed_examples_per_s'), '.0f')} / "
            f"{_g(r.get('standard_examples_per_s'), '.0f')} | {pct_text(r)} | {pct_text(r, 'standard')} | "
            f"{_g(r['padding_share'], '.1%')} | "
            f"{_g(r['physical_per_logical'], '.2f')} | {_g(r['noise_draws_per_logical'], '.2f')} | "
            f"{_g(r['compiles'], '.0f')} ({_g(r['first_cycle_s'], '.1f')}), {_g(r['steady_compiles'], '.0f')} | "
            f"{fmt_bytes(r['peak_rss_bytes']) if pd.notna(r['peak_rss_bytes']) else '-'} | "
            f"{_g(r['epsilon'], '.2f')} | "
            f"{_g(r['binomial_p'], '.2g')} |")
    errors = [r for r in df.to_dict("records") if r["status"] != "ok"]
    out += [""] + [f"- {r['framework']} {r['impl']}/{r['strategy']} L {r['logical_batch']}: {r['status']}: "
                   f"{r['error']}" for r in errors]
    out += ["", "How each row samples and steps:", ""]
    seen = set()
    for s in deployed.STRATEGIES:
        if any(r["framework"] == s.framework and r["impl"] == s.impl and r["strategy"] == s.strategy
               for r in recs) and (s.framework, s.impl, s.strategy) not in seen:
            seen.add((s.framework, s.impl, s.strategy))
            out.append(f"- {FRAMEWORK_NAMES.get(s.framework, s.framework)} {s.impl} / {s.strategy} "
                       f"(sampler: {s.sampler}): {s.how}.")
    out += ["", "Cheapest correct strategy per framework and logical batch: the most real examples per second "
            "among the paired rows with one noise draw per logical step (rows are separate processes: named "
            f"clearly only where its interval clears the others' and it is over {CLEAR_FACTOR:g}x the next):", ""]
    for title, lib in (("Every row", False), ("The library's own rows only (no fastclip)", True)):
        out += [f"{title}:", ""] + [
            f"- L {c['logical_batch']}, {FRAMEWORK_NAMES.get(c['framework'], c['framework'])}: "
            f"{c['impl']} / {c['strategy']}, {c['real_examples_per_s']:.0f} real examples/s "
            f"[{c['rate_lo']:.0f}, {c['rate_hi']:.0f}]"
            + ("" if c["runner_up"] is None else f", {c['real_examples_per_s'] / c['runner_up']:.1f}x the next")
            + ("" if c["of"] == 1 else "" if c["clear"] else " (not clearly: within the machine's drift)")
            for c in cheapest(df, lib)] + [""]
    return out


def plot(df: pd.DataFrame, path: Path) -> Path | None:
    """Two panels (one per logical batch): each row's real examples/s as % of
    its fixed-batch step, with its 95 % interval; a row that did not run is
    named at 0 with its status. None where there is nothing to draw."""
    if df.empty:
        return None
    from common.report.plots import color, plt
    rates = sorted(df["logical_batch"].unique())
    fig, axes = plt.subplots(1, len(rates), figsize=(6 * len(rates), 4.2), sharey=True, squeeze=False)
    for ax, L in zip(axes[0], rates):
        g = df[df.logical_batch == L].to_dict("records")
        labels = [f"{FRAMEWORK_NAMES.get(r['framework'], r['framework'])}\n{r['impl']}/{r['strategy']}" for r in g]
        for i, r in enumerate(g):
            ok = r["status"] == "ok" and r["pairs"]
            impl = {"fastclip": "fastclip"}.get(r["impl"], deployed.strategy(r["framework"], r["impl"],
                                                                                r["strategy"]).fixed[0])
            if ok:
                ax.bar(i, r["pct_of_fixed"], color=color(r["framework"], impl),
                       yerr=[[r["pct_of_fixed"] - r["pct_lo"]], [r["pct_hi"] - r["pct_of_fixed"]]], capsize=3)
            else:
                ax.text(i, 3, r["status"] if r["status"] != "ok" else "unpaired", rotation=90, ha="center",
                        va="bottom", fontsize=8)
        ax.axhline(100, color="black", lw=0.8, ls="--")
        ax.set_xticks(range(len(g)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_title(f"L {L} (q {g[0]['sampling_rate']:.4f}) from P {g[0]['physical_batch']}")
    axes[0][0].set_ylabel("real examples/s, % of the fixed-batch step")
    fig.suptitle("DP-SGD as trained: Poisson sampling, padding and one noise draw per logical step "
                 "(paired, 95 % interval)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def readme_lines(run_dir: Path) -> list[str]:
    """The README's findings table for a deployed run: per framework, row and
    L, % of the fixed DP step and % of standard training (both paired, with
    intervals) and the absolute examples/s beside them."""
    df = frame(deployed.read(run_dir))
    if df.empty:
        return []
    out = ["| Framework | Row | L (P) | % of fixed-batch DP | % of standard | examples/s: real / standard | padding |",
           "|---|---|---|---|---|---|---|"]
    for r in df.to_dict("records"):
        ok = r["status"] == "ok"
        mark = " (compiles while timed)" if ok and (r.get("steady_compiles") or 0) > 0 else ""
        out.append(f"| {FRAMEWORK_NAMES.get(r['framework'], r['framework'])} | {r['impl']} / {r['strategy']}{mark} | "
                   f"{r['logical_batch']} ({r['physical_batch']}) | {pct_text(r)} | "
                   f"{pct_text(r, 'standard') if ok else '-'} | "
                   + (f"{_g(r['real_examples_per_s'], '.0f')} / {_g(r.get('standard_examples_per_s'), '.0f')}"
                      if ok else "-")
                   + f" | {_g(r['padding_share'], '.0%') if ok and r['padding_share'] else '-'} |")
    out += ["", "Each row: a deployed row's real (non-padding) examples per second as % of the same "
            "implementation's fixed-batch step at B = P, and as % of its framework's standard (non-private) "
            "training at B = P, each the median of window pairs timed alternately in one process over every "
            "round, with its 95 % interval; then both arms' examples/s (a high % at a low examples/s is a cheap "
            "row of a slow framework, not a fast one) and the padding share of its physical slots. % of "
            "fixed-batch DP below 100 %: what sampling, padding and per-logical-step noise cost; above: what one "
            "update per logical batch saves. **(compiles while timed)**: the row compiled during its timed "
            "steps (one compile per new batch size), so its % depends on how many sizes the run had met by "
            "then, and so on the run's length: not a steady state, and two runs need not agree on it.",
            ""]
    for title, lib in (("Cheapest correct strategy (most real examples/s)", False),
                       ("Among the libraries' own rows", True)):
        out.append(f"{title}: " + "; ".join(
            f"{FRAMEWORK_NAMES.get(c['framework'], c['framework'])} L {c['logical_batch']}: {c['impl']} / "
            f"{c['strategy']}" + ("" if c["runner_up"] is None else
                                  f", {c['real_examples_per_s'] / c['runner_up']:.1f}x the next")
            + ("" if c["clear"] or c["of"] == 1 else " (not clearly)") for c in cheapest(df, lib)) + ".")
        out.append("")
    return out[:-1]


def compare(run_a: Path, run_b: Path) -> tuple[list[str], bool]:
    """Two deployed runs side by side: each row's % of its fixed batch in both,
    whether the two 95 % intervals overlap, the gap between the medians and
    each interval's width (how precise each run is: the rows and their rounds
    differ between runs, e.g. one round against two).
    Returns the markdown lines and whether every row both runs measured agrees."""
    a, b = frame(deployed.read(run_a)), frame(deployed.read(run_b))
    if a.empty or b.empty:
        raise ValueError(f"no deployed rows in {run_a if a.empty else run_b}")
    keys = ["framework", "impl", "strategy", "logical_batch"]
    m = a.merge(b, on=keys, suffixes=("_a", "_b"))
    out = [f"# Two deployed runs: {run_a.name} and {run_b.name}", "",
           "Each row's real examples/s as % of its fixed-batch step (median [95 % interval] of its pairs) in "
           "each run; agree: the two intervals overlap. Generated by `python -m common.report.deployed A B`.", "",
           f"| Framework | Row | L | {run_a.name} | {run_b.name} | gap (points) | agree | width A | width B |",
           "|---|---|---|---|---|---|---|---|---|"]
    agree_all, gaps, widths = True, [], []
    for r in m.to_dict("records"):
        ra = {k[:-2]: v for k, v in r.items() if k.endswith("_a")}
        rb = {k[:-2]: v for k, v in r.items() if k.endswith("_b")}
        both = correct(ra) and correct(rb)
        agree = both and ra["pct_lo"] <= rb["pct_hi"] and rb["pct_lo"] <= ra["pct_hi"]
        gap = abs(ra["pct_of_fixed"] - rb["pct_of_fixed"]) if both else None
        wa = ra["pct_hi"] - ra["pct_lo"] if both else None
        wb = rb["pct_hi"] - rb["pct_lo"] if both else None
        if both:
            agree_all &= agree
            gaps.append(gap)
            widths.append((wa, wb))
        out.append(f"| {FRAMEWORK_NAMES.get(r['framework'], r['framework'])} | {r['impl']} / {r['strategy']} | "
                   f"{r['logical_batch']} | {pct_text(ra)} | {pct_text(rb)} | {_g(gap, '.1f')} | "
                   f"{'yes' if agree else 'no' if both else '-'} | {_g(wa, '.1f')} | {_g(wb, '.1f')} |")
    out += ["", f"{len(gaps)} rows measured (ok and paired) in both: "
            + ("every pair of intervals overlaps" if agree_all else "NOT every pair of intervals overlaps")
            + (f"; the largest gap between medians is {max(gaps):.1f} points." if gaps else ".")]
    if widths:
        out += ["", width_summary(run_a.name, run_b.name, widths)]
    return out, agree_all


def width_summary(name_a: str, name_b: str, widths: list[tuple[float, float]]) -> str:
    """How the two runs' 95 % intervals compare in width (points of % of the fixed step), row by row."""
    a, b = [w[0] for w in widths], [w[1] for w in widths]
    narrower = sum(wb < wa for wa, wb in widths)
    return (f"Interval width (points): median {statistics.median(a):.1f} in {name_a}, "
            f"{statistics.median(b):.1f} in {name_b} ({statistics.median(b) / statistics.median(a):.2f}x); "
            f"mean {statistics.mean(a):.1f} and {statistics.mean(b):.1f}; {name_b} narrower in {narrower} of "
            f"{len(widths)} rows.")


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys
    ap = argparse.ArgumentParser(prog="python -m common.report.deployed",
                                 description="Compare two deployed runs (exit 1 if a row's intervals do not overlap).")
    ap.add_argument("run_a", type=Path)
    ap.add_argument("run_b", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="write the markdown here (default: stdout)")
    a = ap.parse_args(argv)
    try:
        lines, ok = compare(a.run_a, a.run_b)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = "\n".join(lines) + "\n"
    if a.out:
        a.out.write_text(text)
    else:
        print(text, end="")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
