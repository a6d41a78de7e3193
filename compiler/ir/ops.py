"""The op registry: the single place that knows an op kind.

Each :class:`OpDef` gives an op kind's
- ``kind``: its fusion category (TVM's OpPatternKind: elementwise, broadcast, injective,
  reduction, out_elementwise_fusable, opaque) — fusion rules group by kind, never by op name pairs;
- ``cost_class``: how the cost model treats it (gemm, attention, elementwise, reduction, copy,
  view = metadata only, shape = host-side shape arithmetic);
- ``infer``: its shape rule (output types from operand types and attributes, sympy dims);
- ``flops``: FLOPs at symbolic shapes;
- ``bytes``: bytes moved to/from device memory, split into weights / activations / kv;
Its ONNX emission is the back end's business (compiler/backend/lowering.py): a standard op is
emitted as itself; the table there holds the ops that are not.

Ops are standard ONNX ops (same names, same attribute meaning) so that ONNX import and emission
are near-identity; the torch importer lowers aten ops onto them. A few attributes may carry
sympy dims where ONNX wants a runtime shape tensor (``Reshape.shape``, ``Expand.shape``,
``Slice.starts/ends``, ``Range`` bounds, ``ConstantOfShape.shape``); the emitter materializes them.
"""
from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import sympy

from compiler.errors import RooftopError
from compiler.ir.tensors import DTYPES, ONNX_TO_DTYPE, IRError, TensorType, as_dim

if TYPE_CHECKING:  # the registry needs no graph; ir.py builds on it
    from compiler.ir.graph import Graph, OpNode


class OpKind(enum.IntEnum):
    """Fusion category (TVM's OpPatternKind); fusion patterns may match by kind."""

    ELEMENTWISE = 0
    BROADCAST = 1
    INJECTIVE = 2
    REDUCTION = 3
    OUT_ELEMENTWISE_FUSABLE = 4
    OPAQUE = 8


class UnsupportedOpError(RooftopError):
    """An op the registry does not know (or cannot import / lift): bad input, exit code 2."""

    @classmethod
    def for_op(cls, op: str, *, domain: str = "", node: str = "", count: int = 1, model: str = "",
               source: str = "", fix: str = "", support: str = "") -> "UnsupportedOpError":
        """The one-paragraph message: which node and op, its domain, how many such nodes, and what
        to do — re-export the model, or add the op where ops live (compiler/ir/ops.py)."""
        dom = f"domain {domain!r}" if domain not in ("", "ai.onnx") else "the standard ai.onnx domain"
        where = f" in {model}" if model else ""
        others = f" (and {count - 1} more node(s) with that op)" if count > 1 else ""
        src = f" (from {source})" if source else ""
        support = support or (f"To support it, add an OpDef for {op!r} to the op registry in "
                              f"compiler/ir/ops.py (kind, shape rule, cost rule; emission if it is not a "
                              f"standard ONNX op).")
        return cls(f"node {node or '?'!r}{src} runs operator {op!r} of {dom}{others}{where}, which is "
                   f"not supported by rooftop. {fix or REEXPORT_HINT} {support}")


REEXPORT_HINT = ("Re-export the model with standard ONNX operators (e.g. torch.onnx.export(..., "
                 "dynamo=True, opset_version=23), without onnxruntime graph optimizations or contrib "
                 "ops), or rewrite that part of the model.")

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
class Kernel:
    """One kernel of an op that runs as several (``OpDef.kernels``): its ``label``, the cost
    class it is costed as (``gemm``, ``attention``…), FLOPs and bytes, and the ``phases``
    (``prefill``, ``decode``) that run it — an op whose form depends on the phase (multi-head
    latent attention: expanded at prefill, absorbed at decode) lists every form's kernels."""

    label: str
    cost_class: str
    flops: Any
    bytes: Bytes
    phases: tuple[str, ...] = ("prefill", "decode")
    kind: str = ""          # a measured kernel kind (hardware ``kernel_families``) it is costed as, if any


@dataclasses.dataclass(frozen=True)
class OpDef:
    """Everything rooftop knows about one op kind (importers, passes, cost model and emitter ask
    here and nowhere else).

    - ``kind``: fusion category; ``cost_class``: the cost model's treatment;
    - ``infer``: shape rule; ``flops`` / ``bytes``: cost rules (``bytes`` gets the
      :class:`Classifier` context: tensor categories, stored weight bytes, hardware facts);
    - ``domain``: "" (ai.onnx) or ``"rooftop"`` (a fused op emitted as an ONNX local function);
    - ``attr_operands``: ``(data operand count, attribute names)`` — attributes rooftop keeps that
      ONNX takes as operands (Reshape.shape, Slice bounds, axes…): the ONNX importer folds constant
      operands into them, the emitter turns them back into tensors; ``scalar_operands``: those
      operands are 0-D (Range, CumSum);
    - ``shape_operands``: operand positions holding shapes / axes / sizes, not data (the
      attr operands are added automatically);
    - ``sym_value``: the op's value on symbolic dims (what the ONNX importer evaluates on Shape
      chains): ``sym_value(attrs, operand values, operand types)`` → array or None;
    - ``noop``: ``noop(graph, node)`` → the operand the op returns unchanged, or None
      (passes/cleanup.py's remove_noops); ``passthrough``: always returns operand 0 (patterns
      look through it); ``layout``: only reshapes / reorders its data operand;
    - ``foldable``: constant folding may evaluate it;
    - ``kernels``: ``kernels(node, ins, outs, cls)`` → the :class:`Kernel` list of an op costed as
      several kernels, some only in one phase (the cost model then ignores ``flops``/``bytes``).
    """

    name: str
    kind: OpKind
    cost_class: str
    infer: Callable[[OpNode, Types], list[TensorType]] | None = None
    flops: Callable[[OpNode, Types, Types], Any] | None = None
    bytes: Callable[[OpNode, Types, Types, "Classifier"], Bytes] | None = None
    commutative: bool = False
    domain: str = ""
    attr_operands: tuple[int, tuple[str, ...]] | None = None
    scalar_operands: bool = False
    shape_operands: frozenset = frozenset()
    sym_value: Callable | None = None
    noop: Callable | None = None
    passthrough: bool = False
    layout: bool = False
    foldable: bool = True
    kernels: Callable | None = None


REGISTRY: dict[str, OpDef] = {}


def register(opdef: OpDef) -> OpDef:
    if opdef.attr_operands is not None:
        k, names = opdef.attr_operands
        opdef = dataclasses.replace(opdef, attr_operands=(k, tuple(names)),
                                    shape_operands=frozenset(opdef.shape_operands) | set(range(k, k + len(names))))
    REGISTRY[opdef.name] = opdef
    return opdef


def update(name: str, **fields) -> OpDef:
    """Add facts to a registered op (used below to keep each concern's table in one place)."""
    return register(dataclasses.replace(REGISTRY[name], **fields))


def get(op: str, *, where: str = "", domain: str = "") -> OpDef:
    try:
        return REGISTRY[op]
    except KeyError:
        raise UnsupportedOpError.for_op(op, domain=domain, node=where) from None


def ops_where(pred: Callable[[OpDef], bool]) -> frozenset:
    """Names of the registered ops whose OpDef satisfies ``pred``."""
    return frozenset(n for n, d in REGISTRY.items() if pred(d))


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

    @functools.cached_property
    def views(self) -> dict[str, str]:
        """:func:`weight_views` of the graph, walked once and only when a tensor that is not a
        parameter is asked about (many callers build a Classifier just to size parameters)."""
        return weight_views(self.graph)

    def _weight(self, tensor: str) -> str | None:
        """The parameter ``tensor`` is, or shows through layout ops; None for an activation."""
        if tensor in self.graph.params:
            return tensor
        return self.views.get(tensor)

    def q_tiles(self, heads, head_dim, itemsize, q_len):
        """Query tiles of a fused attention on this hardware (1 without a hardware context)."""
        if self.hw is None:
            return 1
        return attention_q_tiles(self.hw.onchip.l2_bytes, heads, head_dim, itemsize, q_len)

    @property
    def window_kernel(self) -> str:
        """How a sliding-window attention runs on this hardware: ``windowed`` (a kernel that skips
        the keys outside the window: FlashAttention-2's ``window_size``, FlashInfer, vLLM) on
        GPUs; ``masked_dense`` (every query-key pair computed, the window applied as a mask:
        onnxruntime's CPU Attention) on ``kind: cpu`` devices."""
        return "masked_dense" if self.hw is not None and getattr(self.hw, "kind", "gpu") == "cpu" else "windowed"

    def category(self, tensor: str) -> str:
        if tensor in self.kv:
            return "kv"
        if self._weight(tensor) is not None:
            return "weights"
        return "activations"

    def weight_bytes(self, tensor: str) -> Any:
        """Stored bytes of a weight (or of the weight a view shows): its ``weight_format``
        annotation's count (values + scales + zero points + N:M metadata) when it has one, else
        dtype × elements."""
        p = self.graph.params[self._weight(tensor)]
        fmt = p.annotations.get("weight_format")
        if fmt is not None:
            return fmt.stored_bytes(p.type.numel(), p.type.shape)
        return _nbytes(p.type)

    def weight_format(self, tensor: str):
        w = self._weight(tensor)
        return None if w is None else self.graph.params[w].annotations.get("weight_format")


def weight_views(g: Graph) -> dict[str, str]:
    """Tensors that are a weight seen through layout ops only (``Transpose``, ``Reshape``,
    ``Identity``, …), mapped to the weight: a tied LM head's ``Transpose`` of the embedding table,
    an imported model's reshaped weights. A runtime does such an op once at load (onnxruntime folds
    constant subgraphs into initializers; a GPU GEMM reads ``Wᵀ`` as a transposed operand), so it
    costs nothing per run, holds no activation memory, and its consumers read weight bytes."""
    views: dict[str, str] = {}
    for n in g.topo_order():
        d = REGISTRY.get(n.op)
        if d is None or not d.layout or len(n.outputs) != 1 or not n.inputs or not n.inputs[0]:
            continue
        src = views.get(n.inputs[0], n.inputs[0])
        if src in g.params and n.outputs[0] not in g.outputs:
            views[n.outputs[0]] = src
    return views


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


def causal_scores(s, past):
    """Query-key pairs a causal attention computes per head: each of ``s`` new queries sees the
    ``past`` cached keys and the new ones up to itself."""
    return s * past + s * (s + 1) / sympy.Integer(2)


def window_scores(s, past, w: int):
    """Query-key pairs per head of a causal attention within a window of ``w`` positions (query
    at position q sees keys q − w < k ≤ q): Σ_{t=1..s} min(past + t, w) in closed form."""
    n1 = sympy.Max(0, sympy.Min(s, w - past))       # queries whose window still reaches key 0
    return n1 * past + n1 * (n1 + 1) / sympy.Integer(2) + (s - n1) * w


def _attention_spec(node):
    return node.annotations.get("attention")


def attention_scores(node, ins, cls: "Classifier | None" = None):
    """Visible query-key pairs (all heads) of an Attention: the causal triangle, the window's band
    (a windowed kernel; ``cls.window_kernel``) or every pair (non-causal, or a window applied by a
    masked dense kernel)."""
    b, h, _, s, kv, d, dv = attention_dims(node, ins)
    spec = _attention_spec(node)
    dense = cls is not None and cls.window_kernel == "masked_dense"
    if spec is not None and spec.window and not dense:
        return b * h * window_scores(s, kv - s, spec.window)
    if node.attrs.get("is_causal") and not (spec is not None and spec.window and dense):
        return b * h * causal_scores(s, kv - s)
    return b * h * s * kv


def attention_flops(node, ins, outs, cls: "Classifier | None" = None):
    """QKᵀ and PV matmuls (2 FLOPs per MAC each) plus softmax (≈5 per score: max, sub, exp, sum,
    div). Causal attention computes only the visible (lower-right) triangle: q_len·past +
    q_len(q_len+1)/2 scores per head instead of q_len·kv_len; a sliding window only its band
    (:func:`attention_scores`). Logit softcapping adds 3 per score (divide, tanh, multiply), ALiBi
    1 (the bias, computed in the kernel), sinks one more softmax column per query."""
    b, h, _, s, kv, d, dv = attention_dims(node, ins)
    scores = attention_scores(node, ins, cls)
    spec = _attention_spec(node)
    extra = 0
    if spec is not None:
        extra = (3 * scores if spec.softcap else 0) + (scores if spec.alibi else 0) + (5 * b * h * s if spec.sinks else 0)
    elif node.attrs.get("softcap"):
        extra = 3 * scores
    return 2 * scores * d + 2 * scores * dv + 5 * scores + extra


def attention_kv_tokens(node, ins, cls: "Classifier | None" = None, tiles=1):
    """Key/value positions (per sequence and KV head) a fused attention reads from device memory:
    all ``kv_len`` of them per query tile, or — a windowed kernel over a ring / paged cache — only
    the keys some query of the tile sees: Σ_tiles min(kv_len, W − 1 + rows) = min(tiles·kv_len,
    tiles·(W − 1) + q_len) (a decode step reads the last W)."""
    _, _, _, s, kv, _, _ = attention_dims(node, ins)
    spec = _attention_spec(node)
    if spec is not None and spec.window and not (cls is not None and cls.window_kernel == "masked_dense"):
        return sympy.Min(tiles * kv, tiles * (spec.window - 1) + s)
    return kv * tiles


def attention_bytes(node, ins, outs, cls: Classifier) -> Bytes:
    """Fused (FlashAttention-style) traffic: Q read, O written, the whole K/V (past + new) read
    once per query tile — within a sliding window only the window's keys
    (:func:`attention_kv_tokens`) — and the new K/V appended to the cache. The N×N score matrix
    never reaches device memory. The tile count comes from the cost context's hardware (on-chip
    memory, :meth:`Classifier.q_tiles`); 1 without one. Sink logits are read as weights."""
    b, h, hkv, s, kv, d, dv = attention_dims(node, ins)
    q, k, v = ins[0], ins[1], ins[2]
    e = sympy.Rational(q.itemsize).limit_denominator(2)
    tiles = cls.q_tiles(h, d, q.itemsize, s)
    q_bytes = b * h * s * d * e
    o_bytes = b * h * s * dv * e
    kv_read = b * hkv * attention_kv_tokens(node, ins, cls, tiles) * (d + dv) * e
    has_cache = len(ins) > 4 and ins[4] is not None
    kv_write = b * hkv * s * (d + dv) * e if has_cache else 0
    mask = _nbytes(ins[3]) if len(ins) > 3 and ins[3] is not None else 0
    sinks = cls.weight_bytes(node.inputs[6]) if len(ins) > 6 and ins[6] is not None else 0
    if has_cache:
        return Bytes(weights=sinks, activations=q_bytes + o_bytes + mask, kv=kv_read + kv_write)
    return Bytes(weights=sinks, activations=q_bytes + o_bytes + mask + kv_read)


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
# multi-head latent attention (compiler/frontends/mla.py): operands q_nope [B, H, S, dn], q_rope
# [B, H, S, dr], latent [B, 1, S, r], k_rope [B, 1, S, dr], kv_b weight [H·(dn + dv), r]
# (kv_b_proj's, out × in), past latent [B, 1, P, r] and past rope key [B, 1, P, dr] (operands
# 5, 6: lift_kv_cache); results: the attention output [B, H, S, dv] and the present latent and
# rope key. Emitted as standard ONNX ops (compiler/backend/lowering.py: the expanded form).

#: the MLA form each phase runs when the ``attention`` annotation does not force one (``form``):
#: prefill up-projects the latent and runs SDPA (expanded), decode attends over the latent cache
#: with W_UK / W_UV folded into the query / output (absorbed) — DeepSeek's inference code, vLLM
#: (MLACommonImpl: prefill "MHA" path, decode absorbed) and SGLang do the same
LATENT_FORMS = {"prefill": "expanded", "decode": "absorbed"}


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


def latent_attention_kernels(node, ins, outs, cls: Classifier) -> list[Kernel]:
    """The kernels of each MLA form (:data:`LATENT_FORMS`; the ``attention`` annotation's ``form``
    forces one for both phases). Per step, T keys per sequence, H heads, causal pairs
    V = B·H·(S·P + S(S+1)/2):

    - expanded: ``expand`` GEMM latent[T, r]·W_UKV[r, H(dn+dv)] (the weights and the cached latent
      read, K/V written) and ``attention``, SDPA with qk dim dn + dr and v dim dv over H KV heads
      (Q, O and K/V once per query tile);
    - absorbed: ``absorb_q`` q_nope·W_UK per head (H GEMMs dn×r), ``attention_latent`` over the
      latent — one KV head of dim r + dr shared by all H query heads, value dim r — reading the
      cache once per tile of H·S query rows, and ``absorb_out`` o_lat·W_UV per head (r×dv).

    Both write the new latent and rope key (S·(r + dr) per sequence) into the cache."""
    b, h, s, t, dn, dr, dv, r, e = latent_attention_dims(node, ins)
    past = t - s
    pairs = b * h * causal_scores(s, past)
    cached = len(ins) > 5 and ins[5] is not None
    w = cls.weight_bytes(node.inputs[4]) if cls.graph is not None else 0
    w_k = w * sympy.sympify(dn) / (dn + dv)                 # W_UK's share of kv_b_proj
    spec = node.annotations.get("attention")
    forced = getattr(spec, "form", None)
    phases = {f: tuple(p for p, pf in LATENT_FORMS.items() if (forced or pf) == f) for f in ("expanded", "absorbed")}
    lat_write = b * s * (r + dr) * e
    lat_read_past = b * past * (r + dr) * e

    def split(act, kv_read):
        """Bytes with the cache traffic as KV once a cache is lifted (else activations)."""
        if cached:
            return Bytes(activations=act, kv=kv_read + lat_write)
        return Bytes(activations=act + kv_read + lat_write)

    out: list[Kernel] = []
    if phases["expanded"]:
        ph, d_qk = phases["expanded"], dn + dr
        tiles = cls.q_tiles(h, d_qk, ins[0].itemsize, s)
        expand = Bytes(weights=w, activations=b * t * h * (d_qk + dv) * e + b * s * r * e,
                       kv=lat_read_past if cached else 0)
        if not cached:
            expand = Bytes(weights=w, activations=expand.activations + lat_read_past)
        out.append(Kernel("expand", "gemm", 2 * b * t * r * h * (dn + dv), expand, ph))
        out.append(Kernel("attention", "attention", pairs * (2 * d_qk + 2 * dv + 5),
                          split(b * h * s * (d_qk + dv) * e + b * h * t * (d_qk + dv) * e * tiles, 0), ph))
    if phases["absorbed"]:
        ph = phases["absorbed"]
        tiles = cls.q_tiles(1, r + dr, ins[0].itemsize, s * h)
        out.append(Kernel("absorb_q", "gemm", 2 * b * s * h * dn * r,
                          Bytes(weights=w_k, activations=b * s * h * (dn + r) * e), ph))
        out.append(Kernel("attention_latent", "attention", pairs * (2 * (r + dr) + 2 * r + 5),
                          split(b * h * s * (r + dr + r) * e, lat_read_past * tiles), ph, kind="mla_absorbed_core"))
        out.append(Kernel("absorb_out", "gemm", 2 * b * s * h * r * dv,
                          Bytes(weights=w - w_k, activations=b * s * h * (r + dv) * e), ph))
    return out


class _NoGraph(Classifier):
    """A Classifier without a graph or hardware: the FLOPs-only view of a kernel list."""

    def __init__(self):
        self.graph = None
        self.hw = None
        self.kv = set()


def _latent_flops(node, ins, outs):
    """FLOPs of the form prefill runs (the op's ``flops`` rule; the cost model uses its kernels)."""
    return sum(k.flops for k in latent_attention_kernels(node, ins, outs, _NoGraph()) if "prefill" in k.phases)


register(OpDef("LatentAttention", OpKind.OPAQUE, "attention", latent_attention_rule, _latent_flops, None,
               kernels=latent_attention_kernels, foldable=False))


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


def moe_matmul_flops(node, ins, outs):
    x, w = ins[0], ins[1]
    return 2 * x.shape[0] * w.shape[1] * w.shape[2]


register(OpDef("MoEMatMul", OpKind.OPAQUE, "gemm", moe_matmul_rule, moe_matmul_flops, default_bytes,
               foldable=False))
# the rest of the standard ONNX ops that exporters emit for transformer, vision and audio models
# (tools/onnx_conformance.py checks each against the ONNX backend node tests). Importers type them
# from ONNX shape inference; the shape rules below cover what passes create. Not registered, so
# refused at import with the reason: control flow (If/Loop/Scan: subgraphs), sequences, optionals,
# strings, random generators and training-only ops.

def _numel_of(i: int):
    return lambda node, ins, outs: _numel(ins[i]) if len(ins) > i else 0


def _window_flops(node, ins, outs):
    """A pooling window: one FLOP per window element per output element."""
    k = 1
    for d in node.attrs.get("kernel_shape") or []:
        k *= int(d)
    if node.op.startswith("Global") and ins and ins[0] is not None:
        return _numel(ins[0])
    return k * _numel(outs[0]) if outs and outs[0] is not None else 0


def conv_transpose_flops(node, ins, outs):
    """Each input element scatters into C_out/group · prod(kernel) outputs (2 FLOPs per MAC)."""
    w = ins[1]
    per_in = 1
    for d in w.shape[1:]:
        per_in *= d
    return 2 * per_in * _numel(ins[0])


def rnn_flops(node, ins, outs):
    """LSTM/GRU/RNN: input and recurrent GEMMs per step (gates·hidden·(input + hidden)), ×2 FLOPs."""
    x, w, r = ins[0], ins[1], ins[2]
    seq, batch = x.shape[0], x.shape[1]
    gates_h, inp = w.shape[1], w.shape[2]
    dirs = w.shape[0]
    hid = r.shape[2]
    return 2 * dirs * seq * batch * gates_h * (inp + hid)


def einsum_flops(node, ins, outs):
    """2 · the product of every distinct index's size (what a contraction loop nest does)."""
    eq = str(node.attrs.get("equation", "")).replace(" ", "")
    lhs = eq.split("->")[0].split(",")
    sizes: dict[str, Any] = {}
    for term, t in zip(lhs, ins):
        if t is None or "..." in term:
            return 2 * sum(_numel(i) for i in ins if i is not None)
        for ch, d in zip(term, t.shape):
            sizes[ch] = d
    total = 1
    for d in sizes.values():
        total *= d
    return 2 * total


def det_rule(node, ins):
    return [ins[0].with_shape(ins[0].shape[:-2])]


def variadic_rule(node, ins):
    return [TensorType(ins[0].dtype, broadcast_shapes(*[t.shape for t in ins if t is not None]))]


for _op, _k in [("Acos", 1), ("Acosh", 1), ("Asin", 1), ("Asinh", 1), ("Atan", 1), ("Atanh", 1),
                ("Cosh", 1), ("Sinh", 1), ("Tan", 1), ("Softsign", 3), ("ThresholdedRelu", 1),
                ("Shrink", 2), ("BitwiseNot", 1), ("Hardmax", 2), ("LpNormalization", 3),
                ("LRN", 8), ("BatchNormalization", 2), ("InstanceNormalization", 8),
                ("GroupNormalization", 8), ("MeanVarianceNormalization", 8),
                ("QuantizeLinear", 3), ("DequantizeLinear", 2)]:
    register(OpDef(_op, OpKind.REDUCTION if _op in ("Hardmax", "LpNormalization", "LRN", "InstanceNormalization",
                                                   "GroupNormalization", "MeanVarianceNormalization") else OpKind.ELEMENTWISE,
                   "reduction" if _op in ("Hardmax", "LpNormalization", "LRN", "InstanceNormalization",
                                          "GroupNormalization", "MeanVarianceNormalization") else "elementwise",
                   None if _op in ("BatchNormalization", "QuantizeLinear", "DequantizeLinear") else same_as_input(),
                   per_output_element(_k), default_bytes))
for _op in ("BitwiseAnd", "BitwiseOr", "BitwiseXor"):
    register(OpDef(_op, OpKind.BROADCAST, "elementwise", broadcast_rule(), per_output_element(1), default_bytes,
                   commutative=True))
for _op in ("Sum", "Mean"):
    register(OpDef(_op, OpKind.BROADCAST, "elementwise", variadic_rule,
                   lambda n, i, o: max(len(i) - 1, 1) * _numel(o[0]), default_bytes))
for _op, _k in [("ReduceL1", 2), ("ReduceLogSum", 2)]:
    register(OpDef(_op, OpKind.REDUCTION, "reduction", reduce_rule, per_input_element(_k), default_bytes))
for _op in ("NegativeLogLikelihoodLoss", "SoftmaxCrossEntropyLoss"):
    register(OpDef(_op, OpKind.REDUCTION, "reduction", None, _numel_of(0), default_bytes))
for _op in ("AveragePool", "MaxPool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool",
            "MaxRoiPool", "RoiAlign", "MaxUnpool"):
    register(OpDef(_op, OpKind.OUT_ELEMENTWISE_FUSABLE, "reduction", None, _window_flops, default_bytes))
register(OpDef("ConvTranspose", OpKind.OUT_ELEMENTWISE_FUSABLE, "gemm", None, conv_transpose_flops, default_bytes))
register(OpDef("DeformConv", OpKind.OUT_ELEMENTWISE_FUSABLE, "gemm", None, conv_flops, default_bytes))
register(OpDef("Einsum", OpKind.OUT_ELEMENTWISE_FUSABLE, "gemm", None, einsum_flops, default_bytes))
for _op in ("LSTM", "GRU", "RNN"):
    register(OpDef(_op, OpKind.OPAQUE, "gemm", None, rnn_flops, default_bytes))
register(OpDef("Det", OpKind.REDUCTION, "reduction", det_rule, per_input_element(2), default_bytes))
for _op, _k in [("Resize", 4), ("GridSample", 8), ("Col2Im", 1), ("AffineGrid", 6), ("CenterCropPad", 0),
                ("SpaceToDepth", 0), ("ReverseSequence", 0), ("Compress", 0), ("Unique", 4),
                ("NonMaxSuppression", 8), ("MelWeightMatrix", 4), ("HannWindow", 2), ("HammingWindow", 2),
                ("BlackmanWindow", 3)]:
    register(OpDef(_op, OpKind.INJECTIVE, "copy" if _k == 0 else "elementwise", None, per_output_element(_k),
                   default_bytes))
# spectral transforms: ≈ 5·N·log2(N) FLOPs per transform of length N (Cooley-Tukey)
register(OpDef("DFT", OpKind.OPAQUE, "elementwise", None,
               lambda n, i, o: 5 * _numel(o[0]) * 8, default_bytes))
register(OpDef("STFT", OpKind.OPAQUE, "elementwise", None,
               lambda n, i, o: 5 * _numel(o[0]) * 8, default_bytes))
# integer / quantized linear algebra (ONNX quantized exports)
register(OpDef("DynamicQuantizeLinear", OpKind.REDUCTION, "reduction", None, per_input_element(4), default_bytes))
for _op in ("MatMulInteger", "QLinearMatMul"):
    register(OpDef(_op, OpKind.OUT_ELEMENTWISE_FUSABLE, "gemm", None,
                   lambda n, i, o: 2 * _numel(o[0]) * i[0].shape[-1], default_bytes))
for _op in ("ConvInteger", "QLinearConv"):
    register(OpDef(_op, OpKind.OUT_ELEMENTWISE_FUSABLE, "gemm", None, conv_flops, default_bytes))


# ----------------------------------------------------------------------------------------------
# fused ops made by passes/fusion (domain "rooftop": emitted as ONNX local functions). A fused op
# pays only for the tensors crossing its boundary (default_bytes over its own operands/results).

FUSED_DOMAIN = "rooftop"
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
               matmul_epilogue_flops, default_bytes, domain=FUSED_DOMAIN))
register(OpDef("SwiGLU", OpKind.ELEMENTWISE, "elementwise", swiglu_rule, per_output_element(6),
               default_bytes, domain=FUSED_DOMAIN))
register(OpDef("ResidualNorm", OpKind.REDUCTION, "reduction", lambda n, i: [i[0], i[0]],
               lambda n, i, o: 9 * _numel(o[0]), default_bytes, domain=FUSED_DOMAIN))


# ----------------------------------------------------------------------------------------------
# attribute operands: attributes rooftop keeps (possibly symbolic) that ONNX takes as operands.
# (data operand count, attribute names in operand order). The ONNX importer folds constant
# operands into the attributes; the emitter materializes them again (compiler/backend/emit.py).

_REDUCE_AXES = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2",
                "ReduceSumSquare", "ReduceLogSumExp")
for _op, _spec in {"Unsqueeze": (1, ("axes",)), "Squeeze": (1, ("axes",)), "Reshape": (1, ("shape",)),
                   "Expand": (1, ("shape",)), "Slice": (1, ("starts", "ends", "axes", "steps")),
                   "TopK": (1, ("k",)), "CumSum": (1, ("axis",)), "ConstantOfShape": (0, ("shape",)),
                   "Range": (0, ("start", "limit", "delta")),
                   **{op: (1, ("axes",)) for op in _REDUCE_AXES}}.items():
    update(_op, attr_operands=_spec, scalar_operands=_op in ("Range", "CumSum"))
# other operands that are shapes / sizes / axes rather than data
for _op, _pos in {"Split": {1}, "Tile": {1}, "Pad": {1, 2, 3}, "OneHot": {1}, "Clip": {1, 2},
                  "Gather": {1}, "Trilu": {1}}.items():
    update(_op, shape_operands=frozenset(_pos))


# ----------------------------------------------------------------------------------------------
# symbolic values: exporters compute Reshape/Expand shapes at run time from Shape(x) → Gather →
# Unsqueeze → Concat chains. Where x's dims are expressions of B/S/P the ONNX importer evaluates
# those chains on sympy values with these rules (object arrays of int / sympy entries).

MAX_SYM_ELEMENTS = 64


def sym_entry(x):
    """An int, or a sympy expression (integers as int)."""
    if isinstance(x, (int, np.integer, bool, np.bool_)):
        return int(x)
    x = sympy.sympify(x)
    return int(x) if x.is_Integer else x


def sym_array(vals, shape=None) -> np.ndarray:
    """Object array of int / sympy entries; an all-int result becomes a plain int64 array."""
    arr = np.empty(len(vals), dtype=object)
    for i, v in enumerate(vals):
        arr[i] = sym_entry(v)
    arr = arr.reshape(shape if shape is not None else (len(vals),))
    if all(isinstance(v, int) for v in arr.reshape(-1)):
        return arr.astype(np.int64)
    return arr


def is_symbolic(arr: np.ndarray) -> bool:
    return arr.dtype == object


def _sym_div(a, b):
    if isinstance(a, int) and isinstance(b, int):
        return a // b if b else None
    q = sympy.cancel(sympy.sympify(a) / b)
    return q if q.as_numer_denom()[1] == 1 else sympy.floor(sympy.sympify(a) / b)


def _sym_equal(a, b):
    d = sympy.sympify(a) - b
    z = d.is_zero
    if z is None:
        nz = d.is_positive or d.is_negative
        return False if nz else None
    return bool(z)


def _axis_of(a, r):
    return a + r if a < 0 else a


def _sym_shape(attrs, ins, types):
    shp = types[0].shape if types[0] is not None else None
    if shp is None:
        return None
    return sym_array(list(shp[attrs.get("start", 0):attrs.get("end")]))  # ONNX bounds = slice bounds


def _sym_size(attrs, ins, types):
    return None if types[0] is None else sym_array([sympy.Mul(*types[0].shape)], ())


def _sym_gather(attrs, ins, types):
    data, idx = ins
    return None if is_symbolic(idx) else np.take(data, idx.astype(np.int64), axis=attrs.get("axis", 0))


def _sym_unsqueeze(attrs, ins, types):
    if "axes" not in attrs:
        return None
    x = ins[0]
    r = x.ndim + len(attrs["axes"])
    for a in sorted(_axis_of(a, r) for a in attrs["axes"]):
        x = np.expand_dims(x, a)
    return x


def _sym_squeeze(attrs, ins, types):
    if "axes" not in attrs:
        return None
    return np.squeeze(ins[0], axis=tuple(_axis_of(a, ins[0].ndim) for a in attrs["axes"]))


def _sym_reshape(attrs, ins, types):
    if "shape" not in attrs or not all(isinstance(d, int) for d in attrs["shape"]):
        return None
    shape = [ins[0].shape[i] if d == 0 and not attrs.get("allowzero") else d for i, d in enumerate(attrs["shape"])]
    return ins[0].reshape(shape)


def _sym_slice(attrs, ins, types):
    if "starts" not in attrs or ins[0].ndim != 1:
        return None
    axes = attrs.get("axes") or [0]
    steps = attrs.get("steps") or [1]
    if axes != [0] or len(attrs["starts"]) != 1:
        return None
    return ins[0][slice(attrs["starts"][0], attrs["ends"][0], steps[0])]


def _sym_binary(fn, out_bool=False):
    def rule(attrs, ins, types):
        a, b = np.broadcast_arrays(*(np.asarray(v, dtype=object) for v in ins))
        out = [fn(x, y) for x, y in zip(a.reshape(-1), b.reshape(-1))]
        if any(v is None for v in out):
            return None
        return np.array(out, dtype=bool).reshape(a.shape) if out_bool else sym_array(out, a.shape)
    return rule


def _int_only(f):
    return lambda x, y: f(x, y) if isinstance(x, int) and isinstance(y, int) else None


def _sym_where(attrs, ins, types):
    c, x, y = ins
    if c.dtype != bool:
        return None
    c, x, y = np.broadcast_arrays(c, np.asarray(x, dtype=object), np.asarray(y, dtype=object))
    return sym_array(list(np.where(c, x, y).reshape(-1)), c.shape)


def _sym_constant_of_shape(attrs, ins, types):
    if "shape" not in attrs or not all(isinstance(d, int) for d in attrs["shape"]):
        return None
    n = int(np.prod(attrs["shape"])) if attrs["shape"] else 1
    val = attrs.get("value")
    fill = np.asarray(val).reshape(-1)[0] if val is not None else 0
    return None if n > MAX_SYM_ELEMENTS else np.full(attrs["shape"], int(fill), dtype=np.int64)


for _op, _rule in {
    "Shape": _sym_shape, "Size": _sym_size, "Identity": lambda a, i, t: i[0],
    "Cast": lambda a, i, t: i[0] if ONNX_TO_DTYPE.get(a.get("to")) in ("int64", "int32") else None,
    "Gather": _sym_gather, "Unsqueeze": _sym_unsqueeze, "Squeeze": _sym_squeeze,
    "Concat": lambda a, i, t: np.concatenate([np.asarray(v, dtype=object) for v in i], axis=a.get("axis", 0)),
    "Reshape": _sym_reshape, "Slice": _sym_slice,
    "Add": _sym_binary(lambda x, y: x + y), "Sub": _sym_binary(lambda x, y: x - y),
    "Mul": _sym_binary(lambda x, y: x * y), "Div": _sym_binary(_sym_div),
    "Equal": _sym_binary(_sym_equal, out_bool=True), "Max": _sym_binary(_int_only(max)),
    "Min": _sym_binary(_int_only(min)), "Where": _sym_where, "ConstantOfShape": _sym_constant_of_shape,
}.items():
    update(_op, sym_value=_rule)


def sym_value(op: str, attrs: dict, ins: list, in_types: list) -> np.ndarray | None:
    """The value of a shape-computation op from symbolic/int operand values (None: unknown)."""
    d = REGISTRY.get(op)
    if d is None or d.sym_value is None:
        return None
    try:
        if op not in ("Shape", "Size") and any(v is None for v in ins):
            return None
        return d.sym_value(attrs, ins, in_types)
    except (TypeError, ValueError, IndexError):
        return None


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


for _op in ("Identity", "Dropout"):
    update(_op, noop=_noop_passthrough, passthrough=True)
for _op in ("Reshape", "Expand", "Cast"):
    update(_op, noop=_noop_same_type)
update("Slice", noop=_noop_slice)
update("Transpose", noop=_noop_transpose)
update("Mul", noop=_noop_identity_element(1.0, left=True))
update("Div", noop=_noop_identity_element(1.0, left=False))
update("Add", noop=_noop_identity_element(0.0, left=True))
update("Sub", noop=_noop_identity_element(0.0, left=False))
for _op in ("Identity", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten"):
    update(_op, layout=True)
for _op in ("Shape", "Attention"):   # Shape stays symbolic; attention is never worth folding
    update(_op, foldable=False)


def noop_source(g: Graph, n: OpNode) -> str | None:
    """The operand ``n`` returns unchanged (by its op's no-op rule), or None."""
    d = REGISTRY.get(n.op)
    return d.noop(g, n) if d is not None and d.noop is not None else None


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


register(OpDef("PagedKVGather", OpKind.INJECTIVE, "view", paged_kv_gather_rule, zero_flops, zero_bytes,
               foldable=False))


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
    if node.op == "Attention":   # a window's cost depends on the kernel the hardware runs
        flops = attention_flops(node, ins, outs, cls)
    else:
        flops = d.flops(node, ins, outs) if d.flops else 0
    byts = (d.bytes or default_bytes)(node, ins, outs, cls)
    return flops, byts


def op_kernels(graph: Graph, node: OpNode, cls: Classifier | None = None) -> list[Kernel] | None:
    """The :class:`Kernel` list of an op costed as several kernels (``OpDef.kernels``), else None."""
    d = get(node.op, where=node.name)
    if d.kernels is None:
        return None
    cls = cls or Classifier(graph)
    ins = [graph.types[t] if t else None for t in node.inputs]
    outs = [graph.types[t] if t else None for t in node.outputs]
    return d.kernels(node, ins, outs, cls)


def is_commutative(op: str) -> bool:
    d = REGISTRY.get(op)
    return bool(d and d.commutative)
