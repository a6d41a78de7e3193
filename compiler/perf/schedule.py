"""Scheduling: execution order and the activation memory plan.

The order is the graph's deterministic topological order. The memory plan walks it once and
keeps every activation alive from its producer to its last consumer (graph outputs to the end);
the activation peak is the largest sum of live activation bytes at any step. Weights and the KV
cache are accounted separately (they live for the whole request). Sizes are symbolic in B, S,
P: the walk records, per step, the live set, so the peak at any workload point is a max over
steps of a sum — compiled once with ``sympy.lambdify`` like the cost model.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import sympy

from compiler.ir import B, P, S, Graph
from compiler.ir.ops import get, weight_views


@dataclasses.dataclass
class Schedule:
    order: list[str]
    live_exprs: list  # sympy expression of live activation bytes after each step
    _fn: object = None
    bindings: dict = dataclasses.field(default_factory=dict)   # Graph.dim_bindings()

    def activation_peak(self, b, s, p) -> np.ndarray:
        if self._fn is None:
            uniq = list(dict.fromkeys(sympy.sympify(e).xreplace(self.bindings) for e in self.live_exprs))
            f = sympy.lambdify((B, S, P), uniq, modules="numpy")
            self._fn = (f, uniq)
        f, uniq = self._fn
        b, s, p = (np.atleast_1d(np.asarray(x, dtype=float)) for x in (b, s, p))
        n = max(len(b), len(s), len(p))
        vals = f(b, s, p)
        if not vals:
            return np.zeros(n)
        return np.max(np.stack([np.broadcast_to(np.asarray(v, float), (n,)) for v in vals]), axis=0)


def schedule(g: Graph) -> Schedule:
    order = g.topo_order()
    kv = set(g.meta.get("kv_tensors", ()))
    last_use: dict[str, int] = {}
    for i, n in enumerate(order):
        for t in n.inputs:
            if t:
                last_use[t] = i
    end = len(order)
    for t in g.outputs:
        last_use[t] = end
    for n in reversed(order):  # a view keeps its source's buffer alive
        if get(n.op).cost_class == "view" and n.inputs and n.inputs[0]:
            last_use[n.inputs[0]] = max(last_use.get(n.inputs[0], -1),
                                        max((last_use.get(t, -1) for t in n.outputs if t), default=-1))

    def size(t):
        ty = g.type(t)
        return ty.numel() * sympy.Rational(ty.itemsize).limit_denominator(2)

    weights = weight_views(g)   # a weight through Transpose/Reshape: folded at load, no activation
    live: dict[str, object] = {}
    exprs = []
    for i, n in enumerate(order):
        view = get(n.op).cost_class == "view"
        for t in n.outputs:
            if t and t not in kv and not view and t not in weights:
                live[t] = size(t)
        exprs.append(sympy.Add(*live.values()) if live else sympy.Integer(0))
        for t in list(live):
            if last_use.get(t, -1) <= i:
                del live[t]
    return Schedule([n.name for n in order], exprs, bindings=g.dim_bindings())
