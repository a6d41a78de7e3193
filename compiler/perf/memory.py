"""Memory a compiled graph needs, from its parameters, annotations and KV-cache inputs: stored
weight bytes (each weight's ``weight_format``), KV-cache bytes per token in the cache's stored
format (``kv_layout.dtype``), the parameter count. One definition for the report, the speculative
draft and the capacity plan."""
from __future__ import annotations

import sympy

from compiler.ir import B, P, Graph
from compiler.ir.ops import REGISTRY, Classifier
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


def kv_input_bytes_per_token(g: Graph) -> dict[str, float]:
    """KV-cache graph input → the bytes one token of one sequence adds to it, in the cache's stored
    format (``kv.dtype``)."""
    out = {}
    kv = set(g.meta.get("kv_tensors", ()))
    stored = kv_stored_dtypes(g)
    for t in g.inputs:
        if t in kv:
            ty = g.type(t)
            item = DTYPES[stored[t]][0] if t in stored else ty.itemsize
            nbytes = ty.numel() * sympy.Rational(item).limit_denominator(2)
            out[t] = sympy.diff(nbytes, P).subs(B, 1)
    return out


def kv_windows(g: Graph) -> dict[str, int | None]:
    """KV-cache graph input → the attention window of the layer that reads it (None: the whole
    context). A windowed layer's cache never holds more than W tokens (a ring buffer, or paged
    blocks freed as they leave the window — vLLM, TensorRT-LLM's cyclic KV cache)."""
    out: dict[str, int | None] = {}
    for n in g:
        d = REGISTRY.get(n.op)
        if d is None or d.cost_class != "attention":
            continue
        spec = n.annotations.get("attention")
        for t in n.inputs[4:7]:
            if t and t in g.inputs:
                out[t] = spec.window if spec is not None else None
    return out


def kv_bytes_per_token(g: Graph, tokens: float | None = None) -> float:
    """KV-cache bytes one token of one sequence adds (all layers, K and V, kv_heads — not q heads;
    a latent attention's latent), in the cache's stored format (``kv.dtype``: fp8/int8 halve a
    16-bit cache). With windowed layers and a sequence length ``tokens``: the average per token of
    a sequence that long, :func:`kv_sequence_bytes` / tokens (its windowed layers hold at most W)."""
    per = kv_input_bytes_per_token(g)
    windows = kv_windows(g)
    if tokens and any(windows.get(t) for t in per):
        return kv_sequence_bytes(g, tokens) / float(tokens)
    return float(sum(per.values()))


def kv_sequence_bytes(g: Graph, tokens: float) -> float:
    """KV-cache bytes of one sequence of ``tokens`` tokens: Σ over cached tensors of bytes per
    token × min(tokens, W) — W the layer's window (:func:`kv_windows`), unbounded for global layers."""
    windows = kv_windows(g)
    return float(sum(float(b) * (min(float(tokens), windows[t]) if windows.get(t) else float(tokens))
                     for t, b in kv_input_bytes_per_token(g).items()))


def kv_layers(g: Graph) -> list[dict]:
    """Per decoder layer: its window (None: global), the KV bytes one token adds, and the kind of
    cache (``latent`` for multi-head latent attention) — the report's ``memory.kv_layers``."""
    per = kv_input_bytes_per_token(g)
    windows = kv_windows(g)
    rows: dict[int, dict] = {}
    for t, b in per.items():
        try:
            layer = int(t.rsplit(".", 1)[1])
        except (IndexError, ValueError):
            continue
        r = rows.setdefault(layer, {"layer": layer, "window": windows.get(t), "kv_bytes_per_token": 0.0})
        r["kv_bytes_per_token"] += float(b)
    latent = {int(n.annotations["layer"]) for n in g if n.op == "LatentAttention" and "layer" in n.annotations}
    for r in rows.values():
        r["cache"] = "latent" if r["layer"] in latent else ("window" if r["window"] else "full")
    return [rows[k] for k in sorted(rows)]




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


