"""aten handlers of the torch importer: the ops transformers models use (arithmetic, linear
layers, matmul, softmax, views, norms, scaled-dot-product attention, masks), each lowered onto ops
of the registry (:mod:`compiler.ir.ops`). Registered into
:data:`compiler.frontends.aten_context.HANDLERS` on import.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from compiler.ir import IRError
from compiler.ir import annotations as ann
from compiler.ir.annotations import AttentionSpec
from compiler.ir.ops import UnsupportedOpError
from compiler.ir import DTYPES
from compiler.frontends.aten_context import INT64_MAX, _Ctx, complex_mul, handles


def _binary(op: str):
    def h(c: _Ctx, a, b, *rest, alpha=1, **kw):
        if op == "Mul" and any(c.is_complex(x) for x in c.node.args[:2]):
            return complex_mul(c, a, b)
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
    (("aten.pow.Tensor_Scalar", "aten.pow.Tensor_Tensor", "aten.pow.Scalar"), "Pow"),
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


@handles("aten.addmm.default", "aten.baddbmm.default")
def _addmm(c, bias, x, w, beta=1, alpha=1):
    out = c.out_type()
    mm = c.op("MatMul", [x, w], types=[out])
    if alpha != 1:
        mm = c.op("Mul", [mm, c.const(alpha, out.dtype)], types=[out])
    if beta == 0:
        return c.op("Identity", [mm], final=True)
    if beta != 1:
        bias = c.op("Mul", [bias, c.const(beta, c.tt(bias).dtype)], types=[c.tt(bias)])
    return c.op("Add", [mm, bias], final=True)


@handles("aten.conv2d.default", "aten.conv1d.default", "aten.convolution.default")
def _conv(c, x, w, b=None, stride=1, padding=0, dilation=1, *rest):
    nd = c.tt(w).rank - 2
    transposed, out_pad = False, 0
    if c.node.target.__name__.startswith("convolution"):
        transposed, out_pad, groups = rest[0], rest[1], rest[2]
    else:
        groups = rest[0] if rest else 1
    if isinstance(padding, str):
        raise UnsupportedOpError(f"convolution with padding={padding!r} is not supported; give integer padding")

    def seq(v):
        return [int(v)] * nd if isinstance(v, int) else [int(e) for e in v]
    pads = seq(padding)
    attrs = {"strides": seq(stride), "pads": pads + pads, "dilations": seq(dilation), "group": int(groups)}
    if transposed:
        attrs["output_padding"] = seq(out_pad)
        return c.op("ConvTranspose", [x, w] + ([b] if b is not None else []), attrs, final=True)
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
    rank = c.tt(x).rank - (1 if c.is_complex(c.node.args[0]) else 0)   # (a complex pair axis is not the user's)
    return c.op("Unsqueeze", [x], {"axes": [int(dim) % (rank + 1)]}, final=True)


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
    mc = c.masks.get(c.node)
    spec = None
    if mc is not None and mc.structured:
        # The exported mask subgraph (causal + packed-sequence bookkeeping from position_ids, a
        # sliding window) was evaluated (see _classify_masks): its meaning replaces it — is_causal
        # (bottom-right with a KV cache) and the window as an attribute the emitter turns into
        # the exact mask at any length. Checked numerically against torch in tests.
        attn_mask, is_causal = None, mc.kind in ("causal", "window")
        if mc.window:
            attrs["window"] = int(mc.window)
        if mc.alibi is not None:
            attrs["alibi_slopes"] = [float(x) for x in mc.alibi]
        spec = AttentionSpec(mask="window" if mc.kind == "window" else ("bias" if mc.alibi else mc.kind),
                             window=mc.window, alibi=mc.alibi is not None)
    elif attn_mask is not None and c.g.meta.get("causal"):
        spec = AttentionSpec(mask="general")
    if is_causal:
        attrs["is_causal"] = 1
    if scale is not None:
        attrs["scale"] = float(scale)
    ins = [q, k, v] + ([attn_mask] if attn_mask is not None else [])
    out = c.op("Attention", ins, attrs, final=True)
    if spec is not None:
        ann.set(c.g.producer_of(out), "attention", spec)
    return out


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


@handles("aten.scatter_.value")
def _scatter_value(c, x, dim, index, value):
    """``x`` with the scalar ``value`` written at ``index`` along ``dim`` (DeepSeek-V3's group-limited
    routing mask; the in-place form rebinds ``x``: :func:`_in_place`)."""
    ity, xty = c.tt(index), c.tt(x)
    upd = c.op("Expand", [c.const(value, xty.dtype)], {"shape": list(ity.shape)}, types=[xty.with_shape(ity.shape)])
    return c.op("ScatterElements", [x, c.cast(index, "int64"), upd], {"axis": int(dim)}, final=True)
