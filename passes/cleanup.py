"""Cleanup passes: dead-code elimination, identity / no-op removal, constant folding."""
from __future__ import annotations

import numpy as np

from compiler.ir import Graph, Param
from compiler.ir.ops import get as get_opdef
from compiler.ir.ops import is_const, noop_source
from passes.base import Pass, PassResult, evaluator


def eliminate_dead_code(g: Graph) -> dict[str, int]:
    """Remove ops none of whose outputs reach a graph output, then unused parameters."""
    import networkx as nx
    live_nodes: set[str] = set()
    for t in g.outputs:
        p = g.producer.get(t)
        if p is not None:
            live_nodes.add(p)
            live_nodes |= nx.ancestors(g.nx, p)
    dead = [n for n in g.topo_order() if n.name not in live_nodes]
    for n in reversed(dead):
        g.remove_op(n)
    unused = [p for p in g.params if g.num_uses(p) == 0]
    for p in unused:
        g.remove_param(p)
    return {"ops": len(dead), "params": len(unused)}


def remove_noops(g: Graph) -> dict[str, int]:
    """Bypass ops that return their input unchanged (Identity, same-shape Reshape/Expand,
    same-type Cast, identity Transpose, x*1, x+0, …). A graph output keeps its name: when the
    no-op produces one and its input is itself an input/parameter/output, the op stays."""
    stats: dict[str, int] = {}
    for n in g.topo_order():
        src = noop_source(g, n)
        if src is None:
            continue
        out = n.outputs[0]
        if out in g.outputs:
            if src in g.inputs or src in g.params or src in g.outputs:
                continue
            # rename the producer's output to the public name instead
            _rename_tensor(g, src, out, n)
        else:
            g.replace_uses(out, src)
            g.remove_op(n)
        stats[n.op] = stats.get(n.op, 0) + 1
    eliminate_dead_code(g)
    return stats


def _rename_tensor(g: Graph, src: str, out: str, noop) -> None:
    """Drop ``noop`` (which maps src -> graph output out) and make src's producer write out."""
    g.replace_uses(out, src)  # only graph outputs point at out
    g.remove_op(noop)
    g.rename_tensor(src, out)


MAX_FOLD_ELEMENTS = 1 << 16


def fold_constants(g: Graph) -> dict[str, int]:
    """Evaluate ops whose operands are all constants (small results only, so folding never
    duplicates weights) with the current pass context's evaluator (ONNX's reference evaluator in
    the driver), replacing them by constants. Ops the registry marks not ``foldable`` (Shape,
    Attention) are left alone."""
    ev = None
    folded = 0
    for n in g.topo_order():
        if not n.outputs or not get_opdef(n.op).foldable:
            continue
        srcs = [t for t in n.inputs if t]
        if not all(is_const(g, t) for t in srcs):
            continue
        outs = [g.type(t) for t in n.outputs]
        if not all(t.is_static() and int(t.numel()) <= MAX_FOLD_ELEMENTS for t in outs):
            continue
        ev = ev or evaluator("fold_constants")
        vals = ev.constant(g, n)
        if vals is None:
            continue
        outs_names = list(n.outputs)
        g.remove_op(n, drop_outputs=False)
        for t, v in zip(outs_names, vals):
            g.value_to_param(t, np.asarray(v).reshape([int(d) for d in g.type(t).shape]), const=True)
        folded += 1
    if folded:
        eliminate_dead_code(g)
    return {"folded": folded}


class DeadCodeElimination(Pass):
    name = "dce"

    def run(self, g):
        s = eliminate_dead_code(g)
        return PassResult(g, any(s.values()), s)


class RemoveNoOps(Pass):
    name = "remove_noops"

    def run(self, g):
        s = remove_noops(g)
        return PassResult(g, any(s.values()), s)


class ConstantFolding(Pass):
    name = "fold_constants"

    def run(self, g):
        s = fold_constants(g)
        return PassResult(g, any(s.values()), s)
