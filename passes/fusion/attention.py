"""Attention: QKᵀ → scale → mask → softmax → ·V as one ``Attention`` op (ONNX opset 23).

One parameterized pattern covers the forms exporters produce:

- eager PyTorch (``matmul(q, k.transpose(2, 3)) * scale + mask → softmax(dtype=fp32) → .to() →
  matmul(·, v)``), SDPA decomposed by the legacy ONNX exporter (``q·√s`` and ``kᵀ·√s`` scaled
  separately, ``Where(IsNaN(p), 0, p)`` after the softmax), dynamo ONNX exports (``Mul`` by the
  scale after the MatMul, ``Where(mask, 0, -max)`` added), BERT (``/ √d``);
- the pieces are options, not copies: a scale on Q, on Kᵀ, on K before the transpose and/or on
  the scores (``Mul`` or ``Div``); an additive mask, a ``Where`` mask (either polarity) or none;
  a cast around the softmax; the NaN guard; GQA's ``repeat_kv`` on K and V (dropped: ONNX
  Attention takes fewer KV heads natively); any transpose of K whose last two axes are swapped.

The mask is classified by :mod:`passes.fusion.mask`: a causal one becomes ``is_causal=1``, any
other stays the Attention's mask operand (bit for bit the same values). ``require_causal`` (the
import of an eager causal decoder, whose KV cache is lifted next) refuses a non-causal mask.

``attention_gqa`` strips ``repeat_kv`` chains in front of an existing Attention op (SDPA
exported by torch.onnx's dynamo exporter keeps them).
"""
from __future__ import annotations

import dataclasses

from compiler.ir.annotations import AttentionSpec
from passes.fusion.common import (is_float, repeat_kv, repeat_ok, same_dim, same_shape, scale_factor,
                                  scaled)
from passes.fusion.mask import HIDDEN, MaskInfo, analyze_mask
from passes.fusion.pattern import Alt, Const, MatchResult, Op, Opt, Var, scalar_value
from passes.fusion.rule import Match, Plan, Rule


def attention_pattern():
    q = scaled(Var("q"), "q_scale")
    k = repeat_kv(scaled(Var("k"), "k_scale_pre"), "k_repeat")
    # Kᵀ: a rank-4 transpose, or (torch.onnx at opset < 23) heads folded into the batch, the last
    # two axes swapped in 3-D, and unfolded again
    kt = scaled(Alt(Op("Transpose", k, name="k_t"),
                    Op("Reshape", Op("Transpose", Op("Reshape", k, name="k_fold"), name="k_t3"),
                       name="k_unfold")), "k_scale")
    raw = scaled(Op("MatMul", q, kt, name="qk"), "scale")
    # logit softcapping (Gemma-2): c·tanh(scores / c)
    scores = Opt(Op("Mul", Op("Tanh", Op(("Mul", "Div"), raw, Const("cap_in"), name="cap_in_op"), name="cap_tanh"),
                    Const("cap_out"), name="cap"), inner=raw)
    # an additive bias (MPT's ALiBi table) in front of a Where mask: classified on its own below
    biased = Opt(Op("Add", scores, Var("bias"), name="bias_add"), inner=scores)
    masked = Alt(Op("Add", scores, Var("mask"), name="mask_add"),
                 Op("Where", Var("keep"), biased, Const("fill"), name="mask_keep"),
                 Op("Where", Var("drop"), Const("fill"), biased, name="mask_drop"),
                 scores)
    probs = Opt(Op("Cast", Op("Softmax", Opt(Op("Cast", masked, name="cast_in")), name="softmax"),
                   name="cast_out"))
    guarded = Alt(Op("Where", Op("IsNaN", probs, name="isnan"), Const("nan_fill", 0.0), probs,
                     name="nan_guard"), probs)
    v = repeat_kv(Var("v"), "v_repeat")
    return Op("MatMul", guarded, v, name="pv")


def _key_perm(match: Match) -> list[int] | None:
    """The permutation that makes K [B, Hkv, T, D] from the Transpose's input (identity: none)."""
    if match.has("k_unfold"):   # [B, H, T, D] → [B·H, T, D] → [B·H, D, T] → [B, H, D, T]
        g = match.graph
        k4, k3 = g.type(match["k"]).shape, g.type(match.node("k_fold").outputs[0]).shape
        out = g.type(match.node("k_unfold").outputs[0]).shape
        perm3 = list(match.node("k_t3").attrs.get("perm") or [])
        ok = (len(k4) == 4 and len(k3) == 3 and len(out) == 4 and perm3 == [0, 2, 1]
              and same_dim(k3[0], k4[0] * k4[1]) and same_shape(k3[1:], k4[2:])
              and same_shape(out, (k4[0], k4[1], k4[3], k4[2])))
        return [0, 1, 2, 3] if ok else None
    perm = list(match.node("k_t").attrs.get("perm") or [])
    if len(perm) != 4:
        return None
    return perm[:2] + [perm[3], perm[2]]


def check_attention(match: Match) -> MatchResult:
    g = match.graph
    kperm = _key_perm(match)
    if kperm is None:
        return MatchResult.fail("Kᵀ is not a rank-4 transpose (nor a swap of the last two axes "
                                "with the heads folded into the batch)")
    if kperm != [0, 1, 2, 3] and match.has("k_repeat"):
        return MatchResult.fail(f"K is repeated and then transposed with {match.node('k_t').attrs['perm']}, "
                                f"not a swap of the last two axes")
    for name, base in (("k_repeat", "k"), ("v_repeat", "v")):
        why = repeat_ok(g, match, name, base)
        if why:
            return MatchResult.fail(why)
    q = match.type("q")
    kin = g.type(match["k"]).shape if kperm == [0, 1, 2, 3] else \
        tuple(g.type(match["k"]).shape[p] for p in kperm)
    v = match.type("v").shape
    if q.rank != 4 or len(kin) != 4 or len(v) != 4:
        return MatchResult.fail(f"Q/K/V are not 4-D [batch, heads, seq, head_dim] "
                                f"(ranks {q.rank}/{len(kin)}/{len(v)})")
    b, h, s, d = q.shape
    if not (same_dim(kin[0], b) and same_dim(v[0], b)):
        return MatchResult.fail(f"batch dims differ: Q {q.shape}, K {kin}, V {v}")
    if not same_dim(kin[3], d):
        return MatchResult.fail(f"Q head_dim {d} != K head_dim {kin[3]}")
    if not (same_dim(kin[1], v[1]) and same_dim(kin[2], v[2])):
        return MatchResult.fail(f"K {kin} and V {v} differ in heads or length")
    hkv = kin[1]
    if not (isinstance(h, int) and isinstance(hkv, int) and h % hkv == 0):
        return MatchResult.fail(f"query heads {h} are not a multiple of KV heads {hkv}")
    if not all(is_float(g.type(match[n])) for n in ("q", "k", "v")):
        return MatchResult.fail("Q/K/V are not floating point")
    out = g.type(match.root_tensor)
    if out.dtype != q.dtype or not same_shape(out.shape, (b, h, s, v[3])):
        return MatchResult.fail(f"the output {out} is not [B, H, S, Dv] in Q's dtype")
    sm = match.node("softmax")
    if (sm.attrs.get("axis", -1) % 4) != 3:
        return MatchResult.fail(f"softmax over axis {sm.attrs.get('axis')}, not the key axis")
    scores_t = sm.inputs[0]
    if match.has("fill") and not match["fill"] <= HIDDEN:
        return MatchResult.fail(f"the Where mask fills {match['fill']:g}, which does not hide a key")
    if match.has("mask"):
        mt = g.type(match["mask"])
        if not is_float(mt) or mt.rank > 4 or not _broadcasts(mt.shape, g.type(scores_t).shape):
            return MatchResult.fail(f"mask {mt} does not broadcast onto the scores {g.type(scores_t)}")
    if match.has("bias"):
        bt = g.type(match["bias"])
        if not is_float(bt) or bt.rank > 4 or bt.rank < 2:
            return MatchResult.fail(f"the additive bias {bt} in front of the Where mask is not a float "
                                    f"[…, queries or 1, keys] tensor")
    for n in ("keep", "drop"):
        if match.has(n) and g.type(match[n]).dtype != "bool":
            return MatchResult.fail(f"the Where condition {match[n]} is not boolean")
    if match.has("cap") and _softcap(match) is None:
        return MatchResult.fail("c·tanh(x/d) with c != d is not a logit softcap")
    return MatchResult.success()


def _softcap(match: Match) -> float | None:
    """The softcap c of ``c·tanh(scores / c)`` (None: absent or not one)."""
    if not match.has("cap"):
        return None
    d = match["cap_in"]
    d = 1.0 / d if match.node("cap_in_op").op == "Mul" else d
    c = match["cap_out"]
    return float(c) if c > 0 and abs(c - d) <= 1e-6 * abs(c) else None


def _broadcasts(mask, scores) -> bool:
    if len(mask) > len(scores):
        return False
    for a, b in zip(reversed(mask), reversed(scores)):
        if not (same_dim(a, 1) or same_dim(a, b)):
            return False
    return True


def _bool_mask_of(g, t: str) -> str | None:
    """``t`` = Where(cond, 0, fill ≤ -1e4): the boolean ``cond`` (True = attend) that ONNX
    Attention takes directly, saving the float mask's bytes."""
    p = g.producer_of(t)
    if p is None or p.op != "Where" or len(p.inputs) != 3:
        return None
    zero, fill = scalar_value(g, p.inputs[1]), scalar_value(g, p.inputs[2])
    if zero == 0.0 and fill is not None and fill <= HIDDEN and g.type(p.inputs[0]).dtype == "bool":
        return p.inputs[0]
    return None


def _full_rows(g, plan: Plan, mask: str, scores: tuple) -> str:
    """onnxruntime wants the mask's query axis at full length (a padding mask broadcast over the
    query rows, [B, 1, 1, T], is expanded to [B, 1, S, T]); ONNX itself only asks broadcastable."""
    mt = plan.type(mask)
    shape = (1,) * (4 - mt.rank) + tuple(mt.shape)
    if same_dim(shape[-2], scores[-2]) and same_dim(shape[-1], scores[-1]):
        return mask
    return plan.op("Expand", [mask], {"shape": list(shape[:-2]) + [scores[-2], scores[-1]]})


def rewrite_attention(require_causal: bool):
    def rewrite(match: Match, plan: Plan):
        g = match.graph
        cache = match.ctx.setdefault("mask_info", {})
        mask, analyzed = None, None
        if match.has("mask"):
            analyzed = match["mask"]
            mask = _bool_mask_of(g, analyzed) or analyzed
        elif match.has("keep"):
            analyzed = mask = match["keep"]
        elif match.has("drop"):
            analyzed = match["drop"]
            mask = plan.op("Not", [analyzed])
        causal, window, slopes, spec = False, None, None, AttentionSpec(mask="bidirectional")
        bias_slopes = None
        if match.has("bias"):
            binfo = analyze_mask(g, match["bias"], cache, scores=g.type(match.node("softmax").inputs[0]).shape[-2:])
            if binfo.alibi is None or binfo.kind != "bidirectional" or binfo.padding:
                return MatchResult.fail(f"the additive bias before the Where mask is not an ALiBi bias: "
                                        f"{binfo.reason}")
            bias_slopes = binfo.alibi
        if analyzed is not None:
            info = analyze_mask(g, analyzed, cache, scores=g.type(match.node("softmax").inputs[0]).shape[-2:],
                                invert=match.has("drop"))
            if bias_slopes is not None:
                if info.kind not in ("causal", "window") or info.alibi is not None:
                    return MatchResult.fail(f"an ALiBi bias with a mask that is {info.reason}, not causal "
                                            f"or a sliding window")
                info = MaskInfo(info.kind, info.reason + f" + ALiBi bias ({len(bias_slopes)} heads)",
                                dataclasses.replace(info.cls, alibi=bias_slopes))
            spec = spec_of(info)
            plain = not info.padding and info.alibi is None
            if info.kind in ("causal", "window") and (plain or (require_causal and not info.padding)
                                                      or (bias_slopes is not None and not info.padding)):
                causal, mask, window = True, None, info.window
                slopes = info.alibi
            elif info.kind in ("causal", "window") and info.alibi is not None and bias_slopes is not None:
                # causal ∧ padding + ALiBi: the mask operand keeps the padding and structure, the
                # bias becomes the alibi_slopes attribute
                slopes = info.alibi
            elif info.kind == "bidirectional" and plain and not require_causal:
                mask = None
            elif require_causal:
                return MatchResult.fail(f"a causal mask is required here, but the mask is {info.reason}")
        elif require_causal:
            return MatchResult.fail("a causal mask is required here, but the attention is unmasked")
        cap = _softcap(match)
        if cap is not None:
            spec = dataclasses.replace(spec, softcap=cap)
        if mask is not None:
            mask = _full_rows(g, plan, mask, g.type(match.node("softmax").inputs[0]).shape)
        scale = (scale_factor(match, "q_scale") * scale_factor(match, "k_scale") *
                 scale_factor(match, "k_scale_pre") * scale_factor(match, "scale"))
        k = match["k"]
        perm = _key_perm(match)
        if perm != [0, 1, 2, 3]:
            k = plan.op("Transpose", [k], {"perm": perm})
        attrs = {"scale": float(scale)}
        if causal:
            attrs["is_causal"] = 1
        if window:
            attrs["window"] = int(window)
        if slopes is not None:
            attrs["alibi_slopes"] = [float(x) for x in slopes]
        if cap is not None:
            attrs["softcap"] = cap
        out = plan.op("Attention", [match["q"], k, match["v"]] + ([mask] if mask else []), attrs,
                      merged_from=sorted({n.op for n in match.nodes}), attention=spec)
        plan.output(match.root_tensor, out)
        return None
    return rewrite


def spec_of(info) -> AttentionSpec:
    """The ``attention`` annotation of a classified mask (:class:`passes.fusion.mask.MaskInfo`)."""
    kind = info.kind
    if kind == "general":
        return AttentionSpec(mask="general")
    if info.alibi is not None:
        mask = "bias"
    elif kind == "window":
        mask = "window"
    elif kind == "causal":
        mask = "causal_padding" if info.padding else "causal"
    else:
        mask = "padding" if info.padding else "bidirectional"
    return AttentionSpec(mask=mask, window=info.window, alibi=info.alibi is not None)


def attention_rule(name: str = "attention", *, require_causal: bool = False, cost_gated: bool = True) -> Rule:
    return Rule(name, attention_pattern(), rewrite_attention(require_causal), check_attention,
                cost_gated=cost_gated,
                doc="QKᵀ·scale (+mask) → softmax → ·V as one Attention"
                    + (" (causal mask required)" if require_causal else ""))


# ------------------------------------------------------------------------------------------------
# repeat_kv in front of an existing Attention op

def gqa_pattern():
    return Op("Attention", Var("q"), repeat_kv(Var("k"), "k_repeat"), repeat_kv(Var("v"), "v_repeat"),
              name="attn", extra=True)


def check_gqa(match: Match) -> MatchResult:
    if not (match.has("k_repeat") or match.has("v_repeat")):
        return MatchResult.fail("no repeat_kv in front of K or V")
    if not (match.has("k_repeat") and match.has("v_repeat")):
        return MatchResult.fail("only one of K and V is repeated")
    for name, base in (("k_repeat", "k"), ("v_repeat", "v")):
        why = repeat_ok(match.graph, match, name, base)
        if why:
            return MatchResult.fail(why)
    if len([t for t in match.root.outputs if t]) != 1:
        return MatchResult.fail("the Attention also returns its KV cache (which would change heads)")
    return MatchResult.success()


def rewrite_gqa(match: Match, plan: Plan):
    n = match.root
    ins = [match["q"], match["k"], match["v"]] + list(n.inputs[3:])
    out = plan.op("Attention", ins, dict(n.attrs), merged_from=["Attention", "Expand", "Reshape", "Unsqueeze"])
    plan.output(match.root_tensor, out)


def gqa_rule() -> Rule:
    return Rule("attention_gqa", gqa_pattern(), rewrite_gqa, check_gqa,
                doc="drop repeat_kv (Unsqueeze/Expand/Reshape) in front of an Attention: GQA natively")


# ------------------------------------------------------------------------------------------------
# head split/merge folded into Attention's 3-D form

SWAP_SEQ_HEADS = {"perm": lambda p: list(p or []) == [0, 2, 1, 3]}   # [B, S, H, D] ↔ [B, H, S, D]


def _split_heads(name: str):
    """``Transpose(Reshape(x3, [B, S, H, D]), perm=[0, 2, 1, 3])``: x3 [B, S, H·D] into heads."""
    return Op("Transpose", Op("Reshape", Var(name + "3"), name=name + "_split"), name=name + "_t",
              attrs=SWAP_SEQ_HEADS)


def layout_pattern():
    attn = Op("Attention", _split_heads("q"), _split_heads("k"), _split_heads("v"), name="attn", extra=True)
    return Op("Reshape", Op("Transpose", attn, name="y_t", attrs=SWAP_SEQ_HEADS), name="y_merge")


def check_layout(match: Match) -> MatchResult:
    g = match.graph
    heads = {}
    for n in ("q", "k", "v"):
        x3, x4 = match.type(n + "3"), g.type(match.node(n + "_split").outputs[0])
        if x3.rank != 3 or x4.rank != 4:
            return MatchResult.fail(f"{n}: {x3} → {x4} is not a split of [B, S, H·D] into [B, S, H, D]")
        if not (same_shape(x4.shape[:2], x3.shape[:2]) and same_dim(x4.shape[2] * x4.shape[3], x3.shape[2])):
            return MatchResult.fail(f"{n}: the Reshape {x3} → {x4} moves more than the last axis")
        if not isinstance(x4.shape[2], int):
            return MatchResult.fail(f"{n}: symbolic head count {x4.shape[2]}")
        heads[n] = x4.shape
    if heads["k"][2] != heads["v"][2]:
        return MatchResult.fail(f"K has {heads['k'][2]} heads, V {heads['v'][2]}")
    y = g.type(match.root_tensor)
    yt = g.type(match.node("attn").outputs[0])
    rows = (yt.shape[0], yt.shape[2]) if y.rank == 3 else (yt.shape[0] * yt.shape[2],)
    if y.rank not in (2, 3) or not (same_shape(y.shape[:-1], rows) and
                                    same_dim(y.shape[-1], yt.shape[1] * yt.shape[3])):
        return MatchResult.fail(f"the output {yt} → {y} is not a merge of the heads into [B, S, H·Dv] "
                                f"or [B·S, H·Dv]")
    return MatchResult.success()


def rewrite_layout(match: Match, plan: Plan):
    n = match.node("attn")
    attrs = dict(n.attrs)
    attrs["q_num_heads"] = int(match.graph.type(match.node("q_split").outputs[0]).shape[2])
    attrs["kv_num_heads"] = int(match.graph.type(match.node("k_split").outputs[0]).shape[2])
    outs = list(n.outputs)
    new = plan.op("Attention", [match["q3"], match["k3"], match["v3"]] + list(n.inputs[3:]), attrs,
                  n_out=len(outs), merged_from=["Attention", "Reshape", "Transpose"])
    new = [new] if len(outs) == 1 else new
    y = new[0]
    if match.graph.type(match.root_tensor).rank == 2:   # merged straight into GEMM rows [B·S, H·Dv]
        y = plan.op("Reshape", [y], {"shape": [-1, match.graph.type(match.root_tensor).shape[-1]]})
    plan.output(match.root_tensor, y)
    for old, nt in zip(outs[1:], new[1:]):
        if old:
            plan.output(old, nt)


def layout_rule() -> Rule:
    return Rule("attention_layout", layout_pattern(), rewrite_layout, check_layout, exports=("attn",),
                doc="head split/merge (Reshape+Transpose) around an Attention folded into its 3-D form")


__all__ = ["attention_rule", "gqa_rule", "layout_rule", "attention_pattern", "check_attention"]
