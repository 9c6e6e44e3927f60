"""Appendix: jax-privacy's default (full vmap) against microbatch = B, and the
study's XLA flag against XLA's defaults.
"""
from __future__ import annotations

import pandas as pd

from common.harness import records
from common.harness.config import XLA_DEFAULT
from common.report.rows import by_key, cell_text, mb_text, mem_mib, ratio_of, study_rows


# Filled in by hand with the explanation of the jax-privacy table (rendered only when non-empty).
JAX_PRIVACY_MICROBATCH_NOTE = (
    "Why an integer `microbatch_size` is slower even at B (jax-privacy 2.0, optax 0.2.8, jax 0.10.2, read from "
    "the source and the compiled HLO): with `None`, optax's `micro_vmap` is a plain `vmap` + sum "
    "(`optax/microbatching/_microbatching.py`); with an integer it reshapes the batch and runs a "
    "`lax.fori_loop` whose trip count jax-privacy passes as a traced value (`jax_privacy/clipping.py`, "
    "`_num_real_microbatches`), so even one microbatch compiles to a while loop that XLA removes only late. "
    "XLA:CPU's convolution canonicalization runs before that and visits only the entry computation, so the "
    "per-example (grouped) weight-gradient convolutions inside the loop keep a layout Eigen cannot run and are "
    "emitted as XLA's generic loop code (the JAXPR/HLO analysis counts them as `convolution_not_eigen_layout`). "
    "The table above is this run's own measurement of what that costs.")


def jax_privacy_frame(df: pd.DataFrame) -> pd.DataFrame:
    """jax_privacy's default (microbatch None: one vmap over the batch) vs microbatch_size = B."""
    keyed = by_key(df)
    rows = []
    for (fw, impl, variant, model, b, mb), r in keyed.items():
        if fw != "jax" or impl != "jax_privacy" or mb is not None:
            continue
        m = keyed.get((fw, impl, variant, model, b, b))
        rows.append({"model": model, "batch_size": b, "variant": variant, "default": r, "mb_b": m,
                     "default_sps": r["throughput_sps"] if r["status"] == "ok" else None,
                     "mb_b_sps": m["throughput_sps"] if m is not None and m["status"] == "ok" else None,
                     "ratio": ratio_of(r, m)})
    return pd.DataFrame(rows)


def jax_privacy_lines(jp: pd.DataFrame) -> list[str]:
    if jp.empty:
        return []
    out = ["## jax-privacy: default full vmap vs microbatch = B", ""]
    if JAX_PRIVACY_MICROBATCH_NOTE:
        out += [JAX_PRIVACY_MICROBATCH_NOTE, ""]
    out += ["| Model | B | Variant | Full vmap (default) (samples/s) | mb = B (samples/s) | default / mb=B "
            "| Peak Mem default / mb=B (MiB) |", "|---|---|---|---|---|---|---|"]
    reduced = False
    for r in jp.itertuples():
        ratio = "-" if r.ratio is None or pd.isna(r.ratio) else f"{r.ratio:.2f}"
        mem = f"{mem_mib(r.default['peak_mem_bytes'])} / {'-' if r.mb_b is None else mem_mib(r.mb_b['peak_mem_bytes'])}"
        out.append(f"| {r.model} | {r.batch_size} | {r.variant or '-'} | {cell_text(r.default)} | {cell_text(r.mb_b)} | "
                   f"{ratio} | {mem} |")
        reduced |= any(x is not None and x["reduced"] for x in (r.default, r.mb_b))
    return out + [""]


def xla_ab_frame(df: pd.DataFrame) -> pd.DataFrame:
    """JAX study rows with both the study's XLA flag ("") and XLA's defaults (xla-default)."""
    keyed = by_key(study_rows(df))
    rows = []
    for (fw, impl, variant, model, b, mb), r in keyed.items():
        if fw != "jax" or variant != "":
            continue
        a = keyed.get((fw, impl, XLA_DEFAULT, model, b, mb))
        if a is None:
            continue
        rows.append({"impl": impl, "microbatch_size": mb, "model": model, "batch_size": b, "flag": r, "default": a,
                     "flag_sps": r["throughput_sps"] if r["status"] == "ok" else None,
                     "default_sps": a["throughput_sps"] if a["status"] == "ok" else None,
                     "ratio": ratio_of(r, a)})
    return pd.DataFrame(rows)


def xla_ab_lines(ab: pd.DataFrame) -> list[str]:
    if ab.empty:
        return []
    flags = sorted({str(records.settings(r["_rec"])["xla_flags"]) for r in ab["flag"]})
    dflt = sorted({str(records.settings(r["_rec"])["xla_flags"]) for r in ab["default"]})
    out = ["## XLA flag A/B (JAX)", "",
           f"The study's XLA_FLAGS (`{'`, `'.join(flags)}`) vs XLA's defaults (`{XLA_DEFAULT}` variant, recorded "
           f"XLA_FLAGS `{'`, `'.join(dflt)}`), same impl, microbatch, model and batch. flag / default > 1: the "
           "study's flag is faster.", "",
           "| Impl | Microbatch | Model | B | Study flag (samples/s) | XLA default (samples/s) | flag / default |",
           "|---|---|---|---|---|---|---|"]
    reduced = False
    for r in ab.itertuples():
        ratio = "-" if r.ratio is None or pd.isna(r.ratio) else f"{r.ratio:.2f}"
        out.append(f"| {r.impl} | {mb_text('jax', r.impl, r.microbatch_size) or '-'} | {r.model} | {r.batch_size} | "
                   f"{cell_text(r.flag)} | {cell_text(r.default)} | {ratio} |")
        reduced |= bool(r.flag["reduced"] or r.default["reduced"])
    return out + [""]
