"""No-op rules: the operand an op returns unchanged (passes/cleanup.py remove_noops); bound to ops in
compiler/ir/ops.py (``OpDef.noop``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING



if TYPE_CHECKING:
    from compiler.ir.graph import Graph


# ----------------------------------------------------------------------------------------------
# no-op rules: the operand an op returns unchanged (passes/cleanup.py remove_noops)

def is_const(g: Graph, t: str, value=None) -> bool:
    """``t`` is a constant parameter (``const`` annotation), of scalar ``value`` if given."""
    p = g.params.get(t)
    if p is None or p.data is None or not p.annotations.get("const"):
        return False
    return value is None or (p.data.size == 1 and float(p.data.reshape(-1)[0]) == value)


def _out_type(g, n):
    return g.type(n.outputs[0]) if n.outputs else None


def _noop_same_type(g, n):
    return n.inputs[0] if g.type(n.inputs[0]) == _out_type(g, n) else None


def _noop_slice(g, n):
    if all(s == 0 for s in n.attrs.get("starts", [1])):
        return _noop_same_type(g, n)
    return None


def _noop_transpose(g, n):
    perm = list(n.attrs.get("perm", []))
    return n.inputs[0] if perm == sorted(n.attrs.get("perm", [0, 1])) else None


def _noop_identity_element(value: float, left: bool):
    """x ∘ c with c the identity element (x*1, x/1, x+0, x-0; and c ∘ x when ``left``)."""
    def rule(g, n):
        ins, out = n.inputs, _out_type(g, n)
        if is_const(g, ins[1], value) and g.type(ins[0]) == out:
            return ins[0]
        if left and is_const(g, ins[0], value) and g.type(ins[1]) == out:
            return ins[1]
        return None
    return rule


def _noop_passthrough(g, n):
    return n.inputs[0] if len(n.outputs) == 1 else None
