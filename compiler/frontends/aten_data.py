"""aten handlers of the torch importer: data movement (flip, repeat, pad, scatter, index_put,
…), creation, normalization, convolution / pooling / resampling, complex values (rotary
embeddings in complex form), the ops refused with their reason (:data:`REFUSED`), and rooftop's own
custom ops (MoE experts, attention with window / softcap / sinks, latent attention).
"""
from __future__ import annotations

import operator

import numpy as np
import sympy

from compiler.ir import TensorType, as_dim
from compiler.ir.ops import UnsupportedOpError, broadcast_shapes
from compiler.frontends import attention as attention_import
from compiler.frontends import mla as mla_import
from compiler.frontends.moe import translate
from compiler.frontends.aten_context import INT64_MAX, _axes, _ints, handles


# ---- data movement

@handles("aten.flip.default")
def _flip(c, x, dims):
    axes = _axes(c, dims, c.tt(x).rank)
    return c.op("Slice", [x], {"starts": [-1] * len(axes), "ends": [-INT64_MAX] * len(axes), "axes": axes,
                               "steps": [-1] * len(axes)}, final=True)


@handles("aten.repeat.default")
def _repeat(c, x, repeats):
    t = c.tt(x)
    reps = [c.sym(r) for r in repeats]
    if len(reps) > t.rank:
        shp = (1,) * (len(reps) - t.rank) + t.shape
        x = c.op("Reshape", [x], {"shape": list(shp)}, types=[t.with_shape(shp)])
    if not all(isinstance(r, int) for r in reps):
        # symbolic counts (Bloom's ALiBi: repeat(batch, 1, 1)): Tile as Expand of an interleaved
        # view, [d0, d1, …] → [1, d0, 1, d1, …] → [r0, d0, r1, d1, …] → [r0·d0, r1·d1, …]
        t = c.tt(x)
        inter = tuple(v for d in t.shape for v in (1, d))
        u = c.op("Reshape", [x], {"shape": list(inter)}, types=[t.with_shape(inter)])
        full = tuple(v for r, d in zip(reps, t.shape) for v in (r, d))
        e = c.op("Expand", [u], {"shape": list(full)}, types=[t.with_shape(full)])
        return c.op("Reshape", [e], {"shape": list(c.out_type().shape)}, final=True)
    return c.op("Tile", [x, c.const(reps, "int64")], final=True)


def _pads(pad, rank: int) -> list[int]:
    """torch pads (last dim first, begin/end pairs) → ONNX pads [begins…, ends…]."""
    k = len(pad) // 2
    begin, end = [0] * rank, [0] * rank
    for i in range(k):
        begin[rank - 1 - i] = int(pad[2 * i])
        end[rank - 1 - i] = int(pad[2 * i + 1])
    return begin + end


@handles("aten.constant_pad_nd.default", "aten.pad.default")
def _constant_pad(c, x, pad, *rest, **kw):
    mode, value = "constant", 0.0
    if c.node.target._schema.name.endswith("::pad"):
        mode = rest[0] if rest else kw.get("mode", "constant")
        value = (rest[1] if len(rest) > 1 else kw.get("value")) or 0.0
    else:
        value = rest[0] if rest else kw.get("value", 0)
    onnx_mode = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}.get(mode)
    if onnx_mode is None:
        raise UnsupportedOpError(f"aten.pad with mode={mode!r} is not supported")
    t = c.tt(x)
    ins = [x, c.const(_pads([c.sym(p) for p in pad], t.rank), "int64")]
    if onnx_mode == "constant":
        ins.append(c.const(value, t.dtype))
    return c.op("Pad", ins, {"mode": onnx_mode}, final=True)


def _pad_mode(mode: str):
    def h(c, x, padding):
        t = c.tt(x)
        return c.op("Pad", [x, c.const(_pads([c.sym(p) for p in padding], t.rank), "int64")], {"mode": mode},
                    final=True)
    return h


for _names, _mode in [(("aten.reflection_pad1d.default", "aten.reflection_pad2d.default",
                        "aten.reflection_pad3d.default"), "reflect"),
                      (("aten.replication_pad1d.default", "aten.replication_pad2d.default",
                        "aten.replication_pad3d.default"), "edge")]:
    handles(*_names)(_pad_mode(_mode))


@handles("aten.index_select.default")
def _index_select(c, x, dim, index):
    return c.op("Gather", [x, c.cast(index, "int64")], {"axis": int(dim)}, final=True)


@handles("aten.scatter.value", "aten.scatter.src", "aten.scatter_add.default", "aten.scatter.value_reduce",
         "aten.scatter.reduce")
def _scatter(c, x, dim, index, src, reduce=None):
    it = c.tt(index)
    if not isinstance(src, str):
        src = c.op("ConstantOfShape", [], {"shape": list(it.shape), "value": src},
                   types=[it.with_dtype(c.tt(x).dtype)])
    elif c.tt(src).shape != it.shape:
        st = c.tt(src)
        src = c.op("Slice", [src], {"starts": [0] * it.rank, "ends": list(it.shape), "axes": list(range(it.rank)),
                                    "steps": [1] * it.rank}, types=[st.with_shape(it.shape)])
    red = "add" if c.node.target.__name__.startswith("scatter_add") else \
        {None: "none", "add": "add", "multiply": "mul"}.get(reduce)
    if red is None:
        raise UnsupportedOpError(f"aten.scatter with reduce={reduce!r} is not supported")
    return c.op("ScatterElements", [x, c.cast(index, "int64"), c.cast(src, c.tt(x).dtype)],
                {"axis": int(dim), "reduction": red}, final=True)


@handles("aten.scatter_reduce.two")
def _scatter_reduce(c, x, dim, index, src, reduce, include_self=True):
    red = {"sum": "add", "prod": "mul", "amax": "max", "amin": "min"}.get(reduce)
    if red is None or not include_self:
        raise UnsupportedOpError(f"aten.scatter_reduce with reduce={reduce!r}, include_self={include_self} "
                                 f"has no ONNX ScatterElements form (sum/prod/amax/amin with include_self only)")
    return c.op("ScatterElements", [x, c.cast(index, "int64"), src], {"axis": int(dim), "reduction": red},
                final=True)


def _nd_indices(c, indices) -> tuple[str, tuple]:
    """The ScatterND/GatherND index tensor of indices on the leading axes (broadcast together):
    [*broadcast shape, k]; returns it and the broadcast shape."""
    idx = [c.cast(i, "int64") for i in indices]
    bshape = broadcast_shapes(*[c.tt(i).shape for i in idx])
    parts = []
    for i in idx:
        u = c.op("Unsqueeze", [i], {"axes": [c.tt(i).rank]}, types=[c.tt(i).with_shape(c.tt(i).shape + (1,))])
        parts.append(c.op("Expand", [u], {"shape": list(bshape) + [1]},
                          types=[TensorType("int64", tuple(bshape) + (1,))]))
    cat = c.op("Concat", parts, {"axis": -1}, types=[TensorType("int64", tuple(bshape) + (len(idx),))]) \
        if len(parts) > 1 else parts[0]
    return cat, tuple(bshape)


@handles("aten.index_put.default", "aten.index_put_.default", "aten._unsafe_index_put.default")
def _index_put(c, x, indices, values, accumulate=False):
    t = c.tt(x)
    if len(indices) == 1 and indices[0] is not None and c.tt(indices[0]).dtype == "bool":
        m = indices[0]   # x[mask] = v with a broadcastable v: a select
        if c.tt(m).rank == t.rank and c.tt(values).rank <= 1 and not accumulate:
            v = c.cast(values, t.dtype)
            if c.tt(values).rank == 1:
                v = c.op("Squeeze", [v], {"axes": [0]}, types=[c.tt(v).with_shape(())]) \
                    if c.tt(values).shape == (1,) else v
            return c.op("Where", [m, v, x], final=True)
        raise UnsupportedOpError("aten.index_put with a boolean mask selecting a data-dependent number of "
                                 "elements is not supported")
    if any(i is None for i in indices):
        raise UnsupportedOpError("aten.index_put with skipped (None) leading dimensions is not supported")
    idx, bshape = _nd_indices(c, indices)
    vshape = tuple(bshape) + t.shape[len(indices):]
    v = c.cast(values, t.dtype)
    if c.tt(v).shape != vshape:
        v = c.op("Expand", [v], {"shape": list(vshape)}, types=[t.with_shape(vshape)])
    return c.op("ScatterND", [x, idx, v], {"reduction": "add" if accumulate else "none"}, final=True)


@handles("aten.select_scatter.default")
def _select_scatter(c, x, src, dim, index):
    t = c.tt(x)
    d = int(dim) % t.rank
    n = t.shape[d]
    i = int(index)
    if i < 0:
        if not isinstance(n, int):
            raise UnsupportedOpError("aten.select_scatter with a negative index on a symbolic axis is not supported")
        i += n
    u = c.op("Unsqueeze", [c.cast(src, t.dtype)], {"axes": [d]},
             types=[t.with_shape(t.shape[:d] + (1,) + t.shape[d + 1:])])
    return _splice(c, x, u, d, i, i + 1)


@handles("aten.slice_scatter.default")
def _slice_scatter(c, x, src, dim=0, start=None, end=None, step=1):
    t = c.tt(x)
    d = int(dim) % t.rank
    if int(step) != 1:
        raise UnsupportedOpError("aten.slice_scatter with step != 1 is not supported")
    n = t.shape[d]
    st = 0 if start is None else c.sym(start)
    en = n if end is None or (isinstance(end, int) and end >= INT64_MAX) else c.sym(end)
    if isinstance(st, int) and st < 0:
        st = as_dim(sympy.sympify(n) + st)
    if isinstance(en, int) and en < 0:
        en = as_dim(sympy.sympify(n) + en)
    return _splice(c, x, c.cast(src, t.dtype), d, st, en)


def _splice(c, x, part, d, st, en):
    """x with x[..., st:en, ...] (axis d) replaced by ``part``: Concat of the pieces."""
    t = c.tt(x)
    pieces = []
    if not (isinstance(st, int) and st == 0):
        pieces.append(c.op("Slice", [x], {"starts": [0], "ends": [st], "axes": [d], "steps": [1]},
                           types=[t.with_shape(t.shape[:d] + (st,) + t.shape[d + 1:])]))
    pieces.append(part)
    if not (en == t.shape[d]):
        rest = as_dim(sympy.sympify(t.shape[d]) - en)
        pieces.append(c.op("Slice", [x], {"starts": [en], "ends": [INT64_MAX], "axes": [d], "steps": [1]},
                           types=[t.with_shape(t.shape[:d] + (rest,) + t.shape[d + 1:])]))
    if len(pieces) == 1:
        return c.op("Identity", pieces, final=True)
    return c.op("Concat", pieces, {"axis": d}, final=True)


@handles("aten.nonzero.default")
def _nonzero(c, x):
    if c.tt(x).rank == 0:
        raise UnsupportedOpError("aten.nonzero of a 0-d tensor (torch gives [n, 0] indices, ONNX NonZero "
                                 "has no such form): give it at least one dimension")
    out = c.out_type()
    nz = c.op("NonZero", [x], types=[out.with_shape((out.shape[1], out.shape[0]))])
    return c.op("Transpose", [nz], {"perm": [1, 0]}, final=True)


@handles("aten.copy.default", "aten.copy_.default")
def _copy(c, x, src, non_blocking=False):
    out = c.out_type()
    s = c.cast(c.tensor_or_const(src, x), out.dtype)
    if c.tt(s).shape == out.shape:
        return c.op("Identity", [s], final=True)
    return c.op("Expand", [s], {"shape": list(out.shape)}, final=True)


@handles("aten.stack.default")
def _stack(c, xs, dim=0):
    r = c.tt(xs[0]).rank + 1
    d = int(dim) % r
    us = [c.op("Unsqueeze", [x], {"axes": [d]}, types=[c.tt(x).with_shape(c.tt(x).shape[:d] + (1,) + c.tt(x).shape[d:])])
          for x in xs]
    return c.op("Concat", us, {"axis": d}, final=True)


@handles("aten.diagonal.default")
def _diagonal(c, x, offset=0, dim1=0, dim2=1):
    t = c.tt(x)
    d1, d2 = int(dim1) % t.rank, int(dim2) % t.rank
    out = c.out_type()
    n = out.shape[-1]
    if not (isinstance(n, int) and all(isinstance(s, int) for s in t.shape)):
        raise UnsupportedOpError("aten.diagonal of a tensor with symbolic dims is not supported")
    perm = [i for i in range(t.rank) if i not in (d1, d2)] + [d1, d2]
    moved = c.op("Transpose", [x], {"perm": perm}, types=[t.with_shape(tuple(t.shape[p] for p in perm))])
    rows = np.arange(n) + max(-int(offset), 0)
    cols = np.arange(n) + max(int(offset), 0)
    lead = tuple(t.shape[p] for p in perm[:-2])
    flat = c.op("Reshape", [moved], {"shape": list(lead) + [t.shape[d1] * t.shape[d2]]},
                types=[t.with_shape(lead + (t.shape[d1] * t.shape[d2],))])
    return c.op("Gather", [flat, c.const(rows * t.shape[d2] + cols, "int64")], {"axis": len(lead)}, final=True)


# ---- creation

@handles("aten.empty.memory_format", "aten.empty_strided.default", "aten.new_empty.default",
         "aten.new_empty_strided.default", "aten.empty_like.default", "aten.zeros_like.default")
def _empty(c, *args, **kw):
    """Uninitialized memory: zeros (what it holds is overwritten before it is read)."""
    out = c.out_type()
    return c.op("ConstantOfShape", [], {"shape": list(out.shape), "value": 0}, final=True)


@handles("aten.fill.Scalar", "aten.fill_.Scalar")
def _fill_scalar(c, x, value):
    out = c.out_type()
    return c.op("ConstantOfShape", [], {"shape": list(out.shape), "value": value}, final=True)


@handles("aten.fill.Tensor", "aten.fill_.Tensor")
def _fill_tensor(c, x, value):
    out = c.out_type()
    return c.op("Expand", [c.cast(value, out.dtype)], {"shape": list(out.shape)}, final=True)


@handles("aten.scalar_tensor.default")
def _scalar_tensor(c, s, **kw):
    out = c.out_type()
    if not isinstance(s, (int, float, bool)):
        raise UnsupportedOpError("aten.scalar_tensor of a symbolic value is not supported")
    return c.op("Identity", [c.const(s, out.dtype)], final=True)


@handles("aten.native_dropout.default")
def _native_dropout(c, x, p, train):
    if train and p:
        raise UnsupportedOpError("aten.native_dropout in training mode is random; export the model in eval() mode")
    out, mask_t = c.out_type(0), c.out_type(1)
    return [c.op("Identity", [x], types=[out]),
            c.op("ConstantOfShape", [], {"shape": list(mask_t.shape), "value": True}, types=[mask_t])]


# ---- normalization

def _users_of_outputs(c) -> set[int]:
    return {u.args[1] for u in c.node.users if u.target is operator.getitem}


@handles("aten.native_layer_norm.default")
def _native_layer_norm(c, x, shape, w=None, b=None, eps=1e-5):
    t = c.tt(x)
    ins = [x, w if w is not None else c.const(np.ones(shape, np.float32), t.dtype)]
    if b is not None:
        ins.append(b)
    used = _users_of_outputs(c)
    attrs = {"axis": -len(shape), "epsilon": float(eps)}
    if used <= {0}:
        return [c.op("LayerNormalization", ins, attrs, types=[c.out_type(0)]), None, None]
    return c.op("LayerNormalization", ins, attrs, types=[c.out_type(i) for i in range(3)], n_out=3)


@handles("aten._native_batch_norm_legit_no_training.default")
def _batch_norm_eval(c, x, w, b, mean, var, momentum=0.1, eps=1e-5):
    t = c.tt(x)
    ch = t.shape[1]
    w = w if w is not None else c.const(np.ones(ch, np.float32), t.dtype)
    b = b if b is not None else c.const(np.zeros(ch, np.float32), t.dtype)
    y = c.op("BatchNormalization", [x, w, b, mean, var], {"epsilon": float(eps)}, types=[c.out_type(0)])
    return [y, None, None]


@handles("aten.native_group_norm.default")
def _group_norm(c, x, w, b, n, ch, hw, groups, eps):
    """(x − mean) / sqrt(var + eps) per group, then the per-channel affine (from primitives:
    onnxruntime's GroupNormalization kernels differ in what they accept)."""
    t = c.tt(x)
    g = int(groups)
    grouped = (t.shape[0], g, as_dim(sympy.sympify(t.numel()) / (t.shape[0] * g)))
    gt = t.with_shape(grouped)
    xg = c.op("Reshape", [x], {"shape": list(grouped)}, types=[gt])
    kt = gt.with_shape((grouped[0], g, 1))
    mean = c.op("ReduceMean", [xg], {"axes": [2], "keepdims": 1}, types=[kt])
    d = c.op("Sub", [xg, mean], types=[gt])
    var = c.op("ReduceMean", [c.op("Mul", [d, d], types=[gt])], {"axes": [2], "keepdims": 1}, types=[kt])
    inv = c.op("Reciprocal", [c.op("Sqrt", [c.op("Add", [var, c.const(float(eps), t.dtype)], types=[kt])],
                                   types=[kt])], types=[kt])
    y = c.op("Reshape", [c.op("Mul", [d, inv], types=[gt])], {"shape": list(t.shape)}, types=[t])
    cshape = (t.shape[1],) + (1,) * (t.rank - 2)
    if w is not None:
        y = c.op("Mul", [y, c.op("Reshape", [w], {"shape": list(cshape)}, types=[c.tt(w).with_shape(cshape)])],
                 types=[t])
    if b is not None:
        y = c.op("Add", [y, c.op("Reshape", [b], {"shape": list(cshape)}, types=[c.tt(b).with_shape(cshape)])],
                 types=[t])
    st = t.with_shape(grouped[:2])   # mean and 1/std per (sample, group), as torch returns them
    return [c.op("Identity", [y], types=[c.out_type(0)]),
            c.op("Reshape", [mean], {"shape": list(grouped[:2])}, types=[st]),
            c.op("Reshape", [inv], {"shape": list(grouped[:2])}, types=[st])]


@handles("aten.avg_pool2d.default", "aten.avg_pool3d.default", "aten.avg_pool1d.default")
def _avg_pool(c, x, kernel, stride=(), padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None):
    nd = c.tt(x).rank - 2
    if divisor_override:
        raise UnsupportedOpError("aten.avg_pool with divisor_override has no ONNX AveragePool form")
    k = _ints(kernel, nd)
    st = _ints(stride, nd) if stride else k
    pads = _ints(padding, nd)
    return c.op("AveragePool", [x], {"kernel_shape": k, "strides": st, "pads": pads + pads,
                                     "ceil_mode": int(bool(ceil_mode)),
                                     "count_include_pad": int(bool(count_include_pad))}, final=True)


@handles("aten.max_pool2d_with_indices.default", "aten.max_pool3d_with_indices.default")
def _max_pool(c, x, kernel, stride=(), padding=0, dilation=1, ceil_mode=False):
    nd = c.tt(x).rank - 2
    if 1 in _users_of_outputs(c):
        raise UnsupportedOpError("aten.max_pool with its indices used: ONNX MaxPool's indices are flattened "
                                 "differently (over the whole tensor)")
    k = _ints(kernel, nd)
    st = _ints(stride, nd) if stride else k
    pads = _ints(padding, nd)
    y = c.op("MaxPool", [x], {"kernel_shape": k, "strides": st, "pads": pads + pads,
                              "dilations": _ints(dilation, nd), "ceil_mode": int(bool(ceil_mode))},
             types=[c.out_type(0)])
    return [y, None]


@handles("aten._adaptive_avg_pool2d.default", "aten._adaptive_avg_pool3d.default",
         "aten.adaptive_avg_pool1d.default")
def _adaptive_avg_pool(c, x, output_size):
    t = c.tt(x)
    nd = t.rank - 2
    outs = _ints(output_size, nd)
    if all(o == 1 for o in outs):
        return c.op("GlobalAveragePool", [x], final=True)
    ins = t.shape[2:]
    if all(isinstance(i, int) and i % o == 0 for i, o in zip(ins, outs)):
        k = [i // o for i, o in zip(ins, outs)]
        return c.op("AveragePool", [x], {"kernel_shape": k, "strides": k}, final=True)
    raise UnsupportedOpError(f"aten.adaptive_avg_pool from {list(ins)} to {outs}: the output size must divide the "
                             f"input size (or be 1) for an ONNX AveragePool")


@handles("aten.upsample_nearest2d.vec", "aten.upsample_bilinear2d.vec", "aten.upsample_nearest1d.vec",
         "aten.upsample_linear1d.vec", "aten.upsample_nearest3d.vec", "aten.upsample_trilinear3d.vec",
         "aten.upsample_bicubic2d.vec")
def _upsample(c, x, output_size, *rest):
    name = c.node.target.__name__
    out = c.out_type()
    if not all(isinstance(d, int) for d in out.shape[2:]):
        raise UnsupportedOpError(f"aten.{name.split('.')[0]} to a symbolic size is not supported")
    sizes = c.const([c.tt(x).shape[0] if isinstance(c.tt(x).shape[0], int) else 1, c.tt(x).shape[1]]
                    + list(out.shape[2:]), "int64") if isinstance(c.tt(x).shape[0], int) else None
    if "nearest" in name:
        attrs = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    else:
        align = bool(rest[0]) if rest else False
        attrs = {"mode": "cubic" if "bicubic" in name else "linear",
                 "coordinate_transformation_mode": "align_corners" if align else "pytorch_half_pixel"}
        if "bicubic" in name:
            attrs["cubic_coeff_a"] = -0.75
    if sizes is None:   # symbolic batch: sizes of the spatial axes only
        sizes = c.const(list(out.shape[2:]), "int64")
        attrs["axes"] = list(range(2, out.rank))
    return c.op("Resize", [x, "", "", sizes], attrs, final=True)


@handles("aten.grid_sampler_2d.default")
def _grid_sample(c, x, grid, mode, padding_mode, align_corners):
    return c.op("GridSample", [x, grid], {"mode": ["linear", "nearest", "cubic"][int(mode)],
                                         "padding_mode": ["zeros", "border", "reflection"][int(padding_mode)],
                                         "align_corners": int(bool(align_corners))}, final=True)


@handles("aten.col2im.default")
def _col2im(c, x, output_size, kernel, dilation, padding, stride):
    pads = _ints(padding, 2)
    return c.op("Col2Im", [x, c.const(_ints(output_size, 2), "int64"), c.const(_ints(kernel, 2), "int64")],
                {"dilations": _ints(dilation, 2), "pads": pads + pads, "strides": _ints(stride, 2)}, final=True)


@handles("aten._cdist_forward.default")
def _cdist(c, a, b, p, compute_mode=None):
    """‖a_i − b_j‖_p over the last axis (the direct form torch uses for small inputs)."""
    ta, tb = c.tt(a), c.tt(b)
    ua = c.op("Unsqueeze", [a], {"axes": [ta.rank - 1]}, types=[ta.with_shape(ta.shape[:-1] + (1, ta.shape[-1]))])
    ub = c.op("Unsqueeze", [b], {"axes": [tb.rank - 2]}, types=[tb.with_shape(tb.shape[:-2] + (1,) + tb.shape[-2:])])
    dshape = broadcast_shapes(c.tt(ua).shape, c.tt(ub).shape)
    dt = ta.with_shape(dshape)
    diff = c.op("Abs", [c.op("Sub", [ua, ub], types=[dt])], types=[dt])
    out = c.out_type()
    p = float(p)
    if p == 2.0:
        return c.op("Sqrt", [c.op("ReduceSum", [c.op("Mul", [diff, diff], types=[dt])], {"axes": [-1], "keepdims": 0},
                                  types=[out])], final=True)
    if p == 1.0:
        return c.op("ReduceSum", [diff], {"axes": [-1], "keepdims": 0}, final=True)
    if p == float("inf"):
        return c.op("ReduceMax", [diff], {"axes": [-1], "keepdims": 0}, final=True)
    if p == 0.0:   # the number of differing coordinates
        bt = dt.with_dtype("bool")
        nz = c.op("Not", [c.op("Equal", [diff, c.const(0.0, ta.dtype)], types=[bt])], types=[bt])
        return c.op("ReduceSum", [c.cast(nz, ta.dtype)], {"axes": [-1], "keepdims": 0}, final=True)
    s = c.op("ReduceSum", [c.op("Pow", [diff, c.const(p, ta.dtype)], types=[dt])], {"axes": [-1], "keepdims": 0},
             types=[out])
    return c.op("Pow", [s, c.const(1.0 / p, ta.dtype)], final=True)


# ---- complex values (rotary embeddings in complex form, DeepSeek-V2): [..., 2] real pairs

@handles("aten.polar.default")
def _polar(c, mag, angle):
    t = c.tt(angle)
    u = t.with_shape(t.shape + (1,))
    re = c.op("Unsqueeze", [c.op("Mul", [mag, c.op("Cos", [angle], types=[t])], types=[t])], {"axes": [t.rank]}, types=[u])
    im = c.op("Unsqueeze", [c.op("Mul", [mag, c.op("Sin", [angle], types=[t])], types=[t])], {"axes": [t.rank]}, types=[u])
    return c.op("Concat", [re, im], {"axis": -1}, final=True)


@handles("aten.view_as_complex.default", "aten.view_as_real.default")
def _complex_view(c, x):
    return c.op("Identity", [x], final=True)


# ---- ops refused with their reason (an exit-2 message naming the op, never a traceback)

REFUSED: dict[str, str] = {
    **{f"aten.{n}.default": "a training (backward) op: export the model for inference (eval(), no autograd)"
       for n in ("_adaptive_avg_pool2d_backward", "avg_pool2d_backward", "convolution_backward",
                 "embedding_dense_backward", "max_pool2d_with_indices_backward", "native_group_norm_backward",
                 "native_layer_norm_backward")},
    "aten._native_batch_norm_legit.default": "batch norm in training mode (batch statistics): export in eval()",
    "aten._native_batch_norm_legit.no_stats": "batch norm in training mode (batch statistics): export in eval()",
    "aten.rand.default": "a random op: the model's output would not be a function of its inputs",
    "aten.randn.default": "a random op: the model's output would not be a function of its inputs",
    "aten.randperm.default": "a random op: the model's output would not be a function of its inputs",
    "aten._local_scalar_dense.default": "reads a tensor value into Python (.item()): data-dependent control flow",
    "aten.as_strided.default": "arbitrary strided views have no ONNX form (use view/permute/slice)",
    "aten.masked_scatter.default": "scatters a data-dependent number of elements",
    "aten._embedding_bag.default": "embedding bags (offsets into ragged bags) are not supported",
    "aten._pdist_forward.default": "pairwise distances (condensed form) are not supported",
    "aten._fft_r2c.default": "FFTs produce complex spectra, which rooftop does not import",
    "aten._fft_c2r.default": "FFTs produce complex spectra, which rooftop does not import",
    "aten.histc.default": "histograms (data-dependent bin counts) are not supported",
}


@handles("rooftop.moe_experts.default")
def _moe_experts(c, hidden, idx, weights, gate_up, down, gate_up_bias=None, down_bias=None, act="silu",
                 transposed=False, interleaved=False, alpha=0.0, limit=0.0):
    """A MoE layer's routed experts (compiler/frontends/moe.py): grouped expert GEMMs over the routed rows."""
    return translate(c, hidden, idx, weights, gate_up, down, gate_up_bias, down_bias, act, transposed,
                     interleaved, alpha, limit)


@handles("rooftop.attention.default")
def _rooftop_attention(c, q, k, v, sinks, scale, softcap, window, mask=None):
    """Attention with the layer's window / softcap / sinks (compiler/frontends/attention.py)."""
    return attention_import.translate(c, q, k, v, sinks, scale, softcap, window, mask)


@handles("rooftop.mla_attention.default")
def _mla_attention(c, q_nope, q_rope, latent, k_rope, w_kv_b, scale, mask=None):
    """Multi-head latent attention (compiler/frontends/mla.py)."""
    return mla_import.translate(c, q_nope, q_rope, latent, k_rope, w_kv_b, scale, mask)


@handles("<built-in function getitem>")
def _getitem(c, tup, i):
    return tup[i]
