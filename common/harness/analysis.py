"""The analysis seam's measuring half: the record every framework's analysis
(``frameworks/<fw>/analysis.py``) prints and its command line.
common/report/analysis.py renders the records (it documents their fields);
common/report/explain.py runs each framework's analysis and renders it.

Imports no framework.
"""
from __future__ import annotations

import argparse
import json
import traceback
from typing import Any, Callable, Sequence

from common.harness.config import RunConfig

SCHEMA = 2
TOP_N = 8


def base_record(framework: str, cfg: Any, versions: dict[str, str], device: str) -> dict[str, Any]:
    """The fields every analysis record starts with (``cfg``: a RunConfig)."""
    return {"schema": SCHEMA, "framework": framework, "impl": cfg.impl, "variant": cfg.variant, "mode": cfg.mode,
            "model": cfg.model, "batch_size": cfg.batch_size, "microbatch_size": cfg.microbatch_size,
            "status": "ok", "error": None, "versions": versions, "device": device}


def cli(framework: str, analyze: Callable[[Any], dict[str, Any]], argv: Sequence[str] | None = None,
        doc: str = "", default_variant: str = "") -> int:
    """Every ``frameworks/<fw>/analysis.py``'s command line: one configuration
    (``--impl --model --batch-size --microbatch-size --variant``), validated as
    a RunConfig and analysed by ``analyze(cfg)``; one JSON record on stdout,
    a failure as a ``status: error`` record (a failed analysis is a row)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--impl", required=True)
    ap.add_argument("--model", default="small")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--microbatch-size", type=int, default=None)
    ap.add_argument("--variant", default=default_variant)
    a = ap.parse_args(argv)
    try:
        res = analyze(RunConfig(framework, a.impl, a.model, a.batch_size, a.microbatch_size, a.variant).validate())
    except Exception as exc:  # noqa: BLE001 - a failed analysis is a row
        res = {"schema": SCHEMA, "framework": framework, "impl": a.impl, "variant": a.variant, "model": a.model,
               "batch_size": a.batch_size, "microbatch_size": a.microbatch_size, "status": "error",
               "error": f"{type(exc).__name__}: {exc}"[:500], "traceback": traceback.format_exc()[-3000:]}
    print(json.dumps(res))
    return 0
