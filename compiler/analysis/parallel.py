"""Tensor, pipeline and expert parallelism: per-device cost and memory from the one-device model.

Pure functions of the cost model's per-op figures (:class:`compiler.perf.cost.CostModel`), the graph's
tensor types and the hardware; nothing is re-imported.

Tensor parallelism (Megatron-LM, Shoeybi et al. 2019)
-----------------------------------------------------
Each tensor carries the *fraction* of it one device holds; graph inputs are whole (1):

* a GEMM with a weight whose activation input is whole is **column-parallel** (Q/K/V, fused QKV,
  gate/up, the LM head): its weight and output are split by output columns — 1/tp, except K and
  V projections when ``kv_heads < tp``: each device then holds one whole KV head, replicated
  ``tp / kv_heads`` times (fraction ``ceil(kv_heads / tp) / kv_heads``);
* a GEMM whose activation input is split is **row-parallel** (attention output, MLP down): its
  weight is split by rows, its output is a partial sum that an **all-reduce** makes whole — two per
  layer in the forward pass;
* attention runs ``heads / tp`` query heads over the device's KV heads (KV-cache bytes scale by
  the KV fraction above); elementwise ops, norms and views follow their inputs (a norm of the
  whole residual stream runs replicated on every device);
* a vocabulary-parallel embedding (the table split by rows) adds one all-reduce of its output.

Per op and device: FLOPs and weight bytes scale by the op's fraction, activation bytes by the
size-weighted fraction of its operands, KV bytes by the KV fraction; time is the same roofline as
the cost model's (class efficiencies, launch overhead) on the scaled figures. Communication is not
overlapped with compute (TP all-reduces sit on the critical path of every layer). A collective
costs ``latency + bus_factor x bytes / bus_bandwidth`` (:mod:`compiler.perf.collectives`:
measured if the hardware YAML has a ``collectives`` block, else literature); the ring all-reduce
moves ``2 (n - 1) / n x bytes`` over each device's link.

Pipeline parallelism (GPipe, Huang et al. 2019): layers split evenly over ``pp`` stages; a batch
is cut into ``m`` microbatches; a forward takes ``(m + pp - 1)`` stage slots (bubble fraction
``(pp - 1) / (m + pp - 1)``) and each stage boundary a point-to-point send of the hidden state.
Decode: one token crosses every stage, so TPOT is the sum of stages plus ``pp - 1`` sends.

Expert parallelism (GShard, Lepikhin et al. 2020): stacked expert weights are split over ``ep``
devices (1/ep each) and each MoE layer adds two all-to-alls (dispatch and combine) of the routed
tokens' hidden states (``tokens x top_k x hidden`` elements).

Memory per device: weights x fraction / pp, KV cache x KV fraction / pp, the activation peak
taken whole (an upper bound: the residual stream is replicated), and the runtime reserve.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import sympy

from compiler.perf.collectives import bus_factor, collective_source, collective_time, literature
from compiler.errors import ConfigError
from compiler.ir import B, P, S, op_layers
from compiler.ir.facts import ModelDims
from compiler.ir.ops import Classifier, get
from compiler.perf import efficiency as eff
from compiler.perf.cost import REFERENCE_PEAK_CLASSES

__all__ = ["ParallelPlan", "ModelDims", "attention_roles", "kv_heads_per_device", "kv_fraction",
           "allreduce_ring_bytes", "pipeline_bubble", "ShardTable", "shard_table", "per_device_times",
           "analyze_parallel", "memory_per_device", "tp_options", "parallel_step_time",
           "check_plan", "p2p_time"]

@dataclass(frozen=True)
class ParallelPlan:
    tp: int = 1
    pp: int = 1
    ep: int = 1
    microbatches: int | None = None      # pipeline microbatches (None: min(batch, pp))

    def __post_init__(self):
        for k in ("tp", "pp", "ep"):
            v = getattr(self, k)
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ConfigError(f"parallel.{k}={v!r} must be a positive integer (1 = no "
                                  f"{'tensor' if k == 'tp' else 'pipeline' if k == 'pp' else 'expert'} "
                                  "parallelism).")
        if self.microbatches is not None and (int(self.microbatches) != self.microbatches
                                              or self.microbatches < 1):
            raise ConfigError(f"parallel.microbatches={self.microbatches!r} must be a positive integer.")

    @property
    def devices(self) -> int:
        return max(self.tp, self.ep) * self.pp


def kv_heads_per_device(kv_heads: int, tp: int) -> int:
    """KV heads each device stores: kv_heads / tp, or one replicated head when kv_heads < tp."""
    return -(-kv_heads // tp) if kv_heads >= tp else 1


def kv_fraction(kv_heads: int, tp: int, latent: bool = False) -> float:
    """The share of the KV cache one of ``tp`` devices holds: its KV heads; all of it for
    multi-head latent attention (``latent``), whose one latent per token every head reads — a
    tensor-parallel MLA replicates the cache (vLLM, SGLang without data-parallel attention)."""
    if latent:
        return 1.0
    return kv_heads_per_device(kv_heads, tp) / kv_heads


def _latent(dims) -> bool:
    return bool(getattr(dims, "kv_lora_rank", 0))


def allreduce_ring_bytes(n: int, nbytes: float) -> float:
    """Bytes each device sends (and receives) in a ring all-reduce of ``nbytes``: 2(n-1)/n x bytes."""
    return bus_factor("all_reduce", n) * nbytes


def pipeline_bubble(pp: int, microbatches: int) -> float:
    """Idle fraction of a GPipe forward: (pp - 1) / (m + pp - 1)."""
    return (pp - 1) / (microbatches + pp - 1)


def p2p_time(hw, nbytes):
    """One point-to-point send between pipeline stages: latency + bytes / link bandwidth."""
    coll = getattr(hw, "collectives", None)
    hit = coll.lookup("all_to_all", 2) if coll is not None else None
    if hit is not None:      # a 2-device all-to-all is one send each way
        return hit[0].latency_s + np.asarray(nbytes, float) / hit[0].bus_bandwidth
    lat, bw = literature(hw)
    return lat + np.asarray(nbytes, float) / bw


def check_plan(plan: ParallelPlan, dims: ModelDims | None, hw) -> None:
    """Exit-2 errors for plans the model or the node cannot run."""
    n = hw.interconnect.num_devices_per_node
    if max(plan.tp, plan.ep) > n:
        raise ConfigError(f"parallel.tp={plan.tp}, parallel.ep={plan.ep} span more than the "
                          f"{n} devices per node of {hw.name} ({hw.interconnect.name}); tensor and "
                          f"expert parallelism stay inside a node: use at most {n}.")
    if max(plan.tp, plan.ep) > 1 and hw.interconnect.bandwidth <= 0:
        raise ConfigError(f"{hw.name} has no peer interconnect; use parallel.tp=1 parallel.ep=1.")
    if dims is None:
        return
    if plan.tp > 1 and dims.heads % plan.tp:
        raise ConfigError(f"parallel.tp={plan.tp} does not divide the model's {dims.heads} "
                          f"attention heads; pick a divisor (e.g. {_divisors(dims.heads, n)}).")
    if plan.pp > dims.layers:
        raise ConfigError(f"parallel.pp={plan.pp} exceeds the model's {dims.layers} layers.")
    if plan.ep > 1:
        if not dims.experts:
            raise ConfigError(f"parallel.ep={plan.ep} needs a mixture-of-experts model; this one "
                              "has no experts (use parallel.ep=1).")
        if dims.experts % plan.ep:
            raise ConfigError(f"parallel.ep={plan.ep} does not divide the {dims.experts} experts.")


def _divisors(heads: int, limit: int) -> str:
    return ", ".join(str(d) for d in range(1, limit + 1) if heads % d == 0)


# --------------------------------------------------------------------------- sharding table

@dataclass
class ShardTable:
    """Per cost-model item: factors for FLOPs, weight, activation and KV bytes on one device; the
    communication of one forward as (kind, bytes expression) pairs; weight bytes per device."""

    tp: int
    ep: int
    flops: np.ndarray
    weights: np.ndarray
    activations: np.ndarray
    kv: np.ndarray
    comms: list[tuple[str, str, Any]]          # (kind, what, sympy bytes expr of B, S, P)
    weight_bytes_total: float
    weight_bytes_device: float                 # before pipeline split
    kv_fraction: float
    column: int = 0
    row: int = 0


def _per_token(expr) -> float:
    try:
        v = sympy.sympify(expr).subs({B: 1, S: 1, P: 1})
        return float(v)
    except (TypeError, ValueError):
        return 1.0


def shard_table(cm, dims: ModelDims, plan: ParallelPlan) -> ShardTable:
    """Propagate tensor fractions through the graph (module doc) for ``plan.tp`` / ``plan.ep``.
    Expert ops are those the ``moe`` annotation names an expert for; a column-parallel GEMM's
    output is split like the attention operands it feeds (query heads, or only the KV heads).
    Computed once per cost model, dimensions and (tp, ep)."""
    memo = cm.__dict__.setdefault("_shard_tables", {})
    key = (dims, plan.tp, plan.ep)
    if key not in memo:
        memo[key] = _shard_table(cm, dims, plan)
    return memo[key]


def _shard_table(cm, dims: ModelDims, plan: ParallelPlan) -> ShardTable:
    g = cm.graph
    roles = attention_roles(g)
    tp, ep = plan.tp, plan.ep
    kvf = kv_fraction(dims.kv_heads, tp, _latent(dims))
    qf = 1.0 / tp
    qkv_frac = (dims.heads / tp + 2 * kv_heads_per_device(dims.kv_heads, tp)) / (dims.heads + 2 * dims.kv_heads)
    kv_tensors = set(g.meta.get("kv_tensors", ()))
    cls = Classifier(g)
    frac: dict[str, float] = {}
    wfrac: dict[str, float] = {}
    op_f: dict[str, tuple[float, float, float, float]] = {}
    comms: list[tuple[str, str, Any]] = []
    moe_row_layers: set = set()
    layer_of = op_layers(g)[0]
    col = row = 0

    def fr(t):
        if not t:
            return 1.0
        if t in kv_tensors:
            return kvf
        return frac.get(t, 1.0)

    per_token: dict[str, float] = {}

    def nbytes(t):
        return g.type(t).nbytes() if hasattr(g.type(t), "nbytes") else g.type(t).numel() * g.type(t).itemsize

    def tok(t) -> float:
        if t not in per_token:
            per_token[t] = _per_token(nbytes(t))
        return per_token[t]

    def split_width_frac(t) -> float:
        r = roles.get(t, set())
        if dims.kv_heads < dims.heads and r and "q" not in r:
            return kvf                          # feeds only K and/or V: kv_heads are split
        if dims.kv_heads < dims.heads and "q" in r and len(r) > 1:
            return qkv_frac                     # a merged QKV projection
        return qf

    def act_factor(ins, outs, fin, fout):
        si = sum(tok(t) for t in ins)
        so = sum(tok(t) for t in outs)
        tot = si + so
        return (si * fin + so * fout) / tot if tot else 1.0

    for n in g.topo_order():
        cc = get(n.op).cost_class
        params = [t for t in n.inputs if t and t in g.params and not g.params[t].annotations.get("const")]
        acts = [t for t in n.inputs if t and t not in g.params and t not in kv_tensors]
        outs = [t for t in n.outputs if t]
        expert = _expert_of(n) is not None
        if cc == "gemm" and params:
            fin = min((fr(t) for t in acts), default=1.0)
            if expert and ep > 1:
                f = 1.0 / ep           # experts split over devices, whole within a device
                for p in params:
                    wfrac[p] = f
                for t in outs:
                    frac[t] = fin
                op_f[n.name] = (f, f, act_factor(acts, outs, 1.0, 1.0), 1.0)
                continue
            if tp == 1:
                fw = 1.0
                fout = 1.0
            elif fin >= 1.0:                                   # column-parallel
                col += 1
                fout = split_width_frac(outs[0]) if outs else qf
                fw = fout
            else:                                              # row-parallel + all-reduce
                row += 1
                fw = fin
                fout = 1.0
                if expert:
                    # the routed experts' partial sums are combined first: one all-reduce per
                    # MoE layer (added below), not one per expert
                    moe_row_layers.add(layer_of.get(n.name))
                else:
                    for t in outs:
                        comms.append(("all_reduce", n.name, nbytes(t)))
            for p in params:
                wfrac[p] = fw
            for t in outs:
                frac[t] = fout
            op_f[n.name] = (fw, fw, act_factor(acts, outs, fin, fout), 1.0)
            continue
        if expert and cc != "gemm":
            # stacked expert weights gathered per token (batched MoE): split over ep devices (or
            # by tp within each expert); the gathered tensor is treated whole downstream, so the
            # expert GEMMs are costed whole per device (an upper bound) while the weight traffic,
            # which dominates MoE decode, is split
            f = 1.0 / (ep if ep > 1 else tp)
            for p_ in params:
                wfrac[p_] = f
            for t in outs:
                frac[t] = 1.0
            op_f[n.name] = (f, f, f, 1.0)
            continue
        if n.op == "Gather" and params and tp > 1:           # vocabulary-parallel embedding
            for p in params:
                wfrac[p] = qf
            for t in outs:
                frac[t] = 1.0
                comms.append(("all_reduce", n.name, nbytes(t)))
            op_f[n.name] = (1.0, qf, 1.0, 1.0)
            continue
        if cc == "attention":
            fq = fr(n.inputs[0]) if n.inputs and n.inputs[0] else 1.0
            for t in outs:
                frac[t] = kvf if t in kv_tensors else fq
            op_f[n.name] = (fq, 1.0, fq, kvf)
            continue
        if n.op == "Split" and acts and fr(acts[0]) < 1.0:
            for t in outs:
                frac[t] = split_width_frac(t)
            f = fr(acts[0])
            op_f[n.name] = (f, 1.0, f, 1.0)
            continue
        fin = min((fr(t) for t in acts), default=1.0)
        kvin = [t for t in n.inputs if t in kv_tensors]
        for t in outs:
            frac[t] = kvf if t in kv_tensors else fin
        op_f[n.name] = (fin, 1.0, fin, kvf if kvin else 1.0)
        if expert and ep > 1:
            for p in params:
                wfrac[p] = 1.0 / ep

    if moe_row_layers:
        itemsize = next((g.type(t).itemsize for t in g.params if not g.params[t].annotations.get("const")), 2)
        for i, layer in enumerate(sorted(moe_row_layers, key=str)):
            comms.append(("all_reduce", f"moe combine {layer}", B * S * dims.hidden * itemsize))

    # MoE all-to-alls: one dispatch and one combine per layer holding expert weights
    if ep > 1 and dims.experts:
        expert_ops = [n for n in g.topo_order() if _expert_of(n) is not None]
        moe_layers = {n.annotations.get("layer") for n in expert_ops}
        # MoE layers of the graph (DeepSeek's first layers are dense); an unlayered block: the config's
        nlayers = len(moe_layers - {None}) or dims.moe_layers or dims.layers or 1
        itemsize = next((g.type(t).itemsize for n in expert_ops if get(n.op).cost_class == "gemm"
                         for t in n.inputs if t in g.params and not g.params[t].annotations.get("const")), 2)
        tok_bytes = B * S * dims.top_k * dims.hidden * itemsize
        for i in range(nlayers):
            comms.append(("all_to_all", f"moe dispatch {i}", tok_bytes))
            comms.append(("all_to_all", f"moe combine {i}", tok_bytes))

    fl = np.array([op_f.get(it.node or it.name, (1.0, 1.0, 1.0, 1.0)) for it in cm.items], dtype=float).reshape(-1, 4)
    wtot = wdev = 0.0
    for name in g.params:
        if g.params[name].annotations.get("const"):
            continue
        wb = float(cls.weight_bytes(name))
        wtot += wb
        wdev += wb * wfrac.get(name, 1.0)
    return ShardTable(tp=tp, ep=ep, flops=fl[:, 0], weights=fl[:, 1], activations=fl[:, 2], kv=fl[:, 3],
                      comms=comms, weight_bytes_total=wtot, weight_bytes_device=wdev, kv_fraction=kvf,
                      column=col, row=row)


def _expert_of(n) -> int | None:
    """The routed expert an op computes for (its ``moe`` annotation; -1 for a grouped expert GEMM,
    which computes for all of them), or None."""
    r = n.annotations.get("moe")
    if r is not None and n.op == "MoEMatMul":
        return -1
    return None if r is None else r.expert


def attention_roles(g) -> dict[str, set[str]]:
    """Tensor -> the attention operands (``q``, ``k``, ``v``) it carries: walked up from every
    Attention's first three operands through the ops between them and the projection GEMM that
    makes them (reshapes, rotary, norms, a Split of a merged QKV output), the GEMM's output
    included."""
    roles: dict[str, set[str]] = {}
    for n in g:
        if n.op != "Attention":
            continue
        for role, t in zip("qkv", n.inputs[:3]):
            for _ in range(16):
                if not t or t in g.params:
                    break
                roles.setdefault(t, set()).add(role)
                p = g.producer_of(t)
                if p is None or get(p.op).cost_class == "gemm":
                    break
                acts = [x for x in p.inputs if x and x not in g.params]
                t = acts[0] if acts else None
    return roles


# --------------------------------------------------------------------------- times

def per_device_times(cm, table: ShardTable, b, s, p, phase: str) -> dict[str, np.ndarray]:
    """Per-device op time (the cost model's roofline on the sharded figures), its compute and
    memory sides, and the communication of one forward, at arrays of points."""
    hw = cm.hw
    rows, count = _groups(cm, table)
    flops, w, a, kv, fx = cm.components(b, s, p, phase, rows)
    flops = flops * table.flops[rows][:, None]
    w, a, kv = w * table.weights[rows][:, None], a * table.activations[rows][:, None], kv * table.kv[rows][:, None]
    byts = w + a + kv
    npts = flops.shape[1]
    # the cost model's per-op times on the sharded figures (hardware classes, measured kernel
    # families, the runtime profile's kernels; MoE experts' fixed costs with their touch probability);
    # the identical ops of every layer priced once (CostModel.signature_groups)
    op_t = (cm.op_times(flops, w, a, kv, fx, phase, shard=table.weights[rows], rows=rows)[0]
            * count[:, None]).sum(axis=0) + cm.host_time(b, s)
    sides = cm.__dict__.setdefault("_class_sides", {})
    if phase not in sides:     # per op: peak x compute fraction, bandwidth x memory fraction of its class
        srows = []
        for it in cm.items:
            prm = hw.efficiency.for_class(f"attention_{phase}" if it.cost_class == "attention" else it.cost_class)
            pk = hw.peak("fp16") if it.cost_class in REFERENCE_PEAK_CLASSES else hw.peak(it.dtype, it.sparse)
            srows.append((pk * prm.compute, hw.memory_bandwidth * prm.memory))
        sides[phase] = np.array(srows, float).reshape(-1, 2)
    comp_t = (flops / sides[phase][rows, :1] * count[:, None]).sum(axis=0)
    mem_t = (byts / sides[phase][rows, 1:] * count[:, None]).sum(axis=0)
    comm_t = np.zeros(npts)
    n = max(table.tp, table.ep)
    bb, ss, pp_ = (np.broadcast_to(np.asarray(x, float), (npts,)) for x in (b, s, p))
    by_kind: dict[str, np.ndarray] = {}
    calls: dict[str, int] = {}
    for kind, _, expr in table.comms:
        nb = _eval(expr, bb, ss, pp_)
        group = table.ep if kind == "all_to_all" else table.tp
        # the engine's own collective where its runtime profile names one (compiler/perf/runtime.py)
        rt = getattr(cm, "runtime", None)
        t = rt.collective_time(hw, kind, group, nb) if rt is not None else collective_time(hw, kind, group, nb)
        comm_t = comm_t + t
        by_kind[kind] = by_kind.get(kind, 0) + t
        calls[kind] = calls.get(kind, 0) + 1
    return {"op_time": op_t, "compute_time": comp_t, "memory_time": mem_t, "comm_time": comm_t,
            "time": op_t + comm_t, "comm_by_kind": by_kind, "calls": calls, "devices": n}


def _groups(cm, table: ShardTable):
    """Ops with identical costs and shard factors (every layer's), priced once: (rows, counts)."""
    memo = cm.__dict__.setdefault("_shard_groups", {})
    key = id(table)
    if key not in memo:
        extra = list(zip(table.flops, table.weights, table.activations, table.kv))
        memo[key] = (table, cm.signature_groups(extra))
    return memo[key][1]


_EVAL_CACHE: dict = {}


def _eval(expr, b, s, p) -> np.ndarray:
    key = sympy.srepr(sympy.sympify(expr))
    fn = _EVAL_CACHE.get(key)
    if fn is None:
        fn = _EVAL_CACHE[key] = sympy.lambdify((B, S, P), sympy.sympify(expr), modules="numpy")
    return np.broadcast_to(np.asarray(fn(b, s, p), float), b.shape)


# --------------------------------------------------------------------------- memory

def memory_per_device(*, weights_bytes_device: float, kv_bytes_per_token: float, kv_fraction: float,
                      pp: int, tokens: float, activation_peak_bytes: float, reserve_bytes: float,
                      capacity_bytes: float, gpu_utilization: float = 1.0) -> dict[str, Any]:
    w = weights_bytes_device / pp
    kv_tok = kv_bytes_per_token * kv_fraction / pp
    kv = kv_tok * tokens
    total = w + kv + activation_peak_bytes + reserve_bytes
    usable = capacity_bytes * gpu_utilization
    return {"weights_bytes": w, "kv_bytes_per_token": kv_tok, "kv_cache_bytes": kv,
            "activation_peak_bytes": activation_peak_bytes, "runtime_reserve_bytes": reserve_bytes,
            "total_bytes": total, "capacity_bytes": capacity_bytes, "usable_bytes": usable,
            "fits": bool(total <= usable)}


def tp_options(*, weights_bytes: float, kv_bytes_per_token: float, dims: ModelDims, hw,
               tokens: float, activation_peak_bytes: float, reserve_bytes: float,
               gpu_utilization: float = 1.0, pp: int = 1, weight_split=None) -> dict[str, Any]:
    """Memory per device for every tp that divides the heads (up to the node size) and the
    smallest that fits. ``weight_split(tp)`` gives the per-device weight bytes (default
    weights / tp: every large matrix is split)."""
    n = hw.interconnect.num_devices_per_node if hw.interconnect.bandwidth > 0 else 1
    rows = []
    for tp in [t for t in (1, 2, 4, 8, 16, 32, 64) if t <= n and dims.heads % t == 0]:
        wdev = weight_split(tp) if weight_split else weights_bytes / tp
        m = memory_per_device(weights_bytes_device=wdev, kv_bytes_per_token=kv_bytes_per_token,
                              kv_fraction=kv_fraction(dims.kv_heads, tp, _latent(dims)), pp=pp, tokens=tokens,
                              activation_peak_bytes=activation_peak_bytes, reserve_bytes=reserve_bytes,
                              capacity_bytes=hw.memory_bytes, gpu_utilization=gpu_utilization)
        rows.append({"tp": tp, "total_bytes": m["total_bytes"], "weights_bytes": m["weights_bytes"],
                     "fits": m["fits"]})
    fitting = [r["tp"] for r in rows if r["fits"]]
    return {"options": rows, "min_tp_that_fits": fitting[0] if fitting else None,
            "fits_one_device": bool(rows and rows[0]["tp"] == 1 and rows[0]["fits"])}


# --------------------------------------------------------------------------- the analysis

def analyze_parallel(cm, hw, plan: ParallelPlan, dims: ModelDims, *, batch: int, prompt_len: int,
                     context_len: int, tokens: float, kv_bytes_per_token: float,
                     activation_peak_bytes: float, reserve_bytes: float,
                     gpu_utilization: float = 1.0) -> dict[str, Any]:
    """Per-phase compute, memory and communication time per device, memory per device, and the
    tensor-parallel degrees that fit (the report's ``parallel`` section)."""
    check_plan(plan, dims, hw)
    table = shard_table(cm, dims, plan)
    m = plan.microbatches or max(1, min(batch, plan.pp))
    out: dict[str, Any] = {"tp": plan.tp, "pp": plan.pp, "ep": plan.ep, "devices": plan.devices,
                           "microbatches": m, "interconnect": hw.interconnect.name,
                           "collectives_source": collective_source(hw, "all_reduce", max(plan.tp, 2)),
                           "allreduces_per_forward": sum(1 for k, *_ in table.comms if k == "all_reduce"),
                           "all_to_alls_per_forward": sum(1 for k, *_ in table.comms if k == "all_to_all"),
                           "column_parallel_gemms": table.column, "row_parallel_gemms": table.row,
                           "kv_heads_per_device": kv_heads_per_device(dims.kv_heads, plan.tp)}
    phases = {}
    base = {}
    for phase, (b, s, p) in (("prefill", (batch, prompt_len, 0)), ("decode", (batch, 1, context_len))):
        one = cm.phase_time(b, s, p, phase)[0]
        if plan.pp > 1 and phase == "prefill":
            bm = max(batch / m, 1)
            r = per_device_times(cm, table, bm, s, p, phase)
            stage = float(r["time"][0]) / plan.pp
            send = float(p2p_time(hw, bm * s * dims.hidden * _itemsize(cm)))
            slots = m + plan.pp - 1
            t = slots * stage + (plan.pp - 1) * send
            bubble = pipeline_bubble(plan.pp, m)
        else:
            r = per_device_times(cm, table, b, s, p, phase)
            stage = float(r["time"][0]) / plan.pp
            send = float(p2p_time(hw, b * s * dims.hidden * _itemsize(cm))) if plan.pp > 1 else 0.0
            t = plan.pp * stage + (plan.pp - 1) * send
            bubble = pipeline_bubble(plan.pp, 1) if plan.pp > 1 else 0.0
            slots = plan.pp
        comm_bytes = {k: float(sum(_eval(e, *(np.atleast_1d(np.asarray(v, float)) for v in (
            (max(batch / m, 1) if plan.pp > 1 and phase == "prefill" else b), s, p)))[0]
            for kk, _, e in table.comms if kk == k)) for k in {c[0] for c in table.comms}}
        ring = {k: bus_factor(k, plan.ep if k == "all_to_all" else plan.tp) * v for k, v in comm_bytes.items()}
        phases[phase] = {
            "time_s": t,
            "single_device_time_s": float(one),
            "speedup": float(one / t) if t > 0 else None,
            "compute_time_s": float(r["compute_time"][0]) / plan.pp * slots,
            "memory_time_s": float(r["memory_time"][0]) / plan.pp * slots,
            "op_time_s": float(r["op_time"][0]) / plan.pp * slots,
            "comm_time_s": float(r["comm_time"][0]) / plan.pp * slots + (plan.pp - 1) * send,
            "comm_time_by_kind_s": {k: float(v[0]) / plan.pp * slots for k, v in r["comm_by_kind"].items()},
            "collective_bytes": comm_bytes,
            "link_bytes_per_device": ring,
            "pipeline_send_s": send,
            "bubble_fraction": bubble,
        }
        base[phase] = one
    out["phases"] = phases
    out["memory_per_device"] = memory_per_device(
        weights_bytes_device=table.weight_bytes_device, kv_bytes_per_token=kv_bytes_per_token,
        kv_fraction=table.kv_fraction, pp=plan.pp, tokens=batch * tokens,
        activation_peak_bytes=activation_peak_bytes, reserve_bytes=reserve_bytes,
        capacity_bytes=hw.memory_bytes, gpu_utilization=gpu_utilization)
    out["weights_bytes_total"] = table.weight_bytes_total

    def split(tp):
        if tp == plan.tp:
            return table.weight_bytes_device
        return shard_table(cm, dims, ParallelPlan(tp=tp, ep=plan.ep)).weight_bytes_device

    out["tp_options"] = tp_options(weights_bytes=table.weight_bytes_total, kv_bytes_per_token=kv_bytes_per_token,
                                   dims=dims, hw=hw, tokens=batch * tokens,
                                   activation_peak_bytes=activation_peak_bytes, reserve_bytes=reserve_bytes,
                                   gpu_utilization=gpu_utilization, pp=plan.pp, weight_split=split)
    return out


def _itemsize(cm) -> float:
    for name, prm in cm.graph.params.items():
        if not prm.annotations.get("const"):
            return float(prm.type.itemsize)
    return 2.0


def parallel_step_time(cm, plan: ParallelPlan, dims: ModelDims):
    """``step_time(b, p, s)`` for :mod:`compiler.analysis.serving` at this plan: per-device op time plus
    communication (and pipeline sends; decode crosses every stage)."""
    table = shard_table(cm, dims, plan)
    hw = cm.hw

    def step_time(b, p, s):
        b, p, s = np.broadcast_arrays(*(np.asarray(x, dtype=float) for x in (b, p, s)))
        b, p, s = b.ravel(), p.ravel(), s.ravel()
        out = np.empty(b.shape)
        for phase, mask in (("decode", s <= 1), ("prefill", s > 1)):
            if mask.any():
                r = per_device_times(cm, table, b[mask], s[mask], p[mask], phase)
                send = p2p_time(hw, b[mask] * s[mask] * dims.hidden * _itemsize(cm)) if plan.pp > 1 else 0.0
                out[mask] = r["time"] + (plan.pp - 1) * send
        return out
    return step_time


def plan_of(parallel: Mapping | None) -> ParallelPlan:
    p = dict(parallel or {})
    unknown = sorted(set(p) - {"tp", "pp", "ep", "microbatches"})
    if unknown:
        raise ConfigError(f"parallel.{unknown[0]} is not a parallelism setting; use parallel.tp, "
                          "parallel.pp, parallel.ep, parallel.microbatches.")
    return ParallelPlan(tp=p.get("tp", 1) or 1, pp=p.get("pp", 1) or 1, ep=p.get("ep", 1) or 1,
                        microbatches=p.get("microbatches"))


def parallel_section(cm, hw, parallel: Mapping | None, dims: ModelDims | None, *, batch: int,
                     prompt_len: int, context_len: int, tokens: float, kv_bytes_per_token: float,
                     weights_bytes: float, activation_peak_bytes: float, reserve_bytes: float,
                     gpu_utilization: float = 1.0) -> dict[str, Any] | None:
    """The report's ``parallel`` section. One device (tp = pp = ep = 1): only which tp fits (cheap:
    weights / tp); otherwise :func:`analyze_parallel`. None for models without transformer
    dimensions (ONNX files, custom modules) on one device."""
    plan = plan_of(parallel)
    if dims is None:
        if plan.devices > 1:
            raise ConfigError("parallel.tp/pp/ep need a transformer described by a Hugging Face "
                              "config (model.config: heads, KV heads, layers); this model has none.")
        return None
    if plan.devices == 1:
        opts = tp_options(weights_bytes=weights_bytes, kv_bytes_per_token=kv_bytes_per_token, dims=dims,
                          hw=hw, tokens=batch * tokens, activation_peak_bytes=activation_peak_bytes,
                          reserve_bytes=reserve_bytes, gpu_utilization=gpu_utilization)
        mem = memory_per_device(weights_bytes_device=weights_bytes, kv_bytes_per_token=kv_bytes_per_token,
                                kv_fraction=1.0, pp=1, tokens=batch * tokens,
                                activation_peak_bytes=activation_peak_bytes, reserve_bytes=reserve_bytes,
                                capacity_bytes=hw.memory_bytes, gpu_utilization=gpu_utilization)
        return {"tp": 1, "pp": 1, "ep": 1, "devices": 1, "memory_per_device": mem, "tp_options": opts,
                "collectives_source": collective_source(hw, "all_reduce", 2)
                if hw.interconnect.bandwidth > 0 else "no peer interconnect"}
    return analyze_parallel(cm, hw, plan, dims, batch=batch, prompt_len=prompt_len, context_len=context_len,
                            tokens=tokens, kv_bytes_per_token=kv_bytes_per_token,
                            activation_peak_bytes=activation_peak_bytes, reserve_bytes=reserve_bytes,
                            gpu_utilization=gpu_utilization)
