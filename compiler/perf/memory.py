"""Memory a compiled graph needs, from its parameters, annotations and KV-cache inputs: stored
weight bytes (each weight's ``weight_format``), KV-cache bytes per token in the cache's stored
format (``kv_layout.dtype``), the parameter count. One definition for the report, the speculative
draft and the capacity plan."""
from __future__ import annotations

import sympy

from compiler.ir import B, P, Graph
from compiler.ir.ops import Classifier
from compiler.ir.tensors import DTYPES, HW_DTYPE

def kv_stored_dtypes(g: Graph) -> dict[str, str]:
    """KV-cache graph inputs whose cache is stored in another format than the tensor's type (the
    ``kv_layout.dtype`` annotation of the cached Attentions, from ``kv.dtype``). The inputs an
    Attention reads directly map to its annotation; when every cached Attention agrees on one
    format (the ``kv_layout`` pass sets one), every KV input takes it — also a paged cache's block
    pools, which reach the Attention through a gather."""
    per_input: dict[str, str] = {}
    formats = set()
    cached = 0
    for n in g.topo_order():
        if n.op != "Attention" or len(n.inputs) < 5 or not n.inputs[4]:
            continue
        cached += 1
        lay = n.annotations.get("kv_layout")
        d = lay.dtype if lay is not None else None
        formats.add(d)
        if d is not None:
            for t in n.inputs[4:6]:
                if t:
                    per_input[t] = d
    if cached and len(formats) == 1 and None not in formats:
        d = next(iter(formats))
        kv = set(g.meta.get("kv_tensors", ()))
        return {t: d for t in g.inputs if t in kv}
    return per_input


def kv_bytes_per_token(g: Graph) -> float:
    """KV-cache bytes one token of one sequence adds (all layers, K and V, kv_heads — not q heads),
    in the cache's stored format (``kv.dtype``: fp8/int8 halve a 16-bit cache)."""
    total = 0
    kv = set(g.meta.get("kv_tensors", ()))
    stored = kv_stored_dtypes(g)
    for t in g.inputs:
        if t in kv:
            ty = g.type(t)
            item = DTYPES[stored[t]][0] if t in stored else ty.itemsize
            nbytes = ty.numel() * sympy.Rational(item).limit_denominator(2)
            total += sympy.diff(nbytes, P).subs(B, 1)
    return float(total)




def kv_dtype(g: Graph) -> str | None:
    """The KV cache's stored format in hardware names (fp16, bf16, fp8, int8, fp32), or None
    without a cache."""
    kv = [t for t in g.inputs if t in set(g.meta.get("kv_tensors", ()))]
    if not kv:
        return None
    stored = kv_stored_dtypes(g)
    return HW_DTYPE.get(stored.get(kv[0]) or g.type(kv[0]).dtype, "fp16")


def weights_bytes(g: Graph) -> float:
    cls = Classifier(g)
    return float(sum(cls.weight_bytes(p) for p in g.params))


def param_count(g: Graph) -> int:
    return int(sum(int(p.type.numel()) for p in g.params.values() if not p.annotations.get("const")))


