"""What an attention mask is: causal, or something else to keep as an explicit mask operand.

A mask is *causal* when it depends on nothing but shapes and token positions and, evaluated at a
few workload points, lets query ``i`` see exactly the keys ``j ≤ i + P`` (bottom-right aligned, as
ONNX ``Attention(is_causal=1)`` does with a KV cache). Positions are fed as ``P + arange(S)``
(the importers' contract for ``position_ids``; HF decoders build packed-sequence masks from them
that reduce to the causal mask for such positions — the same assumption the torch importer makes
for SDPA). A mask that reads anything else (a padding ``attention_mask``, activations, weights) or
that evaluates to anything else (a sliding window, a bidirectional mask, an additive bias) is
*general*: a fusion keeps it as the Attention's mask operand, exactly.

Evaluation runs the mask's ancestor ops through the current pass context's evaluator (the driver's
emits them as ONNX and runs them in onnxruntime: milliseconds; one mask is usually shared by every
layer and cached).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from compiler.ir import DTYPES, P, SYMBOLS, Graph, subs
from passes.base import evaluator

POSITION_INPUTS = ("position_ids",)
HIDDEN = -1e4           # an additive mask entry at or below this hides the key (exp underflows)
_POINTS = ((2, 5, 0), (1, 7, 0))
_POINTS_WITH_PAST = ((2, 3, 4), (1, 1, 6))


@dataclasses.dataclass(frozen=True)
class MaskInfo:
    kind: str          # "causal" | "general"
    reason: str


def analyze_mask(g: Graph, tensor: str, cache: dict | None = None, scores=None) -> MaskInfo:
    """``scores``: the (query, key) dims of the scores the mask is applied to (default: the
    mask's own last two dims)."""
    scores = tuple(scores) if scores is not None else tuple(g.type(tensor).shape[-2:])
    key = (tensor, scores)
    if cache is not None and key in cache:
        return cache[key]
    info = _analyze(g, tensor, scores)
    if cache is not None:
        cache[key] = info
    return info


def _ancestors(g: Graph, tensor: str):
    nodes, leaves, seen = set(), set(), set()
    stack = [tensor]
    while stack:
        t = stack.pop()
        if t in seen or not t:
            continue
        seen.add(t)
        p = g.producer_of(t)
        if p is None:
            leaves.add(t)
            continue
        if p.name in nodes:
            continue
        nodes.add(p.name)
        stack.extend(p.inputs)
    return nodes, leaves


def _analyze(g: Graph, tensor: str, scores: tuple) -> MaskInfo:
    nodes, leaves = _ancestors(g, tensor)
    for t in leaves:
        if t in g.params:
            prm = g.params[t]
            if prm.data is None or (not prm.annotations.get("const") and prm.data.size > 4096):
                return MaskInfo("general", f"the mask reads weight {t}")
            continue
        # a graph input: only its shape may matter, or it must be a position input
        data_uses = [c for c, _ in g.consumers(t) if c.name in nodes and c.op != "Shape"]
        if data_uses and t not in POSITION_INPUTS:
            return MaskInfo("general", f"the mask reads the values of input {t}")
    try:
        vals = _evaluate(g, tensor, nodes, leaves)
    except Exception as e:  # emission or onnxruntime failure: keep the mask as it is
        return MaskInfo("general", f"the mask could not be evaluated ({type(e).__name__}: {e})")
    for (b, s, p), m in vals:
        point = {SYMBOLS["B"]: b, SYMBOLS["S"]: s, SYMBOLS["P"]: p}
        rows, cols = (int(subs(d, point)) for d in scores)
        why = _not_causal(m, rows, cols - rows)
        if why:
            return MaskInfo("general", f"at B={b} S={s} P={p} the mask {why}")
    return MaskInfo("causal", "shape/position-only mask that evaluates causal")


def _not_causal(m: np.ndarray, s: int, p: int) -> str | None:
    if m.ndim < 2:
        return "is not a matrix"
    if m.dtype == np.bool_:
        visible = m
    else:
        m = m.astype(np.float64)
        zero, hidden = m == 0, m <= HIDDEN
        if not (zero | hidden).all():
            return "adds values other than 0 and -inf (an additive bias)"
        visible = zero
    want = np.arange(p + s)[None, :] <= (np.arange(s)[:, None] + p)
    try:
        vis = np.broadcast_to(visible, visible.shape[:-2] + (s, p + s))
    except ValueError:
        return f"has shape {m.shape}, not (…, {s}, {p + s})"
    if not (vis == want).all():
        return "is not lower-triangular (bottom-right aligned)"
    return None


def _evaluate(g: Graph, tensor: str, nodes: set[str], leaves: set[str]):
    order = [n for n in g.topo_order() if n.name in nodes]
    inputs, run = evaluator("attention mask analysis").compile(
        g, order, [tensor], inputs=[t for t in g.inputs if t in leaves], params=[t for t in leaves if t in g.params],
        # the importers' convention when dim_sources is not set yet
        dim_sources={"B": ("input_ids", 0), "S": ("input_ids", 1)} if "input_ids" in g.inputs else None)
    ty = g.type(tensor)
    has_past = any(P in getattr(d, "free_symbols", ()) for d in ty.shape) or \
        any(P in getattr(d, "free_symbols", ()) for t in inputs for d in g.type(t).shape)
    results = []
    for b, s, p in (_POINTS_WITH_PAST if has_past else _POINTS):
        vals = {SYMBOLS["B"]: b, SYMBOLS["S"]: s, SYMBOLS["P"]: p}
        feeds = {}
        for t in inputs:
            it = g.type(t)
            shape = [int(subs(d, vals)) for d in it.shape]
            npdt = DTYPES[it.dtype][1]
            if t in POSITION_INPUTS:
                feeds[t] = np.broadcast_to(np.arange(p, p + s), shape).astype(npdt)
            elif it.dtype in ("int64", "int32") and "mask" in t:
                feeds[t] = np.ones(shape, npdt)
            else:
                feeds[t] = np.zeros(shape, npdt)
        results.append(((b, s, p), run(feeds)[0]))
    return results


__all__ = ["MaskInfo", "analyze_mask"]
