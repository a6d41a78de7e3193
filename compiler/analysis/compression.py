"""The report's compression sections: weight formats per parameter group with stored bytes, the
quantization / sparsity settings, the kernels predictions assume, and per-layer 2:4 decisions.

Reads only the IR (``weight_format`` / ``compute_dtype`` annotations, ``graph.meta`` records the
passes leave) — written by passes/quant, rendered here for ``report.json``.
"""
from __future__ import annotations

import re
from typing import Any

from compiler.perf import kernel_families
from compiler.ir import Graph
from compiler.ir.ops import Classifier

_LAYER = re.compile(r"\.(\d+)\.")


def _group_name(name: str) -> str:
    """Parameter group: the name with layer indices replaced (``h.3.attn.c_attn.weight`` →
    ``h.*.attn.c_attn.weight``)."""
    return _LAYER.sub(".*.", name)


def weight_formats(g: Graph) -> list[dict[str, Any]]:
    """One row per parameter group and format: count, values, dense and stored bytes."""
    cls = Classifier(g)
    rows: dict[tuple, dict[str, Any]] = {}
    for p in g.params.values():
        if p.annotations.get("const") or not p.type.is_static():
            continue
        fmt = p.annotations.get("weight_format")
        key = (_group_name(p.name), fmt)
        r = rows.setdefault(key, {"group": key[0], "format": _fmt_dict(fmt, p.type.dtype), "count": 0,
                                  "values": 0, "dense_bytes": 0, "stored_bytes": 0})
        numel = 1
        for d in p.type.shape:
            numel *= int(d)
        r["count"] += 1
        r["values"] += numel
        r["dense_bytes"] += int(numel * p.type.itemsize)
        r["stored_bytes"] += float(cls.weight_bytes(p.name))
    out = sorted(rows.values(), key=lambda r: (-r["stored_bytes"], r["group"]))
    for r in out:
        r["stored_bytes"] = int(round(r["stored_bytes"]))
        r["bits_per_value"] = round(8 * r["stored_bytes"] / max(r["values"], 1), 4)
    return out


def _fmt_dict(fmt, dtype: str) -> dict[str, Any]:
    if fmt is None:
        return {"dtype": dtype}
    d = {"dtype": fmt.dtype, "bits": fmt.bits, "granularity": fmt.granularity}
    if fmt.group_size:
        d["group_size"] = fmt.group_size
    if fmt.quantized:
        d.update(axis=fmt.axis, symmetric=fmt.symmetric, scale_dtype=fmt.scale_dtype)
        if not fmt.symmetric:
            d["zero_dtype"] = fmt.zero_dtype or fmt.scale_dtype
    if fmt.nm:
        d["nm"] = list(fmt.nm)
    return d


def section(g: Graph, hw) -> dict[str, Any] | None:
    """``compression`` record (None when no lossy pass ran)."""
    q, sp, kv = g.meta.get("quantization"), g.meta.get("sparsity"), g.meta.get("kv_quantization")
    if not q and not sp and not kv:
        return None
    kernels = sorted({n.annotations["compute_dtype"].kernel for n in g
                      if "compute_dtype" in n.annotations and n.annotations["compute_dtype"].kernel})
    out: dict[str, Any] = {
        "kernels": [{"kernel": k, "source": kernel_families.source(k, hw.name),
                     **({"ratio_vs_dense": c} if (c := kernel_families.curve(k)) else {})} for k in kernels],
    }
    if q:
        out["quantization"] = dict(q)
        if q.get("weight_dtype", "").startswith("float8"):
            out["quantization"]["onnxruntime"] = ("FP8 on onnxruntime CPU is an accuracy simulation "
                                                  "(DequantizeLinear to fp32; no FP8 kernels): latency there is "
                                                  "not FP8 latency")
    if kv:
        out["kv_cache"] = dict(kv)
    if sp:
        layers = sp.get("layers", [])
        out["sparsity"] = {k: v for k, v in sp.items() if k != "layers"}
        out["sparsity"]["decisions"] = layers
        out["sparsity"]["pruned"] = sum(1 for d in layers if d.get("pruned"))
        out["sparsity"]["refused"] = sum(1 for d in layers if not d.get("pruned"))
        out["sparsity"]["predicted_payoff_s"] = sum(d.get("predicted_payoff_s", 0.0) for d in layers if d.get("pruned"))
    notes = [x.get("note") for x in (q or {}, sp or {}) if x.get("note")]
    if (q or {}).get("cost_only") or (sp or {}).get("cost_only"):
        out["cost_only"] = True
        out["note"] = notes[0] if notes else (
            "cost only: the model has meta weights, so formats were annotated for the cost model but no "
            "artifact was written and no accuracy was measured")
    return out
