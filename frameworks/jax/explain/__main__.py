"""``python -m frameworks.jax.explain --impl IMPL ...``: one analysis as JSON."""
from __future__ import annotations

import argparse
import json
import sys
import traceback

from frameworks.jax.explain import SCHEMA, TOP_N, __doc__ as DOC, analyze


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=DOC.split("\n\n")[0])
    ap.add_argument("--impl", required=True)
    ap.add_argument("--model", default="small")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--microbatch-size", type=int, default=None)
    ap.add_argument("--top", type=int, default=TOP_N)
    ap.add_argument("--no-hlo", action="store_true", help="skip compilation (JAXPR facts only)")
    ap.add_argument("--json", action="store_true", help="print one JSON object (the default is indented JSON)")
    a = ap.parse_args(argv)
    try:
        res = analyze(a.impl, a.model, a.batch_size, a.microbatch_size, top=a.top, hlo=not a.no_hlo)
    except Exception as exc:
        res = {"schema": SCHEMA, "framework": "jax", "impl": a.impl, "model": a.model, "batch_size": a.batch_size,
               "microbatch_size": a.microbatch_size, "status": "error", "error": f"{type(exc).__name__}: {exc}",
               "traceback": traceback.format_exc()[-4000:]}
    print(json.dumps(res) if a.json else json.dumps(res, indent=1))
    return 0



sys.exit(main())
