"""Import a torch ``nn.Module`` through ``torch.export`` into rooftop's IR.

The exported program (training IR: ``aten.linear``, ``aten.scaled_dot_product_attention``, … kept
whole) is translated op by op onto the ONNX-semantics ops of :mod:`compiler.ir.ops`. Translation is
demand-driven: only nodes that the outputs need are translated, so mask-building code that the
importer replaces (a declared-causal decoder's attention mask becomes ``is_causal``) is never
looked at. Shapes come from torch's own symbolic shape analysis (each FX node's fake tensor),
with torch's size symbols mapped onto rooftop's ``B`` and ``S``; nothing here needs weights, so a
model built on the meta device imports at full size with no memory for its parameters.

Hand-written on purpose: ``torch.onnx.export`` (dynamo) translates a Llama-2-7B on the meta device
in ~22 s and then cannot serialize meta weights; this translator does the same model in a few
seconds and keeps the graph symbolic in B/S/P for the cost model.
"""
from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import sympy
import torch

from compiler.ir import Graph, IRError, TensorType, as_dim
from compiler.ir.ops import UnsupportedOpError
from compiler.frontends.stacking import block_of, layer_of
from compiler.ir import DTYPES
from compiler.frontends import attention as attention_import
from compiler.frontends import mla as mla_import
from compiler.frontends.moe import translate

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
        return TensorType(dtype_name(fake.dtype), tuple(self.sym(d) for d in fake.shape))

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


def _binary(op: str):
    def h(c: _Ctx, a, b, *rest, alpha=1, **kw):
        out = c.out_type()
        if not isinstance(a, str) and not isinstance(b, str):
            raise IRError("binary op on two scalars should have been folded by torch.export")
        like = a if isinstance(a, str) else b
        a = c.cast(c.tensor_or_const(a, like), out.dtype) if op not in _CMP_OPS else c.tensor_or_const(a, like)
        b = c.cast(c.tensor_or_const(b, like), out.dtype) if op not in _CMP_OPS else c.tensor_or_const(b, like)
        if op in _CMP_OPS and c.tt(a).dtype != c.tt(b).dtype:
            b = c.cast(b, c.tt(a).dtype)
        if alpha != 1:
            b = c.op("Mul", [b, c.const(alpha, c.tt(b).dtype)])
        if op == "Ne":
            return c.op("Not", [c.op("Equal", [a, b])], final=True)
        return c.op(op, [a, b], final=True)
    return h


_CMP_OPS = {"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Ne"}
for _names, _op in [
    (("aten.add.Tensor", "aten.add.Scalar", "aten.add_.Tensor"), "Add"),
    (("aten.sub.Tensor", "aten.sub.Scalar", "aten.sub_.Tensor"), "Sub"),
    (("aten.mul.Tensor", "aten.mul.Scalar", "aten.mul_.Tensor"), "Mul"),
    (("aten.div.Tensor", "aten.div.Scalar", "aten.div_.Tensor"), "Div"),
    (("aten.pow.Tensor_Scalar", "aten.pow.Tensor_Tensor"), "Pow"),
    (("aten.maximum.default", "aten.max.other"), "Max"), (("aten.minimum.default", "aten.min.other"), "Min"),
    (("aten.eq.Tensor", "aten.eq.Scalar"), "Equal"), (("aten.ne.Tensor", "aten.ne.Scalar"), "Ne"),
    (("aten.lt.Tensor", "aten.lt.Scalar"), "Less"), (("aten.gt.Tensor", "aten.gt.Scalar"), "Greater"),
    (("aten.le.Tensor", "aten.le.Scalar"), "LessOrEqual"),
    (("aten.ge.Tensor", "aten.ge.Scalar"), "GreaterOrEqual"),
    (("aten.__and__.Tensor", "aten.bitwise_and.Tensor", "aten.logical_and.default"), "And"),
    (("aten.__or__.Tensor", "aten.bitwise_or.Tensor", "aten.logical_or.default"), "Or"),
]:
    handles(*_names)(_binary(_op))

for _names, _op in [
    (("aten.neg.default",), "Neg"), (("aten.cos.default",), "Cos"), (("aten.sin.default",), "Sin"),
    (("aten.tanh.default",), "Tanh"), (("aten.exp.default",), "Exp"), (("aten.sqrt.default",), "Sqrt"),
    (("aten.sigmoid.default",), "Sigmoid"), (("aten.relu.default",), "Relu"),
    (("aten.abs.default",), "Abs"), (("aten.log.default",), "Log"), (("aten.erf.default",), "Erf"),
    (("aten.reciprocal.default",), "Reciprocal"),
    (("aten.logical_not.default", "aten.bitwise_not.default"), "Not"),
]:
    handles(*_names)(lambda c, x, _op=_op: c.op(_op, [x], final=True))


@handles("aten.rsub.Scalar")
def _rsub(c, x, other, alpha=1):
    return c.op("Sub", [c.const(other, c.tt(x).dtype), x], final=True)


@handles("aten.rsqrt.default")
def _rsqrt(c, x):
    return c.op("Reciprocal", [c.op("Sqrt", [x], types=[c.tt(x)])], final=True)


@handles("aten.silu.default")
def _silu(c, x):
    return c.op("Mul", [x, c.op("Sigmoid", [x], types=[c.tt(x)])], final=True)


@handles("aten.gelu.default")
def _gelu(c, x, approximate="none"):
    return c.op("Gelu", [x], {"approximate": approximate}, final=True)


@handles("aten.embedding.default")
def _embedding(c, w, idx, *rest):
    return c.op("Gather", [w, idx], {"axis": 0}, final=True)


@handles("aten.linear.default")
def _linear(c, x, w, b=None):
    wt = c.linear_weight_t.get(w)
    if wt is None:  # weight also used elsewhere (tied embedding): transpose at run time
        ty = c.tt(w)
        wt = c.op("Transpose", [w], {"perm": [1, 0]}, types=[ty.with_shape(ty.shape[::-1])])
    if b is None:
        return c.op("MatMul", [x, wt], final=True)
    mm = c.op("MatMul", [x, wt], types=[c.out_type()])
    return c.op("Add", [mm, b], final=True)


@handles("aten.addmm.default")
def _addmm(c, bias, x, w, beta=1, alpha=1):
    if beta != 1 or alpha != 1:
        raise UnsupportedOpError("aten.addmm with beta/alpha != 1 is not supported")
    mm = c.op("MatMul", [x, w], types=[c.out_type()])
    return c.op("Add", [mm, bias], final=True)


@handles("aten.conv2d.default", "aten.conv1d.default", "aten.convolution.default")
def _conv(c, x, w, b=None, stride=1, padding=0, dilation=1, *rest):
    nd = c.tt(w).rank - 2
    if c.node.target.__name__.startswith("convolution"):
        transposed, _, groups = rest[0], rest[1], rest[2]
        if transposed:
            raise UnsupportedOpError("transposed convolution is not supported")
    else:
        groups = rest[0] if rest else 1
    if isinstance(padding, str):
        raise UnsupportedOpError(f"convolution with padding={padding!r} is not supported; give integer padding")

    def seq(v):
        return [int(v)] * nd if isinstance(v, int) else [int(e) for e in v]
    pads = seq(padding)
    attrs = {"strides": seq(stride), "pads": pads + pads, "dilations": seq(dilation), "group": int(groups)}
    return c.op("Conv", [x, w] + ([b] if b is not None else []), attrs, final=True)


@handles("aten.matmul.default", "aten.bmm.default", "aten.mm.default")
def _matmul(c, a, b):
    return c.op("MatMul", [a, b], final=True)


@handles("aten.mean.dim", "aten.sum.dim_IntList", "aten.amax.default")
def _reduce(c, x, dims=None, keepdim=False, *rest, dtype=None):
    op = {"mean": "ReduceMean", "sum": "ReduceSum", "amax": "ReduceMax"}[c.node.target.__name__.split(".")[0]]
    attrs = {"keepdims": int(bool(keepdim))}
    if dims is not None and list(dims):
        attrs["axes"] = [int(d) for d in dims]
    return c.op(op, [x], attrs, final=True)


@handles("aten.softmax.int", "aten._softmax.default")
def _softmax(c, x, dim, *rest):
    out = c.out_type()
    return c.op("Softmax", [c.cast(x, out.dtype)], {"axis": int(dim)}, final=True)


@handles("aten.topk.default")
def _topk(c, x, k, dim=-1, largest=True, sorted=True):
    return c.op("TopK", [x], {"k": int(k), "axis": int(dim), "largest": int(largest),
                              "sorted": int(sorted)}, final=True)


@handles("aten.cat.default")
def _cat(c, xs, dim=0):
    xs = [x for x in xs if not (c.tt(x).rank == 1 and c.tt(x).shape[0] == 0)]
    return c.op("Concat", xs, {"axis": int(dim)}, final=True)


@handles("aten.slice.Tensor")
def _slice(c, x, dim=0, start=None, end=None, step=1):
    ty = c.tt(x)
    dim = int(dim) % ty.rank
    start = 0 if start is None else c.sym(start)
    end = INT64_MAX if end is None else c.sym(end)
    out = c.out_type()
    if out.shape == ty.shape and start == 0 and step == 1:
        return c.op("Identity", [x], final=True)
    return c.op("Slice", [x], {"starts": [start], "ends": [end], "axes": [dim], "steps": [int(step)]},
                final=True)


@handles("aten.select.int")
def _select(c, x, dim, index):
    return c.op("Gather", [x, c.const(int(index), "int64")], {"axis": int(dim)}, final=True)


@handles("aten.transpose.int")
def _transpose(c, x, d0, d1):
    r = c.tt(x).rank
    perm = list(range(r))
    perm[d0 % r], perm[d1 % r] = perm[d1 % r], perm[d0 % r]
    return c.op("Transpose", [x], {"perm": perm}, final=True)


@handles("aten.permute.default")
def _permute(c, x, dims):
    r = c.tt(x).rank
    return c.op("Transpose", [x], {"perm": [int(d) % r for d in dims]}, final=True)


@handles("aten.t.default", "aten.numpy_T.default")
def _t(c, x):   # (numpy_T: ``w.T``, all axes reversed)
    return c.op("Transpose", [x], {"perm": list(reversed(range(c.tt(x).rank)))}, final=True)


@handles("aten.view.default", "aten.reshape.default", "aten._unsafe_view.default")
def _view(c, x, shape):
    out = c.out_type()
    if out.shape == c.tt(x).shape:
        return c.op("Identity", [x], final=True)
    return c.op("Reshape", [x], {"shape": [c.sym(d) for d in shape]}, final=True)


@handles("aten.flatten.using_ints")
def _flatten(c, x, start=0, end=-1):
    return c.op("Reshape", [x], {"shape": list(c.out_type().shape)}, final=True)


@handles("aten.unsqueeze.default")
def _unsqueeze(c, x, dim):
    return c.op("Unsqueeze", [x], {"axes": [int(dim) % (c.tt(x).rank + 1)]}, final=True)


@handles("aten.squeeze.dim", "aten.squeeze.dims", "aten.squeeze.default")
def _squeeze(c, x, dims=None):
    ty = c.tt(x)
    dims = list(range(ty.rank)) if dims is None else ([dims] if isinstance(dims, int) else dims)
    axes = [int(d) % ty.rank for d in dims if ty.shape[int(d) % ty.rank] == 1]
    if not axes:
        return c.op("Identity", [x], final=True)
    return c.op("Squeeze", [x], {"axes": axes}, final=True)


@handles("aten.expand.default")
def _expand(c, x, sizes, *rest):
    out = c.out_type()
    if out.shape == c.tt(x).shape:
        return c.op("Identity", [x], final=True)
    return c.op("Expand", [x], {"shape": list(out.shape)}, final=True)


@handles("aten.repeat_interleave.self_int")
def _repeat_interleave(c, x, repeats, dim=None, *rest):
    ty = c.tt(x)
    d = int(dim) % ty.rank
    u = c.op("Unsqueeze", [x], {"axes": [d + 1]})
    shp = list(ty.shape)
    shp.insert(d + 1, int(repeats))
    e = c.op("Expand", [u], {"shape": shp})
    return c.op("Reshape", [e], {"shape": list(c.out_type().shape)}, final=True)


@handles("aten.split.Tensor", "aten.split_with_sizes.default", "aten.chunk.default")
def _split(c, x, size_or_sizes, dim=0):
    outs = c.node.meta["val"]
    types = [c.ttype(v) for v in outs]
    sizes = [t.shape[int(dim) % c.tt(x).rank] for t in types]
    if any(not isinstance(s, int) for s in sizes):
        raise UnsupportedOpError("split into symbolic sizes is not supported")
    return c.op("Split", [x, c.const(sizes, "int64")], {"axis": int(dim)}, final=True)


@handles("aten.unbind.int")
def _unbind(c, x, dim=0):
    ty = c.tt(x)
    d = int(dim) % ty.rank
    n = ty.shape[d]
    parts = c.op("Split", [x, c.const([1] * n, "int64")], {"axis": d},
                 types=[ty.with_shape(ty.shape[:d] + (1,) + ty.shape[d + 1:])] * n, n_out=n)
    return [c.op("Squeeze", [p], {"axes": [d]}, types=[c.ttype(v)])
            for p, v in zip(parts, c.node.meta["val"])]


@handles("aten.to.dtype", "aten.to.dtype_layout", "aten.to.device", "aten._to_copy.default",
         "aten.type_as.default")
def _to(c, x, *args, **kw):
    out = c.out_type()
    if out.dtype == c.tt(x).dtype:
        return c.op("Identity", [x], final=True)
    return c.op("Cast", [x], {"to": DTYPES[out.dtype][2]}, final=True)


@handles("aten.alias.default", "aten.clone.default", "aten.contiguous.default", "aten.detach.default",
         "aten.lift_fresh_copy.default", "aten.dropout.default", "aten.feature_dropout.default")
def _identity(c, x, *args, **kw):
    return c.op("Identity", [x], final=True)


@handles("aten.layer_norm.default")
def _layer_norm(c, x, shape, w=None, b=None, eps=1e-5, *rest):
    ins = [x, w if w is not None else c.const(np.ones(shape, np.float32), c.tt(x).dtype)]
    if b is not None:
        ins.append(b)
    return c.op("LayerNormalization", ins, {"axis": -len(shape), "epsilon": float(eps)}, final=True)


@handles("aten.rms_norm.default")
def _rms_norm(c, x, shape, w=None, eps=None):
    ins = [x, w if w is not None else c.const(np.ones(shape, np.float32), c.tt(x).dtype)]
    attrs = {"axis": -len(shape)}
    if eps is not None:
        attrs["epsilon"] = float(eps)
    return c.op("RMSNormalization", ins, attrs, final=True)


@handles("aten.scaled_dot_product_attention.default")
def _sdpa(c, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    attrs: dict[str, Any] = {}
    if c.g.meta.get("causal"):
        # A declared-causal decoder: the exported mask subgraph (causal + packed-sequence
        # bookkeeping from position_ids) is replaced by is_causal, which ONNX Attention aligns
        # bottom-right when a KV cache is present. Checked numerically against torch in tests.
        attn_mask, is_causal = None, True
    if is_causal:
        attrs["is_causal"] = 1
    if scale is not None:
        attrs["scale"] = float(scale)
    ins = [q, k, v] + ([attn_mask] if attn_mask is not None else [])
    return c.op("Attention", ins, attrs, final=True)


@handles("aten.arange.default", "aten.arange.start", "aten.arange.start_step")
def _arange(c, *args, dtype=None, **kw):
    nums = [c.sym(a) if not isinstance(a, float) else a for a in args]
    start, end, step = (0, nums[0], 1) if len(nums) == 1 else (nums + [1])[:3]
    return c.op("Range", [], {"start": start, "limit": end, "delta": step}, final=True)


@handles("aten.new_ones.default", "aten.ones.default", "aten.new_zeros.default", "aten.zeros.default",
         "aten.full.default", "aten.new_full.default", "aten.zeros_like.default",
         "aten.ones_like.default", "aten.full_like.default")
def _fill(c, *args, **kw):
    name = c.node.target.__name__.split(".")[0]
    value = {"new_ones": 1, "ones": 1, "ones_like": 1, "new_zeros": 0, "zeros": 0,
             "zeros_like": 0}.get(name)
    if value is None:
        value = args[-1]
    out = c.out_type()
    return c.op("ConstantOfShape", [], {"shape": list(out.shape), "value": value}, final=True)


@handles("aten.gather.default")
def _gather(c, x, dim, index, *rest):
    return c.op("GatherElements", [x, index], {"axis": int(dim)}, final=True)


@handles("aten.index.Tensor")
def _index(c, x, indices):
    if len(indices) == 1 and indices[0] is not None:
        return c.op("Gather", [x, indices[0]], {"axis": 0}, final=True)
    real = [k for k, i in enumerate(indices) if i is not None]
    if len(real) == 1 and all(i is None for i in indices[:real[0]]):   # x[:, …, idx]: one axis
        return c.op("Gather", [x, c.cast(indices[real[0]], "int64")], {"axis": real[0]}, final=True)
    if any(i is None for i in indices):
        raise UnsupportedOpError("aten.index with skipped (None) leading dimensions is not supported")
    out = c.out_type()
    shp = out.shape
    parts = []
    for i in indices:
        u = c.op("Unsqueeze", [c.cast(i, "int64")], {"axes": [c.tt(i).rank]})
        parts.append(c.op("Expand", [u], {"shape": list(shp[:len(shp) - (c.tt(x).rank - len(indices))]) + [1]}))
    idx = c.op("Concat", parts, {"axis": -1})
    return c.op("GatherND", [x, idx], final=True)


@handles("aten.where.self", "aten.where.ScalarOther", "aten.where.ScalarSelf", "aten.where.Scalar")
def _where(c, cond, a, b):
    out = c.out_type()
    like = a if isinstance(a, str) else b
    return c.op("Where", [cond, c.cast(c.tensor_or_const(a, like), out.dtype),
                          c.cast(c.tensor_or_const(b, like), out.dtype)], final=True)


@handles("aten.masked_fill.Scalar")
def _masked_fill(c, x, mask, value):
    return c.op("Where", [mask, c.const(value, c.tt(x).dtype), x], final=True)


@handles("aten.diff.default")
def _diff(c, x, n=1, dim=-1, prepend=None, append=None):
    """x[..., 1:] - x[..., :-1] along ``dim`` (after concatenating prepend/append), ``n`` times."""
    d = int(dim) % c.tt(x).rank
    parts = [p for p in (prepend, x, append) if p is not None]
    if len(parts) > 1:
        x = c.op("Concat", parts, {"axis": d})
    for _ in range(int(n)):
        hi = c.op("Slice", [x], {"starts": [1], "ends": [INT64_MAX], "axes": [d], "steps": [1]})
        lo = c.op("Slice", [x], {"starts": [0], "ends": [-1], "axes": [d], "steps": [1]})
        x = c.op("Sub", [hi, lo])
    return c.op("Identity", [x], final=True)


@handles("aten.cumsum.default")
def _cumsum(c, x, dim, dtype=None):
    out = c.out_type()
    return c.op("CumSum", [c.cast(x, out.dtype)], {"axis": int(dim)}, final=True)


@handles("aten.clamp.default")
def _clamp(c, x, lo=None, hi=None):
    dt = c.tt(x).dtype
    return c.op("Clip", [x, c.const(lo, dt) if lo is not None else "",
                         c.const(hi, dt) if hi is not None else ""], final=True)


@handles("aten.scatter_.value", "aten.scatter.value")
def _scatter_value(c, x, dim, index, value):
    """``x`` with the scalar ``value`` written at ``index`` along ``dim`` (DeepSeek-V3's group-limited
    routing mask; the in-place form rebinds ``x``: :func:`_in_place`)."""
    ity, xty = c.tt(index), c.tt(x)
    upd = c.op("Expand", [c.const(value, xty.dtype)], {"shape": list(ity.shape)}, types=[xty.with_shape(ity.shape)])
    return c.op("ScatterElements", [x, c.cast(index, "int64"), upd], {"axis": int(dim)}, final=True)


@handles("rooftop.moe_experts.default")
def _moe_experts(c, hidden, idx, weights, gate_up, down, gate_up_bias=None, down_bias=None, act="silu",
                 transposed=False, interleaved=False, alpha=0.0, limit=0.0):
    """A MoE layer's routed experts (compiler/frontends/moe.py): grouped expert GEMMs over the routed rows."""
    return translate(c, hidden, idx, weights, gate_up, down, gate_up_bias, down_bias, act, transposed,
                     interleaved, alpha, limit)


@handles("rooftop.attention.default")
def _rooftop_attention(c, q, k, v, sinks, scale, softcap, window):
    """Attention with the layer's window / softcap / sinks (compiler/frontends/attention.py)."""
    return attention_import.translate(c, q, k, v, sinks, scale, softcap, window)


@handles("rooftop.mla_attention.default")
def _mla_attention(c, q_nope, q_rope, latent, k_rope, w_kv_b, scale):
    """Multi-head latent attention (compiler/frontends/mla.py)."""
    return mla_import.translate(c, q_nope, q_rope, latent, k_rope, w_kv_b, scale)


@handles("<built-in function getitem>")
def _getitem(c, tup, i):
    return tup[i]


_SKIP = {"aten._assert_tensor_metadata.default", "aten._assert_scalar.default",
         "aten.sym_constrain_range_for_size.default", "aten._assert_async.msg",
         "aten.sym_constrain_range.default"}
_SYMBOLIC_FNS = {operator.mul, operator.add, operator.sub, operator.floordiv, operator.truediv,
                 operator.neg}


# ------------------------------------------------------------------------------------------------

def _target_name(n: torch.fx.Node) -> str:
    t = n.target
    if not isinstance(t, torch._ops.OpOverload):
        return str(t)
    ns, name = t._schema.name.split("::")
    return f"{ns}.{name}.{t._overloadname}"


def _in_place(n: torch.fx.Node) -> bool:
    """An ATen op that mutates its first operand (``div_``, ``scatter_``…): non-strict export keeps
    it, and the Python code goes on using the operand's node for the mutated value."""
    t = n.target
    return isinstance(t, torch._ops.OpOverload) and t._schema.name.split("::")[-1].endswith("_") \
        and bool(t._schema.arguments) and t._schema.arguments[0].alias_info is not None \
        and t._schema.arguments[0].alias_info.is_write


def _needed(graph: torch.fx.Graph, causal: bool) -> set:
    """Nodes the outputs depend on, skipping the masks a causal decoder's SDPA gives up."""
    out = next(n for n in graph.nodes if n.op == "output")
    need, stack = set(), [out]
    while stack:
        n = stack.pop()
        if n in need:
            continue
        need.add(n)
        args = list(n.all_input_nodes)
        if causal and _target_name(n) == "aten.scaled_dot_product_attention.default":
            args = [a for a in n.args[:3] if isinstance(a, torch.fx.Node)]
        # an in-place op on a needed value changes what its later users read: needed too
        args += [u for u in n.users if _in_place(u) and u.args and u.args[0] is n]
        stack.extend(args)
    return need


def import_exported(ep: torch.export.ExportedProgram, *, name: str, dims: Mapping[str, Sequence],
                    causal: bool = False, output_names: Sequence[str] | None = None,
                    progress: Callable[[int, int], None] | None = None) -> Graph:
    """Translate an ExportedProgram into a Graph.

    ``dims`` maps each user input name to its dims, each an int or one of rooftop's symbols
    (``compiler.ir.B``/``S``), e.g. ``{"input_ids": [B, S]}``; torch's size symbols of those
    positions are renamed accordingly.
    """
    g = Graph(name)
    g.meta["causal"] = causal
    sig = ep.graph_signature
    param_of = {**sig.inputs_to_parameters, **sig.inputs_to_buffers,
                **getattr(sig, "inputs_to_lifted_tensor_constants", {})}
    state = {**ep.state_dict, **getattr(ep, "constants", {})}
    placeholders = [n for n in ep.graph.nodes if n.op == "placeholder"]

    symmap: dict = {}
    for n in placeholders:
        if n.name in dims or n.target in dims:
            want = dims.get(n.name, dims.get(n.target))
            fake = n.meta["val"]
            for d, w in zip(fake.shape, want):
                if isinstance(d, torch.SymInt):
                    e = d.node.expr
                    if isinstance(e, sympy.Symbol) and not isinstance(w, int):
                        symmap[e] = w
    ctx = _Ctx(g, symmap)
    need = _needed(ep.graph, causal)

    # Weights used only as aten.linear's weight are stored transposed ([in, out]) for MatMul.
    linear_only: dict[str, bool] = {}
    for n in ep.graph.nodes:
        if n.op == "call_function" and n in need:
            for i, a in enumerate(n.args):
                if isinstance(a, torch.fx.Node) and a.op == "placeholder" and a.name in param_of:
                    ok = _target_name(n) == "aten.linear.default" and i == 1
                    linear_only[a.name] = linear_only.get(a.name, True) and ok

    for n in placeholders:
        if n not in need:
            continue
        ctx.node = n
        ty = ctx.ttype(n.meta["val"])
        if n.name in param_of:
            fqn = param_of[n.name]
            t = state.get(fqn)
            data = None
            if t is not None and not t.is_meta:
                data = t.detach().to(torch.float32 if t.dtype == torch.bfloat16 else t.dtype).cpu().numpy()
            pname = fqn
            if linear_only.get(n.name):
                ty = ty.with_shape(ty.shape[::-1])
                data = None if data is None else np.ascontiguousarray(data.T)
                ctx.linear_weight_t[pname] = pname
            g.add_param(pname, ty, data, source=fqn)
            ctx.env[n] = pname
        else:
            g.add_input(n.name, ty)
            ctx.env[n] = n.name

    calls = [n for n in ep.graph.nodes if n.op == "call_function" and n in need]
    for i, n in enumerate(calls):
        ctx.node = n
        tname = _target_name(n)
        if progress and i % 64 == 0:
            progress(i, len(calls))
        if tname in _SKIP:
            continue
        v = n.meta.get("val")
        if isinstance(v, (torch.SymInt, int)) and not isinstance(v, bool) and (
                tname.startswith("aten.sym_size") or n.target in _SYMBOLIC_FNS):
            ctx.env[n] = ctx.sym(v)
            continue
        h = HANDLERS.get(tname)
        if h is None:
            raise UnsupportedOpError.for_op(
                tname, domain="aten (torch.export)", node=n.name, source=ctx._where() or "",
                count=sum(1 for c in calls if _target_name(c) == tname), model=f"model {name!r}",
                fix="Export the model with a supported implementation (e.g. model.attn_implementation=sdpa).",
                support=f"To support it, add a handler for {tname} in compiler/frontends/torch_export.py "
                        f"that lowers it onto ops of the registry (compiler/ir/ops.py).")
        args = ctx.val(list(n.args))
        kwargs = {k: ctx.val(a) for k, a in n.kwargs.items()}
        ctx.env[n] = h(ctx, *args, **kwargs)
        if _in_place(n) and n.args and isinstance(n.args[0], torch.fx.Node):
            ctx.env[n.args[0]] = ctx.env[n]   # x.div_(y): later uses of x see the result
    if progress:
        progress(len(calls), len(calls))

    out_node = next(n for n in ep.graph.nodes if n.op == "output")
    outs = [ctx.env[a] for a in out_node.args[0]] if isinstance(out_node.args[0], (list, tuple)) else [ctx.env[out_node.args[0]]]
    names = list(output_names or [f"output_{i}" for i in range(len(outs))])
    for t, want in zip(outs, names):
        _rename_output(g, t, want)
    g.set_outputs(names)
    return g


def _rename_output(g: Graph, t: str, want: str):
    """Give a graph output its public name with an Identity (removed later by cleanup when safe)."""
    if t == want:
        return
    g.add_op("Identity", [t], [want], types=[g.types[t]], name=f"output_{want}")


def export_module(module: torch.nn.Module, example: Mapping[str, torch.Tensor],
                  dynamic: Mapping[str, Sequence[int]]) -> torch.export.ExportedProgram:
    """torch.export with the named input dims dynamic (``torch.export.Dim.DYNAMIC``)."""
    ds = {k: {d: torch.export.Dim.DYNAMIC for d in dims} for k, dims in dynamic.items()}
    for k in example:
        ds.setdefault(k, None)
    with torch.no_grad():
        return torch.export.export(module, (), dict(example), dynamic_shapes=ds, strict=False)
