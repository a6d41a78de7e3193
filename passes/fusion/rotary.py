"""Rotary position embedding → ONNX ``RotaryEmbedding`` (opset 23).

``rotary`` fuses the forms the Hugging Face decoders (and both torch.onnx exporters) produce:

- rotate-half (Llama, Mistral, Qwen2, Gemma, Phi-3, GPT-NeoX, Falcon):
  ``x·cos + Concat(−x[..., d/2:], x[..., :d/2])·sin``;
- interleaved pairs (GPT-J, CodeGen): ``x·cos + flatten(stack(−x[..., 1::2], x[..., ::2]))·sin``;
- partial rotary (GPT-NeoX, Phi, Phi-3 with ``partial_rotary_factor``): the rotation applies to
  ``x[..., :r]`` and ``Concat(rotated, x[..., r:])`` puts the rest back → ``rotary_embedding_dim=r``;
- the head layouts [B, H, S, D] (4-D ``RotaryEmbedding``) and [B, S, H, D] (GPT-J: reshaped to
  the 3-D form [B, S, H·D] with ``num_heads``).

``RotaryEmbedding`` takes half-width caches ``cos[..., :r/2]``; the rule proves that the full
``cos``/``sin`` operands repeat their halves (rotate-half: built by ``Concat(f, f)``; interleaved:
by a pair-wise repeat; a constant table: by its values) through elementwise ops (Cos/Sin, scalar
scaling, Cast, Unsqueeze) — and refuses the match otherwise, since a rotation with independent
halves is not a rotary embedding. The half caches are sliced once per model (shared by every
layer) as [B, S, r/2] (expanded over the batch, which onnxruntime requires), no ``position_ids``.

``rotary_layout`` then sinks the head split below a 4-D ``RotaryEmbedding``:
``RotaryEmbedding(Transpose(Reshape(x3)))`` → ``Transpose(Reshape(RotaryEmbedding(x3,
num_heads=H)))`` so that ``attention_layout`` can fold the split into Attention's 3-D form. A
Llama layer then is RMSNorm, QKV GEMM, Split, 2 RotaryEmbedding, Attention, O GEMM, RMSNorm(+res),
gate/up GEMM+SwiGLU, down GEMM — what serving runtimes launch.

Existing ``RotaryEmbedding`` ops (dynamo exports) are normalized: a cache with batch 1 is expanded
over the batch (onnxruntime rejects [1, S, d/2] caches for batch > 1).
"""
from __future__ import annotations

import numpy as np

from compiler.ir.annotations import Rotary
from compiler.ir import Graph
from passes.fusion.common import same_dim, same_shape
from passes.fusion.pattern import Alt, MatchResult, Op, Var, const_value, scalar_value
from passes.fusion.rule import Match, Plan, Rule

BIG = 2**62
_ELEMENTWISE_THROUGH = frozenset({"Cast", "Cos", "Sin", "Neg", "Identity", "CastLike"})


# ------------------------------------------------------------------------------------------------
# pattern

def _core(x):
    """x·cos + rot(x)·sin with rot = rotate_half or the interleaved pair rotation."""
    rotate_half = Op("Concat", Op("Neg", Op("Slice", x, name="hi"), name="neg"), Op("Slice", x, name="lo"),
                     name="rotate_half")
    pairs = Op("Reshape", Op("Concat", Op("Unsqueeze", Op("Neg", Op("Slice", x, name="odd"), name="neg_odd"),
                                          name="u_odd"),
                             Op("Unsqueeze", Op("Slice", x, name="even"), name="u_even"), name="stack"),
               name="flatten")
    return Op("Add", Op("Mul", x, Var("cos"), name="mul_cos"),
              Op("Mul", Alt(rotate_half, pairs), Var("sin"), name="mul_sin"), name="rope")


def rotary_pattern():
    partial_x = Op("Slice", Var("src"), name="rot_slice")
    partial = Op("Concat", _core(partial_x), Op("Slice", Var("src"), name="pass_slice"), name="rope_cat")
    return Alt(partial, _core(Var("x")))


# ------------------------------------------------------------------------------------------------
# checks

def _bounds(n, rank):
    """(start, end, step) of a one-axis constant Slice of the last axis, else None."""
    at = n.attrs
    if not all(k in at for k in ("starts", "ends", "axes")) or len(at["axes"]) != 1:
        return None
    if (at["axes"][0] % rank) != rank - 1:
        return None
    st, en = at["starts"][0], at["ends"][0]
    if not (isinstance(st, int) and isinstance(en, int)):
        return None
    return st, en, (at.get("steps") or [1])[0]


def _to_end(end: int, d: int) -> bool:
    return end >= d or end >= BIG


def _last_axis(n, rank) -> bool:
    return (n.attrs.get("axis", 0) % rank) == rank - 1


def _rotated(match: Match) -> str:
    return match.node("rot_slice").outputs[0] if match.has("rot_slice") else match["x"]


def _check_rotation(match: Match, d: int, rank: int) -> str | None:
    if match.has("rotate_half"):
        lo, hi = _bounds(match.node("lo"), rank), _bounds(match.node("hi"), rank)
        if lo is None or hi is None:
            return "the halves are not constant slices of the last axis"
        if lo[2] != 1 or hi[2] != 1 or lo[:2] != (0, d // 2) or hi[0] != d // 2 or not _to_end(hi[1], d):
            return f"slices {lo}, {hi} are not the two halves of {d}"
        if not _last_axis(match.node("rotate_half"), rank):
            return "rotate_half concatenates another axis"
        return None
    ev, od = _bounds(match.node("even"), rank), _bounds(match.node("odd"), rank)
    if ev is None or od is None or ev[0] != 0 or od[0] != 1 or ev[2] != 2 or od[2] != 2 \
            or not (_to_end(ev[1], d) and _to_end(od[1], d)):
        return f"slices {ev}, {od} are not the even and odd elements of {d}"
    for u in ("u_odd", "u_even"):
        if [a % (rank + 1) for a in match.node(u).attrs.get("axes", [])] != [rank]:
            return "the pair stack is not on a new last axis"
    if not _last_axis(match.node("stack"), rank + 1):
        return "the pair stack concatenates another axis"
    g = match.graph
    if not same_shape(g.type(match.node("flatten").outputs[0]).shape, g.type(_rotated(match)).shape):
        return "the pair rotation is not flattened back to the rotated shape"
    return None


def _heads_axis(g: Graph, x_shape: tuple, cos: str) -> int | None:
    """The head axis of the 4-D rotated tensor: the axis (1 or 2) along which cos is broadcast."""
    c = (1,) * (4 - g.type(cos).rank) + tuple(g.type(cos).shape)
    ones = [a for a in (1, 2) if same_dim(c[a], 1)]
    if not ones:
        return None
    if len(ones) == 2:
        return 1
    return ones[0]


def check_rotary(match: Match) -> MatchResult:
    g = match.graph
    xt = g.type(_rotated(match))
    if xt.rank != 4:
        return MatchResult.fail(f"the rotated tensor {xt} is not 4-D [batch, heads, seq, head_dim]")
    d = xt.shape[-1]
    if not isinstance(d, int) or d % 2:
        return MatchResult.fail(f"rotated size {d} is not an even integer")
    why = _check_rotation(match, d, 4)
    if why:
        return MatchResult.fail(why)
    src = g.type(match["src"]) if match.has("src") else xt
    if match.has("src"):
        full = src.shape[-1]
        r, p = _bounds(match.node("rot_slice"), 4), _bounds(match.node("pass_slice"), 4)
        if not isinstance(full, int) or r is None or p is None or r[2] != 1 or p[2] != 1:
            return MatchResult.fail("the rotated and passed parts are not constant slices of the head")
        if r[0] != 0 or r[1] != d or p[0] != d or not _to_end(p[1], full):
            return MatchResult.fail(f"slices {r}, {p} do not split the head {full} at {d}")
        if not _last_axis(match.node("rope_cat"), 4):
            return MatchResult.fail("the rotated and passed parts are concatenated on another axis")
    out = g.type(match.root_tensor)
    if not same_shape(out.shape, src.shape) or out.dtype != src.dtype:
        return MatchResult.fail(f"the output {out} is not the rotated tensor's type {src}")
    for n in ("cos", "sin"):
        ct = g.type(match[n])
        if ct.rank > 4 or not same_dim(ct.shape[-1], d):
            return MatchResult.fail(f"{n} {ct} does not cover the rotated size {d}")
    h = _heads_axis(g, xt.shape, match["cos"])
    if h is None or h != _heads_axis(g, xt.shape, match["sin"]):
        return MatchResult.fail("cos/sin vary over both the head and the sequence axes")
    interleaved = not match.has("rotate_half")
    for n in ("cos", "sin"):
        why = duplicated_halves(g, match[n], interleaved)
        if why:
            return MatchResult.fail(f"{n}: {why}")
    return MatchResult.success()


def duplicated_halves(g: Graph, t: str, interleaved: bool, depth: int = 12) -> str | None:
    """Why ``t``'s last axis is not provably two equal halves (rotate-half: ``[c, c]``) or equal
    pairs (interleaved: ``[c0, c0, c1, c1, …]``); None when it is."""
    data = const_value(g, t) if g.is_param(t) else None
    if data is None and g.is_param(t) and g.params[t].data is not None:
        data = np.asarray(g.params[t].data)
    if data is not None:
        d = data.shape[-1]
        a, b = (data[..., 0::2], data[..., 1::2]) if interleaved else (data[..., :d // 2], data[..., d // 2:])
        return None if a.shape == b.shape and np.array_equal(a, b) else "the constant's halves differ"
    n = g.producer_of(t)
    if n is None:
        return f"{t} is a graph input: its halves cannot be proven equal"
    if depth == 0:
        return f"no repeat of the halves found above {t}"
    rank = g.type(t).rank
    if not interleaved and n.op == "Concat" and len(n.inputs) == 2 and n.inputs[0] == n.inputs[1] \
            and _last_axis(n, rank):
        return None
    if interleaved and n.op == "Reshape":
        e = g.producer_of(n.inputs[0])
        u = g.producer_of(e.inputs[0]) if e is not None and e.op == "Expand" else None
        if u is not None and u.op == "Unsqueeze" and [a % (rank + 1) for a in u.attrs.get("axes", [])] == [rank]:
            et = g.type(e.outputs[0]).shape
            if same_dim(et[-1], 2) and same_dim(g.type(t).shape[-1], 2 * g.type(u.inputs[0]).shape[-1]):
                return None
    if n.op in _ELEMENTWISE_THROUGH:
        return duplicated_halves(g, n.inputs[0], interleaved, depth - 1)
    if n.op in ("Unsqueeze", "Squeeze", "Expand"):
        rank_in = g.type(n.inputs[0]).rank
        if rank_in and same_dim(g.type(n.inputs[0]).shape[-1], g.type(t).shape[-1]):
            return duplicated_halves(g, n.inputs[0], interleaved, depth - 1)
    if n.op == "Gather" and (n.attrs.get("axis", 0) % g.type(n.inputs[0]).rank) != g.type(n.inputs[0]).rank - 1:
        return duplicated_halves(g, n.inputs[0], interleaved, depth - 1)   # rows of a table
    if n.op == "Slice" and all((a % rank) != rank - 1 for a in n.attrs.get("axes", [rank - 1])):
        return duplicated_halves(g, n.inputs[0], interleaved, depth - 1)
    if n.op in ("Mul", "Div"):
        for i, j in ((0, 1), (1, 0)):
            if scalar_value(g, n.inputs[j]) is not None and not (n.op == "Div" and i == 1):
                return duplicated_halves(g, n.inputs[i], interleaved, depth - 1)
    return f"{t} comes from {n.op} ({n.name}), not from a repeat of its halves"


# ------------------------------------------------------------------------------------------------
# rewrite

def _half_cache(g: Graph, plan: Plan, ctx: dict, t: str, *, interleaved: bool, heads_axis: int,
                batch, seq) -> str:
    """[B, S, r/2] half cache of a full cos/sin operand ([.., 1, S, r] or [.., S, 1, r]); made
    once per operand and shared by the layers."""
    u = g.producer_of(t)
    stripped = False
    if g.type(t).rank == 4 and u is not None and u.op == "Unsqueeze" and \
            [a % 4 for a in u.attrs.get("axes", [])] == [heads_axis]:
        t, stripped = u.inputs[0], True   # the [B, S, r] tensor every layer unsqueezes: one cache
    key = (t, interleaved, heads_axis)
    memo = ctx.setdefault("rotary_half", {})
    if key in memo and memo[key] in g.types:
        return memo[key]
    ct = g.type(t)
    r = ct.shape[-1]
    half = plan.op("Slice", [t], {"starts": [0], "ends": [BIG if interleaved else r // 2],
                                  "axes": [ct.rank - 1], "steps": [2 if interleaved else 1]},
                   base="rotary_half")
    if not stripped:   # [.., 1, S, r] / [.., S, 1, r] broadcast from the left onto the 4-D input
        if ct.rank < 4:
            half = plan.op("Unsqueeze", [half], {"axes": list(range(4 - ct.rank))})
        half = plan.op("Squeeze", [half], {"axes": [heads_axis]})
    shape = plan.type(half).shape
    if not (same_dim(shape[0], batch) and same_dim(shape[1], seq)):
        half = plan.op("Expand", [half], {"shape": [batch, seq, shape[2]]})
    memo[key] = half
    return half


def rewrite_rotary(match: Match, plan: Plan):
    g = match.graph
    x = _rotated(match)
    xt = g.type(x)
    src = match["src"] if match.has("src") else x
    st = g.type(src)
    interleaved = not match.has("rotate_half")
    h = _heads_axis(g, xt.shape, match["cos"])
    seq_axis = 2 if h == 1 else 1
    heads = st.shape[h]
    if not isinstance(heads, int):
        return MatchResult.fail(f"symbolic head count {heads}")
    caches = [_half_cache(g, plan, match.ctx, match[n], interleaved=interleaved, heads_axis=h,
                          batch=st.shape[0], seq=st.shape[seq_axis]) for n in ("cos", "sin")]
    attrs = {"interleaved": int(interleaved), "num_heads": heads}
    if match.has("src"):
        attrs["rotary_embedding_dim"] = int(xt.shape[-1])
    fused = sorted({n.op for n in match.nodes})
    info = Rotary(src, caches[0], caches[1], int(interleaved))
    if h == 1:
        out = plan.op("RotaryEmbedding", [src] + caches, attrs, merged_from=fused, rotary=info)
    else:   # [B, S, H, D]: the 3-D form [B, S, H·D]
        b, s, _, d = st.shape
        x3 = plan.op("Reshape", [src], {"shape": [b, s, heads * d]})
        r3 = plan.op("RotaryEmbedding", [x3] + caches, attrs, merged_from=fused, rotary=info)
        out = plan.op("Reshape", [r3], {"shape": [b, s, heads, d]})
    plan.output(match.root_tensor, out)
    return None


def rotary_rule() -> Rule:
    return Rule("rotary", rotary_pattern(), rewrite_rotary, check_rotary,
                doc="x·cos + rotate_half(x)·sin (interleaved, partial) → RotaryEmbedding")


# ------------------------------------------------------------------------------------------------
# head split sunk below a 4-D RotaryEmbedding

SWAP_SEQ_HEADS = {"perm": lambda p: list(p or []) == [0, 2, 1, 3]}


def rotary_layout_pattern():
    split = Op("Transpose", Op("Reshape", Var("x3"), name="split"), name="split_t", attrs=SWAP_SEQ_HEADS)
    return Op("RotaryEmbedding", split, Var("cos"), Var("sin"), name="rope", extra=True)


def check_rotary_layout(match: Match) -> MatchResult:
    g = match.graph
    x3, x4 = match.type("x3"), g.type(match.node("split").outputs[0])
    if x3.rank != 3 or x4.rank != 4:
        return MatchResult.fail(f"{x3} → {x4} is not a head split of [B, S, H·D]")
    if not (same_shape(x4.shape[:2], x3.shape[:2]) and same_dim(x4.shape[2] * x4.shape[3], x3.shape[2])):
        return MatchResult.fail(f"the Reshape {x3} → {x4} moves more than the last axis")
    if not isinstance(x4.shape[2], int):
        return MatchResult.fail(f"symbolic head count {x4.shape[2]}")
    if len([i for i in match.root.inputs if i]) > 3:
        return MatchResult.fail("the RotaryEmbedding takes position_ids")
    return MatchResult.success()


def rewrite_rotary_layout(match: Match, plan: Plan):
    g = match.graph
    split = match.node("split")
    attrs = dict(match.root.attrs)
    attrs["num_heads"] = int(g.type(split.outputs[0]).shape[2])
    r3 = plan.op("RotaryEmbedding", [match["x3"], match["cos"], match["sin"]], attrs,
                 merged_from=["RotaryEmbedding", "Reshape", "Transpose"],
                 rotary=Rotary(match["x3"], match["cos"], match["sin"], int(attrs.get("interleaved", 0))))
    r4 = plan.op("Reshape", [r3], dict(split.attrs))
    out = plan.op("Transpose", [r4], {"perm": [0, 2, 1, 3]})
    plan.output(match.root_tensor, out)


def rotary_layout_rule() -> Rule:
    return Rule("rotary_layout", rotary_layout_pattern(), rewrite_rotary_layout, check_rotary_layout,
                cost_gated=False,
                doc="head split (Reshape+Transpose) sunk below RotaryEmbedding: its 3-D form")


# ------------------------------------------------------------------------------------------------
# existing RotaryEmbedding ops: a batch-1 cache expanded over the batch

def rotary_cache_pattern():
    return Op("RotaryEmbedding", Var("x"), Var("cos"), Var("sin"), name="rope", extra=True)


def check_rotary_cache(match: Match) -> MatchResult:
    g = match.graph
    if len([i for i in match.root.inputs if i]) > 3:
        return MatchResult.fail("the RotaryEmbedding takes position_ids (caches are tables)")
    x = match.type("x")
    b = x.shape[0]
    for n in ("cos", "sin"):
        c = match.type(n)
        if c.rank != 3:
            return MatchResult.fail(f"{n} {c} is not a [batch, seq, d/2] cache")
    if all(same_dim(match.type(n).shape[0], b) for n in ("cos", "sin")):
        return MatchResult.fail("the caches already cover the batch")
    if not all(same_dim(match.type(n).shape[0], 1) for n in ("cos", "sin")):
        return MatchResult.fail("the caches' batch is neither 1 nor the input's")
    return MatchResult.success()


def rewrite_rotary_cache(match: Match, plan: Plan):
    g = match.graph
    x = match.type("x")
    seq = x.shape[2] if x.rank == 4 else x.shape[1]
    ins = [match["x"]]
    for n in ("cos", "sin"):
        c = match.type(n)
        key = ("rotary_expand", match[n])
        memo = match.ctx.setdefault("rotary_half", {})
        if key in memo and memo[key] in g.types:
            ins.append(memo[key])
            continue
        e = plan.op("Expand", [match[n]], {"shape": [x.shape[0], seq, c.shape[2]]})
        memo[key] = e
        ins.append(e)
    out = plan.op("RotaryEmbedding", ins, dict(match.root.attrs), merged_from=["RotaryEmbedding"],
                  rotary=Rotary(ins[0], ins[1], ins[2], int(match.root.attrs.get("interleaved", 0))))
    plan.output(match.root_tensor, out)


def rotary_cache_rule() -> Rule:
    return Rule("rotary_cache", rotary_cache_pattern(), rewrite_rotary_cache, check_rotary_cache,
                cost_gated=False,
                doc="RotaryEmbedding with batch-1 cos/sin caches: caches expanded over the batch")


__all__ = ["rotary_rule", "rotary_layout_rule", "rotary_cache_rule", "duplicated_halves"]


# ------------------------------------------------------------------------------------------------
# partial rotary as exported by torch.onnx (dynamo): Concat(RotaryEmbedding(x[..., :r]), x[..., r:])

def rotary_partial_pattern():
    src = Var("src")
    rope = Op("RotaryEmbedding", Op("Slice", src, name="rot_slice"), Var("cos"), Var("sin"), name="rope",
              extra=True)
    return Op("Concat", rope, Op("Slice", src, name="pass_slice"), name="rope_cat")


def check_rotary_partial(match: Match) -> MatchResult:
    g = match.graph
    st = match.type("src")
    rope = match.node("rope")
    if st.rank != 4 or not isinstance(st.shape[-1], int):
        return MatchResult.fail(f"the rotated tensor {st} is not 4-D with a static head size")
    if rope.attrs.get("rotary_embedding_dim"):
        return MatchResult.fail("the RotaryEmbedding is already partial")
    r = g.type(rope.inputs[0]).shape[-1]
    a, b = _bounds(match.node("rot_slice"), 4), _bounds(match.node("pass_slice"), 4)
    if a is None or b is None or a[2] != 1 or b[2] != 1 or a[:2] != (0, r) or b[0] != r \
            or not _to_end(b[1], st.shape[-1]):
        return MatchResult.fail(f"slices {a}, {b} do not split the head {st.shape[-1]} at {r}")
    if not _last_axis(match.root, 4):
        return MatchResult.fail("the parts are concatenated on another axis")
    return MatchResult.success()


def rewrite_rotary_partial(match: Match, plan: Plan):
    rope = match.node("rope")
    st = match.type("src")
    attrs = dict(rope.attrs)
    attrs["rotary_embedding_dim"] = int(match.graph.type(rope.inputs[0]).shape[-1])
    attrs["num_heads"] = int(st.shape[1])
    ins = [match["src"]] + list(rope.inputs[1:])
    out = plan.op("RotaryEmbedding", ins, attrs, merged_from=["RotaryEmbedding", "Slice", "Concat"],
                  rotary=Rotary(match["src"], rope.inputs[1], rope.inputs[2], int(attrs.get("interleaved", 0))))
    plan.output(match.root_tensor, out)


def rotary_partial_rule() -> Rule:
    return Rule("rotary_partial", rotary_partial_pattern(), rewrite_rotary_partial, check_rotary_partial,
                doc="Concat(RotaryEmbedding(x[..., :r]), x[..., r:]) → RotaryEmbedding(rotary_embedding_dim=r)")
