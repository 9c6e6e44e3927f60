"""Walking the JAXPR of a step, recursively, and what it says (frameworks.jax.explain)."""
from __future__ import annotations

from collections import Counter
from math import prod
from typing import Any, Iterator

import numpy as np
from jax.extend.core import Literal

from common.reference.spec import Layer
from frameworks.jax.explain.shapes import match_layer

TOP_N = 10
# Sub-expressions evaluated to find a loop's trip count may be at most this big.
_EVAL_LIMIT = 1 << 16


def _is_jaxpr(v: Any) -> bool:
    return hasattr(v, "eqns") or (hasattr(v, "jaxpr") and hasattr(v.jaxpr, "eqns"))


def _has_sub(eqn: Any) -> bool:
    return any(_is_jaxpr(v) or (isinstance(v, (tuple, list)) and any(_is_jaxpr(i) for i in v))
               for v in eqn.params.values())


def _open(v: Any) -> tuple[Any, list]:
    """(Jaxpr, consts) of a Jaxpr or ClosedJaxpr."""
    if hasattr(v, "eqns"):
        return v, []
    return v.jaxpr, list(v.consts)


def _aval(atom: Any):
    return getattr(atom, "aval", None)


def _shape(atom: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in getattr(_aval(atom), "shape", ()))


def _nbytes(atom: Any) -> int:
    aval = _aval(atom)
    try:
        return prod(_shape(atom)) * np.dtype(aval.dtype).itemsize
    except Exception:  # extended dtypes (PRNG keys) have no numpy itemsize
        return 0


def _dtype(atom: Any) -> str:
    return str(getattr(_aval(atom), "dtype", "?"))


def _is_float(atom: Any) -> bool:
    try:
        return np.issubdtype(np.dtype(_aval(atom).dtype), np.floating)
    except Exception:
        return False


class _Scope:
    """One jaxpr with lazily computable values, for loop bounds.

    ``outer(i)`` gives the value of the i-th invar (or None if unknown, e.g.
    a loop-carried value); values are computed only from small
    sub-expressions (``_EVAL_LIMIT`` elements), so no real work is redone.
    """

    def __init__(self, jaxpr: Any, consts: list, outer: Callable[[int], Any]):
        self.jaxpr = jaxpr
        self.consts = dict(zip(jaxpr.constvars, consts))
        self.invars = {v: i for i, v in enumerate(jaxpr.invars)}
        self.outer = outer
        self.producer = {v: e for e in jaxpr.eqns for v in e.outvars}
        self.cache: dict = {}

    def value(self, atom: Any) -> Any:
        if isinstance(atom, Literal):
            return atom.val
        if atom in self.cache:
            return self.cache[atom]
        self.cache[atom] = None  # cycle / failure guard
        val = None
        if atom in self.consts:
            val = self.consts[atom]
        elif atom in self.invars:
            val = self.outer(self.invars[atom])
        elif atom in self.producer:
            val = self._eval(self.producer[atom], atom)
        self.cache[atom] = val
        return val

    def _eval(self, eqn: Any, want: Any) -> Any:
        if any(prod(_shape(v)) > _EVAL_LIMIT for v in list(eqn.invars) + list(eqn.outvars)):
            return None
        vals = [self.value(v) for v in eqn.invars]
        if any(v is None for v in vals):
            return None
        try:
            with eqn.ctx.manager:
                outs = eqn.primitive.bind(*vals, **eqn.primitive.get_bind_params(eqn.params))
        except Exception:
            return None
        if not eqn.primitive.multiple_results:
            outs = [outs]
        for v, o in zip(eqn.outvars, outs):
            self.cache[v] = o
        return self.cache.get(want)

    def sub(self, jaxpr_like: Any, operands: list | None) -> "_Scope":
        """Scope of a sub-jaxpr whose invars are ``operands`` (None: unknown)."""
        jaxpr, consts = _open(jaxpr_like)

        def outer(i: int) -> Any:
            if operands is None or i >= len(operands) or operands[i] is None:
                return None
            return self.value(operands[i])
        return _Scope(jaxpr, consts, outer)


def _while_trips(eqn: Any, scope: _Scope) -> int | None:
    """Trip count of a ``fori_loop``-style while: ``cond = lt(c_i, c_j)``,
    body ``c_i + 1`` and ``c_j`` unchanged; bound computed from constants."""
    p = eqn.params
    cj, _ = _open(p["cond_jaxpr"])
    bj, _ = _open(p["body_jaxpr"])
    cn, bn = p["cond_nconsts"], p["body_nconsts"]
    if len(cj.eqns) != 1 or cj.eqns[0].primitive.name != "lt":
        return None
    lt = cj.eqns[0]
    try:
        i, j = (cj.invars.index(v) - cn for v in lt.invars)
    except ValueError:
        return None
    if min(i, j) < 0 or bj.outvars[j] is not bj.invars[bn + j]:
        return None
    inc = next((e for e in bj.eqns if bj.outvars[i] in e.outvars), None)
    if inc is None or inc.primitive.name != "add" or bj.invars[bn + i] not in inc.invars:
        return None
    step = [v for v in inc.invars if v is not bj.invars[bn + i]]
    if len(step) != 1 or getattr(step[0], "val", None) != 1:
        return None
    init = eqn.invars[cn + bn:]
    lo, hi = scope.value(init[i]), scope.value(init[j])
    if lo is None or hi is None:
        return None
    return max(int(np.asarray(hi)) - int(np.asarray(lo)), 0)


def _subjaxprs(eqn: Any, scope: _Scope) -> Iterator[tuple[str, Any, list | None, int | None]]:
    """(label, sub-jaxpr, operands of its invars, trips per execution of eqn)."""
    name = eqn.primitive.name
    p = eqn.params
    if name == "while":
        cn, bn = p["cond_nconsts"], p["body_nconsts"]
        consts, carries = list(eqn.invars[cn:cn + bn]), [None] * (len(eqn.invars) - cn - bn)
        yield "while.body", p["body_jaxpr"], consts + carries, _while_trips(eqn, scope)
        yield "while.cond", p["cond_jaxpr"], list(eqn.invars[:cn]) + carries, 1
        return
    if name == "scan":
        nc = p["num_consts"]
        operands = list(eqn.invars[:nc]) + [None] * (len(eqn.invars) - nc)
        yield "scan", p["jaxpr"], operands, int(p["length"])
        return
    if name == "cond":
        for k, br in enumerate(p["branches"]):
            yield f"cond.{k}", br, list(eqn.invars[1:]), 1
        return
    label = p.get("name", name)
    label = f"{name}:{label}" if label != name else name
    for key, v in p.items():
        items = v if isinstance(v, (tuple, list)) else [v]
        for item in items:
            if _is_jaxpr(item):
                jaxpr, _ = _open(item)
                operands = list(eqn.invars) if len(jaxpr.invars) == len(eqn.invars) else None
                yield label if key in ("jaxpr", "call_jaxpr", "fun_jaxpr") else f"{label}.{key}", item, operands, 1


def walk(closed: Any, args: list | None = None) -> Iterator[tuple[Any, str, int | None, list[dict]]]:
    """Every equation, recursively: (eqn, path, multiplicity, enclosing loops).

    Multiplicity is the product of the enclosing loops' trip counts (None if
    one is unknown): how often the equation runs per call.
    """
    jaxpr, consts = _open(closed)
    flat = list(args) if args is not None else None
    top = _Scope(jaxpr, consts, lambda i: None if flat is None else flat[i])
    loops: list[dict] = []

    def rec(scope: _Scope, path: str, mult: int | None):
        for eqn in scope.jaxpr.eqns:
            yield eqn, path, mult, loops
            for label, sub, operands, trips in _subjaxprs(eqn, scope):
                if eqn.primitive.name in ("while", "scan") and label != "while.cond":
                    loops.append({"primitive": eqn.primitive.name, "path": f"{path}/{label}" if path else label,
                                  "trips": trips})
                m = None if mult is None or trips is None else mult * trips
                yield from rec(scope.sub(sub, operands), f"{path}/{label}" if path else label, m)

    yield from rec(top, "", 1)


# --------------------------------------------------------------------------
# What the JAXPR says

def _conv_info(eqn: Any, path: str, mult: int | None, layers: list[Layer], max_k: int) -> dict:
    lhs, rhs = eqn.invars[:2]
    out = eqn.outvars[0]
    p = eqn.params
    dn = p["dimension_numbers"]
    fgc, bgc = int(p["feature_group_count"]), int(p["batch_group_count"])
    rhs_shape = _shape(rhs)
    rhs_in = rhs_shape[dn.rhs_spec[1]]
    window = prod(rhs_shape[d] for d in dn.rhs_spec[2:])
    flops = 2 * prod(_shape(out)) * rhs_in * window
    info = {"path": path, "mult": mult, "lhs": list(_shape(lhs)), "rhs": list(rhs_shape), "out": list(_shape(out)),
            "feature_group_count": fgc, "batch_group_count": bgc,
            "dimension_numbers": {"lhs": list(dn.lhs_spec), "rhs": list(dn.rhs_spec), "out": list(dn.out_spec)},
            "flops": flops, "role": "other"}
    m = match_layer(_shape(out), layers, fgc * bgc, max_k)
    if m:
        layer, form, k = m
        # For a transposed (weight-gradient) conv the rhs "input feature" dim
        # is what gets summed over: the examples (x positions via the window).
        info.update(role="weight_grad", layer=layer.name, form=form, k=k, contracted=rhs_in)
    return info


def _dot_info(eqn: Any, path: str, mult: int | None, layers: list[Layer], max_k: int) -> dict:
    lhs, rhs = eqn.invars[:2]
    out = eqn.outvars[0]
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    ls = _shape(lhs)
    contracted = prod(ls[d] for d in lc)
    info = {"path": path, "mult": mult, "lhs": list(ls), "rhs": list(_shape(rhs)), "out": list(_shape(out)),
            "dimension_numbers": {"contract": [list(lc), list(rc)], "batch": [list(lb), list(rb)]},
            "flops": 2 * prod(_shape(out)) * contracted, "role": "other"}
    m = match_layer(_shape(out), layers, max_k=max_k)
    if m:
        layer, form, k = m
        info.update(role="weight_grad", layer=layer.name, form=form, k=k, contracted=contracted)
    return info


def jaxpr_facts(closed: Any, args: list | None, layers: list[Layer], batch_size: int, top: int = TOP_N) -> dict:
    convs: list[dict] = []
    dots: list[dict] = []
    by_shape: dict[tuple, dict] = {}  # intermediates by (shape, dtype)
    per_layer: dict[str, list[dict]] = {layer.name: [] for layer in layers}
    prims: Counter = Counter()
    loops: list[dict] = []
    for eqn, path, mult, loops in walk(closed, args):
        name = eqn.primitive.name
        prims[name] += 1
        groups = 1
        if name == "conv_general_dilated":
            info = _conv_info(eqn, path, mult, layers, batch_size)
            convs.append(info)
            groups = info["feature_group_count"] * info["batch_group_count"]
        elif name == "dot_general":
            dots.append(_dot_info(eqn, path, mult, layers, batch_size))
        if _has_sub(eqn):
            continue  # its outputs are produced (and counted) inside
        for v in eqn.outvars:
            if not hasattr(v, "aval") or type(v).__name__ == "DropVar":
                continue
            t = {"primitive": name, "shape": list(_shape(v)), "dtype": _dtype(v), "bytes": _nbytes(v),
                 "path": path, "mult": mult}
            key = (tuple(t["shape"]), t["dtype"])
            g = by_shape.setdefault(key, dict(t, count=0, primitives=Counter()))
            g["count"] += 1
            g["primitives"][name] += 1
            if not _is_float(v):
                continue
            m = match_layer(_shape(v), layers, groups, batch_size)
            if m and m[1] != "kernel":
                per_layer[m[0].name].append(dict(t, form=m[1], k=m[2]))
    largest = sorted(by_shape.values(), key=lambda g: -g["bytes"])[:top]
    for g in largest:
        g["primitives"] = dict(g["primitives"].most_common(4))

    per_example: dict[str, dict] = {}
    for layer in layers:
        kbytes = prod(layer.kernel_shape) * 4
        hits = per_layer[layer.name]
        entry: dict[str, Any] = {"kind": layer.kind, "kernel_shape": list(layer.kernel_shape), "kernel_bytes": kbytes,
                                 "materialised": bool(hits)}
        if hits:
            big = max(hits, key=lambda t: (t["bytes"], t["k"]))
            k = big["k"]
            mults = [t["mult"] for t in hits if t["k"] == k]
            mult = None if any(m is None for m in mults) else max(mults)
            entry.update(examples_at_once=k, shape=big["shape"], bytes=big["bytes"], primitive=big["primitive"],
                         path=big["path"], form=big["form"], tensors=len(hits),
                         # every example's gradient is built once per step:
                         # k at a time, as often as the enclosing loops run
                         examples_per_step=None if mult is None else k * mult,
                         per_step_bytes=None if mult is None else kbytes * k * mult)
        per_example[layer.name] = entry

    weight_grad = [c for c in convs if c["role"] == "weight_grad"]
    weight_dots = [d for d in dots if d["role"] == "weight_grad"]
    flops = sum(o["flops"] * (o["mult"] or 1) for o in convs + dots)
    return {
        "primitives": dict(sorted(prims.items())),
        "equations": sum(prims.values()),
        "loops": loops,
        "convs": convs,
        "dots": dots,
        "weight_grad_convs": {
            "count": len(weight_grad),
            "feature_group_counts": sorted({c["feature_group_count"] for c in weight_grad}),
            "batch_group_counts": sorted({c["batch_group_count"] for c in weight_grad}),
            "contracted": sorted({c["contracted"] for c in weight_grad}),
        },
        "weight_grad_dots": {
            "count": len(weight_dots),
            "k": sorted({d["k"] for d in weight_dots}),
            "contracted": sorted({d["contracted"] for d in weight_dots}),
        },
        "largest": largest,
        "per_example": per_example,
        "per_example_bytes_at_once": sum(e.get("bytes", 0) for e in per_example.values()),
        "conv_dot_flops": flops,
        "conv_dot_flops_known": all(o["mult"] is not None for o in convs + dots),
        "note": None if batch_size > 1 else "batch size 1: every gradient is per-example",
    }


