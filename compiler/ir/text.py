"""A text form of the IR: :func:`print_graph` writes a graph, :func:`parse_graph` reads one back,
so a pass test states its Before and Expected graphs in a few lines (TVMScript-style)::

    input  x: float32[B, S, 64]
    param  w: float32[64, 64]
    param  b: float32[64]
    mm = MatMul(x, w)
    y = Add(mm, b)
    output y

- ``input`` / ``param`` / ``const`` / ``output`` declare graph inputs, weights (no data: meta;
  ``param w: float32[2] = [1.0, 2.0]`` gives data), constants (``const c: int64[1] = [0]``,
  a parameter marked ``const``) and outputs, in order.
- An op line is ``outs = Op(operands) {attributes} : types``: several outputs are comma
  separated, an omitted optional operand is ``_``, a fused op's domain prefixes its name
  (``rooftop::MatMulEpilogue``). Attributes are ``key: value`` with Python literals, sympy dims
  (``B``, ``S``, ``P``) and lists of them. ``: types`` may be left out where the op registry's
  shape rule types the outputs.
- Annotations follow a ``#`` on op and param lines (``# layer=3``): written by the printer for
  reading; the parser reads ``layer`` and ``const`` and leaves the others to the test.

Round trip: ``parse_graph(print_graph(g))`` is structurally equal to ``g`` (parameter data
included when it is given inline; the printer writes data of parameters up to 16 values).
"""
from __future__ import annotations

import ast
import re
from typing import Any

import numpy as np
import sympy

from compiler.errors import RooftopError
from compiler.ir.graph import Graph
from compiler.ir.tensors import DTYPES, SYMBOLS, IRError, TensorType

__all__ = ["print_graph", "parse_graph"]

_INLINE_DATA = 16
_TYPE = re.compile(r"^\s*([A-Za-z0-9_]+)\s*\[(.*)\]\s*$")


def _dim(text: str):
    text = text.strip()
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    return sympy.sympify(text, locals=dict(SYMBOLS))


def _type(text: str) -> TensorType:
    m = _TYPE.match(text)
    if not m:
        raise IRError(f"not a tensor type: {text!r} (write dtype[d0, d1, …], e.g. float32[B, S, 64])")
    dims = [d for d in _split(m.group(2)) if d.strip()]
    return TensorType(m.group(1), tuple(_dim(d) for d in dims))


def _split(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside brackets and quotes."""
    out, depth, cur, quote = [], 0, [], None
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = None
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == sep and depth == 0:
            out.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur))
    return out


def _value(text: str) -> Any:
    text = text.strip()
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    if text.startswith("[") and text.endswith("]"):
        return [_value(x) for x in _split(text[1:-1])]
    return _dim(text)


def _attrs(text: str) -> dict[str, Any]:
    out = {}
    for item in _split(text):
        k, _, v = item.partition(":")
        if not _:
            raise IRError(f"attribute {item.strip()!r} is not key: value")
        out[k.strip()] = _value(v)
    return out


def _fmt_value(v: Any) -> str:
    if isinstance(v, np.ndarray):
        return repr(v.tolist())
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt_value(x) for x in v) + "]"
    if isinstance(v, sympy.Expr):
        return str(v)
    return repr(v)


def _ann_text(ann: dict) -> str:
    items = [f"{k}={v}" for k, v in sorted(ann.items())]
    return ("  # " + ", ".join(items)) if items else ""


def print_graph(g: Graph) -> str:
    """The text form of ``g`` (see the module doc): deterministic, in topological order."""
    lines = [f"graph {g.name}"]
    for t in g.inputs:
        lines.append(f"input  {t}: {g.types[t]}")
    for name, p in g.params.items():
        kind = "const" if p.annotations.get("const") else "param"
        data = ""
        if p.data is not None and p.data.size <= _INLINE_DATA:
            data = " = " + repr(np.asarray(p.data).reshape(-1).tolist())
        ann = {k: v for k, v in p.annotations.items() if k != "const"}
        lines.append(f"{kind}  {name}: {p.type}{data}{_ann_text(ann)}")
    for n in g.topo_order():
        op = f"{n.domain}::{n.op}" if n.domain else n.op
        ins = ", ".join(t if t else "_" for t in n.inputs)
        attrs = (" {" + ", ".join(f"{k}: {_fmt_value(v)}" for k, v in sorted(n.attrs.items())) + "}") if n.attrs else ""
        types = ", ".join(str(g.types[t]) for t in n.outputs if t)
        outs = ", ".join(t if t else "_" for t in n.outputs)
        lines.append(f"{outs} = {op}({ins}){attrs} : {types}{_ann_text(n.annotations)}")
    for t in g.outputs:
        lines.append(f"output {t}")
    return "\n".join(lines) + "\n"


_OP = re.compile(r"^(?P<outs>[^=]+?)\s*=\s*(?P<op>[A-Za-z_][\w:]*)\((?P<ins>[^)]*)\)\s*(?P<rest>.*)$")


def parse_graph(text: str, name: str = "graph") -> Graph:
    """A :class:`Graph` from its text form (see the module doc); errors name the line."""
    g = Graph(name)
    outputs: list[str] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line, _, comment = raw.partition("#")
        line = line.strip()
        if not line:
            continue
        try:
            _parse_line(g, line, comment, outputs)
        except (IRError, RooftopError, ValueError, SyntaxError, TypeError) as e:
            raise IRError(f"IR text line {lineno}: {raw.strip()!r}: {e}") from None
    g.outputs = outputs
    g.verify()
    return g


def _ann(comment: str) -> dict[str, Any]:
    out = {}
    for item in _split(comment):
        k, eq, v = item.partition("=")
        if eq and k.strip() == "layer":
            out["layer"] = int(v)
    return out


def _parse_line(g: Graph, line: str, comment: str, outputs: list[str]) -> None:
    word, _, rest = line.partition(" ")
    if word == "graph":
        g.name = rest.strip() or g.name
        return
    if word == "output":
        outputs.extend(t.strip() for t in _split(rest))
        return
    if word in ("input", "param", "const"):
        decl, eq, data = rest.partition("=")
        tname, _, ttext = decl.partition(":")
        ty = _type(ttext)
        if word == "input":
            g.add_input(tname.strip(), ty)
            return
        arr = None
        if eq:
            vals = ast.literal_eval(data.strip())
            shape = tuple(int(d) for d in ty.shape)
            arr = np.asarray(vals, dtype=DTYPES[ty.dtype][1]).reshape(shape)
        ann = {"const": True} if word == "const" else {}
        g.add_param(tname.strip(), ty, arr, **ann)
        return
    m = _OP.match(line)
    if not m:
        raise IRError("not a declaration (input/param/const/output) or an op (outs = Op(ins) {attrs} : types)")
    outs = [t.strip() for t in m.group("outs").split(",")]
    op = m.group("op")
    domain = ""
    if "::" in op:
        domain, op = op.split("::", 1)
    ins = [t.strip() for t in _split(m.group("ins"))]
    ins = ["" if t == "_" else t for t in ins]
    rest = m.group("rest").strip()
    attrs: dict[str, Any] = {}
    if rest.startswith("{"):
        depth = 0
        for i, ch in enumerate(rest):
            depth += ch == "{"
            depth -= ch == "}"
            if depth == 0:
                attrs = _attrs(rest[1:i])
                rest = rest[i + 1:].strip()
                break
    types = None
    if rest.startswith(":"):
        given = iter(_type(t) for t in _split(rest[1:]))
        types = [None if t == "_" else next(given) for t in outs]
    g.add_op(op, ins, ["" if t == "_" else t for t in outs], attrs, types=types, name=g.fresh(op.lower()),
             domain=domain, **_ann(comment))
