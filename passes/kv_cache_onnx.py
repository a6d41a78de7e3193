"""Lift the KV cache out of a decoder imported from an ONNX file without one.

``torch.onnx.export`` of a Hugging Face causal LM with ``use_cache=False`` gives
``(input_ids [B, S], attention_mask [B, S]) → logits``: every attention recomputes K and V for the
whole sequence, and the decode step cannot be run (or costed) with a cache. After attention
fusion (``passes/fusion``), this pass turns such a model into one artifact for prefill and decode,
as :func:`passes.kv_cache.lift_kv_cache` does for torch imports:

1. every Attention's mask is classified by evaluation (:mod:`passes.fusion.mask`, with right-padded
   ``attention_mask`` rows and sequences that cross every window): it must be causal or a sliding
   window of W, possibly ∧ the padding ``attention_mask`` and with an ALiBi bias. Each becomes
   ``is_causal=1`` (bottom-right with a past), the ``window`` / ``alibi_slopes`` attributes (the
   emitter builds the exact mask at any length) and the boolean padding mask ``attention_mask
   [B, P + S]`` (HF's convention: the mask covers the past and the new tokens);
2. token positions: where the exporter computed ``arange(S)`` (HF's ``cache_position``), the
   positions become ``P + arange(S)``; per-token values computed from ``attention_mask`` itself —
   positions from its cumulative sum (OPT), anything elementwise along the sequence — are computed
   on the whole ``[B, P + S]`` mask and their last S columns taken, which is what the model
   computes with a cache;
3. ``attention_mask`` is retyped ``[B, P + S]``;
4. ``lift_kv_cache`` adds ``past_key.i``/``past_value.i`` inputs and ``present_*`` outputs.

Anything else — a mask reading token ids, a bidirectional or unrecognized mask, a per-token value
of the mask the pass cannot extend — is refused with the reason (the graph is left as it was;
``graph.meta["kv_cache_refused"]`` and report.json ``passes[].notes`` say why), since lifting
would change what the model computes.
"""
from __future__ import annotations

import logging

from compiler.errors import ConfigError
from compiler.ir import DTYPES, P, B, S, Graph, TensorType
from compiler.ir import annotations as ann
from compiler.ir.ops import REGISTRY, OpKind
from compiler.ir.tensors import UnsupportedOpError, as_dim
from passes.base import Pass, PassResult
from passes.cleanup import eliminate_dead_code
from passes.fusion import explain_outcome, run_rules, unfused_attention
from passes.fusion.attention import spec_of
from passes.fusion.mask import PADDING_INPUT, analyze_mask
from passes.kv_cache import lift_kv_cache

log = logging.getLogger("rooftop.kv_cache")
MASK_INPUT = PADDING_INPUT
INT64_MAX = 2**63 - 1


class Refused(Exception):
    """The model does not qualify; ``where`` names the op (for report.json passes[].notes)."""

    def __init__(self, msg: str, where: str = ""):
        super().__init__(msg)
        self.where = where


def check_mask(g: Graph, tensor: str, scores=None):
    """The classified mask (:class:`passes.fusion.mask.MaskInfo`) of a decoder's attention, or
    :class:`Refused` unless it is causal / a sliding window (∧ padding, + ALiBi)."""
    info = analyze_mask(g, tensor, None, scores)
    if info.kind not in ("causal", "window"):
        raise Refused(f"the attention mask {tensor} is {info.reason}" if info.kind == "general" else
                      f"the attention mask {tensor} is {info.cls.describe()}, not causal: a KV cache would "
                      f"change what the model computes")
    return info


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
            vals.append(None if p is None or p.data is None else p.data.reshape(-1)[0])
    return vals[0] == 0 and vals[1] == 1


#: ops whose input 1 holds indices into their data's axes (a ``Range(S)`` reaching them indexes
#: the new tokens' own axis, e.g. DeepSeek's in-place ``q[..., :d] = q_nope`` exported as ScatterND)
_INDEXED_WRITES = ("ScatterND", "ScatterElements")


def _indexes_new_tokens(g: Graph, t: str) -> bool:
    """``arange(S)`` used as scatter indices (through views, broadcasts and arithmetic), not as
    token positions: it must stay ``0 … S-1`` under a KV cache."""
    seen, stack = set(), [t]
    while stack:
        x = stack.pop()
        if x in seen:
            continue
        seen.add(x)
        for c, i in g.consumers(x):
            if c.op in _INDEXED_WRITES and i == 1:
                return True
            if c.op in ("Reshape", "Unsqueeze", "Expand", "Concat", "Cast", "Add", "Sub", "Mul",
                        "Transpose", "Squeeze", "Identity"):
                stack.extend(o for o in c.outputs if o)
    return False


_ELEMENTWISE = frozenset(n for n, d in REGISTRY.items() if d.kind in (OpKind.ELEMENTWISE, OpKind.BROADCAST)
                         and not d.domain)


def _extend_mask_readers(h: Graph, skip: str) -> int:
    """Per-token values computed from ``attention_mask`` (elementwise ops and cumulative sums along
    the sequence, e.g. OPT's positions ``cumsum(mask)·mask − 1``) recomputed on the whole
    ``[B, P + S]`` mask, their last S columns taken where they leave that region (e.g. into the
    position-embedding Gather). Raises :class:`Refused` when the mask itself is read by anything
    else (``skip``: the new padding mask's Cast). Returns the region's op count."""
    def scalar(t):
        p = h.params.get(t)
        return p is not None and p.data is not None and p.data.size <= 1

    tensors, region = {MASK_INPUT}, []
    for n in h.topo_order():
        if n.name == skip or not any(t in tensors for t in n.inputs if t):
            continue
        out = h.type(n.outputs[0]) if len(n.outputs) == 1 else None
        ok = (n.op in _ELEMENTWISE or (n.op == "CumSum" and n.attrs.get("axis") in (1, -1))) and \
            out is not None and out.rank == 2 and out.shape[1] == S and \
            all(not t or t in tensors or scalar(t) for t in n.inputs)
        if ok:
            region.append(n)
            tensors.add(n.outputs[0])
        elif MASK_INPUT in n.inputs:
            raise Refused(f"attention_mask is also read by {n.op} {n.name}, which a KV cache would change "
                          f"and rooftop cannot extend over the cached positions", n.name)
    inside = {n.name for n in region}
    for n in region:   # retype [B, S] → [B, P + S], then slice the exits back to the new tokens
        t = n.outputs[0]
        ty = h.type(t)
        exits = [(c, i) for c, i in h.consumers(t) if c.name not in inside]
        h.retype(t, ty.with_shape((ty.shape[0], as_dim(P + S))))
        if exits or t in h.outputs:
            sl = h.add_op("Slice", [t], 1, {"starts": [P], "ends": [INT64_MAX], "axes": [1], "steps": [1]},
                          types=[ty]).outputs[0]
            for c, i in exits:
                h.set_input(c, i, sl)
            if t in h.outputs:
                raise Refused(f"the per-token value {t} of attention_mask is a graph output", n.name)
    return len(region)


def lift_onnx_kv_cache(g: Graph) -> dict[str, int]:
    """Lift in place; raises :class:`Refused` (graph untouched) when the model does not qualify."""
    if g.meta.get("kv_tensors"):
        raise Refused("the model already has a KV cache")
    if g.meta.get("task") != "causal_lm":
        raise Refused("the model is not a causal LM")
    if "input_ids" not in g.inputs:
        raise Refused("the model has no input_ids input")
    h = g.copy()
    left = unfused_attention(h)
    if left or not any(n.op == "Attention" for n in h):
        # the cost gate may have kept some unfused: the cache needs every one (not gated)
        _, outcomes = run_rules(h, ["attention"], gate=None)
        why = explain_outcome("attention", outcomes["attention"])
        left = unfused_attention(h)
        if left:
            raise Refused(f"{len(left)} attention softmax(es) could not be fused into an Attention op, "
                          f"which the KV cache needs ({why})", left[0].name)
        if not any(n.op == "Attention" for n in h):
            sm = [n for n in h.topo_order() if n.op == "Softmax"]
            if sm:
                raise Refused(f"none of its {len(sm)} Softmax op(s) is in an attention rooftop fuses "
                              f"(QKᵀ → scale → mask → softmax → ·V on [batch, heads, seq, head_dim]) ({why})",
                              sm[0].name)
            raise Refused("the model has no attention (no Attention op and no Softmax) to give a KV cache")
    attn = [n for n in h.topo_order() if n.op == "Attention"]
    infos: dict[str, object] = {}
    for n in attn:
        if len(n.inputs) > 4 and any(n.inputs[4:]):
            raise Refused(f"{n.name} already takes a past", n.name)
        m = n.inputs[3] if len(n.inputs) > 3 else ""
        if not m:
            if not n.attrs.get("is_causal"):
                raise Refused(f"{n.name} is not causal (an unmasked attention sees every token)", n.name)
            continue
        if m not in infos:
            try:
                infos[m] = check_mask(h, m)
            except Refused as e:
                raise Refused(str(e), n.name) from None
        if n.attrs.get("is_causal") and infos[m].kind != "causal":
            raise Refused(f"{n.name} has is_causal and a mask that is {infos[m].reason}", n.name)
    has_pad = MASK_INPUT in h.inputs
    # the new masks: attention_mask [B, P + S] → bool [B, 1, 1, P + S] beside the structure attributes
    if has_pad:
        am = h.types[MASK_INPUT]
        h.retype_input(MASK_INPUT, TensorType(am.dtype, (B, P + S)))
        cast = h.add_op("Cast", [MASK_INPUT], 1, {"to": DTYPES["bool"][2]})
        pad = h.add_op("Unsqueeze", [cast.outputs[0]], 1, {"axes": [1, 2]}).outputs[0]
    for n in [h.node(x.name) for x in attn]:
        m = n.inputs[3] if len(n.inputs) > 3 else ""
        info = infos.get(m)
        if info is not None:
            if info.window:
                n.attrs["window"] = int(info.window)
            if info.alibi is not None:
                n.attrs["alibi_slopes"] = [float(x) for x in info.alibi]
            old = ann.get(n, "attention")
            new = spec_of(info)
            if n.attrs.get("alibi_slopes") is not None and not new.alibi:   # the bias fused beside the mask
                new = type(new)(**{**{f: getattr(new, f) for f in new.__dataclass_fields__},
                                   "mask": "bias", "alibi": True})
            ann.set(n, "attention", new if old is None else
                    type(old)(**{**{f: getattr(old, f) for f in old.__dataclass_fields__},
                                 **{f: getattr(new, f) for f in ("mask", "window", "alibi")}}))
        if m or has_pad:
            while len(n.inputs) < 4:
                h.set_input(n, len(n.inputs), "")
            h.set_input(n, 3, pad if has_pad else "")
        n.attrs["is_causal"] = 1
    # positions: arange(S) → P + arange(S)
    ranges = [n for n in h.topo_order() if _is_arange_s(h, n) and not _indexes_new_tokens(h, n.outputs[0])]
    if ranges and "position_ids" not in h.inputs:
        pos = h.add_op("Range", [], 1, {"start": P, "limit": P + S, "delta": 1},
                       types=[TensorType("int64", (S,))]).outputs[0]
        for n in ranges:
            h.replace_uses(n.outputs[0], pos)
    eliminate_dead_code(h)
    if has_pad and am.shape == h.type("input_ids").shape:
        # the exporter read the sequence length off attention_mask (torch.export keeps one symbol
        # for equal dims): in the source both are [B, S], and S — the new tokens — is what the
        # graph's types say these shapes are, so they are read off input_ids instead
        for c, i in list(h.consumers(MASK_INPUT)):
            if c.op == "Shape":
                h.set_input(c, i, "input_ids")
    extended = 0
    if has_pad and any(c.name != cast.name for c, _ in h.consumers(MASK_INPUT)):
        extended = _extend_mask_readers(h, cast.name)
    stats = lift_kv_cache(h)
    h.meta["dim_sources"] = {**h.meta.get("dim_sources", {}), "P": ("past_key.0", 2)}
    h.verify()
    g.__dict__.update(h.__dict__)
    out = {"layers": stats["layers"], "positions": len(ranges), "masks": len(infos)}
    windows = sum(1 for n in g if n.op == "Attention" and n.attrs.get("window"))
    if windows:
        out["windowed"] = windows
    if any(n.attrs.get("alibi_slopes") is not None for n in g if n.op == "Attention"):
        out["alibi"] = sum(1 for n in g if n.op == "Attention" and n.attrs.get("alibi_slopes") is not None)
    if extended:
        out["mask_values_extended"] = extended
    return out


class LiftKVCache(Pass):
    """``kv_cache``: a decoder from an ONNX file without a cache gets one (see module doc), or is
    refused (exit 2, unless ``required: false``) where it cannot. A graph that has a cache already
    (torch imports) or is not a causal LM is left as it is. A causal LM whose cache cannot be
    lifted is refused (exit 2, the reason and advice in one paragraph) —
    never costed silently without its cache; with ``required: false`` it is left as it is instead
    and report.json ``passes[].notes`` says why."""

    name = "kv_cache"

    def check_params(self) -> None:
        bad = sorted(set(self.params) - {"required"})
        if bad or not isinstance(self.params.get("required", True), bool):
            raise ConfigError(f"pass {self.name!r} takes only required: true|false (false: a decoder "
                              f"whose cache cannot be lifted is costed without one and the run goes on), "
                              f"got {dict(self.params)}; fix pipeline.passes.")

    def run(self, g: Graph) -> PassResult:
        if g.meta.get("kv_tensors") or g.meta.get("task") != "causal_lm":
            return PassResult(g, False, {"layers": 0})
        try:
            stats = lift_onnx_kv_cache(g)
        except Refused as e:
            g.meta["kv_cache_refused"] = str(e)
            if self.params.get("required", True):
                raise UnsupportedOpError(
                    f"the causal decoder gets no KV cache: {e}{' (at ' + e.where + ')' if e.where else ''}. "
                    f"rooftop stops rather than cost and emit decode without its cache silently: run with "
                    f"pipeline=none to cost it without a cache, import the model from its Hugging Face "
                    f"config (model.config, attn_implementation sdpa or eager) instead of model=onnx, or "
                    f"export it again with SDPA attention.") from None
            log.warning("KV cache not lifted: %s; decode is costed without a cache", e)
            return PassResult(g, False, {"layers": 0, "refused": 1},
                              notes=[{"rule": "kv_cache", "where": e.where or "", "check": str(e)}])
        return PassResult(g, True, stats)


__all__ = ["lift_onnx_kv_cache", "LiftKVCache", "Refused", "check_mask"]
