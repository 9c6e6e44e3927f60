"""PNG plots of a run (DESIGN.md §6), from the report's data frame only."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def _series_label(r: pd.Series) -> str:
    mb = "" if pd.isna(r["microbatch_size"]) or r["mode"] == "standard" else f" mb={int(r['microbatch_size'])}"
    return f"{r['framework']}:{r['label']}{mb}"


def _per_model(df: pd.DataFrame, path: Path, draw, title: str) -> Path | None:
    models = list(dict.fromkeys(df["model"]))
    if not models:
        return None
    fig, axes = plt.subplots(len(models), 1, figsize=(11, 4.5 * len(models)), squeeze=False)
    for ax, model in zip(axes[:, 0], models):
        draw(ax, df[df["model"] == model])
        ax.set_title(f"{title} — {model}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def throughput_vs_batch(ax, d: pd.DataFrame) -> None:
    for label, g in d.assign(series=d.apply(_series_label, axis=1)).groupby("series"):
        g = g.sort_values("batch_size")
        ax.plot(g["batch_size"], g["throughput_sps"], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("samples/s")
    ax.legend(fontsize=7, ncol=2)


def _bars(ax, d: pd.DataFrame, column: str, ylabel: str, scale: float = 1.0) -> None:
    d = d.assign(series=d.apply(_series_label, axis=1))
    table = d.pivot_table(index="series", columns="batch_size", values=column, aggfunc="max") / scale
    table.plot.bar(ax=ax, width=0.8)
    ax.set_ylabel(ylabel)
    ax.set_xlabel("")
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(title="batch size", fontsize=7)


def write_all(df: pd.DataFrame, out: Path) -> list[Path]:
    out.mkdir(exist_ok=True)
    ok = df[df["status"] == "ok"]
    made = [
        _per_model(ok, out / "throughput_vs_batch.png", throughput_vs_batch, "throughput vs batch size"),
        _per_model(ok[ok["mode"] == "dp"], out / "pct_of_standard.png",
                   lambda ax, d: (_bars(ax, d, "pct_of_standard", "% of standard"), ax.axhline(100, color="k", lw=0.8)),
                   "% of the framework's standard"),
        _per_model(ok.dropna(subset=["peak_mem_bytes"]), out / "peak_memory.png",
                   lambda ax, d: _bars(ax, d, "peak_mem_bytes", "peak memory (MiB)", 2**20), "peak memory"),
    ]
    return [p for p in made if p is not None]
