"""aten handlers of the torch importer: the rest of the Core ATen opset (torch.export's
``run_decompositions`` target) — elementwise math, bitwise and logical ops, division modes,
activations and reductions. Every Core ATen op either lowers onto registry ops here or in
:mod:`compiler.frontends.aten_data`, or is refused with its reason
(:data:`compiler.frontends.aten_data.REFUSED`); ``tools/aten_coverage.py`` checks each against
torch eager on PyTorch's own OpInfo samples.
"""
from __future__ import annotations


import numpy as np
import sympy

from compiler.ir import TensorType, as_dim
from compiler.ir import DTYPES
from compiler.frontends.aten_context import _axes, _float_of, _is_bool, handles


def _unary(op: str):
    return lambda c, x, *a, **kw: c.op(op, [x], final=True)


for _names, _op in [
    (("aten.acos.default",), "Acos"), (("aten.acosh.default",), "Acosh"), (("aten.asin.default",), "Asin"),
    (("aten.asinh.default",), "Asinh"), (("aten.atan.default",), "Atan"), (("aten.atanh.default",), "Atanh"),
    (("aten.cosh.default",), "Cosh"), (("aten.sinh.default",), "Sinh"), (("aten.tan.default",), "Tan"),
    (("aten.ceil.default",), "Ceil"), (("aten.floor.default",), "Floor"), (("aten.sign.default",), "Sign"),
    (("aten.isnan.default",), "IsNaN"), (("aten.isinf.default",), "IsInf"),
    (("aten.round.default",), "Round"), (("aten.softplus.default",), "Softplus"),
]:
    handles(*_names)(_unary(_op))


@handles("aten.expm1.default")
def _expm1(c, x):
    x = _float_of(c, x)
    return c.op("Sub", [c.op("Exp", [x], types=[c.tt(x)]), c.const(1.0, c.tt(x).dtype)], final=True)


@handles("aten.log1p.default")
def _log1p(c, x):
    x = _float_of(c, x)
    return c.op("Log", [c.op("Add", [x, c.const(1.0, c.tt(x).dtype)], types=[c.tt(x)])], final=True)


@handles("aten.log2.default", "aten.log10.default")
def _log_base(c, x):
    x = _float_of(c, x)
    base = 2.0 if c.node.target.__name__.startswith("log2") else 10.0
    return c.op("Div", [c.op("Log", [x], types=[c.tt(x)]), c.const(float(np.log(base)), c.tt(x).dtype)], final=True)


@handles("aten.trunc.default")
def _trunc(c, x):
    t = c.tt(x)
    if not t.dtype.startswith(("float", "bfloat")):
        return c.op("Identity", [x], final=True)
    mag = c.op("Floor", [c.op("Abs", [x], types=[t])], types=[t])
    return c.op("Mul", [c.op("Sign", [x], types=[t]), mag], final=True)


def _bitwise(bool_op: str, int_op: str):
    def h(c, a, b=None):
        like = a if isinstance(a, str) else b
        a = c.tensor_or_const(a, like)
        if b is None:
            return c.op(bool_op if _is_bool(c, a) else int_op, [a], final=True)
        b = c.cast(c.tensor_or_const(b, like), c.tt(a).dtype)
        return c.op(bool_op if _is_bool(c, a) else int_op, [a, b], final=True)
    return h


for _names, _ops in [
    (("aten.bitwise_and.Tensor", "aten.bitwise_and.Scalar", "aten.__and__.Tensor"), ("And", "BitwiseAnd")),
    (("aten.bitwise_or.Tensor", "aten.bitwise_or.Scalar", "aten.__or__.Tensor"), ("Or", "BitwiseOr")),
    (("aten.bitwise_xor.Tensor", "aten.bitwise_xor.Scalar"), ("Xor", "BitwiseXor")),
    (("aten.bitwise_not.default",), ("Not", "BitwiseNot")),
]:
    handles(*_names)(_bitwise(*_ops))


def _logical(op: str):
    def h(c, a, b=None):
        a = c.cast(a, "bool")
        if b is None:
            return c.op(op, [a], final=True)
        return c.op(op, [a, c.cast(c.tensor_or_const(b, a), "bool")], final=True)
    return h


for _name, _op in [("aten.logical_and.default", "And"), ("aten.logical_or.default", "Or"),
                   ("aten.logical_xor.default", "Xor"), ("aten.logical_not.default", "Not")]:
    handles(_name)(_logical(_op))


@handles("aten.div.Tensor_mode", "aten.div.Scalar_mode")
def _div_mode(c, a, b, rounding_mode=None):
    out = c.out_type()
    like = a if isinstance(a, str) else b
    a, b = c.tensor_or_const(a, like), c.tensor_or_const(b, like)
    if rounding_mode is None:
        return c.op("Div", [c.cast(a, out.dtype), c.cast(b, out.dtype)], final=True)
    # exact for the integer sizes of index arithmetic: divide in float64, round, cast back
    a64, b64 = c.cast(a, "float64"), c.cast(b, "float64")
    q = c.op("Div", [a64, b64], types=[c.tt(a64).with_shape(out.shape)])
    if rounding_mode == "floor":
        q = c.op("Floor", [q], types=[c.tt(q)])
    else:
        q = c.op("Mul", [c.op("Sign", [q], types=[c.tt(q)]),
                         c.op("Floor", [c.op("Abs", [q], types=[c.tt(q)])], types=[c.tt(q)])], types=[c.tt(q)])
    return c.op("Cast", [q], {"to": DTYPES[out.dtype][2]}, final=True)


@handles("aten.floor_divide.default", "aten.floor_divide.Scalar")
def _floor_divide(c, a, b):
    return _div_mode(c, a, b, "floor")


@handles("aten.fmod.Tensor", "aten.fmod.Scalar")
def _fmod(c, a, b):
    out = c.out_type()
    like = a if isinstance(a, str) else b
    a, b = c.cast(c.tensor_or_const(a, like), out.dtype), c.cast(c.tensor_or_const(b, like), out.dtype)
    return c.op("Mod", [a, b], {"fmod": 1}, final=True)


@handles("aten.remainder.Tensor", "aten.remainder.Scalar")
def _remainder(c, a, b):
    """Python's modulo (sign of the divisor): a − floor(a / b)·b."""
    out = c.out_type()
    like = a if isinstance(a, str) else b
    a, b = c.cast(c.tensor_or_const(a, like), out.dtype), c.cast(c.tensor_or_const(b, like), out.dtype)
    if not out.dtype.startswith(("float", "bfloat")):
        return c.op("Mod", [a, b], {"fmod": 0}, final=True)
    q = c.op("Floor", [c.op("Div", [a, b], types=[out])], types=[out])
    return c.op("Sub", [a, c.op("Mul", [q, b], types=[out])], final=True)


@handles("aten.atan2.default")
def _atan2(c, y, x):
    """atan2 from Atan and the quadrant: ONNX has no atan2."""
    out = c.out_type()
    y, x = c.cast(y, out.dtype), c.cast(x, out.dtype)
    dt = out.dtype
    zero, pi, half = c.const(0.0, dt), c.const(float(np.pi), dt), c.const(float(np.pi / 2), dt)
    bt = out.with_dtype("bool")
    base = c.op("Atan", [c.op("Div", [y, x], types=[out])], types=[out])
    y_neg = c.op("Less", [y, zero], types=[bt])
    x_neg = c.op("Less", [x, zero], types=[bt])
    x_zero = c.op("Equal", [x, zero], types=[bt])
    shift = c.op("Where", [y_neg, c.op("Neg", [pi], types=[c.tt(pi)]), pi], types=[out])
    left = c.op("Add", [base, shift], types=[out])
    res = c.op("Where", [x_neg, left, base], types=[out])
    vert = c.op("Where", [y_neg, c.op("Neg", [half], types=[c.tt(half)]),
                          c.op("Where", [c.op("Equal", [y, zero], types=[bt]), zero, half], types=[out])],
                types=[out])
    return c.op("Where", [x_zero, vert, res], final=True)


@handles("aten.clamp.Tensor")
def _clamp_tensor(c, x, lo=None, hi=None):
    out = c.out_type()
    x = c.cast(x, out.dtype)
    if lo is not None:
        x = c.op("Max", [x, c.cast(c.tensor_or_const(lo, x), out.dtype)], types=[out])
    if hi is not None:
        x = c.op("Min", [x, c.cast(c.tensor_or_const(hi, x), out.dtype)], types=[out])
    return c.op("Identity", [x], final=True)


@handles("aten.hardtanh.default")
def _hardtanh(c, x, lo=-1.0, hi=1.0):
    dt = c.tt(x).dtype
    return c.op("Clip", [x, c.const(lo, dt), c.const(hi, dt)], final=True)


@handles("aten.leaky_relu.default")
def _leaky_relu(c, x, slope=0.01):
    return c.op("LeakyRelu", [x], {"alpha": float(slope)}, final=True)


@handles("aten.elu.default")
def _elu(c, x, alpha=1.0, scale=1.0, input_scale=1.0):
    if scale == 1 and input_scale == 1:
        return c.op("Elu", [x], {"alpha": float(alpha)}, final=True)
    t, dt = c.tt(x), c.tt(x).dtype
    neg = c.op("Mul", [c.const(float(alpha), dt), c.op("Sub", [c.op("Exp", [c.op(
        "Mul", [x, c.const(float(input_scale), dt)], types=[t])], types=[t]), c.const(1.0, dt)], types=[t])], types=[t])
    y = c.op("Where", [c.op("Greater", [x, c.const(0.0, dt)], types=[t.with_dtype("bool")]), x, neg], types=[t])
    return c.op("Mul", [y, c.const(float(scale), dt)], final=True)


# ---- reductions

def _reduce_all(c, op: str, x: str, dims, keepdim: bool, *, to: str | None = None):
    attrs = {"keepdims": int(bool(keepdim))}
    r = c.tt(x).rank
    if dims is not None and list(dims if not isinstance(dims, int) else [dims]):
        attrs["axes"] = _axes(c, dims, r)
    if to is not None:
        x = c.cast(x, to)
    return attrs, x


@handles("aten.amin.default")
def _amin(c, x, dims=None, keepdim=False):
    attrs, x = _reduce_all(c, "ReduceMin", x, dims, keepdim)
    return c.op("ReduceMin", [x], attrs, final=True)


@handles("aten.mean.default")
def _mean_all(c, x, dtype=None):
    x = _float_of(c, x)
    return c.op("ReduceMean", [x], {"keepdims": 0}, final=True)


@handles("aten.sum.default")
def _sum_all(c, x, dtype=None):
    out = c.out_type()
    return c.op("ReduceSum", [c.cast(x, out.dtype)], {"keepdims": 0}, final=True)


@handles("aten.prod.default", "aten.prod.dim_int")
def _prod(c, x, dim=None, keepdim=False, dtype=None):
    out = c.out_type()
    attrs, x = _reduce_all(c, "ReduceProd", x, dim, keepdim, to=out.dtype)
    return c.op("ReduceProd", [x], attrs, final=True)


@handles("aten.any.default", "aten.any.dim", "aten.any.dims")
def _any(c, x, dim=None, keepdim=False):
    t = c.tt(x)
    nz = x if t.dtype == "bool" else c.op("Not", [c.op("Equal", [x, c.const(0, t.dtype)], types=[t.with_dtype("bool")])],
                                         types=[t.with_dtype("bool")])
    attrs, xi = _reduce_all(c, "ReduceMax", nz, dim, keepdim, to="int32")
    red = c.op("ReduceMax", [xi], attrs, types=[c.out_type().with_dtype("int32")])
    return c.op("Cast", [red], {"to": DTYPES["bool"][2]}, final=True)


@handles("aten.argmax.default", "aten.argmin.default")
def _argminmax(c, x, dim=None, keepdim=False):
    op = "ArgMax" if c.node.target.__name__.startswith("argmax") else "ArgMin"
    if dim is None:
        n = c.tt(x).numel()
        x = c.op("Reshape", [x], {"shape": [-1]}, types=[c.tt(x).with_shape((as_dim(sympy.sympify(n)),))])
        dim = 0
    return c.op(op, [x], {"axis": int(dim), "keepdims": int(bool(keepdim))}, final=True)


@handles("aten.max.dim", "aten.min.dim")
def _max_dim(c, x, dim, keepdim=False):
    is_max = c.node.target.__name__.startswith("max")
    vals_t, idx_t = c.out_type(0), c.out_type(1)
    axis = int(dim) % c.tt(x).rank
    vals = c.op("ReduceMax" if is_max else "ReduceMin", [x], {"axes": [axis], "keepdims": int(bool(keepdim))},
                types=[vals_t])
    idx = c.op("ArgMax" if is_max else "ArgMin", [x], {"axis": axis, "keepdims": int(bool(keepdim)),
                                                      "select_last_index": 0}, types=[idx_t])
    return [vals, idx]


@handles("aten.var.correction", "aten.var.dim")
def _var(c, x, dim=None, *rest, correction=None, keepdim=False, unbiased=None):
    if c.node.target._overloadname == "dim":   # var.dim(x, dim, unbiased=True, keepdim=False)
        unbiased = rest[0] if rest else (True if unbiased is None else unbiased)
        keepdim = rest[1] if len(rest) > 1 else keepdim
        corr = 1 if unbiased else 0
    else:
        corr = 1 if correction is None else correction
        keepdim = rest[0] if rest else keepdim
    x = _float_of(c, x)
    t = c.tt(x)
    axes = _axes(c, dim, t.rank)
    n = sympy.Integer(1)
    for a in axes:
        n *= t.shape[a]
    keep_t = t.with_shape(tuple(1 if i in axes else d for i, d in enumerate(t.shape)))
    mean = c.op("ReduceMean", [x], {"axes": axes, "keepdims": 1}, types=[keep_t])
    d = c.op("Sub", [x, mean], types=[t])
    ss = c.op("ReduceSum", [c.op("Mul", [d, d], types=[t])], {"axes": axes, "keepdims": int(bool(keepdim))},
              types=[c.out_type()])
    denom = as_dim(sympy.sympify(n - corr))
    if isinstance(denom, int):
        den = c.const(float(max(denom, 0)), t.dtype)
    else:
        den = c.cast(c.op("Range", [], {"start": denom, "limit": denom + 1, "delta": 1},
                          types=[TensorType("int64", (1,))]), t.dtype)
    return c.op("Div", [ss, den], final=True)


@handles("aten._log_softmax.default", "aten.log_softmax.int")
def _log_softmax(c, x, dim, *rest):
    out = c.out_type()
    return c.op("LogSoftmax", [c.cast(x, out.dtype)], {"axis": int(dim)}, final=True)


@handles("aten.sort.default", "aten.sort.stable")
def _sort(c, x, *args, dim=-1, descending=False, stable=None):
    if c.node.target._overloadname == "stable":
        dim = args[0] if args else dim
        descending = args[1] if len(args) > 1 else descending
    else:
        dim = args[0] if args else dim
        descending = args[1] if len(args) > 1 else descending
    t = c.tt(x)
    axis = int(dim) % t.rank
    return c.op("TopK", [x], {"k": t.shape[axis], "axis": axis, "largest": int(bool(descending)),
                              "sorted": 1}, types=[c.out_type(0), c.out_type(1)], n_out=2)


@handles("aten.linalg_vector_norm.default", "aten.norm.ScalarOpt_dim")
def _vector_norm(c, x, ord=2, dim=None, keepdim=False, *rest, dtype=None):
    out = c.out_type()
    x = c.cast(x, out.dtype)
    t = c.tt(x)
    attrs = {"keepdims": int(bool(keepdim))}
    if dim is not None and list(dim if not isinstance(dim, int) else [dim]):
        attrs["axes"] = _axes(c, dim, t.rank)
    o = float(2 if ord is None else ord)
    if o == 2:
        return c.op("ReduceL2", [x], attrs, final=True)
    if o == 1:
        return c.op("ReduceL1", [x], attrs, final=True)
    a = c.op("Abs", [x], types=[t])
    if o in (float("inf"), float("-inf")):
        return c.op("ReduceMax" if o > 0 else "ReduceMin", [a], attrs, final=True)
    if o == 0:
        nz = c.cast(c.op("Not", [c.op("Equal", [x, c.const(0.0, t.dtype)], types=[t.with_dtype("bool")])],
                         types=[t.with_dtype("bool")]), t.dtype)
        return c.op("ReduceSum", [nz], attrs, final=True)
    s = c.op("ReduceSum", [c.op("Pow", [a, c.const(o, t.dtype)], types=[t])], attrs, types=[out])
    return c.op("Pow", [s, c.const(1.0 / o, t.dtype)], final=True)
