"""Rewrite rules: pattern + check + rewrite, applied by one engine.

A :class:`Rule` is named data: a pattern (:mod:`passes.fusion.pattern`), a ``check`` that returns
a :class:`MatchResult` (a failure carries its reason), and a ``rewrite`` that describes the
replacement as a :class:`Plan` (new ops, new parameters, which old tensors the new ones stand
for) without touching the graph. The engine (:func:`apply_rule`) then

1. refuses a match whose interior values are used outside it (``graph.num_uses``), except the
   root's outputs and the ones the rule ``exports`` (a residual sum, say);
2. asks the cost gate (:class:`passes.fusion.gate.CostGate`) whether the replacement is predicted
   not slower than the group it replaces at every configured workload point;
3. applies the plan through the Graph's methods (add_param / add_op / replace_uses / remove_op);
   a graph output keeps its public name.

Candidate roots are visited consumers-first (reverse topological order), so the largest match
(a norm with its weight, an attention with its NaN guard) wins over a sub-match. The closest miss
of each rule (the failure that got furthest: a full match refused by its check, the leak test or
the cost model beats a partial match) is kept for ``explain``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import networkx as nx
import numpy as np

from compiler.ir.annotations import carry, carry_params
from compiler.ir import Graph, IRError, OpNode, Param, TensorType
from compiler.ir.ops import get as get_opdef
from passes.fusion.pattern import Bind, Matcher, MatchResult, Pattern
from passes.cleanup import _rename_tensor

MAX_BINDINGS_PER_ROOT = 64


class Match:
    """A successful pattern match: named bindings plus the matched op nodes."""

    def __init__(self, graph: Graph, root: OpNode, root_tensor: str, bind: Bind, ctx: dict | None = None):
        self.graph = graph
        self.root = root
        self.root_tensor = root_tensor
        self.bind = bind
        self.ctx = ctx if ctx is not None else {}   # per-run state shared by a pass's rules

    def __getitem__(self, name: str) -> Any:
        return self.bind.names[name]

    def get(self, name: str, default=None) -> Any:
        return self.bind.names.get(name, default)

    def has(self, name: str) -> bool:
        return self.bind.names.get(name) is not None

    def node(self, name: str) -> OpNode | None:
        n = self.bind.names.get(name)
        return self.graph.node(n) if isinstance(n, str) and n in self.graph.nx else None

    def type(self, name: str) -> TensorType:
        return self.graph.type(self.bind.names[name])

    @property
    def nodes(self) -> list[OpNode]:
        return [self.graph.node(n) for n in dict.fromkeys(self.bind.nodes)]


class Plan:
    """A replacement described before it is applied: ops (typed by the registry's shape rules),
    parameters, and ``replace[old] = new`` for every old tensor used outside the group."""

    def __init__(self, graph: Graph):
        self.g = graph
        self.nodes: list[OpNode] = []
        self.types: dict[str, TensorType] = {}
        self.params: dict[str, Param] = {}
        self.replace: dict[str, str] = {}

    def type(self, t: str) -> TensorType:
        return self.types[t] if t in self.types else self.g.types[t]

    def param(self, base: str, ttype: TensorType, data: np.ndarray | None, *, like: Sequence[str] = (),
              **ann) -> str:
        """A new parameter; it inherits the annotations of the parameters ``like`` (the ones it
        stands for, e.g. the weights it concatenates) by their rewrite policy."""
        name = self.g.fresh(base)
        p = Param(name, ttype, data, dict(ann))
        if like:
            carry_params([self.g.params[t] for t in like], p)
        self.params[name] = p
        self.types[name] = ttype
        return name

    def op(self, op: str, inputs: Sequence[str], attrs: dict | None = None, *, n_out: int = 1,
           types: Sequence[TensorType] | None = None, domain: str = "", base: str | None = None,
           **annotations) -> Any:
        name = self.g.fresh(base or op.lower())
        outs = [name] if n_out == 1 else [f"{name}.{i}" for i in range(n_out)]
        node = OpNode(name, op, list(inputs), outs, dict(attrs or {}), dict(annotations), domain)
        if types is None:
            d = get_opdef(op, where=name)
            if d.infer is None:
                raise IRError(f"{op} has no shape rule; give the planned op explicit types")
            types = d.infer(node, [self.type(t) if t else None for t in node.inputs])
        for t, ty in zip(outs, types):
            self.types[t] = ty
        self.nodes.append(node)
        return outs[0] if n_out == 1 else outs

    def output(self, old: str, new: str) -> None:
        if self.g.type(old).shape != self.type(new).shape or self.g.type(old).dtype != self.type(new).dtype:
            raise IRError(f"replacement {new} ({self.type(new)}) does not have the type of {old} "
                          f"({self.g.type(old)})")
        self.replace[old] = new


@dataclasses.dataclass(frozen=True)
class Rule:
    """A rewrite rule. ``check(match) -> MatchResult``; ``rewrite(match, plan)`` fills the plan or
    returns a failed MatchResult. ``exports`` names matched ops whose outputs may stay in use
    outside the group (they must be in ``plan.replace``). ``cost_gated=False`` for rules that
    must fire whatever the cost (a rewrite another stage depends on) or change no cost."""

    name: str
    pattern: Pattern | None
    rewrite: Callable[[Match, Plan], MatchResult | None]
    check: Callable[[Match], MatchResult] | None = None
    exports: tuple[str, ...] = ()
    cost_gated: bool = True
    annotate_only: bool = False
    doc: str = ""
    # rules whose groups are not a tree under one root (horizontal merges) find their candidates
    # themselves: finder(graph) yields (root node, Bind); the rest of the engine is the same
    finder: Callable[[Graph], Any] | None = None


@dataclasses.dataclass
class Miss:
    rank: tuple[int, int]
    node: str
    op: str
    reason: str


@dataclasses.dataclass
class RuleOutcome:
    fired: int = 0
    rejected_by_cost: int = 0
    closest_miss: Miss | None = None


def leaking_value(graph: Graph, match: Match, exports: Sequence[str]) -> str | None:
    """Why the group cannot be fused (an interior value used outside it), or None."""
    nodes = set(match.bind.nodes)
    if "*" in exports:  # every matched op's outputs are replaced (a horizontal merge)
        allowed = set(nodes)
    else:
        allowed = {match.root.name} | {match.bind.names[e] for e in exports if match.bind.names.get(e)}
    for name in nodes - allowed:
        n = graph.node(name)
        for t in n.outputs:
            if not t:
                continue
            if t in graph.outputs:
                return f"interior value {t} ({n.op}) is a graph output"
            for c, _ in graph.consumers(t):
                if c.name not in nodes:
                    return (f"interior value {t} ({n.op} {n.name}) is also used by {c.op} {c.name} "
                            f"outside the group")
    if allowed - {match.root.name}:
        inputs = {t for name in nodes for t in graph.node(name).inputs if t}
        outside = {graph.producer[t] for t in inputs if t in graph.producer and graph.producer[t] not in nodes}
        for e in allowed - {match.root.name}:
            for p in outside:
                if nx.has_path(graph.nx, e, p):
                    return f"fusing would create a cycle through {p}"
    return None


def apply_plan(graph: Graph, match: Match, plan: Plan) -> list[OpNode]:
    """Apply ``plan`` in place of ``match``'s nodes; returns the new ops. Every new op inherits
    the replaced ops' annotations by their declared rewrite policy (compiler.ir.annotations.carry):
    a fused MatMul keeps its compute dtype and layer; its weight keeps its weight format."""
    for p in plan.params.values():
        graph.add_param(p.name, p.type, p.data, **p.annotations)
    old = match.nodes
    new = []
    for n in plan.nodes:
        carry(old, n)
        new.append(graph.add_op(n.op, n.inputs, n.outputs, n.attrs, types=[plan.types[t] for t in n.outputs],
                                name=n.name, domain=n.domain, **n.annotations))
    public = []
    for old, nt in plan.replace.items():
        if old in graph.outputs:
            public.append((old, nt))
        graph.replace_uses(old, nt)
    remaining = list(dict.fromkeys(match.bind.nodes))
    while remaining:
        done = [n for n in remaining if all(graph.num_uses(t) == 0 for t in graph.node(n).outputs if t)]
        if not done:
            left = {n: [t for t in graph.node(n).outputs if t and graph.num_uses(t)] for n in remaining}
            raise IRError(f"fusion left values of the replaced ops in use: {left}")
        for n in done:
            graph.remove_op(n)
            remaining.remove(n)
    if public:
        for old, nt in public:
            ident = graph.add_op("Identity", [nt], [old], types=[graph.types[nt]])
            _rename_tensor(graph, nt, old, ident)
    return new


def apply_rule(graph: Graph, rule: Rule, *, gate=None, on_fire: Callable[[Match, list[OpNode]], None] | None = None,
               max_sweeps: int = 8, ctx: dict | None = None) -> RuleOutcome:
    """Apply ``rule`` everywhere it fits (to a fixpoint); returns counts and the closest miss."""
    out = RuleOutcome()
    ctx = {} if ctx is None else ctx

    def miss(rank, node, reason):
        if out.closest_miss is None or rank >= out.closest_miss.rank:
            out.closest_miss = Miss(rank, node.name, node.op, reason)

    if rule.finder is not None:
        for _ in range(max_sweeps):
            fired = False
            for root, bind in list(rule.finder(graph)):
                if any(n not in graph.nx for n in bind.nodes):
                    continue
                res = _try_binds(graph, rule, root, root.outputs[0], [bind], gate, miss, out, ctx)
                if res is not None:
                    out.fired += 1
                    fired = True
                    if on_fire:
                        on_fire(*res)
            if not fired:
                break
        return out

    roots = rule.pattern.root_ops()
    for _ in range(max_sweeps):
        fired = False
        for node in reversed(graph.topo_order()):
            if node.name not in graph.nx or (roots is not None and node.op not in roots):
                continue
            if node.annotations.get("fused_by") == rule.name and rule.annotate_only:
                continue
            for t in node.outputs:
                if not t:
                    continue
                res = _try(graph, rule, node, t, gate, miss, out, ctx)
                if res is None:
                    continue
                match, new = res
                out.fired += 1
                fired = True
                if on_fire:
                    on_fire(match, new)
                break
        if not fired or rule.annotate_only:
            break
    return out


def _try(graph, rule, node, t, gate, miss, out, ctx):
    m = Matcher(graph)
    res = _try_binds(graph, rule, node, t, m.match(rule.pattern, t), gate, miss, out, ctx)
    if res is None and m.best is not None:
        miss((0, m.best[0]), node, m.best[1])
    return res


def _try_binds(graph, rule, node, t, binds, gate, miss, out, ctx):
    for k, bind in enumerate(binds):
        if k >= MAX_BINDINGS_PER_ROOT:
            break
        match = Match(graph, node, t, bind, ctx)
        size = len(set(bind.nodes))
        if rule.check is not None:
            r = rule.check(match)
            if not r:
                miss((1, size), node, r.reason)
                continue
        leak = leaking_value(graph, match, rule.exports)
        if leak:
            miss((2, size), node, leak)
            continue
        if rule.annotate_only:
            plan = Plan(graph)
            r = rule.rewrite(match, plan)
            if isinstance(r, MatchResult) and not r:
                miss((3, size), node, r.reason)
                continue
            return match, []
        plan = Plan(graph)
        r = rule.rewrite(match, plan)
        if isinstance(r, MatchResult) and not r:
            miss((3, size), node, r.reason)
            continue
        for n in plan.nodes:   # inherit before costing: the gate must see the carried formats
            carry(match.nodes, n)
        if gate is not None and rule.cost_gated:
            ok, detail = gate.compare(graph, match.nodes, plan)
            if not ok:
                out.rejected_by_cost += 1
                miss((4, size), node, f"the cost model predicts the fused op is slower ({detail})")
                continue
        new = apply_plan(graph, match, plan)
        for n in new:
            n.annotations.setdefault("fused_by", rule.name)
        return match, new
    return None


__all__ = ["Rule", "Match", "Plan", "RuleOutcome", "Miss", "apply_rule", "apply_plan", "leaking_value"]
