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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from compiler.ir.tensors import ONNX_TO_DTYPE, IRError, TensorType

if TYPE_CHECKING:  # the registry needs no graph; ir.py builds on it
    from compiler.ir.graph import Graph, OpNode
from compiler.ir.tensors import Types, UnsupportedOpError
from compiler.ir.shapes import _nbytes, _numel, _numel_of, arg_reduce_rule, attention_rule, broadcast_rule, broadcast_shapes, cast_rule, concat_rule, conv_rule, det_rule, expand_rule, flatten_rule, gather_nd_rule, gather_rule, gemm_rule, latent_attention_rule, matmul_epilogue_rule, matmul_rule, moe_matmul_rule, paged_kv_gather_rule, reduce_rule, reshape_rule, same_as_input, shape_rule, slice_rule, softmax_like, split_rule, squeeze_rule, swiglu_rule, transpose_rule, unsqueeze_rule, variadic_rule
from compiler.ir.costs import Bytes, Kernel, _window_flops, attention_bytes, attention_flops, attention_q_tiles, conv_flops, conv_transpose_flops, default_bytes, einsum_flops, gather_bytes, gemm_flops, latent_attention_kernels, matmul_epilogue_flops, matmul_flops, moe_matmul_flops, norm_flops, per_input_element, per_output_element, rnn_flops, window_scores, zero_bytes, zero_flops  # noqa: F401
from compiler.ir.symbolic import MAX_SYM_ELEMENTS, _int_only, _sym_binary, _sym_constant_of_shape, _sym_div, _sym_equal, _sym_gather, _sym_reshape, _sym_shape, _sym_size, _sym_slice, _sym_squeeze, _sym_unsqueeze, _sym_where, is_symbolic, sym_array, sym_entry  # noqa: F401
from compiler.ir.noops import _noop_identity_element, _noop_passthrough, _noop_same_type, _noop_slice, _noop_transpose, is_const  # noqa: F401


class OpKind(enum.IntEnum):
    """Fusion category (TVM's OpPatternKind); fusion patterns may match by kind."""

    ELEMENTWISE = 0
    BROADCAST = 1
    INJECTIVE = 2
    REDUCTION = 3
    OUT_ELEMENTWISE_FUSABLE = 4
    OPAQUE = 8


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

_EW_PREDICATES = ("IsNaN", "IsInf")   # elementwise tests: a bool of the operand's shape
for _op, _k in _EW_UNARY.items():
    register(OpDef(_op, OpKind.ELEMENTWISE, "elementwise",
                   (lambda n, i: [i[0].with_dtype("bool")]) if _op in _EW_PREDICATES else same_as_input(),
                   per_output_element(_k), default_bytes))
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


register(OpDef("MoEMatMul", OpKind.OPAQUE, "gemm", moe_matmul_rule, moe_matmul_flops, default_bytes,
               foldable=False))


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
