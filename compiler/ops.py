"""The op registry: the single place that knows an op kind.

Each :class:`OpDef` gives an op kind's
- ``kind``: its fusion category (TVM's OpPatternKind: elementwise, broadcast, injective,
  reduction, out_elementwise_fusable, opaque) — fusion rules group by kind, never by op name pairs;
- ``cost_class``: how the cost model treats it (gemm, attention, elementwise, reduction, copy,
  view = metadata only, shape = host-side shape arithmetic);
- ``infer``: its shape rule (output types from operand types and attributes, sympy dims);
- ``flops``: FLOPs at symbolic shapes;
- ``bytes``: bytes moved to/from device memory, split into weights / activations / kv;
- ``emit``: its ONNX emission (``None`` = the standard ONNX op of the same name and attributes).

Ops are standard ONNX ops (same names, same attribute meaning) so that ONNX import and emission
are near-identity; the torch importer lowers aten ops onto them. A few attributes may carry
sympy dims where ONNX wants a runtime shape tensor (``Reshape.shape``, ``Expand.shape``,
``Slice.starts/ends``, ``Range`` bounds, ``ConstantOfShape.shape``); the emitter materializes them.
"""
from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Sequence
from typing import Any

import sympy

from compiler.ir import Graph, IRError, OpNode, TensorType, as_dim


class OpKind(enum.IntEnum):
    ELEMENTWISE = 0
    BROADCAST = 1
    INJECTIVE = 2
    REDUCTION = 3
    OUT_ELEMENTWISE_FUSABLE = 4
    OPAQUE = 8


class UnsupportedOpError(ValueError):
    """An op kind the registry does not know."""


Types = Sequence[TensorType | None]


@dataclasses.dataclass(frozen=True)
class Bytes:
    weights: Any = 0
    activations: Any = 0
    kv: Any = 0

    @property
    def total(self):
        return self.weights + self.activations + self.kv


@dataclasses.dataclass(frozen=True)
class OpDef:
    name: str
    kind: OpKind
    cost_class: str
    infer: Callable[[OpNode, Types], list[TensorType]] | None = None
    flops: Callable[[OpNode, Types, Types], Any] | None = None
    bytes: Callable[[OpNode, Types, Types, "Classifier"], Bytes] | None = None
    emit: Callable | None = None
    commutative: bool = False


REGISTRY: dict[str, OpDef] = {}


def register(opdef: OpDef) -> OpDef:
    REGISTRY[opdef.name] = opdef
    return opdef


def get(op: str, *, where: str = "") -> OpDef:
    try:
        return REGISTRY[op]
    except KeyError:
        loc = f" at {where}" if where else ""
        raise UnsupportedOpError(
            f"operator {op!r}{loc} is not supported by rooftop's op registry. Supported ops: "
            f"{', '.join(sorted(REGISTRY))}. Rewrite the model to avoid it, or add an OpDef for it "
            f"in compiler/ops.py (shape rule, cost rule, ONNX emission).") from None


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
# bytes classification

def attention_q_tiles(l2_bytes: float, heads, head_dim, itemsize, q_len):
    """How many times a fused attention streams K/V from device memory: once per tile of query
    rows whose K/V working set the last-level on-chip memory (L2) can keep resident. Rows per
    tile = (L2/2) / (heads·head_dim·bytes); half the L2 is left for K/V blocks and other
    traffic. (FlashAttention's SRAM-only bound, Dao et al. 2022, assumes no L2 and overstates
    DRAM traffic many times on GPUs with tens of MB of L2.)"""
    rows = max(1, int(l2_bytes / 2 // (heads * head_dim * itemsize))) \
        if isinstance(heads, int) and isinstance(head_dim, int) else 1
    return sympy.ceiling(q_len / rows) if not isinstance(q_len, int) else -(-q_len // rows)


class Classifier:
    """The context cost rules get besides the op: whether a tensor is a weight, an activation or
    KV cache (by graph membership), a weight's stored bytes (its ``weight_format``), and the
    hardware facts a rule needs (``hw``, optional: on-chip memory for attention's query tiles).
    Nothing here writes into the graph."""

    def __init__(self, graph: Graph, hw: Any = None):
        self.graph = graph
        self.hw = hw
        self.kv = set(graph.meta.get("kv_tensors", ()))

    def q_tiles(self, heads, head_dim, itemsize, q_len):
        """Query tiles of a fused attention on this hardware (1 without a hardware context)."""
        if self.hw is None:
            return 1
        return attention_q_tiles(self.hw.onchip.l2_bytes, heads, head_dim, itemsize, q_len)

    def category(self, tensor: str) -> str:
        if tensor in self.kv:
            return "kv"
        if tensor in self.graph.params:
            return "weights"
        return "activations"

    def weight_bytes(self, tensor: str) -> Any:
        """Stored bytes of a weight: its ``weight_format`` annotation's count (values + scales +
        zero points + N:M metadata) when it has one, else dtype × elements."""
        p = self.graph.params[tensor]
        fmt = p.annotations.get("weight_format")
        if fmt is not None:
            return fmt.stored_bytes(p.type.numel(), p.type.shape)
        return _nbytes(p.type)

    def weight_format(self, tensor: str):
        p = self.graph.params.get(tensor)
        return None if p is None else p.annotations.get("weight_format")


def default_bytes(node: OpNode, ins: Types, outs: Types, cls: Classifier) -> Bytes:
    acc = {"weights": 0, "activations": 0, "kv": 0}
    for t, ty in zip(node.inputs, ins):
        if t and ty is not None:
            c = cls.category(t)
            acc[c] += cls.weight_bytes(t) if c == "weights" else _nbytes(ty)
    for t, ty in zip(node.outputs, outs):
        if t and ty is not None:
            acc[cls.category(t)] += _nbytes(ty)
    return Bytes(**acc)


def zero_bytes(node, ins, outs, cls) -> Bytes:
    return Bytes()


def zero_flops(node, ins, outs):
    return 0


def per_output_element(k: int):
    def f(node, ins, outs):
        return k * _numel(outs[0])
    return f


def per_input_element(k: int):
    def f(node, ins, outs):
        return k * _numel(ins[0])
    return f


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
    from compiler.ir import ONNX_TO_DTYPE
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


# ----------------------------------------------------------------------------------------------
# cost rules of the compute-heavy ops

def matmul_flops(node, ins, outs):
    a = ins[0]
    k = a.shape[-1]
    return 2 * _numel(outs[0]) * k


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


def conv_flops(node, ins, outs):
    w = ins[1]
    per_out = 1
    for d in w.shape[1:]:
        per_out *= d   # (C/group)·prod(kernel) MACs per output element
    bias = 1 if len(ins) > 2 and ins[2] is not None else 0
    return (2 * per_out + bias) * _numel(outs[0])


def gemm_flops(node, ins, outs):
    k = ins[0].shape[0 if node.attrs.get("transA") else 1]
    return 2 * _numel(outs[0]) * k + (_numel(outs[0]) if len(ins) > 2 and ins[2] is not None else 0)


def attention_dims(node: OpNode, ins: Types):
    """(batch, q_heads, kv_heads, q_len, kv_len_total, head_dim, v_head_dim) of an Attention node,
    4-D [B, H, S, D] or 3-D [B, S, H·D] operands."""
    b, h, hkv, s, kv_new, d, dv = _attention_heads(node, ins)
    past = ins[4] if len(ins) > 4 and ins[4] is not None else None
    kv_len = kv_new + (past.shape[2] if past is not None else 0)
    return b, h, hkv, s, kv_len, d, dv


def attention_flops(node, ins, outs):
    """QKᵀ and PV matmuls (2 FLOPs per MAC each) plus softmax (≈5 per score: max, sub, exp, sum,
    div). Causal attention computes only the visible (lower-right) triangle: q_len·past +
    q_len(q_len+1)/2 scores per head instead of q_len·kv_len."""
    b, h, _, s, kv, d, dv = attention_dims(node, ins)
    if node.attrs.get("is_causal"):
        past = kv - s
        scores = b * h * (s * past + s * (s + 1) / sympy.Integer(2))
    else:
        scores = b * h * s * kv
    return 2 * scores * d + 2 * scores * dv + 5 * scores


def attention_bytes(node, ins, outs, cls: Classifier) -> Bytes:
    """Fused (FlashAttention-style) traffic: Q read, O written, the whole K/V (past + new) read
    once per query tile, the new K/V appended to the cache. The N×N score matrix never reaches
    device memory. The tile count comes from the cost context's hardware (on-chip memory,
    :meth:`Classifier.q_tiles`); 1 without one."""
    b, h, hkv, s, kv, d, dv = attention_dims(node, ins)
    q, k, v = ins[0], ins[1], ins[2]
    e = sympy.Rational(q.itemsize).limit_denominator(2)
    tiles = cls.q_tiles(h, d, q.itemsize, s)
    q_bytes = b * h * s * d * e
    o_bytes = b * h * s * dv * e
    kv_read = b * hkv * kv * (d + dv) * e * tiles
    has_cache = len(ins) > 4 and ins[4] is not None
    kv_write = b * hkv * s * (d + dv) * e if has_cache else 0
    mask = _nbytes(ins[3]) if len(ins) > 3 and ins[3] is not None else 0
    if has_cache:
        return Bytes(activations=q_bytes + o_bytes + mask, kv=kv_read + kv_write)
    return Bytes(activations=q_bytes + o_bytes + mask + kv_read)


def gather_bytes(node, ins, outs, cls: Classifier) -> Bytes:
    """An embedding lookup reads only the rows it gathers, not the whole table."""
    rows = _nbytes(outs[0])
    cat = cls.category(node.inputs[0])
    idx = _nbytes(ins[1])
    acc = {"weights": 0, "activations": idx + rows, "kv": 0}
    acc[cat] += rows
    return Bytes(**acc)


def norm_flops(node, ins, outs):
    return 8 * _numel(outs[0])


# ----------------------------------------------------------------------------------------------
# the table

_EW_UNARY = {  # op -> FLOPs per element
    "Neg": 1, "Abs": 1, "Relu": 1, "Sqrt": 1, "Reciprocal": 1, "Exp": 1, "Log": 1, "Sin": 1,
    "Cos": 1, "Tanh": 1, "Sigmoid": 4, "Erf": 1, "Not": 1, "Floor": 1, "Ceil": 1, "Round": 1,
    "Sign": 1, "IsNaN": 1, "IsInf": 1, "Softplus": 3, "HardSigmoid": 3, "LeakyRelu": 2,
    "Elu": 3, "Selu": 3, "Celu": 3, "Mish": 6, "HardSwish": 4, "Gelu": 8, "Swish": 5,
}
_EW_BINARY = {"Add": True, "Mul": True, "Sub": False, "Div": False, "Pow": False, "Max": True,
              "Min": True, "And": True, "Or": True, "Xor": True, "Mod": False, "BitShift": False,
              "PRelu": False}
_CMP = ["Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"]

for _op, _k in _EW_UNARY.items():
    register(OpDef(_op, OpKind.ELEMENTWISE, "elementwise", same_as_input(), per_output_element(_k),
                   default_bytes))
for _op, _comm in _EW_BINARY.items():
    register(OpDef(_op, OpKind.BROADCAST, "elementwise", broadcast_rule(), per_output_element(1),
                   default_bytes, commutative=_comm))
for _op in _CMP:
    register(OpDef(_op, OpKind.BROADCAST, "elementwise", broadcast_rule("bool"),
                   per_output_element(1), default_bytes, commutative=_op == "Equal"))
register(OpDef("Where", OpKind.BROADCAST, "elementwise",
               lambda n, i: [TensorType(i[1].dtype, broadcast_shapes(*[t.shape for t in i]))],
               per_output_element(1), default_bytes))
register(OpDef("Clip", OpKind.ELEMENTWISE, "elementwise", same_as_input(), per_output_element(2),
               default_bytes))
register(OpDef("Cast", OpKind.ELEMENTWISE, "elementwise", cast_rule, zero_flops, default_bytes))
register(OpDef("CastLike", OpKind.ELEMENTWISE, "elementwise",
               lambda n, i: [i[0].with_dtype(i[1].dtype)], zero_flops, default_bytes))

for _op in ["Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten"]:
    register(OpDef(_op, OpKind.INJECTIVE, "view",
                   {"Identity": same_as_input(), "Reshape": reshape_rule, "Squeeze": squeeze_rule,
                    "Unsqueeze": unsqueeze_rule, "Flatten": flatten_rule}[_op], zero_flops, zero_bytes))
register(OpDef("Dropout", OpKind.ELEMENTWISE, "view", same_as_input(), zero_flops, zero_bytes))
for _op, _rule in [("Transpose", transpose_rule), ("Concat", concat_rule), ("Slice", slice_rule),
                   ("Expand", expand_rule), ("Split", split_rule), ("Tile", None), ("Pad", None),
                   ("GatherND", gather_nd_rule), ("GatherElements", same_as_input(1)),
                   ("ScatterND", same_as_input()),
                   ("ScatterElements", same_as_input()), ("Trilu", same_as_input()), ("DepthToSpace", None),
                   ("OneHot", None), ("NonZero", None)]:
    register(OpDef(_op, OpKind.INJECTIVE, "copy", _rule, zero_flops, default_bytes))
register(OpDef("Gather", OpKind.INJECTIVE, "copy", gather_rule, zero_flops, gather_bytes))
for _op in ["Shape", "Size", "Constant", "ConstantOfShape", "Range", "EyeLike"]:
    register(OpDef(_op, OpKind.OPAQUE, "shape",
                   {"Shape": shape_rule, "Size": lambda n, i: [TensorType("int64", ())],
                    "EyeLike": same_as_input()}.get(_op), zero_flops, zero_bytes))

for _op, _k in [("ReduceMean", 1), ("ReduceSum", 1), ("ReduceMax", 1), ("ReduceMin", 1),
                ("ReduceProd", 1), ("ReduceL2", 2), ("ReduceSumSquare", 2), ("ReduceLogSumExp", 3),
                ("ArgMax", 1), ("ArgMin", 1), ("CumSum", 1)]:
    register(OpDef(_op, OpKind.REDUCTION, "reduction",
                   reduce_rule if _op.startswith("Reduce") else
                   arg_reduce_rule if _op.startswith("Arg") else same_as_input(), per_input_element(_k),
                   default_bytes))
register(OpDef("TopK", OpKind.REDUCTION, "reduction", None, per_input_element(2), default_bytes))
for _op in ["Softmax", "LogSoftmax"]:
    register(OpDef(_op, OpKind.REDUCTION, "reduction", softmax_like, per_output_element(5),
                   default_bytes))
for _op in ["LayerNormalization", "RMSNormalization", "SkipLayerNormalization",
            "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization"]:
    register(OpDef(_op, OpKind.REDUCTION, "reduction", same_as_input(), norm_flops, default_bytes))

register(OpDef("MatMul", OpKind.OUT_ELEMENTWISE_FUSABLE, "gemm", matmul_rule, matmul_flops,
               default_bytes))
register(OpDef("Gemm", OpKind.OUT_ELEMENTWISE_FUSABLE, "gemm", gemm_rule, gemm_flops,
               default_bytes))
register(OpDef("Conv", OpKind.OUT_ELEMENTWISE_FUSABLE, "gemm", conv_rule, conv_flops,
               default_bytes))
# ONNX RotaryEmbedding (opset 23; torch.onnx dynamo exports of Llama-style models use it):
# x*cos + rotate_half(x)*sin on the rotated part — about 3 FLOPs per output element.
register(OpDef("RotaryEmbedding", OpKind.INJECTIVE, "elementwise", same_as_input(),
               per_output_element(3), default_bytes))
register(OpDef("Attention", OpKind.OPAQUE, "attention", attention_rule, attention_flops,
               attention_bytes))


# ----------------------------------------------------------------------------------------------
# fused ops made by passes/fusion (domain "rooftop": emitted as ONNX local functions). A fused op
# pays only for the tensors crossing its boundary (default_bytes over its own operands/results).

EPILOGUE_FLOPS = {"": 0, "gelu": 8, "gelu_tanh": 8, "relu": 1, "silu": 5}  # per GEMM output element


def matmul_epilogue_rule(node, ins):
    a, w = ins[0], ins[1]
    n = w.shape[-1]
    if node.attrs.get("activation") == "swiglu":
        n = as_dim(sympy.sympify(n) / 2)
    return [TensorType(a.dtype, a.shape[:-1] + (n,))]


def matmul_epilogue_flops(node, ins, outs):
    a, w = ins[0], ins[1]
    m_n = _numel(a) / a.shape[-1] * w.shape[-1]   # GEMM output elements
    act = node.attrs.get("activation", "")
    per = 6 / sympy.Integer(2) if act == "swiglu" else EPILOGUE_FLOPS.get(act, 0)
    bias = 1 if len(ins) > 2 and ins[2] is not None else 0
    return 2 * m_n * a.shape[-1] + (per + bias) * m_n


def swiglu_rule(node, ins):
    x = ins[0]
    if len(ins) == 1:
        return [x.with_shape(x.shape[:-1] + (as_dim(sympy.sympify(x.shape[-1]) / 2),))]
    return [x]


register(OpDef("MatMulEpilogue", OpKind.OUT_ELEMENTWISE_FUSABLE, "gemm", matmul_epilogue_rule,
               matmul_epilogue_flops, default_bytes))
register(OpDef("SwiGLU", OpKind.ELEMENTWISE, "elementwise", swiglu_rule, per_output_element(6),
               default_bytes))
register(OpDef("ResidualNorm", OpKind.REDUCTION, "reduction", lambda n, i: [i[0], i[0]],
               lambda n, i, o: 9 * _numel(o[0]), default_bytes))


# ----------------------------------------------------------------------------------------------

def infer_types(graph: Graph, node: OpNode) -> list[TensorType]:
    d = get(node.op, where=node.name)
    if d.infer is None:
        raise IRError(f"{node.op} has no shape rule; pass explicit types when adding {node.name}")
    ins = [graph.types[t] if t else None for t in node.inputs]
    return d.infer(node, ins)


def op_cost(graph: Graph, node: OpNode, cls: Classifier | None = None) -> tuple[Any, Bytes]:
    """Symbolic (FLOPs, Bytes) of one op from the registry's rules."""
    d = get(node.op, where=node.name)
    cls = cls or Classifier(graph)
    ins = [graph.types[t] if t else None for t in node.inputs]
    outs = [graph.types[t] if t else None for t in node.outputs]
    flops = d.flops(node, ins, outs) if d.flops else 0
    byts = (d.bytes or default_bytes)(node, ins, outs, cls)
    return flops, byts


def is_commutative(op: str) -> bool:
    d = REGISTRY.get(op)
    return bool(d and d.commutative)


def kind_of(op: str) -> OpKind:
    return get(op).kind
