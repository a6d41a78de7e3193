"""Horizontal merge: linear layers that read the same input become one GEMM.

``x·Wq``, ``x·Wk``, ``x·Wv`` (each optionally ``+ b``) → ``Split(x·[Wq|Wk|Wv] (+ [bq|bk|bv]))``:
one pass over ``x`` and one launch instead of three (the split costs a copy of the outputs, which
the cost gate weighs). The group is not a tree under one root, so the rule finds its candidates
itself (every tensor read by two or more weight MatMuls) and then goes through the same check,
leak test, cost gate and rewrite as the pattern rules.
"""
from __future__ import annotations

import numpy as np

from compiler.ir import TensorType
from passes.fusion.common import is_float, same_dim
from passes.fusion.gemm import concat_weights, mergeable_weights
from passes.fusion.pattern import Bind, MatchResult
from passes.fusion.rule import Match, Plan, Rule


def _members(g, x: str):
    """(MatMul, bias Add or None) pairs reading ``x`` with a 2-D weight of their own."""
    out = []
    for c, i in g.consumers(x):
        if c.op != "MatMul" or i != 0 or len(c.inputs) != 2:
            continue
        w = c.inputs[1]
        if not g.is_param(w) or g.type(w).rank != 2:
            continue
        add = None
        uses = g.consumers(c.outputs[0])
        if len(uses) == 1 and uses[0][0].op == "Add" and c.outputs[0] not in g.outputs:
            a = uses[0][0]
            other = a.inputs[1 - uses[0][1]]
            if g.is_param(other) and g.type(other).rank == 1 and same_dim(g.type(other).shape[0], g.type(w).shape[1]):
                add = a
        out.append((c, add))
    return out


def find_shared_input_linears(g):
    """(first MatMul, Bind) for every tensor read by two or more weight MatMuls."""
    for x in list(g.inputs) + [t for n in g.topo_order() for t in n.outputs if t]:
        every = _members(g, x)
        mem = [(mm, add) for mm, add in every if g.num_uses(mm.inputs[1]) == 1]
        if len(mem) < 2:
            mem = every   # not mergeable: the check says why (explain)
        if len(mem) < 2:
            continue
        with_bias = all(a is not None for _, a in mem)
        nodes = []
        for mm, add in mem:
            nodes.append(mm.name)
            if with_bias:
                nodes.append(add.name)
        yield mem[0][0], Bind({"x": x, "members": tuple((mm.name, add.name if with_bias else None)
                                                        for mm, add in mem)}, nodes)


def check_merge(match: Match) -> MatchResult:
    g = match.graph
    weights = [g.node(mm).inputs[1] for mm, _ in match["members"]]
    why = mergeable_weights(g, weights)
    if why:
        return MatchResult.fail(why)
    if not is_float(g.type(match["x"])):
        return MatchResult.fail("the shared input is not floating point")
    if any(not isinstance(g.type(w).shape[1], int) for w in weights):
        return MatchResult.fail("an output width is symbolic")
    return MatchResult.success()


def rewrite_merge(match: Match, plan: Plan):
    g = match.graph
    members = match["members"]
    weights = [g.node(mm).inputs[1] for mm, _ in members]
    sizes = [int(g.type(w).shape[1]) for w in weights]
    w = concat_weights(plan, weights, "merged_weight")
    y = plan.op("MatMul", [match["x"], w])
    if members[0][1] is not None:
        biases = []
        for mm, add in members:
            a = g.node(add)
            biases.append(a.inputs[1] if a.inputs[0] == g.node(mm).outputs[0] else a.inputs[0])
        bp = [g.params[b] for b in biases]
        data = None if any(p.data is None for p in bp) else np.concatenate([p.data for p in bp])
        b = plan.param("merged_bias", TensorType(bp[0].type.dtype, (sum(sizes),)), data,
                       like=biases, merged_from=biases)
        y = plan.op("Add", [y, b])
    yt = plan.type(y)
    sz = plan.param("split_sizes", TensorType("int64", (len(sizes),)), np.array(sizes, np.int64), const=True)
    outs = plan.op("Split", [y, sz], {"axis": yt.rank - 1}, n_out=len(sizes),
                   types=[yt.with_shape(yt.shape[:-1] + (n,)) for n in sizes],
                   merged_from=["MatMul"] * len(sizes))
    for (mm, add), o in zip(members, outs):
        plan.output(g.node(add).outputs[0] if add else g.node(mm).outputs[0], o)


def merge_qkv_rule() -> Rule:
    return Rule("merge_qkv", None, rewrite_merge, check_merge, exports=("*",), finder=find_shared_input_linears,
                doc="linear layers sharing an input (Q, K, V) → one MatMul with concatenated weights + Split")


__all__ = ["merge_qkv_rule", "find_shared_input_linears"]


# ------------------------------------------------------------------------------------------------
# interleaved per-head fused QKV (GPT-NeoX): one projection into [B, S, H, q|k|v], chunked after the
# head split, becomes one projection per chunk — the form every other family has, so the rotary,
# attention-layout and (portable target) merge_qkv rules then give the 3-D Attention

_SWAP = [0, 2, 1, 3]


def _chunk_range(g, node, width: int):
    """(lo, hi) of the last axis that ``node`` (a Slice or one output of a Split) takes, or None."""
    if node.op == "Slice":
        a = node.attrs
        axes = list(a.get("axes") or [])
        steps = list(a.get("steps") or [1])
        if len(axes) != 1 or axes[0] % 4 != 3 or steps != [1] or len(a.get("starts") or []) != 1:
            return None
        lo, hi = a["starts"][0], a["ends"][0]
        if not (isinstance(lo, int) and isinstance(hi, int)):
            return None
        lo, hi = (lo + width if lo < 0 else lo), (hi + width if hi < 0 else hi)
        return (max(0, min(lo, width)), max(0, min(hi, width)))
    return None


def _split_ranges(g, node, width: int):
    """Per output of a last-axis Split: (lo, hi); None when the split is not over the last axis."""
    if node.attrs.get("axis", 0) % 4 != 3:
        return None
    sizes = node.attrs.get("split")
    if sizes is None and len(node.inputs) > 1 and node.inputs[1]:
        p = g.params.get(node.inputs[1])
        sizes = None if p is None or p.data is None else [int(v) for v in np.asarray(p.data).reshape(-1)]
    if sizes is None:
        n = len(node.outputs)
        if width % n:
            return None
        sizes = [width // n] * n
    if sum(sizes) != width:
        return None
    out, lo = [], 0
    for s in sizes:
        out.append((lo, lo + s))
        lo += s
    return out


def find_interleaved_qkv(g):
    """(Transpose, Bind) for every ``Transpose(Reshape(x·W (+b), [B, S, H, C]), [0, 2, 1, 3])``
    whose only consumers cut the last axis into chunks (a Split, or Slices)."""
    for t in g:
        if t.op != "Transpose" or list(t.attrs.get("perm") or []) != _SWAP:
            continue
        if t.annotations.get("fused_by") == "qkv_heads":   # a chunk this rule made (its rotary slices are no QKV)
            continue
        r = g.producer_of(t.inputs[0])
        if r is None or r.op != "Reshape":
            continue
        chunks = []
        for c, i in g.consumers(t.outputs[0]):
            if c.op == "Split" and i == 0:
                chunks.append((c.name, None))
            elif c.op == "Slice" and i == 0:
                chunks.append((c.name, 0))
            else:
                chunks = None
                break
        if not chunks:
            continue
        y = g.producer_of(r.inputs[0])
        add = None
        if y is not None and y.op == "Add":
            add = y
            y = next((g.producer_of(a) for a in y.inputs if g.producer_of(a) is not None and
                      g.producer_of(a).op == "MatMul"), None)
        if y is None or y.op != "MatMul":
            continue
        nodes = [y.name] + ([add.name] if add else []) + [r.name, t.name] + [c for c, _ in chunks]
        yield t, Bind({"mm": y.name, "add": add.name if add else None, "reshape": r.name, "t": t.name,
                       "chunks": tuple(c for c, _ in chunks)}, nodes)


def check_interleaved(match: Match) -> MatchResult:
    g = match.graph
    mm, r, t = g.node(match["mm"]), g.node(match["reshape"]), g.node(match["t"])
    w = mm.inputs[1]
    if not g.is_param(w) or g.type(w).rank != 2 or g.params[w].data is None or g.num_uses(w) != 1:
        return MatchResult.fail("the projection weight is not a 2-D parameter of its own with data")
    if "quant_data" in g.params[w].annotations:
        return MatchResult.fail("the projection weight is quantized")
    y3, y4 = g.type(mm.outputs[0]), g.type(r.outputs[0])
    if y3.rank != 3 or y4.rank != 4 or not all(isinstance(d, int) for d in y4.shape[2:]):
        return MatchResult.fail(f"{y3} → {y4} is not a head split of [B, S, H·C] into [B, S, H, C]")
    if not (same_dim(y4.shape[0], y3.shape[0]) and same_dim(y4.shape[1], y3.shape[1])):
        return MatchResult.fail(f"the Reshape {y3} → {y4} moves more than the last axis")
    if not is_float(y3):
        return MatchResult.fail("the projection is not floating point")
    for n in (mm, r) + ((g.node(match["add"]),) if match["add"] else ()):
        if n.outputs[0] in g.outputs or g.num_uses(n.outputs[0]) != 1:
            return MatchResult.fail(f"interior value {n.outputs[0]} is used outside the group")
    if match["add"]:
        a = g.node(match["add"])
        b = a.inputs[1] if a.inputs[0] == mm.outputs[0] else a.inputs[0]
        if not g.is_param(b) or g.type(b).rank != 1 or g.params[b].data is None:
            return MatchResult.fail("the projection's Add is not a 1-D bias parameter")
    width = y4.shape[3]
    for c in match["chunks"]:
        node = g.node(c)
        rng = _split_ranges(g, node, width) if node.op == "Split" else [_chunk_range(g, node, width)]
        if rng is None or any(x is None or x[1] <= x[0] for x in rng):
            return MatchResult.fail(f"{node.op} {c} does not cut the per-head axis into chunks")
    if len(match["chunks"]) == 1 and g.node(match["chunks"][0]).op == "Slice":
        return MatchResult.fail("one Slice of the heads: nothing is split")
    return MatchResult.success()


def rewrite_interleaved(match: Match, plan: Plan):
    g = match.graph
    mm, r, t = g.node(match["mm"]), g.node(match["reshape"]), g.node(match["t"])
    x, w = mm.inputs
    W = np.asarray(g.params[w].data)
    bias = None
    if match["add"]:
        a = g.node(match["add"])
        bias = np.asarray(g.params[a.inputs[1] if a.inputs[0] == mm.outputs[0] else a.inputs[0]].data)
    b_, s_, heads, width = g.type(r.outputs[0]).shape
    cache: dict = {}
    for c in match["chunks"]:
        node = g.node(c)
        ranges = _split_ranges(g, node, width) if node.op == "Split" else [_chunk_range(g, node, width)]
        for out, (lo, hi) in zip(node.outputs, ranges):
            if not out:
                continue
            if (lo, hi) not in cache:
                cols = (np.arange(heads)[:, None] * width + np.arange(lo, hi)[None, :]).reshape(-1)
                wc = plan.param("qkv_chunk_weight", TensorType(g.type(w).dtype, (W.shape[0], cols.size)),
                                np.ascontiguousarray(W[:, cols]), like=[w], merged_from=[w])
                y = plan.op("MatMul", [x, wc])
                if bias is not None:
                    bc = plan.param("qkv_chunk_bias", TensorType(g.type(w).dtype, (cols.size,)),
                                    np.ascontiguousarray(bias[cols]), merged_from=[w])
                    y = plan.op("Add", [y, bc])
                y4 = plan.op("Reshape", [y], {"shape": [b_, s_, heads, hi - lo]})
                cache[(lo, hi)] = plan.op("Transpose", [y4], {"perm": list(_SWAP)})
            plan.output(out, cache[(lo, hi)])


def interleaved_qkv_rule() -> Rule:
    return Rule("qkv_heads", None, rewrite_interleaved, check_interleaved, exports=("*",),
                finder=find_interleaved_qkv, cost_gated=False,
                doc="a fused QKV projection interleaved per head (GPT-NeoX: [B, S, H, q|k|v] cut after "
                    "the head split) → one projection per chunk, the form the rotary/attention layout "
                    "rules (and merge_qkv) take")


__all__ += ["interleaved_qkv_rule"]
