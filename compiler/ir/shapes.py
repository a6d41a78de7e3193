"""Shape rules of the op registry: output types from operand types and attributes (sympy dims).

Each registered op names its rule in compiler/ir/ops.py; passes that create nodes without explicit
types get them from here.
"""
from __future__ import annotations

from collections.abc import Sequence

import sympy

from compiler.ir.tensors import ONNX_TO_DTYPE, IRError, TensorType, as_dim

from compiler.ir.tensors import UnsupportedOpError



# ----------------------------------------------------------------------------------------------
# shape helpers

def broadcast_shapes(*shapes: Sequence) -> tuple:
    rank = max((len(s) for s in shapes), default=0)
    out = []
    for i in range(rank):
        dims = [s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0]
        non1 = [d for d in dims if not (isinstance(d, int) and d == 1)]
        if not non1:
            out.append(1)
            continue
        sym = [d for d in non1 if not isinstance(d, int)]
        ints = {d for d in non1 if isinstance(d, int)}
        if len(ints) > 1:
            raise IRError(f"shapes {shapes} do not broadcast")
        out.append(ints.pop() if ints else sym[0])
    return tuple(out)


def _norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _numel(t: TensorType | None):
    return 0 if t is None else t.numel()


def _nbytes(t: TensorType | None):
    return 0 if t is None else t.numel() * sympy.Rational(t.itemsize).limit_denominator(2)


# ----------------------------------------------------------------------------------------------
# shape rules

def same_as_input(i: int = 0):
    def f(node, ins):
        return [ins[i]]
    return f


def broadcast_rule(dtype: str | None = None):
    def f(node, ins):
        shp = broadcast_shapes(*[t.shape for t in ins if t is not None])
        return [TensorType(dtype or ins[0].dtype, shp)]
    return f


def matmul_rule(node, ins):
    a, b = ins[0].shape, ins[1].shape
    if len(a) == 1 or len(b) == 1:
        raise IRError(f"{node.name}: 1-D MatMul operands are not supported")
    batch = broadcast_shapes(a[:-2], b[:-2])
    return [TensorType(ins[0].dtype, (*batch, a[-2], b[-1]))]


def reduce_rule(node, ins):
    x = ins[0]
    axes = node.attrs.get("axes")
    keep = node.attrs.get("keepdims", 1)
    axes = list(range(x.rank)) if axes is None else [_norm_axis(a, x.rank) for a in axes]
    shp = [1 if i in axes else d for i, d in enumerate(x.shape)] if keep else \
          [d for i, d in enumerate(x.shape) if i not in axes]
    return [TensorType(x.dtype, tuple(shp))]


def transpose_rule(node, ins):
    x = ins[0]
    perm = node.attrs.get("perm") or list(reversed(range(x.rank)))
    return [x.with_shape(tuple(x.shape[p] for p in perm))]


def reshape_rule(node, ins):
    if "shape" not in node.attrs:
        raise IRError(f"{node.name}: Reshape with a runtime shape tensor needs explicit types")
    x = ins[0]
    shape = list(node.attrs["shape"])
    for i, d in enumerate(shape):
        if isinstance(d, int) and d == 0:
            shape[i] = x.shape[i]
    if any(isinstance(d, int) and d == -1 for d in shape):
        known = sympy.Integer(1)
        for d in shape:
            if not (isinstance(d, int) and d == -1):
                known *= d
        shape[shape.index(-1)] = as_dim(sympy.simplify(x.numel() / known))
    return [x.with_shape(tuple(shape))]


def unsqueeze_rule(node, ins):
    x = ins[0]
    out = list(x.shape)
    rank = x.rank + len(node.attrs["axes"])
    for a in sorted(_norm_axis(a, rank) for a in node.attrs["axes"]):
        out.insert(a, 1)
    return [x.with_shape(tuple(out))]


def squeeze_rule(node, ins):
    x = ins[0]
    axes = node.attrs.get("axes")
    if axes is None:
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    axes = {_norm_axis(a, x.rank) for a in axes}
    return [x.with_shape(tuple(d for i, d in enumerate(x.shape) if i not in axes))]


def concat_rule(node, ins):
    axis = _norm_axis(node.attrs["axis"], ins[0].rank)
    total = sum((t.shape[axis] for t in ins), sympy.Integer(0))
    shp = list(ins[0].shape)
    shp[axis] = as_dim(sympy.simplify(total))
    return [ins[0].with_shape(tuple(shp))]


def gather_rule(node, ins):
    data, idx = ins
    axis = _norm_axis(node.attrs.get("axis", 0), data.rank)
    return [data.with_shape(data.shape[:axis] + idx.shape + data.shape[axis + 1:])]


def cast_rule(node, ins):
    to = node.attrs["to"]
    return [ins[0].with_dtype(ONNX_TO_DTYPE[to] if isinstance(to, int) else to)]


def expand_rule(node, ins):
    if "shape" not in node.attrs:
        raise IRError(f"{node.name}: Expand with a runtime shape tensor needs explicit types")
    tgt = tuple(node.attrs["shape"])
    src = ins[0].shape
    tgt = tuple(src[len(src) - len(tgt) + i] if isinstance(d, int) and d in (-1, 1) and
                len(src) - len(tgt) + i >= 0 and d == -1 else d for i, d in enumerate(tgt))
    return [ins[0].with_shape(broadcast_shapes(src, tgt))]


def slice_rule(node, ins):
    x = ins[0]
    shp = list(x.shape)
    for ax, st, en, sp in zip(node.attrs["axes"], node.attrs["starts"], node.attrs["ends"],
                              node.attrs.get("steps") or [1] * len(node.attrs["axes"])):
        ax = _norm_axis(ax, x.rank)
        dim = shp[ax]
        st = _clip(st, dim)
        en = _clip(en, dim)
        shp[ax] = as_dim(sympy.ceiling(sympy.Max(en - st, 0) / sp))
    return [x.with_shape(tuple(shp))]


def _clip(v, dim):
    if isinstance(v, int):
        if v >= 2**62:
            return dim
        if v < 0:
            return dim + v
        if isinstance(dim, int):
            return min(v, dim)
        return v
    return v


def _attention_heads(node, ins):
    """(batch, q_heads, kv_heads, q_len, new_kv_len, head_dim, v_head_dim) of an ONNX Attention
    node, from 4-D operands [B, H, S, D] or the 3-D form [B, S, H·D] with ``q_num_heads`` /
    ``kv_num_heads`` attributes (past/present KV are 4-D in both forms)."""
    q, k, v = ins[0], ins[1], ins[2]
    if q.rank == 4:
        return q.shape[0], q.shape[1], k.shape[1], q.shape[2], k.shape[2], q.shape[3], v.shape[3]
    qh, kvh = node.attrs.get("q_num_heads"), node.attrs.get("kv_num_heads")
    if not qh or not kvh:
        raise IRError(f"{node.name}: Attention with 3-D inputs needs the q_num_heads and kv_num_heads "
                      f"attributes (got {qh!r}, {kvh!r})")
    d = as_dim(sympy.sympify(q.shape[2]) / qh)
    dv = as_dim(sympy.sympify(v.shape[2]) / kvh)
    return q.shape[0], qh, kvh, q.shape[1], k.shape[1], d, dv


def attention_rule(node, ins):
    q, k, v = ins[0], ins[1], ins[2]
    past_k = ins[4] if len(ins) > 4 else None
    b, h, hkv, s, kv_new, d, dv = _attention_heads(node, ins)
    if q.rank == 4:
        out = [q.with_shape(q.shape[:-1] + (dv,))]
    else:
        out = [q.with_shape((b, s, as_dim(sympy.sympify(h * dv))))]
    if len(node.outputs) > 1:
        total = as_dim(sympy.sympify(kv_new + (past_k.shape[2] if past_k is not None else 0)))
        out.append(k.with_shape((b, hkv, total, d)))
        out.append(v.with_shape((b, hkv, total, dv)))
    return out


def softmax_like(node, ins):
    return [ins[0]]


def flatten_rule(node, ins):
    x = ins[0]
    axis = _norm_axis(node.attrs.get("axis", 1), x.rank)
    outer = as_dim(sympy.sympify(sympy.Mul(*x.shape[:axis]))) if axis else 1
    inner = as_dim(sympy.sympify(sympy.Mul(*x.shape[axis:]))) if axis < x.rank else 1
    return [x.with_shape((outer, inner))]


def split_rule(node, ins):
    """Equal split (``num_outputs``, or no ``split`` operand); sizes from a runtime ``split``
    tensor are data, not types — such nodes need explicit types."""
    x = ins[0]
    if len(ins) > 1 and ins[1] is not None:
        raise IRError(f"{node.name}: Split with a 'split' sizes tensor needs explicit types")
    axis = _norm_axis(node.attrs.get("axis", 0), x.rank)
    n = int(node.attrs.get("num_outputs", len(node.outputs)))
    dim = x.shape[axis]
    part = as_dim(sympy.ceiling(sympy.sympify(dim) / n))
    last = as_dim(sympy.sympify(dim - part * (n - 1)))
    return [x.with_shape(x.shape[:axis] + ((part if i < n - 1 else last),) + x.shape[axis + 1:])
            for i in range(n)]


def gather_nd_rule(node, ins):
    data, idx = ins
    b = int(node.attrs.get("batch_dims", 0))
    k = idx.shape[-1]
    if not isinstance(k, int):
        raise IRError(f"{node.name}: GatherND with a symbolic index depth needs explicit types")
    return [data.with_shape(idx.shape[:-1] + data.shape[b + k:])]


def shape_rule(node, ins):
    r = ins[0].rank
    start = node.attrs.get("start", 0)
    end = node.attrs.get("end", r)
    start = min(max(start + r if start < 0 else start, 0), r)
    end = min(max(end + r if end < 0 else end, 0), r)
    return [TensorType("int64", (max(end - start, 0),))]


def gemm_rule(node, ins):
    a, b = ins[0].shape, ins[1].shape
    m = a[1] if node.attrs.get("transA") else a[0]
    n = b[0] if node.attrs.get("transB") else b[1]
    return [TensorType(ins[0].dtype, (m, n))]


def arg_reduce_rule(node, ins):
    x = ins[0]
    axis = _norm_axis(node.attrs.get("axis", 0), x.rank)
    keep = node.attrs.get("keepdims", 1)
    shp = [1 if i == axis else d for i, d in enumerate(x.shape)] if keep else \
          [d for i, d in enumerate(x.shape) if i != axis]
    return [TensorType("int64", tuple(shp))]


def conv_rule(node, ins):
    """ONNX Conv (NOTSET / VALID padding): X [N, C, *spatial], W [M, C/group, *kernel] → [N, M, *out]."""
    x, w = ins[0], ins[1]
    k = w.shape[2:]
    nd = len(k)
    strides = list(node.attrs.get("strides") or [1] * nd)
    dil = list(node.attrs.get("dilations") or [1] * nd)
    pads = list(node.attrs.get("pads") or [0] * (2 * nd))
    if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID", b"NOTSET", b"VALID"):
        raise UnsupportedOpError(f"{node.name}: Conv auto_pad={node.attrs['auto_pad']!r} is not supported; "
                      f"give explicit pads")
    out = []
    for i in range(nd):
        span = sympy.sympify(x.shape[2 + i]) + pads[i] + pads[i + nd] - dil[i] * (k[i] - 1) - 1
        out.append(as_dim(sympy.floor(span / strides[i]) + 1))
    return [TensorType(x.dtype, (x.shape[0], w.shape[0], *out))]


def latent_attention_dims(node, ins):
    """(B, H, S, T, dn, dr, dv, r, e) of a LatentAttention: T = cached + new positions, e the
    element size."""
    qn, qr, lat, kr, w = ins[:5]
    b, h, s, dn = qn.shape
    dr, r = qr.shape[3], lat.shape[3]
    dv = as_dim(sympy.sympify(w.shape[0]) / h - dn)
    past = ins[5].shape[2] if len(ins) > 5 and ins[5] is not None else 0
    e = sympy.Rational(qn.itemsize).limit_denominator(2)
    return b, h, s, s + past, dn, dr, dv, r, e


def latent_attention_rule(node, ins):
    qn, lat, kr = ins[0], ins[2], ins[3]
    b, h, s, t, dn, dr, dv, r, _ = latent_attention_dims(node, ins)
    out = [qn.with_shape((b, h, s, dv))]
    if len(node.outputs) > 1:
        out.append(lat.with_shape((b, 1, as_dim(sympy.sympify(t)), r)))
        out.append(kr.with_shape((b, 1, as_dim(sympy.sympify(t)), dr)))
    return out


# ----------------------------------------------------------------------------------------------
# grouped expert GEMM (compiler/frontends/moe.py): ``MoEMatMul(x [R, K], w [E, K, N], expert [R])``
# → [R, N], row i multiplied by expert ``expert[i]``'s weight — the routed (token, slot) rows of
# one projection of an MoE layer in one grouped GEMM (vLLM's fused_moe, TensorRT-LLM's MoE plugin,
# torch._grouped_mm). Costed per step by compiler/perf/cost.py with the layer's routing (the
# ``moe`` annotation): weights of the distinct experts touched, one launch (``dispatch=grouped``)
# or one per touched expert (``dispatch=loop``: a per-expert loop).

def moe_matmul_rule(node, ins):
    x, w = ins[0], ins[1]
    return [TensorType(x.dtype, (x.shape[0], w.shape[2]))]
# the rest of the standard ONNX ops that exporters emit for transformer, vision and audio models
# (tools/onnx_conformance.py checks each against the ONNX backend node tests). Importers type them
# from ONNX shape inference; the shape rules below cover what passes create. Not registered, so
# refused at import with the reason: control flow (If/Loop/Scan: subgraphs), sequences, optionals,
# strings, random generators and training-only ops.

def _numel_of(i: int):
    return lambda node, ins, outs: _numel(ins[i]) if len(ins) > i else 0


def det_rule(node, ins):
    return [ins[0].with_shape(ins[0].shape[:-2])]


def variadic_rule(node, ins):
    return [TensorType(ins[0].dtype, broadcast_shapes(*[t.shape for t in ins if t is not None]))]


def matmul_epilogue_rule(node, ins):
    a, w = ins[0], ins[1]
    n = w.shape[-1]
    if node.attrs.get("activation") == "swiglu":
        n = as_dim(sympy.sympify(n) / 2)
    return [TensorType(a.dtype, a.shape[:-1] + (n,))]


def swiglu_rule(node, ins):
    x = ins[0]
    if len(ins) == 1:
        return [x.with_shape(x.shape[:-1] + (as_dim(sympy.sympify(x.shape[-1]) / 2),))]
    return [x]


# ----------------------------------------------------------------------------------------------
# paged KV cache (passes/kv_paging.py): the block-table indirection of PagedAttention.
# ``PagedKVGather(pool [num_blocks, kv_heads, block_size, head_dim], block_table [B, max_blocks])``
# → ``[B, kv_heads, max_blocks·block_size, head_dim]``: each sequence's blocks in table order, as
# the contiguous past its Attention reads. Emitted as standard ONNX (Gather on axis 0 → Transpose
# → Reshape). Costed as a view: a paged attention kernel (vLLM's PagedAttention) reads the blocks
# in place through the table, and those reads are the Attention op's KV bytes (its past operand);
# onnxruntime, which has no paged kernel, materializes the gather.

def paged_kv_gather_rule(node, ins):
    pool, table = ins[0], ins[1]
    if pool.rank != 4 or table.rank != 2:
        raise IRError(f"{node.name}: PagedKVGather needs a pool [num_blocks, kv_heads, block_size, head_dim] "
                      f"and a block table [B, max_blocks], got {pool} and {table}")
    _, h, bs, d = pool.shape
    return [pool.with_shape((table.shape[0], h, as_dim(sympy.sympify(table.shape[1]) * bs), d))]
