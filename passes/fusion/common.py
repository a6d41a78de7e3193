"""Small helpers shared by the fusion rules (shape facts, scale pieces, repeat_kv chains)."""
from __future__ import annotations

import functools

import sympy

from compiler.ir import Graph, TensorType
from passes.fusion.pattern import Const, Op, Opt, Pattern, Var

FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")


def same_dim(a, b) -> bool:
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    return _same_expr(sympy.sympify(a), sympy.sympify(b))


@functools.lru_cache(maxsize=4096)
def _same_expr(a, b) -> bool:
    """Dims are polynomials in B, S, P (sometimes with floor/ceiling): equal structure first,
    then the expanded difference, ``simplify`` only when the expansion leaves functions."""
    if a == b:
        return True
    d = sympy.expand(a - b)
    if d == 0:
        return True
    return bool(d.atoms(sympy.Function)) and sympy.simplify(d) == 0


def same_shape(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(same_dim(x, y) for x, y in zip(a, b))


def last_axis(axes, rank: int) -> bool:
    """``axes`` (a list, an int or None) is exactly the last axis."""
    if axes is None:
        return rank == 1
    if isinstance(axes, int):
        axes = [axes]
    return len(axes) == 1 and (axes[0] % rank) == rank - 1


def is_float(ty: TensorType) -> bool:
    return ty.dtype in FLOAT_DTYPES


def scaled(x: Pattern, name: str) -> Opt:
    """``x·c`` or ``x/c`` with a scalar constant ``c`` (bound as ``name``; the op as
    ``name + "_op"``), or just ``x``."""
    return Opt(Op(("Mul", "Div"), x, Const(name), name=name + "_op"))


def scale_factor(match, name: str) -> float:
    """The factor an optional :func:`scaled` piece multiplies by (1 when absent)."""
    node = match.node(name + "_op")
    if node is None:
        return 1.0
    c = match[name]
    return 1.0 / c if node.op == "Div" else c


def repeat_kv(x: Pattern, name: str) -> Opt:
    """GQA's repeat_kv: ``Reshape(Expand(Unsqueeze(x, 2)))`` copying each KV head to the query heads
    it serves (bound as ``name``: the Reshape), or just ``x``."""
    chain = Op("Reshape", Op("Expand", Op("Unsqueeze", x, name=name + "_unsqueeze"),
                             name=name + "_expand"), name=name)
    return Opt(chain, inner=x)


def repeat_ok(g: Graph, match, name: str, base: str) -> str | None:
    """Why a matched repeat_kv chain is not a head repeat along axis 1 (None when it is)."""
    r = match.node(name)
    if r is None:
        return None
    x = g.type(match[base]).shape
    u = g.type(match.node(name + "_unsqueeze").outputs[0]).shape
    e = g.type(match.node(name + "_expand").outputs[0]).shape
    o = g.type(r.outputs[0]).shape
    if len(x) != 4 or len(u) != 5 or len(e) != 5 or len(o) != 4:
        return f"{name}: repeat_kv ranks are {len(x)}/{len(u)}/{len(e)}/{len(o)}, not 4/5/5/4"
    if not (same_dim(u[2], 1) and same_shape(u[:2], x[:2]) and same_shape(u[3:], x[2:])):
        return f"{name}: the Unsqueeze is not on axis 2"
    if not (same_shape(e[:2], x[:2]) and same_shape(e[3:], x[2:])):
        return f"{name}: the Expand changes more than the new axis"
    if not (same_dim(o[0], x[0]) and same_dim(o[1], x[1] * e[2]) and same_shape(o[2:], x[2:])):
        return f"{name}: the Reshape does not merge the repeat into the head axis"
    return None


def param_like(name: str | None = None) -> Var:
    return Var(name, where=lambda g, t: g.is_param(t), why="a weight")


__all__ = ["same_dim", "same_shape", "last_axis", "is_float", "scaled", "scale_factor", "repeat_kv",
           "repeat_ok", "param_like", "FLOAT_DTYPES"]
