"""The aten → IR translation context and handler registry of the torch importer
(:mod:`compiler.frontends.torch_export`).

:class:`_Ctx` carries the IR graph being built, the FX node being translated and its values;
handlers (``fn(ctx, *args, **kwargs) -> value``) are registered by aten overload name with
:func:`handles` into :data:`HANDLERS`. The handlers themselves live in
:mod:`compiler.frontends.aten_ops` (the ops transformers models use),
:mod:`compiler.frontends.aten_core` (the rest of the Core ATen elementwise and reduction ops) and
:mod:`compiler.frontends.aten_data` (data movement, creation, normalization, convolution, complex
values, refusals and rooftop's own custom ops).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import sympy
import torch

from compiler.ir import Graph, IRError, TensorType, as_dim
from compiler.ir.masks import MaskClass
from compiler.ir.ops import UnsupportedOpError
from compiler.frontends.stacking import block_of, layer_of
from compiler.ir import DTYPES


INT64_MAX = 2**63 - 1

_TORCH_DTYPES = {
    torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16",
    torch.float64: "float64", torch.int64: "int64", torch.int32: "int32", torch.int8: "int8",
    torch.uint8: "uint8", torch.bool: "bool",
}


def dtype_name(dt: torch.dtype) -> str:
    try:
        return _TORCH_DTYPES[dt]
    except KeyError:
        raise UnsupportedOpError(f"tensor dtype {dt} is not supported") from None


class _Ctx:
    """Translation state: the graph being built and the FX-node → value environment."""

    def __init__(self, graph: Graph, symmap: dict):
        self.g = graph
        self.symmap = symmap
        self.env: dict[Any, Any] = {}
        self.node = None  # FX node being translated
        self.consts: dict[tuple, str] = {}        # constant value -> its parameter (deduplicated)
        self.linear_weight_t: dict[str, str] = {}  # weights stored transposed for MatMul (aten.linear only)
        self.masks: dict[Any, MaskClass] = {}      # SDPA node -> what its attn_mask means (evaluated)

    # ---- values ------------------------------------------------------------------------
    def sym(self, v) -> int | sympy.Expr:
        """A torch int / SymInt as an int or a sympy expression of B, S, P."""
        if isinstance(v, torch.SymInt):
            e = v.node.expr.xreplace(self.symmap)
            return as_dim(sympy.sympify(e))
        if isinstance(v, (int, np.integer)):
            return int(v)
        if isinstance(v, sympy.Expr):
            return as_dim(v)
        raise IRError(f"expected a size, got {v!r}")

    def val(self, a):
        """The translated value of an FX argument (tensor name, python scalar, list, sympy)."""
        if isinstance(a, torch.fx.Node):
            return self.env.get(a)  # None: not needed (e.g. the mask a causal SDPA gives up)
        if isinstance(a, (list, tuple)):
            return [self.val(x) for x in a]
        if isinstance(a, torch.SymInt):
            return self.sym(a)
        return a

    def ttype(self, fake) -> TensorType:
        if fake.dtype.is_complex:   # complex values are held as [..., 2] (real, imaginary) pairs
            real = {torch.complex64: "float32", torch.complex128: "float64"}.get(fake.dtype)
            if real is None:
                raise UnsupportedOpError(f"tensor dtype {fake.dtype} is not supported")
            return TensorType(real, tuple(self.sym(d) for d in fake.shape) + (2,))
        return TensorType(dtype_name(fake.dtype), tuple(self.sym(d) for d in fake.shape))

    def is_complex(self, a) -> bool:
        """Whether FX argument ``a`` (a node) holds a complex tensor."""
        v = a.meta.get("val") if isinstance(a, torch.fx.Node) else None
        return isinstance(v, torch.Tensor) and v.dtype.is_complex

    def out_type(self, i: int | None = None) -> TensorType:
        v = self.node.meta["val"]
        return self.ttype(v if i is None else v[i])

    def tt(self, t: str) -> TensorType:
        return self.g.types[t]

    # ---- graph building ------------------------------------------------------------------
    def op(self, op: str, inputs: Sequence[str], attrs: Mapping | None = None, *,
           types: Sequence[TensorType] | None = None, n_out: int = 1, final: bool = False):
        """Add an op; ``final`` gives it the FX node's name and type(s)."""
        if final and types is None:
            v = self.node.meta["val"]
            types = [self.ttype(x) for x in v] if isinstance(v, (list, tuple)) else [self.out_type()]
            n_out = len(types)
        name = self.g.fresh(self.node.name) if not final else self._unique(self.node.name)
        outs = [name] if n_out == 1 else [f"{name}.{i}" for i in range(n_out)]
        ann = {"source": self._where()}
        layer = self._layer()
        if layer is not None:
            ann["layer"] = layer
        stack = self.node.meta.get("nn_module_stack")
        if stack:
            ann["block"] = block_of(stack.values())
        node = self.g.add_op(op, inputs, outs, attrs, types=types, name=name, **ann)
        return node.outputs[0] if n_out == 1 else list(node.outputs)

    def _unique(self, base: str) -> str:
        return base if base not in self.g.types and base not in self.g.nx else self.g.fresh(base)

    def _layer(self) -> int | None:
        """The decoder/encoder layer index of the FX node being translated (from its module path)."""
        stack = self.node.meta.get("nn_module_stack") or {}
        for path, _ in reversed(list(stack.values())):
            k = layer_of(str(path))
            if k is not None:
                return k
        return None

    def _where(self) -> str:
        st = self.node.meta.get("stack_trace") or ""
        lines = [ln.strip() for ln in st.strip().splitlines() if ln.strip().startswith("File")]
        return lines[-1] if lines else str(self.node.meta.get("nn_module_stack", ""))[-200:]

    def const(self, value, dtype: str) -> str:
        """A constant tensor as a parameter with data (also on the meta device)."""
        npdt = DTYPES[dtype][1] or np.float32
        arr = np.asarray(value, dtype=npdt)
        key = ("const", dtype, arr.shape, arr.tobytes())
        cache = self.consts
        if key in cache:
            return cache[key]
        name = self.g.fresh("const")
        self.g.add_param(name, TensorType(dtype, arr.shape), arr, const=True)
        cache[key] = name
        return name

    def tensor_or_const(self, a, like: str) -> str:
        if isinstance(a, str):
            return a
        return self.const(a, self.tt(like).dtype)

    def cast(self, t: str, dtype: str) -> str:
        if self.tt(t).dtype == dtype:
            return t
        return self.op("Cast", [t], {"to": DTYPES[dtype][2]}, types=[self.tt(t).with_dtype(dtype)])


# ------------------------------------------------------------------------------------------------
# handlers: fn(ctx, *args, **kwargs) -> value

Handler = Callable[..., Any]
HANDLERS: dict[str, Handler] = {}


def handles(*names: str):
    def deco(fn):
        for n in names:
            HANDLERS[n] = fn
        return fn
    return deco


# ------------------------------------------------------------------------------------------------
# helpers the handler modules share

def _axes(c, dims, rank: int) -> list[int]:
    if dims is None:
        return list(range(rank))
    dims = [dims] if isinstance(dims, int) else list(dims)
    return [int(d) % rank for d in dims] if rank else []


def _float_of(c, x: str) -> str:
    """``x`` in the node's output float dtype (integer inputs of float-valued ops)."""
    return c.cast(x, c.out_type().dtype)


def _is_bool(c, t: str) -> bool:
    return c.tt(t).dtype == "bool"


def _is_float(c, t: str) -> bool:
    return c.tt(t).dtype.startswith(("float", "bfloat"))



def _ints(v, n):
    return [int(v)] * n if isinstance(v, int) else [int(e) for e in v]


def complex_mul(c, a, b):
    """(a_r + i a_i)(b_r + i b_i) on [..., 2] pairs; a real operand (or scalar) scales both parts."""
    out = c.out_type()
    ca, cb = c.is_complex(c.node.args[0]), c.is_complex(c.node.args[1])
    if not (ca and cb):
        z, r = (a, b) if ca else (b, a)
        if isinstance(r, str):
            rt = c.tt(r)
            r = c.op("Unsqueeze", [r], {"axes": [rt.rank]}, types=[rt.with_shape(rt.shape + (1,))])
        else:
            r = c.const(r, out.dtype)
        return c.op("Mul", [z, c.cast(r, out.dtype)], final=True)
    half = out.with_shape(out.shape[:-1] + (1,))

    def parts(z):
        zt = c.tt(z)
        h = zt.with_shape(zt.shape[:-1] + (1,))
        return c.op("Split", [z, c.const([1, 1], "int64")], {"axis": -1}, types=[h, h], n_out=2)
    ar, ai = parts(a)
    br, bi = parts(b)

    def mul(x, y):
        return c.op("Mul", [x, y], types=[half])
    re = c.op("Sub", [mul(ar, br), mul(ai, bi)], types=[half])
    im = c.op("Add", [mul(ar, bi), mul(ai, br)], types=[half])
    return c.op("Concat", [re, im], {"axis": -1}, final=True)


# ------------------------------------------------------------------------------------------------

def _target_name(n: torch.fx.Node) -> str:
    t = n.target
    if not isinstance(t, torch._ops.OpOverload):
        return str(t)
    ns, name = t._schema.name.split("::")
    return f"{ns}.{name}.{t._overloadname}"
