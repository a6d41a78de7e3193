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
