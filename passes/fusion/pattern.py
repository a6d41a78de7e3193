"""Declarative patterns over rooftop's IR, matched backwards from a root tensor.

A pattern is a small tree of builders (onnxscript-rewriter / TVM style):

- :class:`Var` binds any tensor (optionally with a predicate); the same name binds the same tensor;
- :class:`Const` binds a scalar constant parameter (optionally a given value, approximately);
- :class:`Op` matches the producer of a tensor by op kind(s) and attributes, then its operands.
  Two-operand ops whose registry entry is ``commutative`` are tried in both orders — declared
  once, in :mod:`compiler.ir.ops`, never by copying a pattern;
- :class:`Opt` makes a one-input piece optional (a cast, a scale, a reshape that only moves data):
  it matches with the piece first, then without it;
- :class:`Alt` is any of several patterns; :class:`Prod` is a product of factors in any
  association and order (``0.5·x·(1+tanh(…))`` written any way);
- :class:`Moves` is zero or more data-movement ops (Reshape, Transpose, …).

Matching is a generator of bindings (:class:`Bind`), so a rule can try every way a pattern fits
(with and without each optional piece) and keep the first that passes its check. ``Identity``
and ``Dropout`` producers are looked through and become part of the matched group. A failure
is recorded with how far the match got (matched op count) so that the closest miss can explain
why a rule did not fire (:class:`Matcher.best_failure`).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from compiler.ir import Graph, OpNode
from compiler.ir.ops import REGISTRY, OpKind, is_commutative, ops_where

# all from the op registry (compiler/ir/ops.py), never lists of op names here:
# ops whose extra operands (after the data operands) are shape/axes tensors, not data
SHAPE_OPERAND_OPS = ops_where(lambda d: bool(d.shape_operands))
PASSTHROUGH_OPS = ops_where(lambda d: d.passthrough)
# data moves (same elements, new shape or order): layout ops that are not mere pass-throughs
MOVE_OPS = tuple(sorted(ops_where(lambda d: d.layout and not d.passthrough)))


class MatchResult:
    """The outcome of a match or a check: ``ok`` with values, or a failure with a reason."""

    __slots__ = ("ok", "reason", "values")

    def __init__(self, ok: bool, reason: str = "", values: dict | None = None):
        self.ok = ok
        self.reason = reason
        self.values = values or {}

    @classmethod
    def success(cls, **values) -> "MatchResult":
        return cls(True, "", values)

    @classmethod
    def fail(cls, reason: str) -> "MatchResult":
        return cls(False, reason)

    def __bool__(self) -> bool:
        return self.ok

    def __repr__(self) -> str:
        return f"MatchResult(ok, {self.values})" if self.ok else f"MatchResult.fail({self.reason!r})"


class Bind:
    """Bindings of one (partial) match: ``names`` (tensor of a Var, value of a Const, node name of
    a named Op), the matched op nodes in match order, and pattern-object → node/tensor for shared
    sub-patterns (a pattern object used twice must match the same thing twice)."""

    __slots__ = ("names", "nodes", "pids")

    def __init__(self, names=None, nodes=(), pids=None):
        self.names: dict[str, Any] = names or {}
        self.nodes: tuple[str, ...] = tuple(nodes)
        self.pids: dict[int, Any] = pids or {}

    def bind(self, name: str | None, value, *, pid: int | None = None, pid_value=None,
             nodes: Sequence[str] = ()) -> "Bind":
        names = dict(self.names)
        if name is not None:
            names[name] = value
        pids = self.pids
        if pid is not None:
            pids = dict(pids)
            pids[pid] = value if pid_value is None else pid_value
        new_nodes = self.nodes + tuple(n for n in nodes if n not in self.nodes)
        return Bind(names, new_nodes, pids)


class Matcher:
    """Match state on one graph: records the failure that got furthest (for ``explain``)."""

    def __init__(self, graph: Graph):
        self.g = graph
        self.best: tuple[int, str] | None = None

    def fail(self, b: Bind, reason: str) -> None:
        prog = len(b.nodes)
        if self.best is None or prog >= self.best[0]:
            self.best = (prog, reason)

    def producer(self, t: str, b: Bind, through: bool = True) -> tuple[OpNode | None, list[str]]:
        """The producer of ``t``, looking through Identity/Dropout (returned as skipped nodes)."""
        skipped: list[str] = []
        node = self.g.producer_of(t)
        while through and node is not None and node.op in PASSTHROUGH_OPS and len(node.outputs) == 1:
            skipped.append(node.name)
            node = self.g.producer_of(node.inputs[0])
        return node, skipped

    def match(self, pattern: "Pattern", tensor: str) -> Iterator[Bind]:
        yield from pattern.matches(self, tensor, Bind())


def _operands(node: OpNode) -> list[str]:
    ins = list(node.inputs)
    while ins and ins[-1] == "":
        ins.pop()
    return ins


class Pattern:
    name: str | None = None

    def matches(self, m: Matcher, t: str, b: Bind) -> Iterator[Bind]:  # pragma: no cover
        raise NotImplementedError

    def root_ops(self) -> frozenset[str] | None:
        """Op kinds a root tensor's producer can have (None: any)."""
        return None


class Var(Pattern):
    """Any tensor. ``where(graph, tensor) -> bool`` restricts it; ``why`` names the restriction."""

    def __init__(self, name: str | None = None, *, where: Callable[[Graph, str], bool] | None = None,
                 why: str = ""):
        self.name = name
        self.where = where
        self.why = why

    def matches(self, m, t, b):
        if not t:
            m.fail(b, f"operand for {self.name or 'a value'} is missing")
            return
        if self.name is not None and self.name in b.names and b.names[self.name] != t:
            m.fail(b, f"{self.name} must be the same tensor in both places "
                      f"({b.names[self.name]} vs {t})")
            return
        if self.where is not None and not self.where(m.g, t):
            m.fail(b, f"{t} is not {self.why or 'acceptable'} (for {self.name})")
            return
        yield b.bind(self.name, t) if self.name is not None else b


def is_param(g: Graph, t: str) -> bool:
    return g.is_param(t)


def const_value(g: Graph, t: str) -> np.ndarray | None:
    """The data of a constant parameter (small, with data), else None."""
    p = g.params.get(t)
    if p is None or p.data is None:
        return None
    if not p.annotations.get("const") and p.data.size > 64:
        return None
    return np.asarray(p.data)


def scalar_value(g: Graph, t: str) -> float | None:
    """A constant whose elements are all equal (a scalar in any broadcast shape)."""
    v = const_value(g, t)
    if v is None or v.size == 0:
        return None
    flat = v.reshape(-1).astype(np.float64)
    if not (flat == flat[0]).all() and not (np.isnan(flat).all()):
        return None
    return float(flat[0])


class Const(Pattern):
    """A scalar constant (all elements equal). ``value`` requires it approximately (rtol)."""

    def __init__(self, name: str | None = None, value: float | None = None, *, rtol: float = 1e-3,
                 atol: float = 1e-6, where: Callable[[float], bool] | None = None, why: str = ""):
        self.name = name
        self.value = value
        self.rtol = rtol
        self.atol = atol
        self.where = where
        self.why = why

    def matches(self, m, t, b):
        v = scalar_value(m.g, t) if t else None
        if v is None:
            m.fail(b, f"{t or 'operand'} is not a scalar constant (for {self.name or self.value})")
            return
        if self.value is not None and not (math.isclose(v, self.value, rel_tol=self.rtol, abs_tol=self.atol)):
            m.fail(b, f"constant {t} is {v:g}, expected {self.value:g}")
            return
        if self.where is not None and not self.where(v):
            m.fail(b, f"constant {t} = {v:g} is not {self.why}")
            return
        if self.name is not None and self.name in b.names and b.names[self.name] != v:
            m.fail(b, f"constant {self.name} differs between uses")
            return
        yield b.bind(self.name, v) if self.name is not None else b


class Op(Pattern):
    """The producer of the tensor: one of ``ops``, with ``attrs`` (values or predicates) and
    operands matching ``inputs`` (None: operands not looked at). ``output`` is which output of
    the node the tensor must be (None: any). Extra operands are allowed only where they are
    shape/axes tensors (:data:`SHAPE_OPERAND_OPS`) or ``extra=True``."""

    def __init__(self, ops: str | OpKind | Sequence[str | OpKind], *inputs: Pattern, name: str | None = None,
                 attrs: dict[str, Any] | None = None, output: int | None = 0, extra: bool = False):
        ops = [ops] if isinstance(ops, (str, OpKind)) else list(ops)
        self.kinds = frozenset(o for o in ops if isinstance(o, OpKind))   # match by fusion kind
        self.ops = frozenset(o for o in ops if not isinstance(o, OpKind))
        self.inputs = list(inputs) if inputs else None
        self.name = name
        self.attrs = attrs or {}
        self.output = output
        self.extra = extra

    def root_ops(self):
        return None if self.kinds else self.ops

    def accepts(self, op: str) -> bool:
        if op in self.ops:
            return True
        d = REGISTRY.get(op) if self.kinds else None
        return d is not None and d.kind in self.kinds

    @property
    def what(self) -> str:
        return "/".join(sorted(self.ops) + sorted(k.name.lower() for k in self.kinds))

    def matches(self, m, t, b):
        if not t:
            m.fail(b, f"missing operand where {self.what} was expected")
            return
        node, skipped = m.producer(t, b, through=not (self.ops & PASSTHROUGH_OPS))
        if node is None:
            m.fail(b, f"{t} is a graph input or weight, not the output of {self.what}")
            return
        pid = id(self)
        if pid in b.pids:
            if b.pids[pid] != node.name:
                m.fail(b, f"shared sub-pattern bound to {b.pids[pid]} but {t} comes from {node.name}")
                return
            yield b.bind(None, None, nodes=skipped)
            return
        if not self.accepts(node.op):
            m.fail(b, f"{t} comes from {node.op} ({node.name}), expected {self.what}")
            return
        if self.output is not None:
            real = t
            if skipped:
                real = m.g.node(skipped[-1]).inputs[0]
            if node.outputs.index(real) != self.output:
                m.fail(b, f"{t} is output {node.outputs.index(real)} of {node.name}, expected {self.output}")
                return
        for k, want in self.attrs.items():
            have = node.attrs.get(k)
            ok = want(have) if callable(want) else have == want
            if not ok:
                m.fail(b, f"{node.name} ({node.op}) has {k}={have!r}")
                return
        b = b.bind(self.name, node.name, pid=pid, pid_value=node.name, nodes=skipped + [node.name])
        if self.inputs is None:
            yield b
            return
        ops = _operands(node)
        n = len(self.inputs)
        if len(ops) < n or (len(ops) > n and not (self.extra or node.op in SHAPE_OPERAND_OPS)):
            m.fail(b, f"{node.name} ({node.op}) has {len(ops)} operands, the pattern {n}")
            return
        ops = ops[:n]
        orders = [ops]
        if n == 2 and is_commutative(node.op) and ops[0] != ops[1]:
            orders.append([ops[1], ops[0]])
        for order in orders:
            yield from _match_seq(m, self.inputs, order, b)


def _match_seq(m: Matcher, pats: Sequence[Pattern], tensors: Sequence[str], b: Bind) -> Iterator[Bind]:
    if not pats:
        yield b
        return
    for b2 in pats[0].matches(m, tensors[0], b):
        yield from _match_seq(m, pats[1:], tensors[1:], b2)


class Opt(Pattern):
    """``piece`` or, failing that, the value it carries through: ``inner`` (default: the piece's
    first operand). ``Opt(Op("Cast", x))`` is ``Cast(x)`` or ``x``; a chain such as GQA's
    ``Reshape(Expand(Unsqueeze(k)))`` is optional as a whole with ``inner=k``."""

    def __init__(self, piece: Pattern, inner: Pattern | None = None):
        if inner is None:
            if not isinstance(piece, Op) or not piece.inputs:
                raise TypeError("Opt wraps an Op pattern with operands (or give inner=)")
            inner = piece.inputs[0]
        self.piece = piece
        self.inner = inner
        self.name = piece.name

    def root_ops(self):
        a, b = self.piece.root_ops(), self.inner.root_ops()
        return None if a is None or b is None else a | b

    def matches(self, m, t, b):
        yield from self.piece.matches(m, t, b)
        yield from self.inner.matches(m, t, b)


class Alt(Pattern):
    """Any of the alternatives, tried in order."""

    def __init__(self, *alts: Pattern, name: str | None = None):
        self.alts = alts
        self.name = name

    def root_ops(self):
        out: set[str] = set()
        for a in self.alts:
            r = a.root_ops()
            if r is None:
                return None
            out |= r
        return frozenset(out)

    def matches(self, m, t, b):
        for a in self.alts:
            yield from a.matches(m, t, b)


class Prod(Pattern):
    """A product of ``factors`` as a tree of binary ``Mul`` in any association and order."""

    def __init__(self, *factors: Pattern, name: str | None = None):
        if len(factors) < 2:
            raise TypeError("Prod needs at least two factors")
        self.factors = factors
        self.name = name

    def root_ops(self):
        return frozenset({"Mul"})

    def matches(self, m, t, b):
        yield from self._match(m, t, b, tuple(self.factors), top=True)

    def _match(self, m, t, b, factors, top=False):
        if len(factors) == 1:
            yield from factors[0].matches(m, t, b)
            return
        node, skipped = m.producer(t, b)
        if node is None or node.op != "Mul":
            m.fail(b, f"{t} is not a product (from {node.op if node else 'outside'}), "
                      f"expected {len(factors)} factors")
            return
        ops = _operands(node)
        b = b.bind(self.name if top else None, node.name, nodes=skipped + [node.name])
        n = len(factors)
        for mask in range(1, (1 << n) - 1):
            left = tuple(f for i, f in enumerate(factors) if mask >> i & 1)
            right = tuple(f for i, f in enumerate(factors) if not mask >> i & 1)
            for b2 in self._match(m, ops[0], b, left):
                yield from self._match(m, ops[1], b2, right)


class Moves(Pattern):
    """Zero or more data-movement ops (``ops``) above ``inner``; binds their node names, nearest
    the root first, as ``name`` (a tuple)."""

    def __init__(self, inner: Pattern, *, ops: Sequence[str] = MOVE_OPS, name: str = "moves",
                 max_len: int = 4):
        self.inner = inner
        self.ops = frozenset(ops)
        self.name = name
        self.max_len = max_len

    def root_ops(self):
        inner = self.inner.root_ops()
        return None if inner is None else self.ops | inner

    def matches(self, m, t, b):
        chain: list[str] = []
        cur = t
        cands = [(cur, tuple(chain))]
        for _ in range(self.max_len):
            node, skipped = m.producer(cur, b)
            if node is None or node.op not in self.ops or len(node.outputs) != 1:
                break
            chain = chain + skipped + [node.name]
            cur = node.inputs[0]
            cands.append((cur, tuple(chain)))
        for cur, ch in reversed(cands):  # longest chain first
            yield from self.inner.matches(m, cur, b.bind(self.name, ch, nodes=ch))


def first(it) -> Any:
    return next(iter(it), None)


__all__ = ["MatchResult", "Bind", "Matcher", "Pattern", "Var", "Const", "Op", "Opt", "Alt", "Prod",
           "Moves", "is_param", "const_value", "scalar_value", "SHAPE_OPERAND_OPS", "MOVE_OPS"]
