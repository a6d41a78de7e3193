"""The cost gate: fire a fusion only where the cost model predicts it is not slower.

The group of ops a rule would replace and the ops it would put in their place are each copied
into a small graph (boundary tensors become inputs, weights stay weights, KV-cache tensors stay
KV) and costed by :class:`compiler.perf.cost.CostModel` on the configured hardware at the configured
workload points — prefill ``(B, prompt, 0)`` and decode ``(B, 1, context)`` by default. The same
roofline, efficiencies and launch overheads as the report are used, so a fused op pays only for
the tensors that cross its boundary and one launch. Every layer of a model has the same groups:
results are cached by the groups' structure (op kinds, attributes, operand types and categories).
"""
from __future__ import annotations

from collections.abc import Sequence

from compiler.errors import InternalError
from compiler.ir.annotations import COSTED
from compiler.ir import Graph, OpNode, TensorType
from compiler.perf.cost import CostModel
from compiler.ir import SYMBOLS

Point = tuple[int, int, int, str]
DEFAULT_POINTS: tuple[Point, ...] = ((1, 512, 0, "prefill"), (1, 1, 512, "decode"))
_COST_ANNOTATIONS = COSTED  # the annotations the cost model reads (compiler/ir/annotations.py)


class CostGate:
    """``compare(graph, old_nodes, plan)`` -> (fire?, "prefill: a → b µs, decode: …")."""

    def __init__(self, hw, points: Sequence[Point] = DEFAULT_POINTS, *, tolerance: float = 1e-9):
        self.hw = hw
        self.points = tuple(tuple(p) for p in points)
        self.tolerance = tolerance
        self._cache: dict[tuple, list[float]] = {}

    def times(self, graph: Graph, nodes: Sequence[OpNode], types, params) -> list[float]:
        key = _structure_key(graph, nodes, types, params)
        if key not in self._cache:
            self._cache[key] = self._cost(graph, nodes, types, params)
        return self._cache[key]

    def compare(self, graph: Graph, old: Sequence[OpNode], plan) -> tuple[bool, str]:
        unknown = _unknown_symbols(graph, old) - {str(x) for x in graph.dim_bindings()}
        if unknown:
            return False, (f"cannot cost the group: dims {', '.join(sorted(unknown))} are not "
                           f"expressions of B, S, P")
        t_old = self.times(graph, old, graph.types, graph.params)
        types = {**graph.types, **plan.types}
        params = {**graph.params, **plan.params}
        t_new = self.times(graph, plan.nodes, types, params)
        ok = all(n <= o * (1 + self.tolerance) + 1e-15 for n, o in zip(t_new, t_old))
        detail = ", ".join(f"{p[3]} B={p[0]} S={p[1]} P={p[2]}: {o * 1e6:.4g} → {n * 1e6:.4g} µs"
                           for p, o, n in zip(self.points, t_old, t_new))
        return ok, detail

    def _cost(self, graph, nodes, types, params) -> list[float]:
        mini = mini_graph(graph, nodes, types, params)
        cm = CostModel(mini, self.hw)
        return [cm.totals(b, s, p, phase)["time"] for b, s, p, phase in self.points]


def mini_graph(graph: Graph, nodes: Sequence[OpNode], types, params) -> Graph:
    """The ops ``nodes`` alone: operands produced elsewhere become inputs (weights stay weights)."""
    nodes = _ordered(nodes)
    mini = Graph("group")
    kv = set(graph.meta.get("kv_tensors", ()))
    produced = {t for n in nodes for t in n.outputs if t}
    mini.meta["kv_tensors"] = sorted(kv & (produced | {t for n in nodes for t in n.inputs if t}))
    if graph.meta.get("unknown_dims"):   # costed as the importer bound them (Graph.dim_bindings)
        mini.meta["unknown_dims"] = graph.meta["unknown_dims"]
    for n in nodes:
        for t in n.inputs:
            if not t or t in produced or t in mini.types:
                continue
            if t in params:
                p = params[t]
                mini.add_param(t, types[t], None, **p.annotations)
            else:
                mini.add_input(t, types[t])
    for n in nodes:
        mini.add_op(n.op, n.inputs, n.outputs, n.attrs, types=[types[t] for t in n.outputs],
                    name=n.name, domain=n.domain,
                    **{k: v for k, v in n.annotations.items() if k in _COST_ANNOTATIONS})
    return mini


def _unknown_symbols(graph: Graph, nodes: Sequence[OpNode]) -> set[str]:
    known = set(SYMBOLS.values())
    out: set[str] = set()
    for n in nodes:
        for t in list(n.inputs) + list(n.outputs):
            if t and t in graph.types:
                for d in graph.types[t].shape:
                    if not isinstance(d, int):
                        out |= {str(x) for x in d.free_symbols - known}
    return out


def _ordered(nodes: Sequence[OpNode]) -> list[OpNode]:
    """``nodes`` with producers before consumers (stable otherwise)."""
    todo = list({n.name: n for n in nodes}.values())
    produced_by = {t: n.name for n in todo for t in n.outputs if t}
    done: set[str] = set()
    out: list[OpNode] = []
    while todo:
        for n in todo:
            if all(produced_by.get(t) in (None, n.name) or produced_by[t] in done for t in n.inputs if t):
                out.append(n)
                done.add(n.name)
                todo.remove(n)
                break
        else:
            raise InternalError("cycle among the ops of a fusion group")
    return out


def _structure_key(graph: Graph, nodes: Sequence[OpNode], types, params) -> tuple:
    ids: dict[str, int] = {}
    kv = set(graph.meta.get("kv_tensors", ()))

    def tid(t: str):
        if not t:
            return None
        if t not in ids:
            ids[t] = len(ids)
        cat = "w" if t in params else ("kv" if t in kv else "a")
        ann = tuple(sorted((k, str(v)) for k, v in params[t].annotations.items()
                           if k in _COST_ANNOTATIONS)) if t in params else ()
        ty: TensorType = types[t]
        return ids[t], cat, str(ty), ann

    key = []
    for n in _ordered(nodes):
        attrs = tuple(sorted((k, _attr_key(v)) for k, v in n.attrs.items()))
        ann = tuple(sorted((k, str(v)) for k, v in n.annotations.items() if k in _COST_ANNOTATIONS))
        key.append((n.op, n.domain, attrs, ann, tuple(tid(t) for t in n.inputs),
                    tuple(tid(t) for t in n.outputs)))
    return tuple(key)


def _attr_key(v):
    try:
        import numpy as np
        if isinstance(v, np.ndarray):
            return ("nd", v.shape, v.tobytes()[:64])
    except ImportError:  # pragma: no cover
        pass
    return repr(v)


__all__ = ["CostGate", "DEFAULT_POINTS", "mini_graph"]
