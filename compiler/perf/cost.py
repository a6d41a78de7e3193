"""The roofline cost model.

Per op at a workload point (B, S, P): FLOPs (by the dtype class it computes in), bytes moved
split into weights / activations / KV, intensity, attainable FLOP/s, bound, and time

    time = max((F + F½) / (peak·e_c), (Bt + B½) / (BW·e_m)) + launch     (compiler.perf.efficiency)

with the efficiencies of the op's class on the configured hardware (calibrated on a real GPU
for the H100; literature defaults elsewhere — the hardware YAML says which). The symbolic
FLOPs/bytes of every op come from the op registry once; identical expressions (every layer
has the same ones) are deduplicated and compiled together with ``sympy.lambdify``, so any
number of workload points is one vectorized numpy evaluation.

A quantized KV cache (the ``kv_layout`` annotation's ``dtype``, from ``kv.dtype``; see
:func:`kv_format_cost`): an Attention's KV bytes scale by ``itemsize(stored) / itemsize(K)``
(fp8/int8 halve a 16-bit cache), and it pays the (de)quantization of every K/V element it moves —
:data:`KV_DEQUANT_OPS` ops each (convert + scale), run on the vector units at the fp32 (non-tensor)
rate, i.e. counted as ``ops x peak(fp16) / peak(fp32)`` FLOPs at the attention's fp16 peak.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import sympy

from compiler.perf import efficiency as eff
from compiler.ir.annotations import COSTED
from compiler.perf.hardware import Hardware
from compiler.perf.moe import expert_factors, grouped_factors, layer_fixed
from compiler.ir import B, P, S, Graph
from compiler.ir.ops import Bytes, Classifier, get, op_cost, op_kernels
from compiler.ir.ops import attention_q_tiles as _q_tiles
from compiler.ir.tensors import DTYPES, HW_DTYPE
from compiler.perf import kernel_families as kf
from compiler.perf.runtime import Runtime, gemm_format, op_family
from compiler.errors import InternalError


def lm_head(graph: Graph) -> str | None:
    """The GEMM that produces the graph's ``logits`` output (through casts and views), or None."""
    if "logits" not in graph.outputs:
        return None
    n = graph.producer_of("logits")
    while n is not None and get(n.op).cost_class != "gemm":
        if n.op not in ("Cast", "Reshape", "Identity", "Squeeze", "Unsqueeze") or not n.inputs:
            return None
        n = graph.producer_of(n.inputs[0])
    return n.name if n is not None else None

FREE_CLASSES = ("view", "shape")
# Efficiency fractions of these classes are defined against the dense fp16 peak (the reference the
# calibration fits them with; e.g. elementwise compute ≈ 0.07 = fp32 vector rate / fp16 tensor
# peak on an H100), whatever dtype the op runs in. GEMM and attention use their compute dtype.
REFERENCE_PEAK_CLASSES = ("elementwise", "reduction", "copy")


PHASES = ("prefill", "decode")


@dataclasses.dataclass
class OpItem:
    name: str
    op: str
    cost_class: str          # registry class: gemm, attention, elementwise, reduction, copy
    dtype: str               # hardware dtype it computes in
    sparse: bool
    idx: tuple[int, int, int, int, int]   # indices of flops, w, a, kv, fixed-cost multiplier expressions
    kernel: str = ""         # kernel family the prediction assumes (compute_dtype annotation)
    node: str = ""           # the graph op this item costs (an op run as several kernels has one item each)
    part: str = ""           # which of its kernels (``OpDef.kernels``), "" for a one-kernel op
    idx_decode: tuple[int, int, int, int, int] | None = None   # the decode phase's, when it differs
    kind: str = ""           # measured kernel kind (hardware kernel_families) it is costed as; "{phase}" filled in
    family: str = ""         # op family a runtime profile prices it by (compiler/perf/runtime.py)
    moe_experts: int = 0     # routed experts of its layer when it is one expert's GEMM
    moe_format: str = ""     # that expert GEMM's format family (bf16, w8a16, fp8, ...)


def construct_kind(n, cls: Classifier) -> str:
    """The measured kernel kind of an op of a modern construct, if any: a windowed attention run
    by a windowed kernel (``attention_window_{phase}``), a grouped expert GEMM (``moe_grouped_gemm``).
    Costed with the hardware's ``kernel_families`` entry of that name where it has one (measured),
    else with the op's class (the report names which)."""
    if n.op == "Attention":
        spec = n.annotations.get("attention")
        if spec is not None and spec.window and cls.window_kernel == "windowed":
            return "attention_window_{phase}"
    if n.op == "MoEMatMul" and getattr(n.annotations.get("moe"), "form", "grouped") == "grouped":
        return "moe_grouped_gemm"
    return ""


def attention_q_tiles(hw: Hardware, heads, head_dim, itemsize, q_len):
    """Query tiles of a fused attention on ``hw`` (see :func:`compiler.ir.ops.attention_q_tiles`)."""
    return _q_tiles(hw.onchip.l2_bytes, heads, head_dim, itemsize, q_len)


#: symbolic (FLOPs, Bytes) per structurally identical op — the layers of a model share entries;
#: bounded (cleared when it outgrows a few large models' worth of distinct ops)
_COST_CACHE: dict = {}
_COST_CACHE_MAX = 50_000
#: elementwise ops per K/V element a quantized cache adds (dequantize on read / quantize on write:
#: a convert and a multiply by the scale)
KV_DEQUANT_OPS = 2


def kv_format_cost(graph: Graph, n, hw: Hardware | None, flops, byts: Bytes, in_kernel: Sequence[str] = ()):
    """(FLOPs, Bytes) of an Attention whose ``kv_layout.dtype`` stores the cache in another format
    than its K operand (module doc); unchanged otherwise. A format in ``in_kernel`` (a runtime
    profile's ``kv_cache_in_kernel``) is read inside the attention kernel: bytes shrink, no
    dequantization FLOPs."""
    lay = n.annotations.get("kv_layout")
    if lay is None or lay.dtype is None or n.op != "Attention" or len(n.inputs) < 5 or not n.inputs[4]:
        return flops, byts
    e_model = sympy.Rational(graph.type(n.inputs[4]).itemsize).limit_denominator(2)
    e_kv = sympy.Rational(DTYPES[lay.dtype][0]).limit_denominator(2)
    if e_kv == e_model:
        return flops, byts
    if lay.dtype in in_kernel or HW_DTYPE.get(lay.dtype) in in_kernel:
        return flops, Bytes(byts.weights, byts.activations, byts.kv * e_kv / e_model)
    elements = byts.kv / e_model
    vector = (sympy.Rational(hw.peak("fp16")) / sympy.Rational(hw.peak("fp32"))).limit_denominator(1000) \
        if hw is not None and hw.peak("fp32") else 1
    return flops + KV_DEQUANT_OPS * elements * vector, Bytes(byts.weights, byts.activations, byts.kv * e_kv / e_model)
BOUNDS = ("compute", "memory", "latency")


def _structural_key(graph: Graph, n, cls: Classifier):
    """Everything an op's cost rules read: op, attributes, annotations, operand types and
    categories. Every layer of a transformer repeats the same keys, so costs are derived once."""
    try:
        attrs = tuple(sorted((k, repr(v)) for k, v in n.attrs.items()))
        ann = tuple((k, n.annotations[k]) for k in COSTED if k in n.annotations)
        ins = tuple((graph.types[t], cls.category(t), cls.weight_format(t)) if t else None for t in n.inputs)
        outs = tuple((graph.types[t], cls.category(t)) if t else None for t in n.outputs)
        return (n.op, n.domain, attrs, ann, ins, outs, (cls.hw.name, cls.hw.onchip) if cls.hw else None)
    except TypeError:
        return None


class CostModel:
    """Compile once per (graph, hardware); evaluate at many workload points."""

    def __init__(self, graph: Graph, hw: Hardware, runtime: Runtime | None = None):
        self.graph = graph
        self.hw = hw
        self.runtime = runtime
        in_kernel = tuple(runtime.kv_cache_in_kernel) if runtime is not None else ()
        cls = Classifier(graph, hw)
        exprs: dict[Any, int] = {}

        def ix(e) -> int:
            e = sympy.sympify(e)
            if e not in exprs:
                exprs[e] = len(exprs)
            return exprs[e]

        self.items: list[OpItem] = []
        zero = ix(0)
        last: dict[int, tuple[int, ...]] = {}
        w_static: list[float] = []
        head = lm_head(graph) if runtime is not None and runtime.lm_head == "last" else None
        for n in graph.topo_order():
            d = get(n.op, where=n.name)
            if d.cost_class in FREE_CLASSES or (d.layout and n.outputs and n.outputs[0] in cls.views):
                continue   # (a layout op on a weight is done once at load: compiler.ir.ops.weight_views)
            kernel = n.annotations["compute_dtype"].kernel if "compute_dtype" in n.annotations else ""
            if d.kernels is not None:   # an op run as several kernels, some in one phase only
                for k in op_kernels(graph, n, cls):
                    per = {ph: ((ix(k.flops), ix(k.bytes.weights), ix(k.bytes.activations), ix(k.bytes.kv), ix(1))
                                if ph in k.phases else (zero,) * 5) for ph in PHASES}
                    dtype = self._dtype(n)
                    self.items.append(OpItem(f"{n.name}:{k.label}", n.op, k.cost_class, dtype, False,
                                             per["prefill"], kernel, n.name, k.label,
                                             per["decode"] if per["decode"] != per["prefill"] else None, k.kind,
                                             family=op_family(graph, n, cls, k.cost_class, dtype),
                                             moe_format=gemm_format(graph, n, cls, dtype) if k.cost_class == "gemm" else ""))
                    w_static.append(0.0)   # (no static weight of its own: not a measured-family GEMM)
                continue
            key = _structural_key(graph, n, cls)
            key = key if key is None or not in_kernel else key + (in_kernel,)
            hit = _COST_CACHE.get(key) if key is not None else None
            if hit is None:
                hit = kv_format_cost(graph, n, hw, *op_cost(graph, n, cls), in_kernel=in_kernel)
                if key is not None:
                    if len(_COST_CACHE) >= _COST_CACHE_MAX:
                        _COST_CACHE.clear()
                    _COST_CACHE[key] = hit
            flops, byts = hit
            fixed = 1
            wb = sympy.sympify(byts.weights)
            w_static.append(float(wb) if not wb.free_symbols else 0.0)   # its weight bytes, untouched by routing
            route = n.annotations.get("moe")
            if route is not None and n.op == "MoEMatMul":
                # a grouped expert GEMM: the distinct experts' weights, one launch or one per expert
                wf, fixed = grouped_factors(route, B * S)
                byts = Bytes(byts.weights * wf, byts.activations, byts.kv)
            elif route is not None and route.expert is None and route.form == "loop" and not route.dispatch:
                fixed = layer_fixed(route, B * S)    # a row-wise op of a per-expert loop
            elif route is not None and route.expert is not None:
                # one expert's op: routed rows, weights read iff touched (compiler/perf/moe.py)
                rows, fixed = expert_factors(route, B * S)
                flops, byts = flops * rows, Bytes(byts.weights * fixed, byts.activations * rows, byts.kv)
            dtype = self._dtype(n)
            moe = n.annotations.get("moe")
            self.items.append(OpItem(n.name, n.op, d.cost_class, dtype, self._sparse(n, cls),
                                     (ix(flops), ix(byts.weights), ix(byts.activations), ix(byts.kv), ix(fixed)),
                                     kernel, n.name, kind=construct_kind(n, cls),
                                     family=op_family(graph, n, cls, d.cost_class, dtype),
                                     moe_experts=moe.experts if moe is not None and moe.expert is not None else 0,
                                     moe_format=gemm_format(graph, n, cls, dtype) if d.cost_class == "gemm" else ""))
            if head is not None and n.name == head:
                # a prefill computes the last position's logits only (the runtime gathers it first)
                last[len(self.items) - 1] = tuple(ix(sympy.sympify(e).subs(S, 1)) for e in
                                                  (flops, byts.weights, byts.activations, byts.kv, fixed))
        bind = graph.dim_bindings()   # dims that are not B/S/P (an imported file's own lengths)
        self.exprs = [sympy.sympify(e).xreplace(bind) for e in exprs] if bind else list(exprs)
        self._fn = sympy.lambdify((B, S, P), self.exprs, modules="numpy")
        idx = np.array([it.idx for it in self.items], dtype=np.int64).reshape(-1, 5)
        self._idx = {"prefill": idx,
                     "decode": np.array([it.idx_decode or it.idx for it in self.items], dtype=np.int64).reshape(-1, 5)}
        self._eff_groups = {ph: self._efficiency_groups(ph) for ph in PHASES}
        self._peak = np.array([hw.peak("fp16") if it.cost_class in REFERENCE_PEAK_CLASSES
                               else hw.peak(it.dtype, it.sparse) for it in self.items], dtype=float)
        self.weight_numel = self._weight_numel(graph)
        self.weight_bytes_static = w_static
        self._kernel_items = self._measured_kernels(graph)
        self._last_token = last      # item -> expressions of its last-position-only form (prefill)
        self._binding = runtime.bind(self) if runtime is not None else None
        self._groups = None

    def _measured_kernels(self, graph: Graph) -> list[tuple[int, str, float, float, str]]:
        """GEMMs whose ``compute_dtype.kernel`` is a measured family (compiler/perf/kernel_families.py):
        (item index, kernel, 2·K·N, the dense reference's weight bytes, its math dtype) — costed as
        the dense GEMM of the same shape (16-bit on GPUs, fp32 on CPUs) times the family's measured
        ratio at the op's M."""
        out = []
        for i, it in enumerate(self.items):
            if it.cost_class != "gemm" or not it.kernel or kf.family(it.kernel) is None or not self.weight_numel[i]:
                continue
            out.append((i, it.kernel))
        return out

    def measured_gemm_time(self, i: int, kernel: str, flops, w, byts, fx, shard: float = 1.0, gemm=None):
        """Time of GEMM ``i`` run by measured kernel family ``kernel``: the dense GEMM of its shape in
        the measurement's dense dtype (its weight at the dense itemsize, scaled like the op's own
        weight bytes: a tensor-parallel shard, an MoE expert's touch probability) times the measured
        ratio at the op's rows M. ``gemm``: the dense GEMM's efficiency (default: the hardware's gemm
        class); ``shard``: the fraction of the weight one device holds (M = FLOPs / (2·K·N·shard)).
        ``flops``, ``w``, ``byts``, ``fx``: the op's rows (arrays over points)."""
        ge = gemm or self.hw.efficiency.for_class("gemm")
        ref = kf.dense_reference(kernel)
        numel = self.weight_numel[i]
        w_full = self.weight_bytes_static[i]
        w_dense = ref.dense_bytes * numel
        if w_full:
            w_dense = w_dense * (w / w_full)
        dense_bytes = byts - w + w_dense
        pk = self.hw.peak(ref.dense_dtype)
        p16 = self.hw.peak("fp16")
        launch = self.hw.efficiency.launch_overhead_s
        t_dense = eff.kernel_time(ge, flops, dense_bytes, pk, self.hw.memory_bandwidth, launch, fixed=fx, ramp_peak=p16)
        return t_dense * kf.ratio(kernel, flops / (2.0 * numel * shard))

    def rebind(self, runtime: Runtime) -> None:
        """Price with ``runtime`` from now on — a profile differing from the current one only in
        its kernels' figures and host times (fitting); its graph-level choices (LM head, KV read
        in-kernel) must be the same."""
        cur = self.runtime
        if cur is None or (cur.lm_head, tuple(cur.kv_cache_in_kernel)) != (runtime.lm_head, tuple(runtime.kv_cache_in_kernel)):
            raise InternalError("rebind: the profile changes how the graph is costed; build a new CostModel")
        self.runtime = runtime
        self._binding = runtime.bind(self)

    def _weight_numel(self, graph: Graph) -> list[float]:
        """Elements of each GEMM's static 2-D weight (0 when it has none)."""
        by_name = {n.name: n for n in graph}
        out = []
        for it in self.items:
            w = next((graph.params[t] for t in by_name[it.node or it.name].inputs[1:2] if t in graph.params), None) \
                if it.cost_class == "gemm" and not it.part else None
            out.append(float(np.prod(w.type.shape)) if w is not None and w.type.is_static() else 0.0)
        return out

    def measured_kind(self, it: OpItem, phase: str) -> str:
        """The hardware ``kernel_families`` entry an item is costed with in ``phase`` ("" for none)."""
        if not it.kind:
            return ""
        name = it.kind.format(phase="decode" if phase == "decode" else "prefill")
        return name if self.hw.kernel_family(name) is not None else ""

    def _efficiency_groups(self, phase: str) -> list[tuple[np.ndarray, Any, float | None]]:
        """Items grouped by the efficiency parameters they are costed with in ``phase``: (mask,
        ClassEfficiency, peak override) — the op class (attention by phase), or a measured kernel
        kind of the hardware (its params, against its own peak dtype)."""
        keys = []
        for it in self.items:
            kind = self.measured_kind(it, phase)
            keys.append(("kind", kind) if kind else ("class", {"attention": f"attention_{phase}"}.get(it.cost_class, it.cost_class)))
        out = []
        for key in sorted(set(keys)):
            mask = np.array([k == key for k in keys], dtype=bool)
            if key[0] == "kind":
                fam = self.hw.kernel_family(key[1])
                out.append((mask, fam.params(), self.hw.peak(fam.peak_dtype, fam.sparse)))
            else:
                out.append((mask, self.hw.efficiency.for_class(key[1]), None))
        return out

    @staticmethod
    def _sparse(n, cls: Classifier) -> bool:
        """A GEMM whose weight is stored 2:4 runs on the sparse tensor-core peak (the only N:M
        pattern sparse math units accelerate); other patterns save bytes, not FLOPs."""
        if get(n.op).cost_class != "gemm":
            return False
        return any((f := cls.weight_format(t)) is not None and f.nm == (2, 4) for t in n.inputs if t)

    def _dtype(self, n) -> str:
        """The op's ``compute_dtype`` annotation, else the dtype of its float operands."""
        cd = n.annotations.get("compute_dtype")
        if cd is not None:
            return cd.dtype
        for t in n.inputs:
            if t:
                name = self.graph.type(t).dtype
                if name.startswith("float") or name == "bfloat16":
                    return HW_DTYPE[name]
        return HW_DTYPE.get(self.graph.type(n.outputs[0]).dtype, "fp32") if n.outputs else "fp32"

    # ------------------------------------------------------------------------------------
    def raw(self, b, s, p, phase: str | None = None) -> np.ndarray:
        """(4, n_ops, n_points) FLOPs, weight, activation and KV bytes at the given points (an op
        whose kernels depend on the phase, MLA, is taken in ``phase``'s form)."""
        return self._raw(b, s, p, phase)[:4]

    def _raw(self, b, s, p, phase: str | None = None, rows=None) -> np.ndarray:
        """(5, n_ops, n_points): raw() plus each op's fixed-cost multiplier (launch and ramp are
        paid with this probability: < 1 for an MoE expert's ops, which run only when it is routed to;
        0 for a kernel the phase does not run). An op whose kernels depend on the phase (MLA) is
        taken in ``phase``'s form (prefill's when None). In a prefill under a runtime that computes
        the last position's logits only, the LM head is evaluated in that form. ``rows``: only
        these ops (item indices), in that order."""
        b, s, p = (np.atleast_1d(np.asarray(x, dtype=float)) for x in (b, s, p))
        n = max(len(b), len(s), len(p))
        vals = self._fn(b, s, p)
        table = np.stack([np.broadcast_to(np.asarray(v, dtype=float), (n,)) for v in vals]) if vals else np.zeros((0, n))
        idx = self._idx["decode" if phase == "decode" else "prefill"]
        idx = idx if rows is None else idx[rows]
        out = table[idx.T]  # (5, n_ops, n)
        if phase == "prefill" and self._last_token:
            pos = {int(i): j for j, i in enumerate(rows)} if rows is not None else None
            for i, li in self._last_token.items():
                j = i if pos is None else pos.get(i)
                if j is not None:
                    out[:, j] = table[list(li)]
        return out

    def signature_groups(self, extra=None) -> tuple[np.ndarray, np.ndarray]:
        """(representative item indices, multiplicities): ops whose costs are identical functions of
        the workload (same expressions in both phases, class, dtype, kernel, measured kind, family —
        every layer repeats them), optionally also equal in ``extra`` (a per-op key sequence, e.g.
        tensor-parallel shard factors). Summing representative x multiplicity is the phase time,
        far fewer ops."""
        seen: dict[Any, int] = {}
        reps: list[int] = []
        counts: list[int] = []
        for i, it in enumerate(self.items):
            key = (it.idx, it.idx_decode, it.cost_class, it.dtype, it.sparse, it.kernel, it.kind, it.family,
                   it.moe_experts, it.moe_format, self.weight_numel[i], self.weight_bytes_static[i],
                   self._last_token.get(i), None if extra is None else extra[i])
            j = seen.get(key)
            if j is None:
                seen[key] = len(reps)
                reps.append(i)
                counts.append(1)
            else:
                counts[j] += 1
        return np.array(reps, np.int64), np.array(counts, float)

    def components(self, b, s, p, phase: str | None = None, rows=None) -> np.ndarray:
        """(5, n_ops, n_points): FLOPs, weight, activation, KV bytes and the fixed-cost multiplier
        of every op (or of ``rows``) in ``phase`` (what :meth:`op_times` prices)."""
        return self._raw(b, s, p, phase, rows)

    def evaluate(self, b, s, p, phase: str, fixed_scale: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Per-op arrays (n_ops, n_points) at workload points, for ``phase`` in prefill/decode
        (which attention efficiency class, measured kernel kind and MLA form apply). ``fixed_scale``
        (n_ops, n_points) multiplies each op's fixed-cost multiplier (what-if dispatch forms:
        compiler/analysis/moe.py)."""
        flops, w, a, kv, fx = self._raw(b, s, p, phase)
        if fixed_scale is not None:
            fx = fx * fixed_scale
        time, att_f, bound = self.op_times(flops, w, a, kv, fx, phase)
        return {"flops": flops, "bytes": w + a + kv, "weights": w, "activations": a, "kv": kv,
                "time": time, "attainable": att_f, "bound": bound}

    def op_times(self, flops, w, a, kv, fx, phase: str, shard=None, rows=None):
        """Per-op (time, attainable FLOP/s, bound) arrays ``(n_ops, n_points)`` of ops moving
        these FLOPs and bytes (the hardware's class model or the measured kernel kind of a modern
        construct, the measured kernel families, and the runtime profile's kernels where it prices
        an op differently); ``shard``: per op, the fraction of its weight one device holds (tensor
        parallelism; default whole); ``rows``: the arrays hold only these ops (item indices,
        :meth:`signature_groups`)."""
        peaks = self._peak if rows is None else self._peak[rows]
        if rows is not None:
            pos = {int(i): j for j, i in enumerate(rows)}
            kernel_items = [(pos[i], i, k) for i, k in self._kernel_items if i in pos]
        else:
            kernel_items = [(i, i, k) for i, k in self._kernel_items]
        if self._binding is not None:   # ops the profile re-prices need no measured-family pass here
            model = self._binding.plan["decode" if phase == "decode" else "prefill"]["model"]
            kernel_items = [t for t in kernel_items if model[t[1]] == 0]
        byts = w + a + kv
        launch = self.hw.efficiency.launch_overhead_s
        time = np.zeros_like(flops)
        att_f = np.zeros_like(flops)
        bound = np.zeros(flops.shape, dtype=np.int8)  # 0 compute, 1 memory, 2 latency
        for mask, prm, peak in self._eff_groups["decode" if phase == "decode" else "prefill"]:
            m = mask if rows is None else mask[rows]
            if not m.any():
                continue
            cp = eff.ClassParams(prm.compute, prm.memory, prm.flops_half, prm.bytes_half)
            pk = np.full((int(m.sum()), 1), peak) if peak is not None else peaks[m][:, None]
            bw = self.hw.memory_bandwidth
            # flops_half is sized for the fp16 reference peak: a kernel's ramp-up TIME is the
            # chip's, whatever the dtype (fp32 / fp8 / int8 GEMMs scale it by their peak)
            time[m] = eff.kernel_time(cp, flops[m], byts[m], pk, bw, launch, fixed=fx[m], ramp_peak=self.hw.peak("fp16"))
            # the roofline side that binds, unless fixed per-kernel costs (launch, ramp) dominate
            pure_c = flops[m] / (pk * cp.compute)
            pure_m = byts[m] / (bw * cp.memory)
            fixed = time[m] - np.maximum(pure_c, pure_m)
            bound[m] = np.where(fixed > np.maximum(pure_c, pure_m), 2, np.where(pure_c >= pure_m, 0, 1))
            att_f[m] = np.where(time[m] > 0, flops[m] / np.maximum(time[m] - launch * fx[m], 1e-30), 0.0)
        for j, i, kernel in kernel_items:   # measured kernel families (compiler/perf/kernel_families.py)
            time[j] = self.measured_gemm_time(i, kernel, flops[j], w[j], byts[j], fx[j],
                                              1.0 if shard is None else float(shard[j]))
            att_f[j] = np.where(time[j] > 0, flops[j] / np.maximum(time[j] - launch * fx[j], 1e-30), 0.0)
        if self._binding is not None:   # the runtime profile's kernels (compiler/perf/runtime.py)
            self._binding.override(flops, w, a, kv, fx, phase, time, att_f, bound, shard, rows)
        return time, att_f, bound

    def host_time(self, b, s) -> np.ndarray:
        """The runtime's exposed host time of engine iterations of ``b`` sequences with ``s`` new
        tokens each (0 without a runtime profile)."""
        if self.runtime is None:
            return np.zeros(np.broadcast(np.asarray(b, float), np.asarray(s, float)).shape)
        return self.runtime.step_overhead(b, s, len(self.graph.inputs) + len(self.graph.outputs))

    def phase_time(self, b, s, p, phase: str) -> np.ndarray:
        """One step's time: the ops' times plus the runtime's host time of the iteration. Under a
        runtime profile the identical ops of every layer are priced once (:meth:`signature_groups`);
        without one (eager) every op is summed in graph order, as always."""
        if self._binding is None:
            t = self.evaluate(b, s, p, phase)["time"].sum(axis=0)
        else:
            if self._groups is None:
                self._groups = self.signature_groups()
            rows, count = self._groups
            flops, w, a, kv, fx = self._raw(b, s, p, phase, rows)
            t = (self.op_times(flops, w, a, kv, fx, phase, rows=rows)[0] * count[:, None]).sum(axis=0)
        if self.runtime is not None:
            t = t + self.host_time(b, s)
        return t

    def totals(self, b, s, p, phase: str) -> dict[str, float]:
        r = self.evaluate(b, s, p, phase)
        return {k: float(r[k].sum()) for k in ("time", "flops", "bytes", "weights", "activations", "kv")}

    def op_table(self, b: int, s: int, p: int, phase: str) -> list[dict[str, Any]]:
        r = self.evaluate(b, s, p, phase)
        rows = []
        for i, it in enumerate(self.items):
            f, by = float(r["flops"][i, 0]), float(r["bytes"][i, 0])
            if it.part and f == 0 and by == 0 and r["time"][i, 0] == 0:
                continue   # a kernel of a form this phase does not run (MLA)
            kind = self.measured_kind(it, phase)
            kernel, extra = it.kernel or kind, {}
            if self.runtime is not None:
                k = self.runtime.family_kernel(it, phase)
                if kind and not it.kernel and (k is None or k.model == "hardware"):
                    # the profile leaves it to the hardware: costed with the measured kernel kind
                    extra = {"kernel_source": f"conf/hardware/{self.hw.name}.yaml kernel_families.{kind}"}
                else:
                    kernel, source = self.runtime.label(it, phase, self.hw)
                    extra = {"kernel_source": source}
            rows.append({
                "name": it.name, "op": it.op, "class": it.cost_class, "dtype": it.dtype,
                **({"kernel": kernel} if kernel else {}),
                "flops": f, "bytes": by,
                "bytes_split": {"weights": float(r["weights"][i, 0]),
                                "activations": float(r["activations"][i, 0]),
                                "kv": float(r["kv"][i, 0])},
                "intensity": f / by if by else None,
                "attainable_flops": float(r["attainable"][i, 0]),
                "bound": BOUNDS[int(r["bound"][i, 0])],
                "time_s": float(r["time"][i, 0]),
                **extra,
            })
        return rows


__all__ = ["CostModel", "attention_q_tiles", "Bytes"]
