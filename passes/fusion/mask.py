"""What an attention mask is, found by evaluating it (compiler/ir/masks.py classifies the values).

A mask subgraph may read only shapes, token positions (``position_ids``), constants and the
padding ``attention_mask``; anything else (token ids' values, activations, weights) makes it
*general*: a fusion keeps it as the Attention's mask operand, bit for bit. Otherwise its ancestor
ops are evaluated through the current pass context's evaluator (the driver's emits them as ONNX
and runs them in onnxruntime: milliseconds; one mask is usually shared by every layer and cached)
on cache-less sequences whose lengths cross every window the subgraph's integer constants could
encode (:func:`compiler.ir.masks.probe_lengths`), positions ``0 … S-1`` and right-padded
``attention_mask`` rows, and classified: causal, a sliding window of W, bidirectional — each
possibly ∧ padding and with an ALiBi bias — or general.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from compiler.ir import DTYPES, SYMBOLS, Graph, subs
from compiler.ir.masks import HIDDEN, MaskClass, Sample, classify, probe_lengths
from passes.base import evaluator

POSITION_INPUTS = ("position_ids",)
PADDING_INPUT = "attention_mask"
EVAL_BATCH = 2


@dataclasses.dataclass(frozen=True)
class MaskInfo:
    kind: str          # "causal" | "window" | "bidirectional" | "general"
    reason: str
    cls: MaskClass | None = None

    @property
    def window(self) -> int | None:
        return self.cls.window if self.cls is not None else None

    @property
    def padding(self) -> bool:
        return bool(self.cls is not None and self.cls.padding)

    @property
    def alibi(self):
        return self.cls.alibi if self.cls is not None else None


def analyze_mask(g: Graph, tensor: str, cache: dict | None = None, scores=None, *,
                 invert: bool = False) -> MaskInfo:
    """What the mask ``tensor`` means (``scores``: the (query, key) dims it is applied to; the
    evaluation is cache-less, so both are the sequence); ``invert``: a boolean ``tensor`` is True
    where a key is hidden (``masked_fill``'s condition)."""
    key = (tensor, tuple(scores) if scores is not None else None, invert)
    if cache is not None and key in cache:
        return cache[key]
    info = _analyze(g, tensor, invert)
    if cache is not None:
        cache[key] = info
    return info


def ancestors(g: Graph, tensor: str):
    """(op node names, leaf tensors) that ``tensor`` is computed from."""
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


_ancestors = ancestors   # (kept for callers of the old name)


def data_leaves(g: Graph, tensor: str) -> set[str]:
    """Inputs and parameters whose values (not just shapes) reach ``tensor``."""
    leaves, seen, stack = set(), set(), [tensor]
    while stack:
        t = stack.pop()
        if not t or t in seen:
            continue
        seen.add(t)
        p = g.producer_of(t)
        if p is None:
            leaves.add(t)
        elif p.op not in ("Shape", "Size"):
            stack.extend(p.inputs)
    return leaves


def _constants(g: Graph, nodes: set[str], leaves: set[str]) -> list[int]:
    """Integer values the mask subgraph reads (candidate window sizes)."""
    out = []
    for t in leaves:
        p = g.params.get(t)
        if p is not None and p.data is not None and p.data.size <= 64:
            out += [int(v) for v in np.asarray(p.data).reshape(-1) if float(v).is_integer() and abs(v) < 1e6]
    for name in nodes:
        for v in g.node(name).attrs.values():
            for x in (v if isinstance(v, (list, tuple)) else [v]):
                if isinstance(x, (int, np.integer)) and not isinstance(x, bool) and abs(int(x)) < 1e6:
                    out.append(int(x))
    return out


def _analyze(g: Graph, tensor: str, invert: bool = False) -> MaskInfo:
    nodes, leaves = ancestors(g, tensor)
    for t in data_leaves(g, tensor):
        if t in g.params:
            prm = g.params[t]
            if prm.data is None or (not prm.annotations.get("const") and prm.data.size > 4096):
                return MaskInfo("general", f"the mask reads weight {t}")
        elif t in g.inputs and t not in POSITION_INPUTS and t != PADDING_INPUT:
            return MaskInfo("general", f"the mask reads the values of input {t}")
    try:
        samples = _evaluate(g, tensor, nodes, leaves)
        if invert:
            samples = [dataclasses.replace(x, mask=~np.asarray(x.mask, bool)) for x in samples]
    except Exception as e:  # emission or onnxruntime failure: keep the mask as it is
        return MaskInfo("general", f"the mask could not be evaluated ({type(e).__name__}: {e})")
    mc = classify(samples)
    if not mc.structured:
        return MaskInfo("general", mc.reason, mc)
    return MaskInfo(mc.kind, mc.describe(), mc)


def padded(b: int, s: int) -> np.ndarray:
    """Right-padded attention masks: row r keeps s − r tokens (at least one)."""
    m = np.ones((b, s), np.int64)
    for r in range(b):
        m[r, max(1, s - r):] = 0
    return m


def _evaluate(g: Graph, tensor: str, nodes: set[str], leaves: set[str]) -> list[Sample]:
    order = [n for n in g.topo_order() if n.name in nodes]
    inputs, run = evaluator("attention mask analysis").compile(
        g, order, [tensor], inputs=[t for t in g.inputs if t in leaves], params=[t for t in leaves if t in g.params],
        # the importers' convention when dim_sources is not set yet
        dim_sources={"B": ("input_ids", 0), "S": ("input_ids", 1)} if "input_ids" in g.inputs else None)
    limit = g.meta.get("max_positions")
    out = []
    last = g.type(tensor).shape[-1] if g.type(tensor).rank else None
    # a mask of static length (a graph exported at fixed shapes) is what it is at that length only
    lengths = [int(last)] if isinstance(last, int) and last > 1 else probe_lengths(_constants(g, nodes, leaves), limit)
    for s in lengths:
        vals = {SYMBOLS["B"]: EVAL_BATCH, SYMBOLS["S"]: s, SYMBOLS["P"]: 0}
        feeds, pad = {}, None
        for t in inputs:
            it = g.type(t)
            shape = [int(subs(d, vals)) for d in it.shape]
            npdt = DTYPES[it.dtype][1]
            if t in POSITION_INPUTS:
                feeds[t] = np.broadcast_to(np.arange(s), shape).astype(npdt)
            elif t == PADDING_INPUT and len(shape) == 2:
                pad = padded(*shape)
                feeds[t] = pad.astype(npdt)
            else:
                feeds[t] = np.zeros(shape, npdt)
        val = run(feeds)[0]
        if out and np.ndim(val) >= 1 and np.shape(val)[-1] != s:
            # a table-backed mask or bias (MPT's ALiBi table of max_seq_len columns) ends here: the
            # model cannot run longer sequences (its scores would not broadcast), so the shorter
            # lengths already probed say what it is
            break
        out.append(Sample(s, val, None if pad is None else pad.astype(bool)))
    return out


__all__ = ["MaskInfo", "analyze_mask", "ancestors", "data_leaves", "padded", "HIDDEN", "PADDING_INPUT"]
