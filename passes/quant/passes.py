"""The ``quantize`` and ``prune_nm`` passes (config groups ``quant=`` and ``sparsity=``).

Both find the graph's linear layers — ``MatMul`` / ``MatMulEpilogue`` whose operand 1 is a 2-D
float weight ``W[K, N]`` (reduction axis 0) — minus the excluded ones (``exclude``: ``embeddings``
and ``lm_head`` by default, plus fnmatch patterns on parameter names), and annotate them
(compiler/ir/annotations.py):

- ``weight_format`` on the weight (storage dtype, granularity, group, symmetry, deployment scale
  dtype, N:M pattern) — the cost model charges its stored bytes;
- ``compute_dtype`` on the op (the math the scheme runs and the kernel family the prediction
  assumes: ``aten._weight_int4pack_mm`` for W4A16, dequantize + ``F.linear`` for W8A16 (faster
  than ``torch._weight_int8pack_mm`` at every measured M on the H200), ``torch._int_mm`` with dynamic
  int8 activation quantization for W8A8, ``torch._scaled_mm`` with dynamic FP8 activation
  quantization for FP8, cuSPARSELt for 2:4 — compiler/perf/kernel_families.py); on ``kind: cpu``
  hardware the onnxruntime CPU kernel the artifact runs instead (``MatMulNBits`` 4/8-bit at the
  configured accuracy level, ``DynamicQuantizeMatMul``, ``MatMulIntegerToFloat``, the per-token
  ``MatMulInteger`` form, the FP8 simulation; a pruned weight runs as the same dense ``MatMul``);
- ``quant_data`` on the weight (codes, scales, zero points for the emitter) and
  ``activation_quant`` on the op (W8A8 / FP8 activations).

With real weights the values change: the weight's data becomes the dequantized (or pruned) fp32
values, and calibration-based methods (GPTQ, AWQ, SmoothQuant, SparseGPT, static activation
scales) run the current graph in onnxruntime on the calibration split of the evaluation text
(compiler/backend/accuracy.py) — activations of the fp32 (or already pruned) model, not sequentially
re-quantized layer by layer. With meta weights (cost-only models) only the annotations are
written (``stats.cost_only``): any scheme can be priced for any model size, but no artifact and
no accuracy exist.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import ml_dtypes
import numpy as np

from compiler.ir.tensors import HW_DTYPE
from compiler.ir import annotations as ann
from compiler.ir.annotations import ComputeDtype, WeightFormat
from compiler.errors import ConfigError
from compiler.ir import Graph, OpNode
from compiler.perf.kernel_families import ORT_DENSE_NM
from compiler.ir.annotations import ACCURACY_LEVEL_KEY, ORT_SESSION_KEY, ActivationQuant, QuantizedData, nm_metadata
from passes.base import Pass, PassResult, evaluator
from passes.quant.config import CalibrationConfig, QuantConfig, SparsityConfig


def _fields(cls) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _defaults(cls) -> dict[str, Any]:
    return dataclasses.asdict(cls())
from passes.quant.formats import QTensor, QuantError, QuantSpec, int_dtype, quantize_rtn
from passes.quant.nm import prune_magnitude
from passes.quant.obs import Hessian, obs_compress
from passes.quant.smooth import awq_scales, smoothquant_scales
from compiler.ir import TensorType
from passes.quant.blocks import parse_targets, block_type
from passes.quant.cost_gate import decide

log = logging.getLogger("rooftop.quant")

LINEAR_OPS = ("MatMul", "MatMulEpilogue")
_FLOAT = ("float32", "float16", "bfloat16")
_VIEW = ("Reshape", "Identity", "Squeeze", "Unsqueeze", "Flatten", "Cast")

# scheme -> weight dtype family, granularity, activation dtype (None: weight-only), kernel family
SCHEMES: dict[str, dict[str, Any]] = {
    "w8a16": {"bits": 8, "granularity": "channel", "act": None, "kernel": "dequantize + F.linear"},
    "w4a16": {"bits": 4, "granularity": "group", "act": None, "kernel": "aten._weight_int4pack_mm"},
    "w8a8": {"bits": 8, "granularity": "channel", "act": "int8",
             "kernel": "torch._int_mm + dynamic int8 activation quantization"},
    "fp8": {"bits": 8, "granularity": "channel", "act": "fp8",
            "kernel": "torch._scaled_mm + dynamic fp8 activation quantization"},
}
#: 16-bit float formats of an fp32 model's weights (quant=auto on GPUs): the weight stored and the GEMM
#: run in 16 bits (the hardware's 16-bit peak, the default roofline — no measured kernel family)
FLOAT16 = {"fp16": "float16", "bf16": "bfloat16"}
SCHEMES.update({k: {"bits": 16, "granularity": "none", "act": None, "kernel": ""} for k in FLOAT16})
# the same schemes as onnxruntime CPU runs rooftop's artifacts (hardware ``kind: cpu``):
# (scheme, activations or accuracy) -> kernel label of compiler/perf/kernel_families.py
ORT_CPU_KERNELS: dict[tuple[str, str], str] = {
    ("w4a16", "int8"): "onnxruntime MatMulNBits 4-bit (accuracy level 4: int8 activations)",
    ("w4a16", "fp32"): "onnxruntime MatMulNBits 4-bit (accuracy level 0: fp32 activations)",
    ("w8a16", "int8"): "onnxruntime MatMulNBits 8-bit (accuracy level 4: int8 activations)",
    ("w8a16", "fp32"): "onnxruntime MatMulNBits 8-bit (accuracy level 0: fp32 activations)",
    ("w8a8", "dynamic"): "onnxruntime DynamicQuantizeMatMul (int8)",
    ("w8a8", "static"): "onnxruntime MatMulIntegerToFloat (static uint8 QDQ)",
    ("w8a8", "dynamic_per_token"): "onnxruntime MatMulInteger + per-token rescale",
    ("fp8", "dynamic"): "onnxruntime DequantizeLinear fp8 + fp32 MatMul (accuracy simulation)",
    ("fp8", "static"): "onnxruntime DequantizeLinear fp8 + fp32 MatMul (accuracy simulation)",
}
ORT_CPU_SPARSE_KERNEL = ORT_DENSE_NM


def round_float16(w: np.ndarray, dtype: str) -> np.ndarray:
    """``w`` rounded to float16 / bfloat16 (round to nearest even), back in float32."""
    return w.astype(np.float16 if dtype == "float16" else ml_dtypes.bfloat16).astype(np.float32)


def on_cpu(context) -> bool:
    """The configured hardware is a CPU: its artifacts run on onnxruntime CPU kernels."""
    hw = getattr(context, "hardware", None)
    return getattr(hw, "kind", "") == "cpu"


METHODS = ("rtn", "gptq", "awq", "smoothquant")
ACTIVATIONS = ("dynamic", "dynamic_per_token", "static")
SPARSE_KERNEL = "cuSPARSELt 2:4 (torch.sparse.to_sparse_semi_structured)"


# ------------------------------------------------------------------------------------------------
# the linear layers

@dataclasses.dataclass
class Site:
    node: OpNode
    weight: str
    reason: str = ""     # why excluded ("" = included)
    transposed_from: str | None = None   # the weight is Transpose(this [N, K] parameter) (a tied LM head)


def _transposed_param(g: Graph, t: str) -> str | None:
    """The 2-D parameter ``P`` when ``t = Transpose(P, perm=[1, 0])`` (a tied LM head reads the
    embedding table this way), else None."""
    prod = g.producer_of(t)
    if prod is None or prod.op != "Transpose" or list(prod.attrs.get("perm") or [1, 0]) != [1, 0]:
        return None
    return prod.inputs[0] if prod.inputs[0] in g.params else None


def linear_sites(g: Graph, exclude: Sequence[str] = ("embeddings", "lm_head")) -> list[Site]:
    """Every linear layer with a 2-D float weight (a parameter, or the transpose of one: a tied
    LM head), in topological order; excluded ones carry a reason."""
    gathered = {n.inputs[0] for n in g if n.op == "Gather"}
    patterns = [p for p in exclude if p not in ("embeddings", "lm_head", "experts")]
    out = []
    for n in g.topo_order():
        if n.op not in LINEAR_OPS or len(n.inputs) < 2:
            continue
        w = n.inputs[1]
        src = _transposed_param(g, w) if w not in g.params else None
        p = g.params.get(src or w)
        if p is None or p.type.rank != 2 or p.type.dtype not in _FLOAT or p.annotations.get("const"):
            continue
        reason = ""
        if src is not None and not ("lm_head" in exclude and _feeds_output(g, n)) and g.num_uses(w) == 1:
            out.append(Site(n, w, _exclude_reason(g, src, patterns), transposed_from=src))
            continue
        if src is not None:
            reason = "lm_head" if _feeds_output(g, n) else "transposed weight read by several ops"
            w = src
        elif "embeddings" in exclude and w in gathered:
            reason = "embeddings (tied weight)"
        elif "lm_head" in exclude and _feeds_output(g, n):
            reason = "lm_head"
        else:
            reason = _exclude_reason(g, w, patterns)
        out.append(Site(n, w, reason))
    return out


def expert_sites(g: Graph, exclude: Sequence[str] = ("embeddings", "lm_head")) -> list[Site]:
    """Every grouped expert GEMM (``MoEMatMul(x [R, K], w [E, K, N], expert [R])``) with a 3-D
    float weight, in topological order: one site per weight (a MoE layer's gate/up and down
    projections). ``experts`` in ``exclude`` keeps them all; an fnmatch pattern names one."""
    patterns = [p for p in exclude if p not in ("embeddings", "lm_head", "experts")]
    out, seen = [], set()
    for n in g.topo_order():
        if n.op != "MoEMatMul" or len(n.inputs) < 2 or n.inputs[1] not in g.params or n.inputs[1] in seen:
            continue
        p = g.params[n.inputs[1]]
        if p.type.rank != 3 or p.type.dtype not in _FLOAT or p.annotations.get("const"):
            continue
        seen.add(p.name)
        reason = "experts" if "experts" in exclude else _exclude_reason(g, p.name, patterns)
        out.append(Site(n, p.name, reason))
    return out


def quantize_experts(w: np.ndarray, spec: QuantSpec) -> QTensor:
    """RTN of a stacked expert weight ``[E, K, N]``, each expert on its own (per output channel
    of each expert, or per group along K of each expert), in ONNX's blocked ``DequantizeLinear``
    form along axis 1: scales ``[E, K/block, N]`` (a per-channel scale is one block of K)."""
    w = np.asarray(w, np.float32)
    e, k, n = w.shape
    block = k if spec.granularity == "channel" else spec.group_size
    if spec.granularity == "tensor" or k % block:
        raise QuantError(f"expert weight [{e}, {k}, {n}]: the reduction axis {k} is not a multiple of the group "
                         f"{block}; set quant.group_size to a divisor of {k}")
    parts = [quantize_rtn(w[i], dataclasses.replace(spec, granularity="group", group_size=block)) for i in range(e)]
    zp = None if parts[0].zero_point is None else np.stack([q.zero_point for q in parts])
    return QTensor(dataclasses.replace(spec, granularity="group", group_size=block),
                   np.stack([q.codes for q in parts]), np.stack([q.scale for q in parts]).astype(np.float32), zp, 1)


def _exclude_reason(g: Graph, w: str, patterns: Sequence[str]) -> str:
    src = str(g.params[w].annotations.get("source", ""))
    hit = next((pat for pat in patterns if fnmatch.fnmatch(w, pat) or (src and fnmatch.fnmatch(src, pat))), None)
    return f"exclude pattern {hit!r}" if hit else ""


def materialize_transposed(g: Graph, site: Site) -> None:
    """Give a linear layer that reads ``Transpose(P)`` (a tied LM head with ``lm_head`` not
    excluded) its own ``[K, N]`` weight ``<P>.T`` — the copy that gets quantized or pruned, while
    ``P`` itself (the embedding table the Gather reads) keeps its precision. ``P`` is removed when
    nothing else reads it."""
    if site.transposed_from is None:
        return
    src = g.params[site.transposed_from]
    name = g.fresh(f"{src.name}.T")
    data = None if src.data is None else np.ascontiguousarray(np.asarray(src.data).T)
    g.add_param(name, TensorType(src.type.dtype, (src.type.shape[1], src.type.shape[0])), data)
    tr = g.producer_of(site.node.inputs[1])
    g.set_input(site.node, 1, name)
    if g.num_uses(tr.outputs[0]) == 0 and tr.outputs[0] not in g.outputs:
        g.remove_op(tr)
    if g.num_uses(src.name) == 0 and src.name not in g.outputs:
        g.remove_param(src.name)
    site.weight, site.transposed_from = name, None


def _feeds_output(g: Graph, n: OpNode) -> bool:
    """The op's result reaches a graph output through view ops only (an LM head)."""
    frontier = [n.outputs[0]]
    seen = set()
    while frontier:
        t = frontier.pop()
        if t in g.outputs:
            return True
        if t in seen:
            continue
        seen.add(t)
        for c, _ in g.consumers(t):
            if c.op in _VIEW:
                frontier.extend(c.outputs)
    return False


def _act_hw_dtype(g: Graph, n: OpNode) -> str:
    return HW_DTYPE.get(g.type(n.inputs[0]).dtype, "fp32")


def _scale_dtype(g: Graph, w: str) -> str:
    """Deployment scale dtype: the weight's 16-bit dtype, fp16 for an fp32 model."""
    dt = g.params[w].type.dtype
    return dt if dt in ("float16", "bfloat16") else "float16"


# ------------------------------------------------------------------------------------------------
# calibration

def calibration_of(v) -> CalibrationConfig:
    """The ``calibration`` block of quant= / sparsity= (passes/quant/config.py CalibrationConfig)."""
    if isinstance(v, CalibrationConfig):
        return v
    v = dict(v or {})
    bad = set(v) - {f.name for f in dataclasses.fields(CalibrationConfig)}
    if bad:
        raise ConfigError(f"unknown calibration key(s) {sorted(bad)}; valid: samples, seq_len, source.")
    c = CalibrationConfig(**v)
    if int(c.samples) < 1 or int(c.seq_len) < 2:
        raise ConfigError(f"calibration.samples must be ≥ 1 and calibration.seq_len ≥ 2, got {c.samples}, {c.seq_len}.")
    return c


def calibrate(g: Graph, tensors: Sequence[str], cal: CalibrationConfig, tokenizer_source: Mapping | None,
              keep_rows: int = 0) -> dict[str, Hessian]:
    """Hessian and activation statistics of each tensor over the calibration split; with
    ``keep_rows`` also up to that many activation rows (``Hessian.rows``, for AWQ)."""
    stats = {t: Hessian(g.type(t).shape[-1]) for t in tensors}
    rows: dict[str, list[np.ndarray]] = {t: [] for t in tensors}

    def consume(t, x):
        stats[t].add(x)
        if keep_rows and sum(len(r) for r in rows[t]) < keep_rows:
            rows[t].append(x[: keep_rows].astype(np.float32))

    n_seqs = evaluator("calibration").activations(g, tensors, cal, tokenizer_source, consume)
    for t in tensors:
        stats[t].rows = np.concatenate(rows[t]) if rows[t] else None
        stats[t].samples = n_seqs
    return stats


def unflatten_input(g: Graph, site: Site) -> bool:
    """``Reshape(x[B, S, K] → [B·S, K]) → linear`` becomes ``linear(x[B, S, K]) → Reshape`` (Conv1D-style
    exports flatten before the GEMM). For static W8A8 this matters in onnxruntime: a 2-D MatMul +
    bias is fused into a float ``Gemm`` before its QDQ transformer runs, leaving the activation
    QDQ unfused (measured ≈ 3× slower than fp32); the 3-D MatMul becomes ``MatMulIntegerToFloat``."""
    n = site.node
    x = n.inputs[0]
    r = g.producer_of(x)
    if r is None or r.op != "Reshape" or g.num_uses(x) != 1:
        return False
    x3, t2 = r.inputs[0], g.type(x)
    t3 = g.type(x3)
    if t3.rank < 3 or t2.rank != 2 or t3.shape[-1] != t2.shape[-1]:
        return False
    out2 = n.outputs[0]
    src = g.producer_of(x3)
    if src is not None and src.op == "Attention":   # onnxruntime mis-infers its 3-D output's last dim
        x3 = g.add_op("Reshape", [x3], 1, attrs={"shape": list(t3.shape)}).outputs[0]
    new = g.add_op(n.op, [x3] + n.inputs[1:], 1, attrs=n.attrs, name=g.fresh(n.name), domain=n.domain,
                   **n.annotations)
    back = g.add_op("Reshape", new.outputs, 1, attrs={"shape": list(g.type(out2).shape)})
    g.replace_uses(out2, back.outputs[0])
    g.remove_op(n)
    if g.num_uses(x) == 0:
        g.remove_op(r)
    site.node = new
    return True


# ------------------------------------------------------------------------------------------------
# input-channel scaling folded into the producer of the activation (SmoothQuant / AWQ)

_NORMS = {"LayerNormalization": (1, 2), "RMSNormalization": (1, None), "ResidualNorm": (2, 3),
          "SimplifiedLayerNormalization": (1, None)}


def fold_target(g: Graph, x: str, sites: Sequence[Site]) -> tuple[OpNode, list[str]] | None:
    """The norm producing ``x`` (through channel-preserving views read only on this path) whose
    scale/bias weights serve only it — where ``x / s`` can be folded — or None."""
    readers = {c.name for c, _ in g.consumers(x)}
    if readers != {st.node.name for st in sites} or x in g.outputs:
        return None
    y = x
    prod = g.producer_of(y)
    while prod is not None and prod.op in _VIEW and prod.op != "Cast" \
            and g.type(prod.inputs[0]).shape[-1] == g.type(y).shape[-1]:
        y = prod.inputs[0]
        if g.num_uses(y) != 1:
            return None
        prod = g.producer_of(y)
    idx = _NORMS.get(prod.op) if prod is not None else None
    if idx is None or prod.outputs[0] != y:
        return None
    ps = [prod.inputs[i] for i in idx if i is not None and i < len(prod.inputs) and prod.inputs[i]]
    if ps and all(t in g.params and g.params[t].data is not None and g.num_uses(t) == 1 for t in ps):
        return prod, ps
    return None


def apply_input_scaling(g: Graph, x: str, sites: Sequence[Site], s: np.ndarray) -> str | None:
    """Rewrite ``x·W_i`` as ``(x/s)·(s·W_i)`` for every site reading ``x``, with ``1/s`` folded
    into the norm that produces ``x`` (its scale and bias). Returns the norm's op kind, or None
    (nothing changed) when there is no such norm: an extra elementwise ``Mul`` before the GEMM
    would cost more than smoothing gains, so those inputs are left unsmoothed (as in SmoothQuant,
    which smooths the inputs of the QKV and first MLP projections)."""
    tgt = fold_target(g, x, sites)
    if tgt is None:
        return None
    prod, ps = tgt
    for site in sites:
        p = g.params[site.weight]
        p.data = (np.asarray(p.data, np.float32) * s[:, None]).astype(p.data.dtype)
    for t in ps:
        p = g.params[t]
        p.data = (np.asarray(p.data, np.float32) / s).astype(p.data.dtype)
    return prod.op


# ------------------------------------------------------------------------------------------------
# embedding tables (and the tied LM head that reads one)

#: the block sizes onnxruntime's GatherBlockQuantized / MatMulNBits take: powers of two ≥ 16
def _ort_block(bs: int) -> bool:
    return bs >= 16 and bs & (bs - 1) == 0


@dataclasses.dataclass
class TableSite:
    """An embedding table ``P[V, K]``: the ``Gather`` ops that read rows of it and the linear
    layers that read ``Transpose(P)`` (a tied LM head); excluded ones carry a reason."""

    param: str
    gathers: list
    heads: list
    reason: str = ""


def embedding_tables(g: Graph, exclude: Sequence[str] = ("embeddings", "lm_head")) -> list[TableSite]:
    """Every 2-D float parameter read by a row ``Gather`` (axis 0), with its tied heads."""
    patterns = [p for p in exclude if p not in ("embeddings", "lm_head", "experts")]
    out = []
    for name, p in g.params.items():
        if p.type.rank != 2 or p.type.dtype not in _FLOAT or p.annotations.get("const"):
            continue
        uses = g.consumers(name)
        gathers = [c for c, i in uses if c.op == "Gather" and i == 0 and int(c.attrs.get("axis", 0)) == 0]
        if not gathers:
            continue
        heads, other = [], [c for c, i in uses if c not in gathers]
        for c in list(other):
            if c.op == "Transpose" and list(c.attrs.get("perm") or [1, 0]) == [1, 0]:
                readers = g.consumers(c.outputs[0])
                if readers and all(r.op == "MatMul" and j == 1 for r, j in readers) \
                        and c.outputs[0] not in g.outputs:
                    heads += [r for r, _ in readers]
                    other.remove(c)
        reason = ""
        if "embeddings" in exclude:
            reason = "embeddings"
        elif other:
            reason = f"also read by {other[0].op} {other[0].name} (not a row gather or a tied head)"
        elif heads and "lm_head" in exclude:
            reason = "tied to the LM head, which quant.exclude keeps in full precision"
        else:
            reason = _exclude_reason(g, name, patterns)
        out.append(TableSite(name, gathers, heads, reason))
    return out


# ------------------------------------------------------------------------------------------------
# quantize

@dataclasses.dataclass(frozen=True)
class LayerScheme:
    """One quantization format as the quantize pass applies it to a layer: the scheme
    (w8a16 | w4a16 | w8a8 | fp8), the int4 group, symmetry, the activation mode and onnxruntime's
    MatMulNBits accuracy level. ``quant=<scheme>`` applies one to every layer; ``quant=auto``
    (passes/quant/auto.py) picks one per layer."""

    scheme: str
    group_size: int = 128
    symmetric: bool = True
    activations: str = "dynamic"
    accuracy_level: int = 4

    @property
    def name(self) -> str:
        """Short label: ``w4a16_g32``, ``w8a8`` (``_static`` / ``_per_token`` when not dynamic)."""
        if self.scheme == "w4a16":
            return f"w4a16_g{self.group_size}" + ("_sym" if self.symmetric else "")
        if SCHEMES[self.scheme]["act"] is not None and self.activations != "dynamic":
            return f"{self.scheme}_{self.activations.removeprefix('dynamic_')}"
        return self.scheme

    def spec(self) -> QuantSpec:
        sch = SCHEMES[self.scheme]
        if self.scheme == "fp8":
            return QuantSpec("float8e4m3fn", "channel")
        sym = self.symmetric if self.scheme != "w8a8" else True   # int8 GEMMs take symmetric weights
        return QuantSpec(int_dtype(sch["bits"], sym), sch["granularity"], self.group_size, sym)

    def table_spec(self, k: int) -> QuantSpec | None:
        """The format of an embedding table ``[V, K]`` under this scheme: the same bits in blocks
        along each row (what a row gather and a tied head's reduction axis share) — int4/uint4 in
        groups of ``group_size``, int8 in blocks of 128; None for FP8 and 16-bit floats (no quantized
        gather)."""
        if self.scheme == "fp8" or self.scheme in FLOAT16:
            return None
        bits = SCHEMES[self.scheme]["bits"]
        sym = self.symmetric if bits == 4 else True
        bs = self.group_size if bits == 4 else min(128, k)
        return QuantSpec(int_dtype(bits, sym), "group", bs, sym)

    def weight_format(self, g: Graph, w: str, spec: QuantSpec, axis: int = 0) -> WeightFormat:
        sd = _scale_dtype(g, w)
        prev = ann.get(g.params[w], "weight_format")
        return WeightFormat(dtype=spec.dtype, granularity=spec.granularity,
                            group_size=spec.group_size if spec.granularity == "group" else None, axis=axis,
                            symmetric=spec.symmetric, scale_dtype=sd, zero_dtype=None if spec.symmetric else sd,
                            nm=prev.nm if prev is not None else None)

    def act_quant(self, stats: Hessian | None, s: np.ndarray | None) -> ActivationQuant | None:
        sch = SCHEMES[self.scheme]
        if sch["act"] is None:
            return None
        dtype = "float8e4m3fn" if sch["act"] == "fp8" else ("int8" if self.activations == "dynamic_per_token" else "uint8")
        if self.activations != "static":
            return ActivationQuant(self.activations, dtype)
        if stats is None:     # cost-only: the format without a calibrated scale
            return ActivationQuant("dynamic", dtype)
        lo, hi = (stats.chmin, stats.chmax) if s is None else (stats.chmin / s, stats.chmax / s)
        lo, hi = min(float(np.min(lo)), 0.0), max(float(np.max(hi)), 0.0)
        if dtype == "float8e4m3fn":
            return ActivationQuant("static", dtype, max(-lo, hi) / 448.0 or 1.0, 0)
        scale = (hi - lo) / 255.0 or 1.0
        return ActivationQuant("static", dtype, scale, int(np.clip(np.rint(-lo / scale), 0, 255)))

    def kernel(self, context, weight_only: bool = False) -> str:
        """The kernel the prediction assumes: PyTorch's on a GPU (measured on the H200), the
        onnxruntime CPU kernel the artifact runs on ``kind: cpu`` hardware (its accuracy level /
        activation mode picks the variant). ``weight_only``: the scheme's weights with float
        activations (a tied head sharing a quantized table runs MatMulNBits whatever the scheme)."""
        sch = SCHEMES[self.scheme]
        if self.scheme in FLOAT16:
            return ""
        wo = weight_only or sch["act"] is None
        scheme = self.scheme if not weight_only or sch["act"] is None else ("w4a16" if sch["bits"] == 4 else "w8a16")
        if not on_cpu(context):
            return SCHEMES[scheme]["kernel"]
        if wo:
            # x86 MLAS runs levels 1-3 as level 0 (fp32 activations); 4 quantizes them to int8
            return ORT_CPU_KERNELS[(scheme, "int8" if self.accuracy_level == 4 else "fp32")]
        return ORT_CPU_KERNELS[(self.scheme, self.activations)]

    def compute(self, g: Graph, n: OpNode, context, weight_only: bool = False) -> ComputeDtype:
        if self.scheme in FLOAT16:
            return ComputeDtype(self.scheme, "")
        sch = SCHEMES[self.scheme]
        dt = None if weight_only else {"int8": "int8", "fp8": "fp8"}.get(sch["act"])
        return ComputeDtype(dt or _act_hw_dtype(g, n), self.kernel(context, weight_only))


class Quantize(Pass):
    """``quant=`` w8a16 | w4a16 | w8a8 | fp8 (see the module docstring). With ``embeddings`` not in
    ``quant.exclude`` the embedding tables are quantized too (blocks along each row; the emitter
    writes a gather that dequantizes after the gather), and a tied LM head (``lm_head`` not
    excluded either) shares the quantized table instead of getting its own copy."""

    name = "quantize"
    #: keys only the driver / quant=auto pass (not a config file) give
    INTERNAL = ("tokenizer_source", "workload", "gate_max_accuracy_drop")

    def check_params(self) -> None:
        allowed = set(_fields(QuantConfig)) | set(self.INTERNAL)
        bad = set(self.params) - allowed
        if bad:
            raise ConfigError(f"{self.name}: unknown option(s) {sorted(bad)}; valid: {', '.join(sorted(allowed))}.")
        # defaults: passes/quant/config.py QuantConfig (a recipe entry names only what it changes)
        p = {**_defaults(QuantConfig), "scheme": "w8a8", **{k: v for k, v in self.params.items() if v is not None}}
        self.scheme = str(p["scheme"])
        self.check_scheme()
        self.group_size = int(p["group_size"])
        # 4-bit defaults to asymmetric (uint4 + zero point): on MiniLM it raised embedding cosine from 0.945
        # (full-range symmetric, = onnxruntime's symmetric MatMulNBits quantizer) to 0.954 at no measured
        # MatMulNBits latency cost; int8 stays symmetric (its error is small either way)
        self.symmetric = bool(p["symmetric"]) if p.get("symmetric") is not None else self.scheme != "w4a16"
        self.method = str(p["method"])
        self.alpha = float(p["smooth_alpha"])
        self.activations = str(p["activations"])
        self.exclude = list(p["exclude"])
        self.calibration = calibration_of(p["calibration"])
        self.accuracy_level = int(p["ort_accuracy_level"])
        self.tokenizer_source = p.get("tokenizer_source")
        self.p = p
        act = SCHEMES[self.scheme]["act"] if self.scheme in SCHEMES else None
        if self.method not in METHODS:
            raise ConfigError(f"quant.method={self.method!r}: use one of {', '.join(METHODS)}.")
        if self.method == "smoothquant" and self.scheme in SCHEMES and act is None:
            raise ConfigError(f"quant.method=smoothquant smooths activations for W8A8/FP8; quant={self.scheme} keeps "
                              f"activations in floating point — use rtn, gptq or awq.")
        if self.method == "awq" and act is not None:
            raise ConfigError(f"quant.method=awq is a weight-only method (w4a16, w8a16); for quant={self.scheme} use "
                              f"smoothquant, gptq or rtn.")
        if self.activations not in ACTIVATIONS:
            raise ConfigError(f"quant.activations={self.activations!r}: use {', '.join(ACTIVATIONS)}.")
        if self.activations == "dynamic_per_token" and self.scheme == "fp8":
            raise ConfigError("quant.activations=dynamic_per_token is an int8 (W8A8) option; FP8 uses dynamic or static.")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"quant.smooth_alpha={self.alpha} must be in [0, 1].")
        if self.group_size < 1:
            raise ConfigError(f"quant.group_size={self.group_size} must be ≥ 1 (128 is the usual int4 group).")
        if not 0 <= self.accuracy_level <= 4:
            raise ConfigError(f"quant.ort_accuracy_level={self.accuracy_level}: onnxruntime's MatMulNBits accepts 0–4 "
                              f"(0: as the model's float type, 4: int8 activations, fastest on CPU).")
        self.check_more(p)

    def check_scheme(self) -> None:
        if self.scheme not in SCHEMES:
            raise ConfigError(f"quant={self.scheme!r} is not a scheme; use none, auto, {', '.join(SCHEMES)}.")

    def check_more(self, p: Mapping) -> None:
        """Extra checks of a subclass (quant=auto)."""

    def layer_scheme(self, scheme: str | None = None, **over) -> LayerScheme:
        """The configured format (or ``scheme`` with this pass's settings)."""
        sc = scheme or self.scheme
        sym = self.symmetric if scheme is None else sc != "w4a16"
        kw = dict(scheme=sc, group_size=self.group_size, symmetric=sym, activations=self.activations,
                  accuracy_level=self.accuracy_level)
        kw.update(over)
        return LayerScheme(**kw)

    # -- the pass ---------------------------------------------------------------------------
    def run(self, g: Graph) -> PassResult:
        scheme = self.layer_scheme()
        sites = linear_sites(g, self.exclude)
        tables = embedding_tables(g, self.exclude)
        experts = expert_sites(g, self.exclude)
        assignment = {s.transposed_from or s.weight: scheme for s in sites if not s.reason}
        assignment.update({t.param: scheme for t in tables if not t.reason})
        assignment.update({s.weight: scheme for s in experts if not s.reason})
        stats = self.apply(g, sites, tables, assignment, experts=experts)
        return PassResult(g, bool(stats.get("quantized_weights") or stats.get("linear_layers")
                                  or stats.get("expert_weights")), stats)

    def apply(self, g: Graph, sites: list[Site], tables: list[TableSite],
              assignment: Mapping[str, LayerScheme], record: Mapping[str, Any] | None = None,
              annotate_only: bool = False, experts: Sequence[Site] = ()) -> dict[str, int]:
        """Quantize the layers ``assignment`` names (weight or table → format); the others stay
        as they are. Writes ``graph.meta["quantization"]`` (``record`` adds to it); returns stats.
        ``annotate_only``: write the formats for the cost model and leave the values (as for meta
        weights; quant=auto prices candidate formats this way)."""
        cost_only = annotate_only or not g.has_weights()
        # tables first: a quantized table read by a tied head is shared by it (no own copy)
        table_done: dict[str, tuple[LayerScheme, QuantSpec]] = {}
        table_reasons: dict[str, str] = {t.param: t.reason for t in tables if t.reason}
        for t in tables:
            sch = assignment.get(t.param)
            if t.reason or sch is None:
                continue
            k = g.params[t.param].type.shape[1]
            spec = sch.table_spec(k) if isinstance(k, int) else None
            why = "" if spec is not None else f"{sch.name}: no quantized gather for this format"
            if spec is not None and (not _ort_block(spec.group_size) or k % spec.group_size):
                why = (f"row length {k} is not a multiple of the block {spec.group_size}, or the block is not a "
                       f"power of two ≥ 16 (onnxruntime's GatherBlockQuantized / MatMulNBits)")
            if why:
                table_reasons[t.param] = why
                continue
            self._quantize_table(g, t, spec, sch, cost_only)
            table_done[t.param] = (sch, spec)
        shared_heads = {h.name for t in tables if t.param in table_done for h in t.heads}
        todo = [s for s in sites if not s.reason and s.node.name not in shared_heads
                and assignment.get(s.transposed_from or s.weight) is not None]
        scheme_of = {s.node.name: assignment[s.transposed_from or s.weight] for s in todo}
        for s in todo:
            materialize_transposed(g, s)
        schemes = {s.weight: scheme_of[s.node.name] for s in todo}
        stats: dict[str, int] = {"linear_layers": len(todo), "excluded": sum(1 for s in sites if s.reason)}
        if tables:
            stats["embedding_tables"] = len(table_done)
            if shared_heads:
                stats["tied_heads_shared"] = len(shared_heads)
        for t in tables:
            if t.param in table_done:
                sch = table_done[t.param][0]
                for h in t.heads:
                    ann.set(h, "compute_dtype", sch.compute(g, h, self.context, weight_only=True))
        base = self.layer_scheme() if self.scheme in SCHEMES else None
        one = base is not None and all(v == base for v in schemes.values())
        spec0 = base.spec() if base is not None else None
        g.meta.setdefault("quantization", {})
        q = g.meta["quantization"]
        q.update({"scheme": self.scheme, "method": self.method,
                  "weight_dtype": spec0.dtype if spec0 else "mixed",
                  "granularity": spec0.granularity if spec0 else "mixed",
                  "group_size": spec0.group_size if spec0 is not None and spec0.granularity == "group" else None,
                  "symmetric": spec0.symmetric if spec0 else None,
                  "activations": None if base is None or SCHEMES[base.scheme]["act"] is None else base.activations,
                  "kernel": base.kernel(self.context) if one else "per layer (compute_dtype.kernel)",
                  "cost_only": cost_only,
                  "excluded": {s.weight: s.reason for s in sites if s.reason}})
        if tables:
            q["embeddings_kept"] = dict(sorted(table_reasons.items()))
        if table_done:
            q["embeddings"] = [
                {"table": t.param, "format": sch.name, "weight_dtype": spec.dtype, "block_size": spec.group_size,
                 "gathers": len(t.gathers),
                 "tied_heads": [h.name for h in t.heads],
                 "head_kernel": (sch.kernel(self.context, weight_only=True) if t.heads else None)}
                for t in tables if t.param in table_done for sch, spec in [table_done[t.param]]]
        if record:
            q.update(record)
        if experts:
            self._apply_experts(g, experts, assignment, stats, q, cost_only)
        if cost_only:
            for s in todo:
                sch = schemes[s.weight]
                p = g.params[s.weight]
                ann.set(p, "weight_format", WeightFormat(dtype=FLOAT16[sch.scheme], scale_dtype=FLOAT16[sch.scheme])
                        if sch.scheme in FLOAT16 else sch.weight_format(g, s.weight, sch.spec()))
                ann.set(s.node, "compute_dtype", sch.compute(g, s.node, self.context))
                aq = sch.act_quant(None, None)
                if aq is not None:
                    ann.set(s.node, "activation_quant", aq)
            stats["cost_only"] = 1
            q["note"] = (
                "cost only: the model has meta weights (no values), so formats were annotated for the cost model "
                "but no quantized artifact was written and no accuracy was measured; use model.weights=random "
                "(or a model with real weights) for both.")
            return stats

        static_int8 = [s for s in todo if schemes[s.weight].activations == "static"
                       and SCHEMES[schemes[s.weight].scheme]["act"] == "int8"]
        if static_int8:
            stats["unflattened"] = sum(unflatten_input(g, s) for s in static_int8)
        by_input: dict[str, list[Site]] = {}
        for s in todo:
            by_input.setdefault(s.node.inputs[0], []).append(s)
        needs = [x for x, group in by_input.items()
                 if self.method != "rtn" or any(schemes[t.weight].activations == "static"
                                                and SCHEMES[schemes[t.weight].scheme]["act"] is not None for t in group)]
        cal = calibrate(g, needs, self.calibration, self.tokenizer_source,
                        keep_rows=512 if self.method == "awq" else 0) if needs else {}
        if cal:
            q["calibration"] = {"samples": next(iter(cal.values())).samples,
                                "seq_len": int(self.calibration.seq_len), "source": self.calibration.source}
        smoothing: dict[str, str] = {}
        for x, group in by_input.items():
            st = cal.get(x)
            s = None
            if self.method in ("smoothquant", "awq"):
                ws = [np.asarray(g.params[t.weight].data) for t in group]
                if fold_target(g, x, group) is None or len({t.weight for t in group}) != len(group):
                    smoothing[x] = None
                else:
                    spec = schemes[group[0].weight].spec()
                    s = smoothquant_scales(st.absmax, ws, self.alpha) if self.method == "smoothquant" else \
                        awq_scales(st.rows, ws, spec)[0]
                    smoothing[x] = apply_input_scaling(g, x, group, s)
            for site in group:
                sch = schemes[site.weight]
                self._quantize_site(g, site, sch, st, s)
                aq = sch.act_quant(st, s)
                if aq is not None:
                    ann.set(site.node, "activation_quant", aq)
                ann.set(site.node, "compute_dtype", sch.compute(g, site.node, self.context))
        if smoothing:
            stats["smoothed_inputs"] = sum(v is not None for v in smoothing.values())
            stats["smoothing_not_foldable"] = sum(v is None for v in smoothing.values())
        weight_only = [sch for sch in schemes.values() if SCHEMES[sch.scheme]["act"] is None and sch.scheme not in FLOAT16]
        if weight_only or shared_heads:
            level = (weight_only or [v[0] for v in table_done.values()])[0].accuracy_level
            if weight_only:   # the DequantizeLinear → MatMul rewrite's level (a shared head's node carries its own)
                meta = g.meta.setdefault("onnx_metadata", {})
                meta[ORT_SESSION_KEY] = json.dumps({ACCURACY_LEVEL_KEY: str(level)})
            q["ort_accuracy_level"] = level
        stats["quantized_weights"] = len({s.weight for s in todo}) + len(table_done) + stats.get("expert_weights", 0)
        return stats

    def _apply_experts(self, g: Graph, experts: Sequence[Site], assignment: Mapping[str, LayerScheme],
                       stats: dict, q: dict, cost_only: bool) -> None:
        """The grouped expert GEMMs (``MoEMatMul``): every expert of a weight ``[E, K, N]`` in the
        layer's format, scales per expert (per output channel, or per group along K), round to
        nearest (calibration-based methods need per-expert routed activations: RTN for experts,
        recorded). The emitter writes codes + scales and one blocked ``DequantizeLinear`` (axis 1)
        feeding the MoEMatMul lowering. FP8: the routed activations get the dynamic FP8 QDQ like
        a linear layer's; W8A8: the int8 weights with float activations in the artifact (no
        onnxruntime integer grouped GEMM), priced as int8 math."""
        done, kept = [], {s.weight: s.reason for s in experts if s.reason}
        for s in experts:
            sch = assignment.get(s.weight)
            if s.reason or sch is None:
                continue
            p = g.params[s.weight]
            if sch.scheme in FLOAT16:
                if not cost_only:
                    p.data = round_float16(np.asarray(p.data, np.float32), FLOAT16[sch.scheme]).astype(p.data.dtype)
                ann.set(p, "weight_format", WeightFormat(dtype=FLOAT16[sch.scheme], scale_dtype=FLOAT16[sch.scheme]))
            else:
                spec = sch.spec()
                k = p.type.shape[1]
                if spec.granularity == "group" and isinstance(k, int) and k % spec.group_size:
                    kept[s.weight] = (f"reduction axis {k} is not a multiple of quant.group_size={spec.group_size}")
                    continue
                fmt = sch.weight_format(g, s.weight, spec, axis=1)
                if not cost_only:
                    qt = quantize_experts(np.asarray(p.data, np.float32), spec)
                    p.data = qt.dequantize().astype(p.data.dtype)
                    ann.set(p, "quant_data", QuantizedData(qt.codes, qt.scale, qt.zero_point, qt.axis, qt.block_size))
                ann.set(p, "weight_format", fmt)
            readers = [c for c, i in g.consumers(s.weight) if c.op == "MoEMatMul" and i == 1]
            for n in readers:
                # the math dtype, no kernel family: the measured families are dense GEMMs (their
                # time ratios do not transfer to a grouped GEMM over per-expert row counts)
                ann.set(n, "compute_dtype", ComputeDtype(sch.compute(g, n, self.context).dtype, ""))
                aq = sch.act_quant(None, None)
                if aq is not None and aq.dtype == "float8e4m3fn":
                    ann.set(n, "activation_quant", aq)
            done.append({"weight": s.weight, "format": sch.name, "experts": int(p.type.shape[0]),
                         "shape": [int(d) if isinstance(d, int) else str(d) for d in p.type.shape],
                         "ops": [n.name for n in readers]})
        stats["expert_weights"] = len(done)
        q["experts"] = done
        if kept:
            q["experts_kept"] = dict(sorted(kept.items()))
        if done and self.method != "rtn":
            q["experts_method"] = "rtn (calibration-based methods are applied to linear layers only)"

    def _quantize_site(self, g: Graph, site: Site, sch: LayerScheme, st: Hessian | None, s: np.ndarray | None):
        p = g.params[site.weight]
        if "quant_data" in p.annotations:      # a weight shared by two linear layers: once
            return
        if sch.scheme in FLOAT16:              # rounded to 16 bits; the emitter stores it so (+ Cast)
            p.data = round_float16(np.asarray(p.data, np.float32), FLOAT16[sch.scheme]).astype(p.data.dtype)
            ann.set(p, "weight_format", WeightFormat(dtype=FLOAT16[sch.scheme], scale_dtype=FLOAT16[sch.scheme]))
            return
        spec = sch.spec()
        w = np.asarray(p.data, np.float32)
        prev = ann.get(p, "weight_format")
        mask = (w != 0) if prev is not None and prev.nm is not None else None
        if self.method == "gptq" or (mask is not None and st is not None):
            h = st.h if s is None else st.h / np.outer(s, s)
            _, qt, _ = obs_compress(w, h, spec=spec, mask=mask)
        else:
            qt = quantize_rtn(w, spec)
        deq = qt.dequantize()
        p.data = deq.astype(p.data.dtype)
        ann.set(p, "weight_format", sch.weight_format(g, site.weight, spec))
        ann.set(p, "quant_data", QuantizedData(qt.codes, qt.scale, qt.zero_point, qt.axis, qt.block_size))

    def _quantize_table(self, g: Graph, t: TableSite, spec: QuantSpec, sch: LayerScheme, cost_only: bool):
        """RTN in blocks along each row (``reduce_axis=1``): the rows a gather reads and the
        reduction axis of a tied head ``x · Pᵀ`` are the same blocks."""
        p = g.params[t.param]
        ann.set(p, "weight_format", sch.weight_format(g, t.param, spec, axis=1))
        if cost_only:
            return
        qt = quantize_rtn(np.asarray(p.data, np.float32), spec, reduce_axis=1)
        p.data = qt.dequantize().astype(p.data.dtype)
        ann.set(p, "quant_data", QuantizedData(qt.codes, qt.scale, qt.zero_point, qt.axis, qt.block_size))


# ------------------------------------------------------------------------------------------------
# N:M pruning (cost-aware)

class PruneNM(Pass):
    """``sparsity=nm``: keep ``n`` of every ``m`` weights along the reduction axis of each linear
    layer (magnitude, or SparseGPT with calibration). Cost-aware (``cost_aware: true``): a layer
    is pruned only where the 2:4 kernel is predicted to win for the configured workload
    (prefill at prompt_len once plus gen_len decode steps), each decision recorded."""

    name = "prune_nm"

    def check_params(self) -> None:
        allowed = (set(_fields(SparsityConfig)) - {"scheme"}) | {"tokenizer_source", "workload"}
        bad = set(self.params) - allowed
        if bad:
            raise ConfigError(f"prune_nm: unknown option(s) {sorted(bad)}; valid: {', '.join(sorted(allowed))}.")
        # defaults: passes/quant/config.py SparsityConfig
        p = {**_defaults(SparsityConfig), **{k: v for k, v in self.params.items() if v is not None}}
        self.n, self.m = int(p["n"]), int(p["m"])
        if not 0 < self.n < self.m:
            raise ConfigError(f"sparsity.n={self.n}, sparsity.m={self.m}: need 0 < n < m (2:4 is the pattern sparse "
                              f"tensor cores run).")
        self.method = str(p["method"])
        if self.method not in ("magnitude", "sparsegpt"):
            raise ConfigError(f"sparsity.method={self.method!r}: use magnitude or sparsegpt.")
        self.exclude = list(p["exclude"])
        self.calibration = calibration_of(p["calibration"])
        self.cost_aware = bool(p["cost_aware"])
        self.tokenizer_source = p.get("tokenizer_source")
        self.workload = dict(p.get("workload") or {})
        self.targets = parse_targets(p.get("targets"))   # sparsity.targets: attention / mlp blocks

    def kernel(self) -> str:
        """cuSPARSELt on a GPU; on onnxruntime CPU the pruned weight runs as a dense MatMul."""
        return ORT_CPU_SPARSE_KERNEL if on_cpu(self.context) else SPARSE_KERNEL

    def run(self, g: Graph) -> PassResult:
        sites = [s for s in linear_sites(g, self.exclude) if not s.reason]
        stats: dict[str, int] = {"linear_layers": len(sites)}
        decisions = []
        keep_sites = []
        tied = [s for s in sites if s.transposed_from is not None]
        for s in tied:      # pruning a tied head would need its own dense copy (more bytes, not fewer)
            decisions.append({"weight": s.transposed_from, "op": s.node.name, "pruned": False,
                              "reason": "reads Transpose of a tied weight (the embedding table): not pruned"})
        sites = [s for s in sites if s.transposed_from is None]
        for s in sites:
            kind = block_type(g, s.node)
            if kind not in self.targets:
                decisions.append({"weight": s.weight, "op": s.node.name, "pruned": False, "block": kind,
                                  "reason": f"{kind} block not in sparsity.targets {list(self.targets)}"})
                continue
            k = g.params[s.weight].type.shape[0]
            if not isinstance(k, int) or k % self.m:
                decisions.append({"weight": s.weight, "op": s.node.name, "pruned": False,
                                  "reason": f"reduction axis {k} is not a multiple of m={self.m}"})
                continue
            d = decide(g, s.node, s.weight, (self.n, self.m), self.context, self.workload) if self.cost_aware else \
                {"pruned": True, "reason": "cost_aware=false"}
            decisions.append({"weight": s.weight, "op": s.node.name, **d})
            if d["pruned"]:
                keep_sites.append(s)
        cost_only = not g.has_weights()
        st = {}
        if keep_sites and not cost_only and self.method == "sparsegpt":
            st = calibrate(g, sorted({s.node.inputs[0] for s in keep_sites}), self.calibration, self.tokenizer_source)
        done = set()
        for s in keep_sites:
            if s.weight in done:
                continue
            done.add(s.weight)
            p = g.params[s.weight]
            if not cost_only:
                w = np.asarray(p.data, np.float32)
                if self.method == "sparsegpt":
                    res, keep = obs_compress(w, st[s.node.inputs[0]], nm=(self.n, self.m))[0::2]
                    pw = np.where(keep, res, 0).astype(np.float32)
                else:
                    pw, _ = prune_magnitude(w, self.n, self.m)
                p.data = pw.astype(p.data.dtype)
            prev = ann.get(p, "weight_format")
            fmt = dataclasses.replace(prev, nm=(self.n, self.m)) if prev is not None else \
                WeightFormat(dtype=p.type.dtype, nm=(self.n, self.m), scale_dtype=_scale_dtype(g, s.weight))
            ann.set(p, "weight_format", fmt)
            if (self.n, self.m) == (2, 4):
                ann.set(s.node, "compute_dtype", ComputeDtype(_act_hw_dtype(g, s.node), self.kernel()))
        stats["pruned"] = len(done)
        stats["refused_by_cost"] = sum(1 for d in decisions if not d["pruned"] and "predicted_payoff_s" in d)
        if any("block" in d for d in decisions):
            stats["not_targeted"] = sum(1 for d in decisions if "block" in d)
        if cost_only:
            stats["cost_only"] = 1
        g.meta["sparsity"] = {"n": self.n, "m": self.m, "method": self.method, "cost_aware": self.cost_aware,
                              "targets": list(self.targets), "cost_only": cost_only, "kernel": self.kernel(), "layers": decisions}
        if cost_only:
            g.meta["sparsity"]["note"] = (
                "cost only: the model has meta weights (no values), so the N:M format was annotated for the cost "
                "model but no pruned artifact was written and no accuracy was measured; use model.weights=random "
                "(or a model with real weights) for both.")
        meta = g.meta.setdefault("onnx_metadata", {})
        if not cost_only:
            meta.update(nm_metadata({w: {"n": self.n, "m": self.m, "axis": 0, "method": self.method} for w in done}))
        return PassResult(g, bool(done), stats)
