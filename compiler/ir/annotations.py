"""The typed annotation contract: how passes talk to the cost model, the emitter and the reports.

An annotation is a declared key on an op (:class:`compiler.ir.OpNode`) or a parameter
(:class:`compiler.ir.Param`). Each key in :data:`KEYS` states

- ``schema``: the Python type of its value (frozen dataclasses for structured values);
- ``on``: what it may annotate (``"op"``, ``"param"`` or both);
- ``writers``: the passes / importers that set it; ``readers``: the modules that read it;
- ``policy``: what a rewrite does with it when it replaces annotated ops or parameters by new
  ones (a fusion, a horizontal merge, KV lifting): ``KEEP`` (the value goes to the replacement
  when the replaced members agree on it), ``MERGE`` (the members' values are combined by the
  key's ``merge`` function) or ``DROP`` (the replacement does not inherit it);
- ``serialize``: whether the emitter writes it into the ONNX model (``metadata_props`` of the
  node or the initializer, as ``rooftop.<key>``) — onnx-ir's split between transient
  ``Value.meta`` and serialized ``metadata_props``.

Read and write annotations through :func:`get` / :func:`set` (or ``Graph.add_op(**ann)`` /
``Graph.add_param(**ann)``, which validate too): an undeclared key, a key on the wrong kind of
object or a value of the wrong type raises :class:`compiler.ir.IRError`. ``Graph.verify()``
re-validates every annotation, so a direct dict write that breaks the contract is caught between
passes in debug mode. Rewrites carry annotations with :func:`carry` (ops) and
:func:`carry_params` (parameters) — the one helper every rewrite uses.

Adding a key: add a schema (a frozen dataclass when it has fields) and one :class:`Key` entry
below; name its writer and readers. Nothing else in the IR changes.
"""
from __future__ import annotations

import dataclasses
import enum
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import sympy

from compiler.ir.ops import REGISTRY
from compiler.ir.tensors import DTYPES, HW_DTYPES, IRError


class Policy(enum.Enum):
    KEEP = "kept"
    MERGE = "merged"
    DROP = "dropped"


# ------------------------------------------------------------------------------------------------
# schemas

SCALE_DTYPES = ("float32", "float16", "bfloat16", "float8e4m3fn", "float8e8m0")


def _bits(dtype: str) -> int:
    return int(DTYPES[dtype][0] * 8)


@dataclasses.dataclass(frozen=True, slots=True)
class WeightFormat:
    """How a weight is stored in device memory.

    - ``dtype``: storage dtype of the values (``float16``, ``int8``, ``int4``, ``float8e4m3fn``…);
      ``bits`` defaults to its width (set it lower for packed sub-byte formats, e.g. 3).
    - ``granularity``: scale granularity — ``"none"`` (a float weight, no scales), ``"tensor"``,
      ``"channel"`` (one scale per slice along ``axis``: per output column of a ``[in, out]``
      MatMul weight when ``axis=0``) or ``"group"`` (one scale per ``group_size`` consecutive
      values along ``axis``).
    - ``symmetric``: no zero point when true; else one zero point per scale, of ``zero_dtype``
      (default: the scale dtype).
    - ``scale_dtype``: dtype of the scales.
    - ``nm``: an N:M sparsity pattern ``(n, m)`` — n of every m values along ``axis`` kept — or
      None (dense). Kept values carry ``ceil(log2(m))`` bits of index metadata each.

    :meth:`stored_bytes` counts values + scales + zero points + N:M metadata: int4 with fp16 scale and zero per group of 128 → 4 + 32/128 = 4.25 bits/weight;
    fp16 2:4 → 0.5625× the dense bytes; int8 2:4 → 0.625×.
    """

    dtype: str = "float16"
    bits: int | None = None
    granularity: str = "none"
    group_size: int | None = None
    axis: int = 0
    symmetric: bool = True
    scale_dtype: str = "float16"
    zero_dtype: str | None = None
    nm: tuple[int, int] | None = None

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise IRError(f"weight_format.dtype {self.dtype!r} is not a dtype; known: {sorted(DTYPES)}")
        full = _bits(self.dtype)
        if self.bits is None:
            object.__setattr__(self, "bits", full)
        if not isinstance(self.bits, int) or not 1 <= self.bits <= full:
            raise IRError(f"weight_format.bits={self.bits!r} must be an int in 1..{full} for {self.dtype}")
        if self.granularity not in ("none", "tensor", "channel", "group"):
            raise IRError(f"weight_format.granularity={self.granularity!r}: use none, tensor, channel or group")
        if self.granularity == "group":
            if not isinstance(self.group_size, int) or self.group_size < 1:
                raise IRError(f"weight_format: group granularity needs group_size ≥ 1, got {self.group_size!r}")
        elif self.group_size is not None:
            raise IRError(f"weight_format.group_size={self.group_size} needs granularity='group'")
        for nm_, dt in (("scale_dtype", self.scale_dtype), ("zero_dtype", self.zero_dtype)):
            if dt is not None and dt not in DTYPES:
                raise IRError(f"weight_format.{nm_} {dt!r} is not a dtype; known: {sorted(DTYPES)}")
        if self.granularity == "none" and not self.symmetric:
            raise IRError("weight_format: a zero point needs scales (granularity tensor/channel/group)")
        if self.nm is not None:
            nm = tuple(self.nm)
            if len(nm) != 2 or not all(isinstance(v, int) for v in nm) or not 0 < nm[0] < nm[1]:
                raise IRError(f"weight_format.nm={self.nm!r} must be (n, m) with 0 < n < m")
            object.__setattr__(self, "nm", nm)

    @property
    def quantized(self) -> bool:
        return self.granularity != "none"

    @property
    def sparse(self) -> bool:
        return self.nm is not None

    def _scale_count(self, numel, shape: Sequence | None):
        if self.granularity == "none":
            return 0
        if self.granularity == "tensor":
            return 1
        if self.granularity == "group":
            return sympy.ceiling(sympy.sympify(numel) / self.group_size) if not isinstance(numel, int) \
                else -(-numel // self.group_size)
        if shape is None:
            raise IRError("weight_format: per-channel scales need the weight's shape to count them")
        return sympy.sympify(numel) / shape[self.axis % len(shape)]

    def stored_bytes(self, numel, shape: Sequence | None = None):
        """Bytes in device memory of a weight of ``numel`` values (``shape`` needed for
        per-channel scales). Exact: an int or a sympy Rational/expression."""
        n = sympy.sympify(numel)
        kept = n * sympy.Rational(self.nm[0], self.nm[1]) if self.nm else n
        bits = kept * self.bits
        if self.nm:
            bits += kept * math.ceil(math.log2(self.nm[1]))
        scales = self._scale_count(numel, shape)
        bits += scales * _bits(self.scale_dtype)
        if not self.symmetric:
            bits += scales * _bits(self.zero_dtype or self.scale_dtype)
        out = sympy.nsimplify(bits / 8)
        return int(out) if out.is_Integer else out

    def bits_per_weight(self, numel: int = 1 << 20, shape: Sequence | None = None) -> float:
        return float(self.stored_bytes(numel, shape)) * 8 / numel


@dataclasses.dataclass(frozen=True, slots=True)
class ComputeDtype:
    """The math an op is predicted to run in: a hardware dtype class (``fp16``, ``bf16``,
    ``fp8``, ``int8``, ``int4``, ``fp32``, ``tf32``) and the kernel family the prediction
    assumes (``"cublas"``, ``"marlin"``, ``"flash_attn"``…; empty = the hardware default). The
    cost model takes the peak of ``dtype`` (2:4-sparse peak when the op's weight has an N:M
    ``weight_format`` the hardware runs natively)."""

    dtype: str
    kernel: str = ""

    def __post_init__(self):
        if self.dtype not in HW_DTYPES:
            raise IRError(f"compute_dtype.dtype {self.dtype!r} is not one of {', '.join(HW_DTYPES)}")
        if not isinstance(self.kernel, str):
            raise IRError(f"compute_dtype.kernel must be a string, got {self.kernel!r}")


@dataclasses.dataclass(frozen=True, slots=True)
class MoERouting:
    """A mixture-of-experts layer's routing: ``experts`` routed experts of which each token
    picks ``top_k``; ``expert_params`` parameters per routed expert (its FFN weights),
    ``shared_experts`` always-on experts; ``distribution`` of tokens over experts
    (``"uniform"``, ``"zipf"`` with ``skew``, or explicit ``probabilities`` summing to 1);
    ``expert``: the routed expert an op computes for (None: the layer's router / combine ops, or
    every expert at once — a grouped expert GEMM, ``MoEMatMul``); ``dispatch``: the op is routing
    bookkeeping for ``expert`` (finding its tokens), which a runtime does in one pass for all
    experts — its per-kernel fixed cost is shared by the layer; ``form``: how the routed experts
    run — ``grouped`` (one grouped GEMM per projection over all routed rows: fused MoE kernels) or
    ``loop`` (the layer's row-wise ops once per touched expert: a per-expert loop)."""

    experts: int
    top_k: int
    expert_params: int | None = None
    shared_experts: int = 0
    distribution: str = "uniform"
    skew: float = 0.0
    probabilities: tuple[float, ...] | None = None
    expert: int | None = None
    dispatch: bool = False
    form: str = "grouped"

    def __post_init__(self):
        if self.form not in ("grouped", "loop"):
            raise IRError(f"moe.form={self.form!r}: use grouped or loop")
        if self.expert is not None and not (isinstance(self.expert, int) and 0 <= self.expert < self.experts):
            raise IRError(f"moe.expert={self.expert!r} must be an expert index in 0..{self.experts - 1} or None")
        if not (isinstance(self.experts, int) and isinstance(self.top_k, int) and 1 <= self.top_k <= self.experts):
            raise IRError(f"moe: need 1 ≤ top_k ≤ experts, got top_k={self.top_k!r}, experts={self.experts!r}")
        if self.distribution not in ("uniform", "zipf", "explicit"):
            raise IRError(f"moe.distribution={self.distribution!r}: use uniform, zipf or explicit")
        if self.probabilities is not None:
            p = tuple(float(x) for x in self.probabilities)
            if len(p) != self.experts or abs(sum(p) - 1) > 1e-6 or min(p) < 0:
                raise IRError(f"moe.probabilities must be {self.experts} non-negative numbers summing to 1")
            object.__setattr__(self, "probabilities", p)


@dataclasses.dataclass(frozen=True, slots=True)
class ExitPoint:
    """An early-exit head after decoder layer ``layer``: ``probability`` of a token leaving
    here (given it reached it); ``head`` names the op producing the exit logits."""

    layer: int
    probability: float = 0.0
    head: str = ""

    def __post_init__(self):
        if not isinstance(self.layer, int) or self.layer < 0 or not 0 <= float(self.probability) <= 1:
            raise IRError(f"exit_point: layer ≥ 0 and 0 ≤ probability ≤ 1, got {self.layer!r}, {self.probability!r}")


@dataclasses.dataclass(frozen=True, slots=True)
class KVLayout:
    """How an attention's KV cache is stored: ``contiguous`` or ``paged`` in blocks of
    ``block_size`` tokens; ``dtype`` of the cached values (None: the attention's dtype)."""

    layout: str = "contiguous"
    block_size: int | None = None
    dtype: str | None = None

    def __post_init__(self):
        if self.layout not in ("contiguous", "paged"):
            raise IRError(f"kv_layout.layout={self.layout!r}: use contiguous or paged")
        if (self.layout == "paged") != (self.block_size is not None) or \
                (self.block_size is not None and (not isinstance(self.block_size, int) or self.block_size < 1)):
            raise IRError("kv_layout: a paged layout needs block_size ≥ 1 (and only a paged one)")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise IRError(f"kv_layout.dtype {self.dtype!r} is not a dtype")


#: the block kinds of the report's per-layer breakdown (annotation ``block``; phases.<phase>.blocks)
BLOCKS = ("embedding", "attention", "mlp", "moe", "norm", "head", "other")


MASK_KINDS = ("causal", "causal_padding", "bidirectional", "padding", "window", "bias", "general")


@dataclasses.dataclass(frozen=True, slots=True)
class AttentionSpec:
    """What an ``Attention`` op computes beyond its operands, found by meaning (mask evaluation,
    the model's config) rather than by exporter idiom — the contract between the importers /
    fusion (writers), the emitter and verifier, and the cost model (readers):

    - ``mask``: the mask's meaning — ``causal``, ``causal_padding`` (causal and a padding
      ``attention_mask``), ``bidirectional``, ``padding``, ``window`` (causal within the last
      ``window`` positions), ``bias`` (an additive bias such as ALiBi), ``general`` (anything else:
      kept exactly as the mask operand);
    - ``window``: the sliding window W in positions (a query attends to keys ``q − W < k ≤ q``), or
      None; ``global_layer``: this layer of a local/global pattern attends to the whole context;
    - ``alibi``: the bias is ALiBi (slopes per head); ``softcap``: logits ``c·tanh(x/c)`` (None:
      off); ``sinks``: a learned per-head sink logit joins the softmax;
    - ``latent_rank`` / ``rope_dim``: multi-head latent attention (MLA) — the cache holds a
      ``latent_rank + rope_dim`` latent per token instead of per-head K and V; ``form`` the MLA
      form a phase runs (``expanded`` | ``absorbed``; None for ordinary attention)."""

    mask: str = "causal"
    window: int | None = None
    global_layer: bool = False
    alibi: bool = False
    softcap: float | None = None
    sinks: bool = False
    latent_rank: int | None = None
    rope_dim: int | None = None
    form: str | None = None

    def __post_init__(self):
        if self.mask not in MASK_KINDS:
            raise IRError(f"attention.mask={self.mask!r}: use one of {', '.join(MASK_KINDS)}")
        if self.window is not None and (not isinstance(self.window, int) or self.window < 1):
            raise IRError(f"attention.window={self.window!r} must be a positive number of positions or None")
        if self.softcap is not None and not float(self.softcap) > 0:
            raise IRError(f"attention.softcap={self.softcap!r} must be positive or None")
        if self.form not in (None, "expanded", "absorbed"):
            raise IRError(f"attention.form={self.form!r}: use expanded, absorbed or None")


@dataclasses.dataclass(frozen=True, slots=True)
class Rotary:
    """A recognized rotary position embedding: the rotated tensor, cos and sin operands."""

    x: str
    cos: str
    sin: str
    interleaved: int = 0


@dataclasses.dataclass(frozen=True, eq=False)
class QuantizedData:
    """The exact quantized form of a weight (annotation ``quant_data``, written by
    passes/quantize, read by the emitter): codes (ml_dtypes arrays for int4/uint4/fp8), fp32
    scales and zero points in ONNX ``DequantizeLinear`` shapes, its ``axis`` / ``block_size``.
    The parameter's own data holds the dequantized fp32 values (what the IR computes with)."""

    codes: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray | None
    axis: int | None
    block_size: int | None

    @property
    def dtype(self) -> str:
        return str(self.codes.dtype)


@dataclasses.dataclass(frozen=True, eq=False)
class KVQuant:
    """The KV cache an Attention stores quantized in the emitted artifact (annotation ``kv_quant``,
    written by passes/quant (``quantize_kv``, from ``kv.dtype``), read by the emitter): the stored
    ``dtype`` (``int8``) and static scales per KV head and channel, ``k_scale`` / ``v_scale``
    ``[kv_heads, head_dim]`` fp32 (calibrated: max |K|, |V| over the calibration text / 127). The
    cache value ``x`` is stored as ``clip(round(x / scale), −128, 127)``. The graph's past/present
    tensors keep the model's float type (the ``kv_layout`` annotation describes the storage to the
    cost model); the emitter writes them in ``dtype``."""

    dtype: str
    k_scale: np.ndarray
    v_scale: np.ndarray
    granularity: str = "channel"

    def __post_init__(self):
        if self.dtype not in ("int8", "float8e4m3fn"):
            raise IRError(f"kv_quant.dtype={self.dtype!r}: use int8 or float8e4m3fn")
        if self.granularity != "channel":
            raise IRError(f"kv_quant.granularity={self.granularity!r}: only per head and channel ('channel')")
        if np.asarray(self.k_scale).ndim != 2 or np.asarray(self.k_scale).shape != np.asarray(self.v_scale).shape:
            raise IRError("kv_quant: k_scale and v_scale must both be [kv_heads, head_dim]")


@dataclasses.dataclass(frozen=True)
class ActivationQuant:
    """How an op's input activation is quantized (annotation ``activation_quant``, W8A8 / FP8):
    ``mode`` dynamic (per-tensor scale at run time) | dynamic_per_token | static (calibrated
    ``scale`` / ``zero_point``), ``dtype`` uint8 | int8 | float8e4m3fn."""

    mode: str
    dtype: str
    scale: float | None = None
    zero_point: int | None = None

    def __post_init__(self):
        if self.mode not in ("dynamic", "dynamic_per_token", "static"):
            raise IRError(f"activation_quant.mode={self.mode!r}: use dynamic, dynamic_per_token or static")
        if self.dtype not in ("uint8", "int8", "float8e4m3fn"):
            raise IRError(f"activation_quant.dtype={self.dtype!r}: use uint8, int8 or float8e4m3fn")
        if self.mode == "static" and self.scale is None:
            raise IRError("activation_quant: a static scheme needs a calibrated scale")


# ------------------------------------------------------------------------------------------------
# the declared keys

def _agree(values: list) -> Any:
    """KEEP: the common value when every member that has the key agrees, else None (dropped)."""
    vals = list(dict.fromkeys(values))
    return vals[0] if len(vals) == 1 else None


def _compute_dtype_merge(values: list) -> Any:
    """The GEMM/attention member's compute dtype wins: the replacement runs the heavy op's
    kernel; disagreeing heavy members → dropped (the cost model falls back to operand dtypes)."""
    return _agree(values)


def _join_sources(values: list) -> str:
    return "+".join(dict.fromkeys(values))


def _union(values: list) -> tuple:
    out: list = []
    for v in values:
        for x in v:
            if x not in out:
                out.append(x)
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class Key:
    name: str
    schema: type | tuple[type, ...]
    on: frozenset
    writers: tuple[str, ...]
    readers: tuple[str, ...]
    policy: Policy
    doc: str
    merge: Callable[[list], Any] | None = None
    serialize: bool = False
    coerce: Callable[[Any], Any] | None = None
    costed: bool = False   # the cost model reads it: part of a cost cache key


    def check(self, value: Any, where: str) -> Any:
        if self.coerce is not None and not isinstance(value, self.schema):
            try:
                value = self.coerce(value)
            except (TypeError, ValueError) as e:
                raise IRError(f"{where}: annotation {self.name!r} = {value!r} is not a "
                              f"{_schema_name(self.schema)} ({e})") from None
        if not isinstance(value, self.schema) or (self.schema is int and isinstance(value, bool)):
            raise IRError(f"{where}: annotation {self.name!r} must be a {_schema_name(self.schema)}, "
                          f"got {type(value).__name__} {value!r}")
        return value


def _schema_name(s) -> str:
    return " or ".join(t.__name__ for t in s) if isinstance(s, tuple) else s.__name__


def _str_tuple(v) -> tuple:
    if isinstance(v, str) or not isinstance(v, Iterable):
        raise TypeError("expected a sequence of strings")
    v = tuple(v)
    if not all(isinstance(x, str) for x in v):
        raise TypeError("expected strings")
    return v


OP, PARAM = "op", "param"
_BOTH = frozenset({OP, PARAM})

KEYS: dict[str, Key] = {k.name: k for k in [
    Key("weight_format", WeightFormat, frozenset({PARAM}),
        writers=("passes/quantize (quant=)", "passes/prune_nm (sparsity=)"),
        readers=("compiler/ir/ops.py Classifier.weight_bytes (cost, memory)", "compiler/perf/cost.py (sparse peak)",
                 "compiler/backend/emit.py (metadata_props)", "reports (weight formats per group)"),
        policy=Policy.KEEP, merge=_agree, serialize=True, costed=True,
        doc="storage format of a weight; stored bytes include scales, zero points and N:M metadata"),
    Key("compute_dtype", ComputeDtype, frozenset({OP}),
        writers=("passes/quantize (quant=)",),
        readers=("compiler/perf/cost.py (peak FLOP/s, dtype column)", "compiler/backend/emit.py (metadata_props)"),
        policy=Policy.KEEP, merge=_compute_dtype_merge, serialize=True, costed=True,
        doc="math dtype and kernel family the op's prediction assumes"),
    Key("quant_data", QuantizedData, frozenset({PARAM}),
        writers=("passes/quant (quantize)",), readers=("compiler/backend/emit.py (quantized initializers)",),
        policy=Policy.DROP,
        doc="codes, scales and zero points of a quantized weight (ONNX DequantizeLinear layout) for the emitter"),
    Key("activation_quant", ActivationQuant, frozenset({OP}),
        writers=("passes/quant (quantize: w8a8, fp8)",),
        readers=("compiler/backend/emit.py (DynamicQuantizeLinear / QDQ forms)", "compiler/backend/accuracy.py"),
        policy=Policy.KEEP, merge=_agree, serialize=True,
        doc="how the op's input activation is quantized (dynamic / per token / static scale)"),
    Key("kv_quant", KVQuant, frozenset({OP}),
        writers=("passes/quant (quantize_kv; kv.dtype=int8)",),
        readers=("compiler/backend/emit.py + quantized.py (GroupQueryAttention with an int8 cache)",
                 "compiler/backend/accuracy.py (kv_cache_check)"),
        policy=Policy.KEEP, merge=_agree,
        doc="static per-head/channel scales of an Attention's quantized KV cache in the artifact"),
    Key("moe", MoERouting, frozenset({OP}),
        writers=("compiler/frontends/moe.py (torch import of MoE layers)", "passes/moe (routing)"),
        readers=("compiler/perf/cost.py + compiler/perf/moe.py (routed rows, touched experts)", "compiler/analysis/moe.py (moe report)"),
        policy=Policy.KEEP, merge=_agree, serialize=True, costed=True, doc="MoE routing of the layer this op belongs to"),
    Key("exit_point", ExitPoint, frozenset({OP}),
        writers=("passes/early_exit",), readers=("analysis (early_exit report)",),
        policy=Policy.KEEP, merge=_agree, serialize=True, doc="an early-exit head after a layer"),
    Key("kv_layout", KVLayout, frozenset({OP}),
        writers=("passes/kv_cache (lift_kv_cache)", "passes/kv_paging (kv_paging; kv=paged)"),
        readers=("compiler/perf/cost.py (KV bytes)", "analysis (capacity.kv_blocks)", "compiler/backend/emit.py (metadata_props)"),
        policy=Policy.KEEP, merge=_agree, serialize=True, costed=True, doc="KV-cache storage of an Attention op"),
    Key("fused_group", str, frozenset({OP}),
        writers=("passes/fusion/rotary.py",), readers=("compiler/backend/emit.py (metadata_props)",),
        policy=Policy.DROP, serialize=True,
        doc="id of a recognized group of ops treated as one (rotary:<root>)"),
    Key("attention", AttentionSpec, frozenset({OP}),
        writers=("passes/fusion (mask meaning at fusion)", "compiler/frontends (model config: windows, MLA, sinks)"),
        readers=("compiler/perf/cost.py (windowed / latent KV bytes and FLOPs)", "compiler/backend (emission, verification)",
                 "compiler/analysis (capacity per layer)"),
        policy=Policy.KEEP, merge=_agree, serialize=True, costed=True,
        doc="what an Attention computes beyond its operands: mask meaning, window, ALiBi, softcap, sinks, MLA"),
    Key("rotary", Rotary, frozenset({OP}),
        writers=("passes/fusion/rotary.py",), readers=("compiler/backend/emit.py (metadata_props)",),
        policy=Policy.DROP, serialize=True, doc="operands of a recognized rotary embedding"),
    Key("fused_by", str, frozenset({OP}),
        writers=("passes/fusion/rule.py (apply_rule)",),
        readers=("passes/fusion/rule.py (annotate-only rules skip their own)", "compiler/backend/emit.py (metadata_props)"),
        policy=Policy.DROP, serialize=True, doc="the fusion rule that made this op"),
    Key("merged_from", tuple, _BOTH, coerce=_str_tuple,
        writers=("passes/fusion (concatenated weights; fused ops: the op kinds they replace)",),
        readers=("compiler/backend/emit.py (metadata_props)",),
        policy=Policy.MERGE, merge=_union, serialize=True,
        doc="what a merged weight / fused op stands for (parameter names / op kinds)"),
    Key("source", str, _BOTH,
        writers=("compiler/frontends/*",),
        readers=("compiler/backend/emit.py (metadata_props)", "error messages"),
        policy=Policy.MERGE, merge=_join_sources, serialize=True,
        doc="where the op / weight came from (module path, ONNX node or initializer)"),
    Key("layer", int, frozenset({OP}),
        writers=("compiler/frontends/aten_context.py", "passes/kv_cache.py"),
        readers=("compiler/frontends/stacking.py", "compiler/backend/emit.py (metadata_props)"),
        policy=Policy.KEEP, merge=_agree, serialize=True, doc="decoder / encoder layer index"),
    Key("block", str, frozenset({OP}),
        writers=("compiler/frontends/aten_context.py (the module the op comes from: compiler/frontends/stacking.py block_of)",),
        readers=("compiler/analysis/layers.py (phases.<phase>.blocks, the per-layer breakdown)",),
        policy=Policy.KEEP, merge=_agree,
        doc="the block of its decoder layer (or of the model) an op belongs to: embedding, attention, mlp, moe, norm, head, other"),
    Key("const", bool, frozenset({PARAM}),
        writers=("compiler/frontends/*", "passes/cleanup.py (fold_constants)"),
        readers=("passes/cleanup.py", "passes/fusion/pattern.py (Const)", "reports (parameter count)"),
        policy=Policy.KEEP, merge=_agree,
        doc="a small constant (shape operand, scalar), not a model weight"),
]}


COSTED = tuple(k.name for k in KEYS.values() if k.costed)


def declared(key: str) -> Key:
    k = KEYS.get(key)
    if k is None:
        raise IRError(f"annotation {key!r} is not declared; declared keys: {', '.join(sorted(KEYS))} "
                      f"(add a Key to compiler/ir/annotations.py KEYS to declare a new one)")
    return k


def _kind(obj) -> str:
    return PARAM if hasattr(obj, "type") and not hasattr(obj, "op") else OP


def validate(kind: str, ann: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The annotations ``ann`` of an object of ``kind`` ("op"/"param"), checked and coerced."""
    out = {}
    for k, v in ann.items():
        key = declared(k)
        if kind not in key.on:
            raise IRError(f"{where}: annotation {k!r} is declared for {'/'.join(sorted(key.on))}, not {kind}s")
        out[k] = key.check(v, f"{where}")
    return out


def get(obj, key: str, default=None):
    """The value of declared annotation ``key`` on an OpNode or Param (``default`` when unset)."""
    declared(key)
    return obj.annotations.get(key, default)


def set(obj, key: str, value) -> None:  # noqa: A001 - the accessor pair is get/set
    """Set declared annotation ``key`` on an OpNode or Param (validated); ``None`` removes it."""
    if value is None:
        obj.annotations.pop(declared(key).name, None)
        return
    kind = _kind(obj)
    obj.annotations.update(validate(kind, {key: value}, f"{kind} {obj.name}"))


# ------------------------------------------------------------------------------------------------
# Graph.meta: the graph-level facts, declared like the node annotations

@dataclasses.dataclass(frozen=True)
class MetaKey:
    """A declared ``Graph.meta`` key: its value ``schema`` (Python types), who writes and reads
    it, and what it means. ``Graph.meta`` refuses an undeclared key or a value of another type."""

    name: str
    schema: type | tuple[type, ...]
    writers: tuple[str, ...]
    readers: tuple[str, ...]
    doc: str


_SEQ = (list, tuple)
META_KEYS: dict[str, MetaKey] = {k.name: k for k in [
    MetaKey("task", str, ("compiler/frontends (torch: model.task; onnx: logits/KV inputs)",),
            ("compiler/analysis", "compiler/driver", "compiler/backend/verify.py"),
            "causal_lm | embedding | custom: what the model computes"),
    MetaKey("causal", bool, ("compiler/frontends/torch_export.py",), ("passes/kv_cache.py", "passes/fusion"),
            "the torch export was of a causal decoder (its attention masks are causal)"),
    MetaKey("kv_tensors", _SEQ, ("passes/kv_cache.py", "passes/kv_cache_onnx.py", "passes/kv_paging.py",
                                 "compiler/frontends/onnx_import.py"),
            ("compiler/ir/ops.py Classifier (KV bytes)", "compiler/perf/memory.py", "compiler/analysis",
             "compiler/backend/verify.py"),
            "graph inputs/outputs that are KV cache (past_* / present_* / paged pools)"),
    MetaKey("dim_sources", dict, ("compiler/frontends", "passes/kv_cache.py", "passes/kv_paging.py"),
            ("compiler/backend/emit.py (runtime shape of B, S, P)", "passes (subgraph evaluation)"),
            "symbol name -> (graph input, axis[, scale]) that carries it at run time"),
    MetaKey("dim_names", dict, ("passes/kv_paging.py",), ("compiler/backend/emit.py",),
            "sympy dim text -> the ONNX dim_param name it is written as"),
    MetaKey("unknown_dims", dict, ("compiler/frontends/onnx_import.py",), ("compiler/analysis (model.import)",),
            "an imported file's dim names rooftop could not map to B, S, P"),
    MetaKey("source", dict, ("compiler/frontends/onnx_import.py",), ("compiler/analysis", "compiler/driver"),
            "where an imported file came from (format, path, opset, producer)"),
    MetaKey("import_stats", dict, ("compiler/frontends", "compiler/driver/pipeline.py"),
            ("compiler/analysis (report.json model.import)",), "what the import did, in counts and notes"),
    MetaKey("layer_stacking", dict, ("compiler/frontends/stacking.py",), ("compiler/analysis (model.import)",),
            "a meta import of 2 layers replicated to L (what was replicated)"),
    MetaKey("vocab_size", int, ("compiler/frontends",), ("compiler/backend/accuracy.py",),
            "the vocabulary when the embedding table does not say it"),
    MetaKey("max_positions", (int, type(None)), ("compiler/driver/pipeline.py",), ("compiler/analysis",),
            "the model's position limit (None: unknown)"),
    MetaKey("kv_cache", dict, ("passes/kv_cache.py",), ("reports",), "the KV-cache lift's counts"),
    MetaKey("kv_cache_refused", str, ("passes/kv_cache_onnx.py",), ("compiler/analysis (model.import)",),
            "why an ONNX decoder's KV cache was not lifted"),
    MetaKey("kv_paging", dict, ("passes/kv_paging.py",), ("compiler/backend/verify.py", "compiler/analysis"),
            "the paged artifact's block size, pools, block table and new-KV outputs"),
    MetaKey("quantization", dict, ("passes/quant (quantize)",), ("compiler/analysis/compression.py", "reports"),
            "the quantize pass's scheme, decisions and exclusions"),
    MetaKey("kv_quantization", dict, ("passes/quant (quantize_kv)",),
            ("compiler/analysis/compression.py", "reports", "compiler/driver/pipeline.py"),
            "the quantized KV cache in the artifact: dtype, scales' calibration, attention layers, or why not emitted"),
    MetaKey("sparsity", dict, ("passes/quant (prune_nm)",), ("compiler/analysis/compression.py", "reports"),
            "the N:M pass's pattern and per-layer decisions"),
    MetaKey("exit_layers", _SEQ, ("passes/early_exit.py",), ("compiler/analysis/early_exit.py",),
            "layers with an early-exit head"),
    MetaKey("onnx_metadata", dict, ("passes/quant", "passes/kv_paging.py"), ("compiler/backend/emit.py",),
            "entries the emitter writes into the ONNX model's metadata_props"),
]}


def check_meta(key: str, value: Any) -> None:
    """Raise :class:`IRError` unless ``key`` is a declared ``Graph.meta`` key and ``value`` fits."""
    k = META_KEYS.get(key)
    if k is None:
        raise IRError(f"Graph.meta key {key!r} is not declared; declared: {', '.join(sorted(META_KEYS))} "
                      f"(add a MetaKey to compiler/ir/annotations.py META_KEYS to declare a new one)")
    if not isinstance(value, k.schema) or (k.schema is int and isinstance(value, bool)):
        raise IRError(f"Graph.meta[{key!r}] must be a {_schema_name(k.schema)}, got {type(value).__name__}")


# ------------------------------------------------------------------------------------------------
# model-level metadata: what passes ask the emitter to record in the ONNX model's metadata_props
# (Graph.meta["onnx_metadata"]: key -> text)

#: onnxruntime session-config entries the artifact asks for (JSON object of key -> value)
ORT_SESSION_KEY = "rooftop.onnxruntime.session_config"
#: onnxruntime's session option for MatMulNBits activations (0 exact .. 4 int8)
ACCURACY_LEVEL_KEY = "session.qdq_matmulnbits_accuracy_level"
#: prefix of the per-initializer N:M sparsity records (``rooftop.sparsity.<initializer>``)
NM_KEY_PREFIX = "rooftop.sparsity."


def nm_metadata(patterns: Mapping[str, Mapping]) -> dict[str, str]:
    """``rooftop.sparsity.<initializer>`` → JSON ``{"n", "m", "axis", "method"}`` entries."""
    return {NM_KEY_PREFIX + name: json.dumps(dict(p), sort_keys=True) for name, p in sorted(patterns.items())}


# ------------------------------------------------------------------------------------------------
# carrying annotations over rewrites

def carried(sources: Sequence, kind: str = OP, *, explicit: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The annotations a replacement of ``sources`` (OpNodes or Params) inherits by each key's
    policy, then ``explicit`` (what the rewrite sets itself) on top."""
    out: dict[str, Any] = {}
    keys = dict.fromkeys(k for s in sources for k in s.annotations)
    for k in keys:
        key = KEYS.get(k)
        if key is None or kind not in key.on or key.policy is Policy.DROP:
            continue
        vals = [s.annotations[k] for s in sources if k in s.annotations]
        v = (key.merge or _agree)(vals)
        if v is not None:
            out[k] = v
    out.update(explicit or {})
    return out


def carry(sources: Sequence, target, *, heavy: Callable[[Any], bool] | None = None) -> None:
    """Give op ``target`` the annotations of the ops ``sources`` it replaces, by policy. An
    explicit annotation already on ``target`` wins. ``heavy(op)`` selects the members whose
    ``compute_dtype`` counts (by default GEMM / attention cost classes): a fused MatMul+bias+GELU
    keeps the MatMul's compute dtype whatever the elementwise members say."""
    srcs = list(sources)
    if heavy is None:
        def heavy(n):
            d = REGISTRY.get(n.op)
            return d is not None and d.cost_class in ("gemm", "attention")
    heavy_srcs = [s for s in srcs if heavy(s)]
    inherit = carried(srcs, OP)
    inherit.pop("compute_dtype", None)
    if heavy(target) or not heavy_srcs:   # an elementwise remainder does not run the GEMM's math
        cd = carried(heavy_srcs or srcs, OP).get("compute_dtype")
        if cd is not None:
            inherit["compute_dtype"] = cd
    for k, v in inherit.items():
        target.annotations.setdefault(k, v)


def carry_params(sources: Sequence, target) -> None:
    """Give parameter ``target`` (e.g. a concatenation of ``sources``) their annotations by
    policy; an explicit annotation already on ``target`` wins."""
    for k, v in carried(list(sources), PARAM).items():
        target.annotations.setdefault(k, v)


def serialized(ann: Mapping[str, Any]) -> dict[str, str]:
    """``rooftop.<key>`` → text of the annotations the emitter writes into the ONNX model."""
    out = {}
    for k, v in ann.items():
        key = KEYS.get(k)
        if key is not None and key.serialize:
            out[f"rooftop.{k}"] = _text(v)
    return out


def _text(v) -> str:
    if dataclasses.is_dataclass(v):
        fields = {f.name: getattr(v, f.name) for f in dataclasses.fields(v)}
        return ",".join(f"{k}={_text(x)}" for k, x in fields.items() if x is not None)
    if isinstance(v, (tuple, list)):
        return "[" + ",".join(_text(x) for x in v) + "]"
    return str(v)


def table() -> list[dict[str, Any]]:
    """The contract as rows (for docs and tests)."""
    return [{"key": k.name, "schema": _schema_name(k.schema), "on": sorted(k.on), "writers": list(k.writers),
             "readers": list(k.readers), "policy": k.policy.value, "serialized": k.serialize, "doc": k.doc}
            for k in KEYS.values()]


__all__ = ["BLOCKS", "KEYS", "Key", "Policy", "WeightFormat", "ComputeDtype", "MoERouting", "ExitPoint", "KVLayout", "KVQuant",
           "AttentionSpec", "MASK_KINDS", "Rotary", "get", "set", "validate", "carry", "carry_params", "carried", "COSTED", "serialized", "declared", "table"]
