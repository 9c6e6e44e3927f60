"""What the compiled HLO says (frameworks.jax.explain)."""
from __future__ import annotations

import re
from collections import Counter
from typing import Any

from common.reference.spec import Layer
from frameworks.jax.explain.shapes import match_layer

_HLO_OP = re.compile(r"=\s*(\w+)\[([\d,]*)\]\S*\s+(convolution|dot)\(")


def _hlo_attr(line: str, key: str) -> str | None:
    m = re.search(rf"\b{key}=([^\s,]+)", line)
    return m.group(1) if m else None


def eigen_layout(dim_labels: str | None) -> bool:
    """Is a convolution in the one layout XLA:CPU hands to its Eigen runtime
    (input NHWC, kernel HWIO, output NHWC: ``b01f_01io->b01f`` in 2-D; see
    ``PotentiallyImplementedAsEigenConvolution``)? Any other layout is emitted
    as XLA's own elemental loop nest unless ``ConvCanonicalization`` transposes
    it, and that pass visits only the entry computation: a conv that is inside
    a while body at that point (jax-privacy's microbatch loop, even a one-trip
    one that a later pass removes) keeps its layout."""
    m = re.fullmatch(r"b(\d+)f_(\d+)io->b(\d+)f", dim_labels or "")
    if not m or not (m.group(1) == m.group(2) == m.group(3)):
        return False
    return m.group(1) == "".join(str(i) for i in range(len(m.group(1))))


def hlo_facts(compiled: Any, layers: list[Layer], max_k: int | None = None) -> dict:
    out: dict[str, Any] = {}
    try:
        cost = compiled.cost_analysis()
        if isinstance(cost, (list, tuple)):
            cost = cost[0] if cost else {}
        out["cost"] = {k: float(v) for k, v in (cost or {}).items()
                       if k in ("flops", "bytes accessed", "transcendentals", "optimal_seconds")}
    except Exception as exc:  # not every backend implements it
        out["cost"] = {"error": f"{type(exc).__name__}: {exc}"}
    try:
        mem = compiled.memory_analysis()
        out["memory"] = {a[:-len("_in_bytes")]: int(getattr(mem, a)) for a in dir(mem)
                         if a.endswith("_in_bytes") and isinstance(getattr(mem, a), int)}
    except Exception as exc:
        out["memory"] = {"error": f"{type(exc).__name__}: {exc}"}
    text = compiled.as_text() or ""
    convs, ops = [], Counter()
    for line in text.splitlines():
        m = _HLO_OP.search(line)
        if m:
            ops[m.group(3)] += 1
        if not m or m.group(3) != "convolution":
            continue
        shape = tuple(int(d) for d in m.group(2).split(",") if d)
        fgc = int(_hlo_attr(line, "feature_group_count") or 1)
        bgc = int(_hlo_attr(line, "batch_group_count") or 1)
        op_name = re.search(r'op_name="([^"]*)"', line)
        labels = _hlo_attr(line, "dim_labels")
        parts = re.search(r'"outer_dimension_partitions":\[([^\]]*)\]', line)
        c = {"out": list(shape), "dim_labels": labels, "feature_group_count": fgc,
             "batch_group_count": bgc, "op_name": op_name.group(1) if op_name else None, "role": "other",
             # cpu: Eigen's layout (a library call) or XLA's elemental loops,
             # which the parallel-task assigner splits into this many parts
             "eigen_layout": eigen_layout(labels),
             "outer_partitions": [int(p.strip('" ')) for p in parts.group(1).split(",") if p.strip('" ')] if parts else None}
        lm = match_layer(shape, layers, fgc * bgc, max_k)
        if lm:
            c.update(role="weight_grad", layer=lm[0].name, form=lm[1], k=lm[2])
        convs.append(c)
    calls = Counter(re.findall(r'custom_call_target="([^"]+)"', text))
    out.update(convs=convs, ops={"convolution": ops["convolution"], "dot": ops["dot"],
                                 "convolution_not_eigen_layout": sum(not c["eigen_layout"] for c in convs),
                                 "while": len(re.findall(r"\swhile\(", text)),
                                 "fusion": len(re.findall(r"\sfusion\(", text))},
               custom_calls=dict(calls), hlo_chars=len(text))
    return out


