"""rooftop's intermediate representation.

A :class:`Graph` wraps a ``networkx.MultiDiGraph`` whose nodes are operators (:class:`OpNode`).
An edge ``producer -> consumer`` is one tensor use, keyed ``(tensor_name, operand_index)``, so
``x * x`` is two parallel edges. Graph inputs and parameters have no producer node; their uses are
found through :meth:`Graph.consumers`.

Invariants (checked by :meth:`Graph.verify`):
- every tensor named by a node operand, a graph input, an output or a parameter has a
  :class:`TensorType`;
- every tensor has at most one producer, and is either a graph input, a parameter or produced;
- the networkx edges are exactly the operand lists of the nodes;
- the graph is a DAG.

Shapes are tuples whose entries are ``int`` or sympy expressions of three symbols:
``B`` (batch), ``S`` (new tokens this step) and ``P`` (tokens already in the KV cache).
One graph serves both phases: prefill is ``(S=prompt, P=0)``, decode is ``(S=1, P=context)``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import networkx as nx
import numpy as np
import sympy

from compiler.ir.annotations import check_meta
from compiler.ir.annotations import validate as _validate_annotations
from compiler.ir.ops import infer_types
from compiler.ir.tensors import (B, DTYPES, ONNX_TO_DTYPE, P, S, SYMBOLS, Dim, IRError, TensorType,  # noqa: F401
                              as_dim, subs)


@dataclasses.dataclass(slots=True)
class OpNode:
    """One operator. ``inputs`` is the ordered operand list ("" marks an omitted optional operand);
    ``outputs`` the tensors it produces. ``attrs`` are the op's attributes (ONNX semantics for
    standard ops); ``annotations`` are how passes talk to the cost model and the emitter: declared
    keys with typed values (compiler/ir/annotations.py: weight format, compute dtype, KV layout, MoE
    routing, fused group, layer index, source location); read/write them with
    ``compiler.ir.annotations.get`` / ``set``."""

    name: str
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = dataclasses.field(default_factory=dict)
    annotations: dict[str, Any] = dataclasses.field(default_factory=dict)
    domain: str = ""

    def copy(self) -> "OpNode":
        return OpNode(self.name, self.op, list(self.inputs), list(self.outputs), dict(self.attrs),
                      dict(self.annotations), self.domain)


@dataclasses.dataclass(slots=True)
class Param:
    """A weight: a named tensor with a type and optional data (``None`` on the meta device)."""

    name: str
    type: TensorType
    data: np.ndarray | None = None
    annotations: dict[str, Any] = dataclasses.field(default_factory=dict)

    def copy(self) -> "Param":
        return Param(self.name, self.type, self.data, dict(self.annotations))


class GraphMeta(dict):
    """``Graph.meta``: graph-level facts under declared keys only (``compiler.ir.annotations.
    META_KEYS``: schema, writers, readers); an undeclared key or a value of the wrong type raises
    :class:`IRError` when it is set."""

    def __init__(self, *a, **kw):
        super().__init__()
        self.update(*a, **kw)

    def __setitem__(self, key, value):
        check_meta(key, value)
        super().__setitem__(key, value)

    def setdefault(self, key, default=None):
        if key not in self:
            self[key] = default
        return self[key]

    def update(self, *a, **kw):
        for k, v in dict(*a, **kw).items():
            self[k] = v


class Graph:
    """An operator graph. Mutate it only through its methods, which keep the edges in step."""

    def __init__(self, name: str = "graph"):
        self.name = name
        self.nx = nx.MultiDiGraph()
        self.types: dict[str, TensorType] = {}
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.params: dict[str, Param] = {}
        self.producer: dict[str, str] = {}
        self.meta: GraphMeta = GraphMeta()   # declared keys only (compiler.ir.annotations.META_KEYS)
        self._uses: dict[str, list[tuple[str, int]]] = {}
        self._counter = 0

    # ---- construction -------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        """A tensor or node name not used yet (deterministic: a running counter)."""
        while True:
            self._counter += 1
            cand = f"{base}_{self._counter}"
            if cand not in self.types and cand not in self.nx:
                return cand

    def add_input(self, name: str, ttype: TensorType) -> str:
        self._new_tensor(name, ttype)
        self.inputs.append(name)
        return name

    def add_param(self, name: str, ttype: TensorType, data: np.ndarray | None = None, **ann) -> str:
        """Add a weight; ``ann`` are declared annotations (compiler/ir/annotations.py), validated."""
        if ann:
            ann = _validate_annotations("param", ann, f"parameter {name}")
        self._new_tensor(name, ttype)
        self.params[name] = Param(name, ttype, data, dict(ann))
        return name

    def _new_tensor(self, name: str, ttype: TensorType):
        if name in self.types:
            raise IRError(f"tensor {name!r} defined twice")
        self.types[name] = ttype

    def add_op(self, op: str, inputs: Iterable[str], outputs: Iterable[str] | int = 1,
               attrs: Mapping[str, Any] | None = None, types: Iterable[TensorType] | None = None,
               name: str | None = None, domain: str = "", **annotations) -> OpNode:
        """Add an operator. ``outputs`` may be a count (fresh names are made). When ``types`` is
        omitted the op registry's shape rule types the outputs. ``annotations`` are declared keys
        of compiler/ir/annotations.py (validated)."""
        name = name or self.fresh(op.lower())
        if annotations:
            annotations = _validate_annotations("op", annotations, f"node {name} ({op})")
        if name in self.nx:
            raise IRError(f"node {name!r} exists")
        if isinstance(outputs, int):
            outputs = [self.fresh(name + "_out") if i else self.fresh(name) for i in range(outputs)]
        node = OpNode(name, op, list(inputs), list(outputs), dict(attrs or {}), dict(annotations), domain)
        for t in node.inputs:
            if t and t not in self.types:
                raise IRError(f"node {name} ({op}) reads undefined tensor {t!r}")
        if types is None:
            types = infer_types(self, node)
        types = list(types)
        if len(types) != len(node.outputs):
            raise IRError(f"node {name} ({op}): {len(node.outputs)} outputs but {len(types)} types")
        for t, ty in zip(node.outputs, types):
            if t:
                self._new_tensor(t, ty)
                self.producer[t] = name
        self.nx.add_node(name, op=node)
        for i, t in enumerate(node.inputs):
            self._link(name, t, i)
        return node

    def _link(self, name: str, t: str, i: int):
        if not t:
            return
        self._uses.setdefault(t, []).append((name, i))
        p = self.producer.get(t)
        if p is not None:
            self.nx.add_edge(p, name, key=(t, i), tensor=t, index=i)

    def _unlink(self, name: str, t: str, i: int):
        if not t:
            return
        self._uses[t].remove((name, i))
        p = self.producer.get(t)
        if p is not None:
            self.nx.remove_edge(p, name, key=(t, i))

    def set_input(self, node: OpNode | str, index: int, tensor: str):
        node = self.node(node) if isinstance(node, str) else node
        while len(node.inputs) <= index:
            node.inputs.append("")
        self._unlink(node.name, node.inputs[index], index)
        node.inputs[index] = tensor
        self._link(node.name, tensor, index)

    def replace_uses(self, old: str, new: str, *, exclude: Iterable[str] = ()):
        """Point every use of ``old`` (operands and graph outputs) at ``new``."""
        skip = set(exclude)
        for name, i in list(self._uses.get(old, [])):
            if name not in skip:
                self.set_input(name, i, new)
        self.outputs = [new if o == old else o for o in self.outputs]

    def remove_op(self, node: OpNode | str, *, drop_outputs: bool = True):
        node = self.node(node) if isinstance(node, str) else node
        for i, t in enumerate(node.inputs):
            self._unlink(node.name, t, i)
        for t in node.outputs:
            if not t:
                continue
            del self.producer[t]
            if drop_outputs:
                if self._uses.get(t):
                    raise IRError(f"removing {node.name} leaves {t!r} used by {self._uses[t]}")
                self.types.pop(t, None)
                self._uses.pop(t, None)
        self.nx.remove_node(node.name)

    def remove_param(self, name: str):
        if self._uses.get(name):
            raise IRError(f"parameter {name!r} is still used by {self._uses[name]}")
        del self.params[name]
        del self.types[name]
        self._uses.pop(name, None)

    def remove_input(self, name: str):
        if self._uses.get(name):
            raise IRError(f"input {name!r} is still used")
        self.inputs.remove(name)
        del self.types[name]

    # ---- mutations rewrites need beyond ops (nothing outside the IR writes the indexes) ----
    def set_outputs(self, names: Iterable[str]) -> None:
        """The graph outputs, in order (each must be a defined tensor)."""
        names = list(names)
        for t in names:
            if t not in self.types:
                raise IRError(f"graph output {t!r} is not a defined tensor")
        self.outputs = names

    def set_inputs(self, names: Iterable[str]) -> None:
        """Reorder the graph inputs (the same set; add new ones with :meth:`add_input` first)."""
        names = list(names)
        if sorted(names) != sorted(self.inputs):
            raise IRError(f"set_inputs reorders the inputs; {sorted(set(names) ^ set(self.inputs))} differ")
        self.inputs = names

    def retype_input(self, name: str, ttype: TensorType) -> None:
        """Give graph input ``name`` a new type (e.g. a mask that grows a past dimension)."""
        if name not in self.inputs:
            raise IRError(f"{name!r} is not a graph input")
        self.types[name] = ttype

    def retype(self, name: str, ttype: TensorType) -> None:
        """Give an op-produced tensor a new type (a per-token value recomputed over a longer
        sequence); its consumers must accept it (``verify`` checks)."""
        if name not in self.types or name in self.inputs or name in self.params:
            raise IRError(f"{name!r} is not a tensor produced by an op")
        self.types[name] = ttype

    def add_op_output(self, node: OpNode | str, tensor: str, ttype: TensorType) -> None:
        """Append a new output ``tensor`` of type ``ttype`` to ``node`` (e.g. an Attention's
        ``present`` KV)."""
        node = self.node(node) if isinstance(node, str) else node
        self._new_tensor(tensor, ttype)
        self.producer[tensor] = node.name
        node.outputs.append(tensor)

    def rename_tensor(self, old: str, new: str) -> None:
        """Give the op-produced tensor ``old`` the unused name ``new``: its producer writes it,
        its consumers and the graph outputs read it."""
        if new in self.types:
            raise IRError(f"cannot rename {old!r} to {new!r}: the name is in use")
        prod = self.producer_of(old)
        if prod is None:
            raise IRError(f"{old!r} is not produced by an op")
        uses = list(self._uses.get(old, []))
        for c, i in uses:
            self._unlink(c, old, i)
        self.types[new] = self.types.pop(old)
        del self.producer[old]
        self.producer[new] = prod.name
        prod.outputs[prod.outputs.index(old)] = new
        self._uses.pop(old, None)
        for c, i in uses:
            self.node(c).inputs[i] = new
            self._link(c, new, i)
        self.outputs = [new if o == old else o for o in self.outputs]

    def value_to_param(self, tensor: str, data: np.ndarray | None, **ann) -> None:
        """Make ``tensor`` — a value whose producer was removed with ``remove_op(...,
        drop_outputs=False)`` — a parameter holding ``data`` (constant folding)."""
        if tensor in self.producer:
            raise IRError(f"{tensor!r} is still produced by {self.producer[tensor]}; remove the op first")
        if ann:
            ann = _validate_annotations("param", ann, f"parameter {tensor}")
        self.params[tensor] = Param(tensor, self.types[tensor], data, dict(ann))

    # ---- queries -------------------------------------------------------------------------
    def node(self, name: str) -> OpNode:
        return self.nx.nodes[name]["op"]

    def __iter__(self) -> Iterator[OpNode]:
        return (d["op"] for _, d in self.nx.nodes(data=True))

    def __len__(self) -> int:
        return self.nx.number_of_nodes()

    def consumers(self, tensor: str) -> list[tuple[OpNode, int]]:
        return [(self.node(n), i) for n, i in self._uses.get(tensor, [])]

    def num_uses(self, tensor: str) -> int:
        """Operand uses plus one per appearance among the graph outputs."""
        return len(self._uses.get(tensor, [])) + self.outputs.count(tensor)

    def producer_of(self, tensor: str) -> OpNode | None:
        p = self.producer.get(tensor)
        return None if p is None else self.node(p)

    def type(self, tensor: str) -> TensorType:
        return self.types[tensor]

    def is_param(self, tensor: str) -> bool:
        return tensor in self.params

    def topo_order(self) -> list[OpNode]:
        """Deterministic topological order (ties broken by node insertion order)."""
        rank = {n: i for i, n in enumerate(self.nx.nodes)}
        return [self.node(n) for n in nx.lexicographical_topological_sort(self.nx, key=rank.__getitem__)]

    def ops_by_kind(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for n in self:
            out[n.op] = out.get(n.op, 0) + 1
        return dict(sorted(out.items()))

    def dim_bindings(self) -> dict:
        """What the cost formulas substitute for dims that are not expressions of B, S, P
        (``meta["unknown_dims"]`` entries' ``bound_to``: ``"B"``, ``"S"`` or an int) — a decoder's
        own sequence length, a data-dependent count. The graph keeps them as their own symbols
        (the emitted model computes them at run time); only the costing binds them."""
        out = {}
        for info in (self.meta.get("unknown_dims") or {}).values():
            to = info.get("bound_to")
            if to is None or "symbol" not in info:
                continue
            out[info["symbol"]] = SYMBOLS[to] if isinstance(to, str) else int(to)
        return out

    def has_weights(self) -> bool:
        return all(p.data is not None for p in self.params.values())

    # ---- whole-graph operations ------------------------------------------------------------
    def copy(self) -> "Graph":
        g = Graph(self.name)
        g.nx = nx.MultiDiGraph()
        for n in self:
            g.nx.add_node(n.name, op=n.copy())
        g.nx.add_edges_from(self.nx.edges(keys=True, data=True))
        g.types = dict(self.types)
        g.inputs = list(self.inputs)
        g.outputs = list(self.outputs)
        g.params = {k: p.copy() for k, p in self.params.items()}
        g.producer = dict(self.producer)
        g.meta = GraphMeta(self.meta)
        g._uses = {k: list(v) for k, v in self._uses.items()}
        g._counter = self._counter
        return g

    def verify(self) -> None:
        """Check the invariants listed in the module docstring; raise IRError on the first breach."""
        produced: dict[str, str] = {}
        uses: dict[str, list[tuple[str, int]]] = {}
        for n in self:
            for i, t in enumerate(n.inputs):
                if not t:
                    continue
                if t not in self.types:
                    raise IRError(f"{n.name} ({n.op}) operand {i} reads untyped/undefined tensor {t!r}")
                uses.setdefault(t, []).append((n.name, i))
            for t in n.outputs:
                if not t:
                    continue
                if t in produced:
                    raise IRError(f"tensor {t!r} produced by both {produced[t]} and {n.name}")
                if t in self.params or t in self.inputs:
                    raise IRError(f"{n.name} overwrites graph input/parameter {t!r}")
                if t not in self.types:
                    raise IRError(f"{n.name} ({n.op}) output {t!r} has no type")
                produced[t] = n.name
        for t in set(uses) | set(self.outputs):
            if t not in produced and t not in self.params and t not in self.inputs:
                raise IRError(f"tensor {t!r} is used but never defined")
        if produced != self.producer:
            raise IRError("producer index out of step with the nodes")
        for t, lst in uses.items():
            if sorted(lst) != sorted(self._uses.get(t, [])):
                raise IRError(f"use index of {t!r} out of step with the operands")
        want = sorted((produced[t], c, t, i) for t, lst in uses.items() if t in produced for c, i in lst)
        have = sorted((u, v, d["tensor"], d["index"]) for u, v, d in self.nx.edges(data=True))
        if want != have:
            raise IRError("networkx edges out of step with the operand lists")
        if not nx.is_directed_acyclic_graph(self.nx):
            raise IRError(f"graph has a cycle: {nx.find_cycle(self.nx)}")
        for t in self.inputs + list(self.params) + self.outputs:
            if t not in self.types:
                raise IRError(f"graph tensor {t!r} has no type")
        for n in self:
            if n.annotations:
                _validate_annotations("op", n.annotations, f"node {n.name} ({n.op})")
        for p in self.params.values():
            if p.annotations:
                _validate_annotations("param", p.annotations, f"parameter {p.name}")

    def summary(self) -> str:
        return (f"{self.name}: {len(self)} ops, {len(self.params)} params, inputs={self.inputs}, "
                f"outputs={self.outputs}")


# ---- structural equality (tests state Before / Expected graphs with it) -------------------------

def _attr_key(v):
    if isinstance(v, np.ndarray):
        return ("nd", v.dtype.str, v.shape, v.tobytes())
    if isinstance(v, (list, tuple)):
        return tuple(_attr_key(x) for x in v)
    if isinstance(v, float):
        return ("f", round(v, 12))
    if hasattr(v, "SerializeToString"):   # an onnx TensorProto attribute
        return ("pb", v.SerializeToString())
    return repr(v)


def structural_diff(a: Graph, b: Graph, *, annotations: Iterable[str] = (),
                    output_names: bool = False) -> str | None:
    """The first structural difference between graphs ``a`` and ``b``, or None when they are
    equal up to the names of nodes, intermediate tensors and parameters: same graph inputs
    (names, order, types) and outputs (order, types; names too with ``output_names``), and
    every output computed by the same ops (kind, domain,
    attributes, output index, operand structure, types) from the same inputs and parameters
    (type, data, ``const``). The annotation keys in ``annotations`` are compared too. Dead ops
    count: the graphs must have the same number of ops of each kind."""
    keys = tuple(annotations)
    if a.inputs != b.inputs:
        return f"graph inputs differ: {a.inputs} vs {b.inputs}"
    if len(a.outputs) != len(b.outputs) or (output_names and a.outputs != b.outputs):
        return f"graph outputs differ: {a.outputs} vs {b.outputs}"
    for ta, tb in zip(a.inputs + a.outputs, b.inputs + b.outputs):
        if a.types.get(ta) != b.types.get(tb):
            return f"type of {ta!r} differs: {a.types.get(ta)} vs {b.types.get(tb)}"
    intern: dict = {}

    def sigs(g: Graph) -> dict[str, int]:
        sig: dict[str, int] = {}
        for i, t in enumerate(g.inputs):
            sig[t] = intern.setdefault(("input", i), len(intern))
        for t, p in g.params.items():
            data = None if p.data is None else (p.data.dtype.str, p.data.shape, np.ascontiguousarray(p.data).tobytes())
            ann = tuple((k, repr(p.annotations.get(k))) for k in keys)
            sig[t] = intern.setdefault(("param", p.type, data, bool(p.annotations.get("const")), ann), len(intern))
        for n in g.topo_order():
            attrs = tuple(sorted((k, _attr_key(v)) for k, v in n.attrs.items()))
            ann = tuple((k, repr(n.annotations.get(k))) for k in keys)
            ins = tuple(sig[t] if t else None for t in n.inputs)
            for j, t in enumerate(n.outputs):
                if t:
                    sig[t] = intern.setdefault(("op", n.op, n.domain, attrs, ann, ins, j, g.types[t]), len(intern))
        return sig

    sa, sb = sigs(a), sigs(b)
    for ta, tb in zip(a.outputs, b.outputs):
        if sa[ta] != sb[tb]:
            return _explain(a, b, ta, tb, sa, sb, keys)
    if a.ops_by_kind() != b.ops_by_kind():
        return f"op counts differ (dead code?): {a.ops_by_kind()} vs {b.ops_by_kind()}"
    return None


def _explain(a: Graph, b: Graph, ta: str, tb: str, sa, sb, keys) -> str:
    """Walk down from two differing tensors to the first op or leaf that differs."""
    na, nb = a.producer_of(ta), b.producer_of(tb)
    if na is None or nb is None:
        what = lambda g, t, n: (f"op {n.op} ({n.name})" if n is not None else
                                "parameter" if t in g.params else "graph input")  # noqa: E731
        if na is None and nb is None and ta in a.params and tb in b.params:
            pa, pb = a.params[ta], b.params[tb]
            if pa.type != pb.type:
                return f"parameter {ta} is {pa.type}, expected {tb} {pb.type}"
            return f"parameter {ta} differs from the expected {tb} (data, const or annotations)"
        return f"{ta} comes from a {what(a, ta, na)}, expected a {what(b, tb, nb)} ({tb})"
    if (na.op, na.domain) != (nb.op, nb.domain):
        return f"{ta} is computed by {na.op} ({na.name}), expected {nb.op} ({nb.name})"
    if a.types[ta] != b.types[tb]:
        return f"{na.op} {na.name} output {ta} is {a.types[ta]}, expected {b.types[tb]}"
    if na.outputs.index(ta) != nb.outputs.index(tb):
        return f"{ta} is output {na.outputs.index(ta)} of {na.name}, expected output {nb.outputs.index(tb)}"
    aa = sorted((k, _attr_key(v)) for k, v in na.attrs.items())
    ab = sorted((k, _attr_key(v)) for k, v in nb.attrs.items())
    if aa != ab:
        return f"{na.op} {na.name} has attributes {na.attrs}, expected {nb.attrs}"
    for k in keys:
        if repr(na.annotations.get(k)) != repr(nb.annotations.get(k)):
            return f"{na.op} {na.name} annotation {k}={na.annotations.get(k)!r}, expected {nb.annotations.get(k)!r}"
    if len(na.inputs) != len(nb.inputs):
        return f"{na.op} {na.name} has {len(na.inputs)} operands, expected {len(nb.inputs)}"
    for i, (x, y) in enumerate(zip(na.inputs, nb.inputs)):
        if bool(x) != bool(y):
            return f"{na.op} {na.name} operand {i} is {x!r}, expected {y!r}"
        if x and sa[x] != sb[y]:
            return _explain(a, b, x, y, sa, sb, keys)
    return f"{na.op} {na.name} differs from {nb.name} in a way the walk could not name"


def structurally_equal(a: Graph, b: Graph, **kw) -> bool:
    return structural_diff(a, b, **kw) is None


def op_layers(g) -> tuple[dict[str, int], int]:
    """Each op's layer position: -1 before the first layer (embedding, rotary tables), 0..L-1 the
    decoder layers, L the head after the last layer (final norm, LM head). Ops the importer left
    without a ``layer`` annotation (fused ops spanning two layers, e.g. a residual add + the next
    norm) take the latest layer among their producers. Returns (name → position, L)."""
    ann = {n.name: n.annotations.get("layer") for n in g}
    known = [v for v in ann.values() if v is not None]
    n_layers = max(known) + 1 if known else 0
    pos: dict[str, int] = {}
    for n in g.topo_order():
        if ann[n.name] is not None:
            pos[n.name] = int(ann[n.name])
            continue
        preds = [pos[p] for p in g.nx.predecessors(n.name) if p in pos]
        inferred = max(preds, default=-1)
        pos[n.name] = n_layers if (inferred == n_layers - 1 and n_layers) else inferred
    return pos, n_layers
