"""Lift the KV cache out of a decoder imported from an ONNX file without one.

``torch.onnx.export`` of a Hugging Face causal LM with ``use_cache=False`` gives
``(input_ids [B, S], attention_mask [B, S]) → logits``: every attention recomputes K and V for the
whole sequence, and the decode step cannot be run (or costed) with a cache. After attention
fusion (``passes/fusion``), this pass turns such a model into one artifact for prefill and decode,
as :func:`passes.kv_cache.lift_kv_cache` does for torch imports:

1. every Attention's mask must be causal, or causal ∧ the padding ``attention_mask`` — checked by
   evaluating the mask's subgraph in onnxruntime with right-padded masks (it may read nothing else:
   no token ids, no activations). Each such mask is replaced by ``is_causal=1`` (bottom-right
   aligned with a past) plus the boolean padding mask ``attention_mask [B, P + S]`` broadcast to
   ``[B, 1, S, P + S]`` (HF's convention: the mask covers the past and the new tokens);
2. token positions: where the exporter computed ``arange(S)`` (HF's ``cache_position``), the
   positions become ``P + arange(S)``;
3. ``attention_mask`` then has no other reader, and is retyped ``[B, P + S]``;
4. ``lift_kv_cache`` adds ``past_key.i``/``past_value.i`` inputs and ``present_*`` outputs.

Anything else — positions from ``cumsum(attention_mask)`` (OPT), a mask reading token ids, a
sliding window — is refused with the reason (the graph is left as it was; ``graph.meta
["kv_cache_refused"]`` says why), since lifting would change what the model computes.
"""
from __future__ import annotations

import logging

import numpy as np

from compiler.ir import DTYPES, P, SYMBOLS, B, S, Graph, TensorType, subs
from passes.base import Pass, PassResult, evaluator
from passes.cleanup import eliminate_dead_code
from passes.fusion.mask import HIDDEN, _ancestors
from passes.kv_cache import lift_kv_cache

log = logging.getLogger("rooftop.kv_cache")
MASK_INPUT = "attention_mask"
_POINTS = ((2, 5), (3, 4))


class Refused(Exception):
    pass


def _eval_mask(g: Graph, tensor: str, feeds_at):
    """Evaluate ``tensor``'s ancestors in onnxruntime at each (b, s) of :data:`_POINTS`;
    ``feeds_at(b, s, inputs)`` gives the feeds. Returns [((b, s), feeds, value)]."""
    nodes, leaves = _ancestors(g, tensor)
    for t in _data_leaves(g, tensor):
        if t in g.inputs and t != MASK_INPUT:
            raise Refused(f"the attention mask {tensor} reads the values of input {t}")
        if t in g.params and not (g.params[t].annotations.get("const") or g.params[t].data is not None
                                  and g.params[t].data.size <= 4096):
            raise Refused(f"the attention mask {tensor} reads weight {t}")
    inputs, run = evaluator("the ONNX KV-cache lift").compile(
        g, [n for n in g.topo_order() if n.name in nodes], [tensor], inputs=[t for t in g.inputs if t in leaves],
        params=[t for t in leaves if t in g.params], dim_sources={"B": ("input_ids", 0), "S": ("input_ids", 1)})
    res = []
    for b, s in _POINTS:
        feeds = feeds_at(b, s, inputs)
        res.append(((b, s), feeds, run(feeds)[0]))
    return res


def _data_leaves(g: Graph, tensor: str) -> set[str]:
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


def _padded(b: int, s: int) -> np.ndarray:
    """Right-padded masks: row r keeps s − r tokens (at least one)."""
    m = np.ones((b, s), np.int64)
    for r in range(b):
        m[r, max(1, s - r):] = 0
    return m


def check_mask(g: Graph, tensor: str, scores) -> None:
    """Raise :class:`Refused` unless ``tensor`` is causal ∧ padding(attention_mask) (or causal)."""
    def feeds_at(b, s, inputs):
        point = {SYMBOLS["B"]: b, SYMBOLS["S"]: s, SYMBOLS["P"]: 0}
        out = {}
        for t in inputs:
            shape = [int(subs(d, point)) for d in g.type(t).shape]
            npdt = DTYPES[g.type(t).dtype][1]
            out[t] = _padded(*shape).astype(npdt) if t == MASK_INPUT else np.zeros(shape, npdt)
        return out

    try:
        vals = _eval_mask(g, tensor, feeds_at)
    except Refused:
        raise
    except Exception as e:
        raise Refused(f"the attention mask {tensor} could not be evaluated ({type(e).__name__}: {e})")
    for (b, s), feeds, m in vals:
        visible = m if m.dtype == np.bool_ else (m.astype(np.float64) == 0)
        if m.dtype != np.bool_ and not ((m == 0) | (m <= HIDDEN)).all():
            raise Refused(f"the attention mask {tensor} adds values other than 0 and -inf")
        pad = feeds.get(MASK_INPUT, np.ones((b, s), np.int64)).astype(bool)
        want = (np.arange(s)[None, :] <= np.arange(s)[:, None])[None, None] & pad[:, None, None, :]
        try:
            vis = np.broadcast_to(visible.reshape((1,) * (4 - visible.ndim) + visible.shape), (b, 1 if
                                  visible.ndim < 4 or visible.shape[1] == 1 else visible.shape[1], s, s))
        except ValueError:
            raise Refused(f"the attention mask {tensor} has shape {m.shape}, not (…, {s}, {s})")
        if not (vis == want).all():
            raise Refused(f"the attention mask {tensor} is not causal ∧ attention_mask (a sliding "
                          f"window, a bidirectional or another mask) at B={b} S={s}")


def _is_arange_s(g: Graph, n) -> bool:
    """``Range(0, S, 1)``: the exporter's ``cache_position`` / ``arange(seq_len)``."""
    if n.op != "Range" or g.type(n.outputs[0]).shape != (S,):
        return False
    vals = []
    for i, k in ((0, "start"), (2, "delta")):
        if k in n.attrs:
            vals.append(n.attrs[k])
        else:
            t = n.inputs[i] if len(n.inputs) > i else ""
            p = g.params.get(t)
            vals.append(None if p is None or p.data is None else np.asarray(p.data).reshape(-1)[0])
    return vals[0] == 0 and vals[1] == 1


def lift_onnx_kv_cache(g: Graph) -> dict[str, int]:
    """Lift in place; raises :class:`Refused` (graph untouched) when the model does not qualify."""
    if g.meta.get("kv_tensors"):
        raise Refused("the model already has a KV cache")
    if g.meta.get("task") != "causal_lm":
        raise Refused("the model is not a causal LM")
    if "input_ids" not in g.inputs:
        raise Refused("the model has no input_ids input")
    attn = [n for n in g.topo_order() if n.op == "Attention"]
    if not attn:
        raise Refused("the model has no Attention op (is its attention fused? run the fuse pass first)")
    h = g.copy()
    masks: dict[str, None] = {}
    for n in attn:
        if len(n.inputs) > 4 and any(n.inputs[4:]):
            raise Refused(f"{n.name} already takes a past")
        m = n.inputs[3] if len(n.inputs) > 3 else ""
        if not m:
            if not n.attrs.get("is_causal"):
                raise Refused(f"{n.name} is not causal")
            continue
        if n.attrs.get("is_causal"):
            raise Refused(f"{n.name} has both is_causal and a mask")
        masks.setdefault(m)
    for m in masks:
        check_mask(h, m, None)
    has_pad = MASK_INPUT in h.inputs
    # the new masks: attention_mask [B, P + S] → bool [B, 1, S, P + S]
    if has_pad:
        am = h.types[MASK_INPUT]
        h.retype_input(MASK_INPUT, TensorType(am.dtype, (B, P + S)))
        cast = h.add_op("Cast", [MASK_INPUT], 1, {"to": DTYPES["bool"][2]})
        pad = cast.outputs[0]
        pad = h.add_op("Unsqueeze", [pad], 1, {"axes": [1, 2]}).outputs[0]
        pad = h.add_op("Expand", [pad], 1, {"shape": [B, 1, S, P + S]}).outputs[0]
    for n in [h.node(x.name) for x in attn]:
        if len(n.inputs) > 3 and n.inputs[3]:
            h.set_input(n, 3, pad if has_pad else "")
            n.attrs["is_causal"] = 1
    # positions: arange(S) → P + arange(S)
    ranges = [n for n in h.topo_order() if _is_arange_s(h, n)]
    if ranges and "position_ids" not in h.inputs:
        pos = h.add_op("Range", [], 1, {"start": P, "limit": P + S, "delta": 1},
                       types=[TensorType("int64", (S,))]).outputs[0]
        for n in ranges:
            h.replace_uses(n.outputs[0], pos)
    eliminate_dead_code(h)
    if has_pad:
        readers = [c for c, _ in h.consumers(MASK_INPUT) if c.name != cast.name]
        if readers:
            raise Refused(f"attention_mask is also read by {readers[0].op} {readers[0].name} (e.g. "
                          f"positions from its cumulative sum), which a KV cache would change")
    stats = lift_kv_cache(h)
    h.meta["dim_sources"] = {**h.meta.get("dim_sources", {}), "P": ("past_key.0", 2)}
    h.verify()
    g.__dict__.update(h.__dict__)
    return {"layers": stats["layers"], "positions": len(ranges), "masks": len(masks)}


class LiftKVCache(Pass):
    """``kv_cache``: a decoder from an ONNX file without a cache gets one (see module doc); a
    graph that has a cache already (torch imports) or does not qualify is left as it is."""

    name = "kv_cache"

    def run(self, g: Graph) -> PassResult:
        if g.meta.get("kv_tensors") or g.meta.get("task") != "causal_lm":
            return PassResult(g, False, {"layers": 0})
        try:
            stats = lift_onnx_kv_cache(g)
        except Refused as e:
            g.meta["kv_cache_refused"] = str(e)
            log.warning("KV cache not lifted: %s; decode is costed without a cache", e)
            return PassResult(g, False, {"layers": 0, "refused": 1})
        return PassResult(g, True, stats)


__all__ = ["lift_onnx_kv_cache", "LiftKVCache", "Refused", "check_mask"]
