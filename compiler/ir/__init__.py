"""The IR core: the operator graph, its tensor types, the typed annotation contract and the op
registry.

Owns: :class:`Graph` / :class:`OpNode` / :class:`Param` (``graph.py``), tensor types and the
symbolic dims ``B``, ``S``, ``P`` (``tensors.py``), the declared annotations and ``Graph.meta``
keys (``annotations.py``), and the op registry (``ops.py``: one ``OpDef`` per op kind — fusion
kind, cost class — binding the rules, which live by concern: shape rules in ``shapes.py``, FLOPs
and bytes rules in ``costs.py``, values on symbolic dims in ``symbolic.py``, no-op rules in
``noops.py``).

May import: the standard library, numpy, sympy, networkx and :mod:`compiler.errors` — nothing
above it (no onnx, no torch, no other rooftop package). ``python -c "import compiler.ir"`` loads
neither onnx nor torch (tests/test_layering.py checks it).
"""
from compiler.ir.graph import Graph, OpNode, Param, op_layers, structural_diff, structurally_equal
from compiler.ir.tensors import (B, DTYPES, ONNX_TO_DTYPE, P, S, SYMBOLS, Dim, IRError, TensorType,
                                 as_dim, subs)

__all__ = ["Graph", "OpNode", "Param", "TensorType", "IRError", "Dim", "B", "S", "P", "SYMBOLS",
           "DTYPES", "ONNX_TO_DTYPE", "as_dim", "subs", "structural_diff", "structurally_equal", "op_layers"]
