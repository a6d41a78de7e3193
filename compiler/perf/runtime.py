"""Runtime profiles: what the deployed engine runs for each op, and what it adds around the kernels.

The cost model's hardware efficiencies (``conf/hardware/<name>.yaml``) were measured on plain
PyTorch programs. An inference engine runs other kernels for the same op — a fused int8 GEMV
instead of dequantize-then-GEMM, a per-tensor FP8 GEMM instead of a dynamic per-token one, an
attention kernel that reads an FP8 KV cache directly — and spends host time per step and per
request. A runtime profile (config group ``runtime=``, ``conf/runtime/<name>.yaml``) says which:

``kernels``
    per op family (:func:`op_family`: ``gemm.<format>`` with format ``bf16``, ``fp16``, ``fp32``,
    ``w8a16``, ``w4a16``, ``w8a8``, ``fp8``, ``fp8_dynamic``, ``sparse24``; ``attention.prefill``,
    ``attention.decode``; ``moe``, or ``moe.<format>`` for the engine's MoE kernel on expert
    weights of one format (``quant=`` / ``model.weight_formats``; looked up first, then ``moe``,
    then ``gemm.<format>``); ``elementwise``, ``reduction``, ``copy``) the kernel that runs
    it and how it is priced (``model``):

    - ``hardware``: the hardware's calibrated op class (and, for a quantized GEMM, the measured
      kernel family the quantize pass named) — exactly what rooftop costed before runtime
      profiles existed (``runtime=eager`` is all ``hardware``);
    - ``efficiency``: the roofline with this kernel's own fractions of peak FLOP/s and bandwidth
      (``params`` per GPU architecture: ``compute``, ``memory``, optional ``flops_half_gflop`` /
      ``bytes_half_mb``; missing ones are the hardware class's) against ``peak_dtype``'s peak,
      reading the operands in their stored formats;
    - ``measured``: the dense 16-bit GEMM of the same shape times a measured time ratio per M
      (``measured:`` a label of :mod:`compiler.perf.kernel_families`);
    - ``roofline``: datasheet peak FLOP/s and bandwidth alone (``runtime=ideal``).

    Every kernel names its ``source`` (a measurement file or a cited/fitted table) and its
    ``error_band``.
``kv_cache_in_kernel``
    KV formats the attention kernels read directly (FP8/INT8 KV dequantized in registers: the
    cache's bytes shrink and no separate (de)quantization is charged). Formats not listed pay
    the dequantization of :func:`compiler.perf.cost.kv_format_cost`.
``lm_head``
    ``last``: a prefill computes the logits of the last position only (engines gather it before
    the LM head); ``all``: every position (a plain ``model(input_ids)`` call).
``moe_dispatch``
    ``grouped``: the routed experts of a layer run as one grouped GEMM per projection (one
    kernel's fixed cost per layer); ``per_expert``: one kernel per touched expert.
``host``
    exposed host time (µs, each with source and error band): ``step_us`` per engine iteration,
    ``per_sequence_us`` per running sequence in it, ``per_tensor_us`` per graph input and output
    bound each iteration (onnxruntime's ``run()``), ``prefill_chunk_us`` per iteration that runs
    a prefill (chunk), ``request_us`` per request (added to its time to first token).
``collectives``
    the engine's own collective implementation, per collective kind (``all_reduce``, ...):
    ``latency_us`` added to the hardware's per-collective latency (the engine's launch and
    synchronization around it) and ``bandwidth_fraction``, the fraction of the hardware's bus
    bandwidth it reaches (``conf/hardware`` interconnect or measured ``collectives:``). Kinds not
    listed cost the hardware's collective (:func:`compiler.perf.collectives.collective_time`).
``serve``
    the engine's scheduler defaults: ``max_num_seqs``, ``max_batched_tokens``, ``admission``
    (``preempt``: vLLM's preempt-and-recompute; ``no_evict``: TensorRT-LLM's guaranteed
    completion, every request's final length reserved at admission), ``gpu_utilization``
    (fraction of device memory for weights, activations and KV), ``chunked_prefill``.

A profile binds to a :class:`compiler.perf.cost.CostModel` (:meth:`Runtime.bind`) and overrides
the time of the ops it prices differently; everything else is the hardware's class model.
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import sympy
from omegaconf import MISSING, OmegaConf

from compiler import resources
from compiler.errors import ConfigError
from compiler.ir import S
from compiler.perf import kernel_families as kf
from compiler.perf.collectives import COLLECTIVES, collective_time
from compiler.perf.hardware import ClassEfficiency
from compiler.perf import structured

__all__ = ["Runtime", "Kernel", "HostFigure", "CollectiveFigure", "RuntimeYaml", "load_runtime", "runtime_by_name",
           "available_runtimes", "op_family", "FAMILIES", "MODELS", "DEFAULT_RUNTIME"]

#: the profile that reproduces rooftop's plain PyTorch cost model
DEFAULT_RUNTIME = "eager"
#: op families a profile can name (see the module doc)
GEMM_FORMATS = ("bf16", "fp16", "fp32", "w8a16", "w4a16", "w8a8", "fp8", "fp8_dynamic", "sparse24")
FAMILIES = tuple(f"gemm.{f}" for f in GEMM_FORMATS) + (
    "attention.prefill", "attention.decode", "moe", "elementwise", "reduction", "copy") + tuple(
    f"moe.{f}" for f in GEMM_FORMATS)   # an engine's MoE kernel for one expert-weight format (quant=)
MODELS = ("hardware", "efficiency", "measured", "roofline")
ADMISSION = ("preempt", "no_evict")
HOST_KEYS = ("step_us", "per_sequence_us", "per_tensor_us", "prefill_chunk_us", "request_us")
_US = 1e-6
_GFLOP = 1e9
_MB = 1e6


# --------------------------------------------------------------------------- schema (Hydra)

@dataclass
class ErrorBandYaml:
    median: float = MISSING          # typical |relative error| (fraction)
    p90: Optional[float] = None
    basis: str = ""                  # which comparison gave it


@dataclass
class KernelYaml:
    kernel: str = MISSING            # what runs (report.json ops[].kernel)
    model: str = "hardware"          # hardware | efficiency | measured | roofline
    source: str = MISSING            # where the figures come from
    peak_dtype: Optional[str] = None  # efficiency: whose peak the compute fraction refers to
    params: Optional[Dict[str, Dict[str, float]]] = None   # efficiency: {architecture|default: {...}}
    measured: Optional[str] = None   # measured: a compiler.perf.kernel_families kernel label
    error_band: Optional[ErrorBandYaml] = None


@dataclass
class HostFigureYaml:
    value: float = MISSING           # µs
    source: str = MISSING
    error_band: Optional[ErrorBandYaml] = None


@dataclass
class CollectiveYaml:
    latency_us: float = 0.0          # added to the hardware's per-collective latency
    bandwidth_fraction: float = 1.0  # of the hardware's bus bandwidth
    source: str = MISSING
    error_band: Optional[ErrorBandYaml] = None


@dataclass
class RuntimeServeYaml:
    max_num_seqs: int = 256          # the engine's default limit of running sequences (serve.max_num_seqs)
    max_batched_tokens: int = 8192   # tokens one engine iteration may schedule (serve.max_batched_tokens)
    admission: str = "preempt"       # preempt (vLLM: recompute the newest) | no_evict (TensorRT-LLM)
    gpu_utilization: float = 1.0     # fraction of device memory the engine takes (memory.gpu_utilization)
    chunked_prefill: bool = False    # prompts split into max_batched_tokens chunks
    source: str = ""                 # where these defaults come from


@dataclass
class RuntimeYaml:
    """A ``conf/runtime/<name>.yaml`` (see the module doc)."""
    name: str = MISSING              # the profile's name (report.json runtime.name)
    engine: str = MISSING            # the engine it describes
    description: str = ""
    devices: List[str] = field(default_factory=lambda: ["gpu", "cpu", "soc"])   # hardware kinds it runs on
    lm_head: str = "all"             # all | last: a prefill computes the logits of the last position only
    kv_cache_in_kernel: List[str] = field(default_factory=list)   # KV dtypes the attention kernel reads as stored
    moe_dispatch: str = "per_expert"   # per_expert | grouped: one grouped GEMM per MoE projection
    kernels: Dict[str, KernelYaml] = field(default_factory=dict)   # op family -> kernel, model, figures, source, band
    host: Dict[str, HostFigureYaml] = field(default_factory=dict)   # step_us, per_sequence_us, per_tensor_us, prefill_chunk_us, request_us
    collectives: Dict[str, CollectiveYaml] = field(default_factory=dict)   # kind -> the engine's latency / bandwidth
    serve: RuntimeServeYaml = field(default_factory=RuntimeServeYaml)   # scheduler defaults


# --------------------------------------------------------------------------- objects

@dataclass(frozen=True)
class Kernel:
    """How one op family runs under a profile."""
    family: str
    kernel: str
    model: str
    source: str
    peak_dtype: str | None = None
    params: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    measured: str | None = None
    error_median: float | None = None
    error_p90: float | None = None
    error_basis: str = ""

    def params_for(self, architecture: str) -> Mapping[str, float] | None:
        """The efficiency parameters for a GPU ``architecture`` (else the ``default`` entry)."""
        return self.params.get(architecture) or self.params.get("default")

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kernel": self.kernel, "model": self.model, "source": self.source}
        if self.params:
            out["params"] = {k: dict(v) for k, v in self.params.items()}
        if self.measured:
            out["measured"] = self.measured
        if self.error_median is not None:
            out["error_band"] = {"median": self.error_median, "p90": self.error_p90, "basis": self.error_basis}
        return out


@dataclass(frozen=True)
class HostFigure:
    value_s: float
    source: str
    error_median: float | None = None
    error_p90: float | None = None
    error_basis: str = ""


@dataclass(frozen=True)
class CollectiveFigure:
    """The engine's own collective of one kind: extra latency (s) and fraction of bus bandwidth."""
    latency_s: float
    bandwidth_fraction: float
    source: str
    error_median: float | None = None
    error_p90: float | None = None
    error_basis: str = ""


@dataclass(frozen=True)
class Runtime:
    name: str
    engine: str
    description: str = ""
    devices: tuple[str, ...] = ("gpu", "cpu", "soc")
    lm_head: str = "all"
    kv_cache_in_kernel: tuple[str, ...] = ()
    moe_dispatch: str = "per_expert"
    kernels: Mapping[str, Kernel] = field(default_factory=dict)
    host: Mapping[str, HostFigure] = field(default_factory=dict)
    collectives: Mapping[str, CollectiveFigure] = field(default_factory=dict)
    max_num_seqs: int = 256
    max_batched_tokens: int = 8192
    admission: str = "preempt"
    gpu_utilization: float = 1.0
    chunked_prefill: bool = False
    serve_source: str = ""

    # -- what the cost model asks ------------------------------------------------------------
    @property
    def identity(self) -> bool:
        """Prices every op exactly as the hardware model does, with no host time (``eager``)."""
        return (all(k.model == "hardware" for k in self.kernels.values()) and self.lm_head == "all"
                and not self.kv_cache_in_kernel and self.moe_dispatch == "per_expert"
                and not any(h.value_s for h in self.host.values()) and not self.collectives)

    @property
    def roofline(self) -> bool:
        return any(k.model == "roofline" for k in self.kernels.values())

    def kernel(self, family: str) -> Kernel | None:
        return self.kernels.get(family)

    def host_s(self, key: str) -> float:
        h = self.host.get(key)
        return h.value_s if h is not None else 0.0

    def step_overhead(self, b, s, tensors: int = 0) -> np.ndarray:
        """Exposed host time of engine iterations of ``b`` sequences processing ``s`` new tokens
        each (a prefill chunk when s > 1) through a graph binding ``tensors`` inputs and outputs,
        seconds (arrays broadcast)."""
        b = np.asarray(b, float)
        s = np.asarray(s, float)
        return (self.host_s("step_us") + self.host_s("per_sequence_us") * b + self.host_s("per_tensor_us") * tensors
                + np.where(s > 1, self.host_s("prefill_chunk_us"), 0.0))

    def collective_time(self, hw, kind: str, n: int, nbytes):
        """Seconds for one collective of ``kind`` over ``n`` devices of ``hw`` run by this engine:
        the hardware's (:func:`compiler.perf.collectives.collective_time`) with the engine's extra
        latency and bandwidth fraction where the profile names them (0 for n == 1)."""
        c = self.collectives.get(kind)
        if c is None or int(n) <= 1:
            return collective_time(hw, kind, n, nbytes)
        nbytes = np.asarray(nbytes, dtype=float)
        return collective_time(hw, kind, n, nbytes / c.bandwidth_fraction) + c.latency_s

    def with_collective(self, kind: str, **values) -> "Runtime":
        """A copy with the engine's ``kind`` collective figures changed (fitting): ``latency_us``,
        ``bandwidth_fraction``."""
        coll = dict(self.collectives)
        old = coll.get(kind) or CollectiveFigure(0.0, 1.0, "fit")
        upd = {}
        if "latency_us" in values:
            upd["latency_s"] = float(values["latency_us"]) * _US
        if "bandwidth_fraction" in values:
            upd["bandwidth_fraction"] = float(values["bandwidth_fraction"])
        coll[kind] = dataclasses.replace(old, **upd)
        return dataclasses.replace(self, collectives=coll)

    @property
    def request_s(self) -> float:
        return self.host_s("request_us")

    def check_hardware(self, hw) -> None:
        """A profile runs on some hardware kinds only (a GPU engine is not a CPU runtime)."""
        if hw.kind not in self.devices:
            others = ", ".join(n for n in available_runtimes() if hw.kind in runtime_by_name(n).devices)
            raise ConfigError(f"runtime={self.name} describes {self.engine}, which runs on "
                              f"{' / '.join(self.devices)} hardware, but hardware={hw.name} is a {hw.kind}: no such "
                              f"run exists to predict. Choose a runtime for a {hw.kind} ({others}) or a "
                              f"{' / '.join(self.devices)} hardware.")

    def describe(self) -> dict[str, Any]:
        """The report's ``runtime`` block (without the per-run figures)."""
        return {
            "name": self.name, "engine": self.engine, "description": self.description,
            "devices": list(self.devices),
            "lm_head": self.lm_head, "kv_cache_in_kernel": list(self.kv_cache_in_kernel),
            "moe_dispatch": self.moe_dispatch,
            "kernels": {f: k.describe() for f, k in sorted(self.kernels.items())},
            "host_overheads_s": {k: {"value": h.value_s, "source": h.source,
                                     **({"error_band": {"median": h.error_median, "p90": h.error_p90,
                                                        "basis": h.error_basis}}
                                        if h.error_median is not None else {})}
                                 for k, h in sorted(self.host.items())},
            **({"collectives": {k: {"latency_s": c.latency_s, "bandwidth_fraction": c.bandwidth_fraction,
                                    "source": c.source,
                                    **({"error_band": {"median": c.error_median, "p90": c.error_p90,
                                                       "basis": c.error_basis}} if c.error_median is not None else {})}
                                for k, c in sorted(self.collectives.items())}} if self.collectives else {}),
            "serve_defaults": {"max_num_seqs": self.max_num_seqs, "max_batched_tokens": self.max_batched_tokens,
                               "admission": self.admission, "gpu_utilization": self.gpu_utilization,
                               "chunked_prefill": self.chunked_prefill, "source": self.serve_source},
        }

    def with_params(self, family: str, architecture: str, **values) -> "Runtime":
        """A copy with ``family``'s efficiency parameters for ``architecture`` changed (fitting)."""
        k = self.kernels[family]
        params = {a: dict(v) for a, v in k.params.items()}
        params.setdefault(architecture, dict(params.get("default") or {})).update(values)
        kernels = dict(self.kernels)
        kernels[family] = dataclasses.replace(k, params=params)
        return dataclasses.replace(self, kernels=kernels)

    def with_host(self, **values_us) -> "Runtime":
        host = dict(self.host)
        for key, v in values_us.items():
            old = host.get(key) or HostFigure(0.0, "fit")
            host[key] = dataclasses.replace(old, value_s=float(v) * _US)
        return dataclasses.replace(self, host=host)

    def family_kernel(self, it, phase: str) -> Kernel | None:
        """The kernel this profile names for cost item ``it`` (a :class:`compiler.perf.cost.OpItem`)
        in ``phase`` (None: the profile does not name its family)."""
        fam = f"attention.{'decode' if phase == 'decode' else 'prefill'}" if it.family == "attention" else it.family
        k = self.kernel(f"moe.{it.moe_format}") if it.family == "moe" and it.moe_format else None
        k = k or self.kernel(fam)
        if k is None and it.family == "moe":
            k = self.kernel("gemm." + it.moe_format)
        return k

    def label(self, it, phase: str, hw) -> tuple[str, str]:
        """(kernel, source) of cost item ``it`` in ``phase`` on ``hw`` (report.json ops[])."""
        k = self.family_kernel(it, phase)
        if k is not None and k.model != "hardware":
            return k.kernel, k.source
        if it.kernel:        # a quantize/prune pass named a measured kernel family
            return it.kernel, kf.source(it.kernel, hw.name)
        cls = {"attention": f"attention_{'decode' if phase == 'decode' else 'prefill'}"}.get(it.cost_class, it.cost_class)
        src = f"conf/hardware/{hw.name}.yaml efficiency.classes.{cls} ({hardware_calibration(hw)})"
        return (k.kernel if k is not None else f"{it.cost_class} kernel"), src

    def bind(self, cm) -> "Binding | None":
        """The per-op pricing of this profile on a compiled cost model (None: identity)."""
        if self.identity:
            return None
        return Binding(self, cm)


# --------------------------------------------------------------------------- op families

def hardware_calibration(hw) -> str:
    """Where a device's class efficiencies come from, in a few words."""
    cal = getattr(hw, "calibration", None)
    if cal is not None:
        return f"{cal.source}, from {'+'.join(cal.from_devices) or 'none'}"
    return str(hw.efficiency.source).split(";")[0]


def gemm_format(graph, n, cls, dtype: str) -> str:
    """The format family of a GEMM: its weight's stored format and its activations' quantization
    (annotations ``weight_format`` and ``activation_quant``), else its compute dtype."""
    fmt = None
    for t in n.inputs[1:2]:
        if t:
            fmt = cls.weight_format(t)
    aq = n.annotations.get("activation_quant")
    if fmt is not None and fmt.nm == (2, 4) and fmt.dtype in ("float16", "bfloat16", "float32"):
        return "sparse24"
    if fmt is not None and fmt.dtype in ("int4", "uint4"):
        return "w4a16"
    if fmt is not None and fmt.dtype in ("int8", "uint8"):
        return "w8a8" if aq is not None else "w8a16"
    if fmt is not None and fmt.dtype.startswith("float8"):
        if aq is None:
            return "fp8"
        return "fp8" if aq.mode == "static" else "fp8_dynamic"
    return {"bf16": "bf16", "fp16": "fp16"}.get(dtype, "fp32" if dtype in ("fp32", "tf32") else dtype)


def op_family(graph, n, cls, cost_class: str, dtype: str) -> str:
    """The family a profile prices an op by (see the module doc)."""
    if cost_class == "gemm":
        moe = n.annotations.get("moe") if "moe" in n.annotations else None
        if moe is not None and (moe.expert is not None or n.op == "MoEMatMul"):
            # one expert's GEMM (a per-expert loop) or a grouped expert GEMM over every routed row
            # (``MoEMatMul``: what fused MoE kernels run): the engine's MoE kernel prices both
            return "moe"
        return "gemm." + gemm_format(graph, n, cls, dtype)
    if cost_class == "attention":
        return "attention"      # prefill or decode: chosen at evaluation time
    return cost_class


# --------------------------------------------------------------------------- binding to a cost model

_ARCH_DEFAULT = "default"


class Binding:
    """A profile bound to one compiled :class:`compiler.perf.cost.CostModel`: per op and phase, how
    it is priced — the hardware class (unchanged), an ``efficiency`` kernel (vectorized: one
    parameter row per op), a ``measured`` kernel (its ratio curve), or the ``roofline`` — and
    grouped MoE dispatch (an expert op's fixed costs shared by the layer's experts)."""

    HARDWARE, EFFICIENCY, MEASURED, ROOFLINE = 0, 1, 2, 3

    def __init__(self, rt: Runtime, cm):
        self.rt = rt
        self.cm = cm
        hw = cm.hw
        self.arch = hw.architecture or _ARCH_DEFAULT
        items = cm.items
        self.n = len(items)
        # MoE expert ops under grouped dispatch: fixed costs once per layer and projection
        self.moe_fixed = np.array([1.0 / it.moe_experts if (rt.moe_dispatch == "grouped" and it.moe_experts)
                                   else np.nan for it in items], float)
        self.grouped = ~np.isnan(self.moe_fixed)
        self.kernels: dict[str, list[Kernel | None]] = {}
        self.plan: dict[str, dict[str, Any]] = {}
        for phase in ("prefill", "decode"):
            ks = [rt.family_kernel(it, phase) for it in items]
            self.kernels[phase] = ks
            self.plan[phase] = self._plan(ks, phase)

    def _plan(self, ks, phase: str) -> dict[str, Any]:
        cm, hw = self.cm, self.cm.hw
        n = self.n
        model = np.zeros(n, np.int8)
        prm = np.zeros((n, 4))           # compute, memory, flops_half, bytes_half
        peak = np.array(cm._peak, float)
        measured: list[tuple[int, Kernel, int]] = []   # (position, kernel, item)
        for i, (it, k) in enumerate(zip(cm.items, ks)):
            cls_name = {"attention": f"attention_{phase}"}.get(it.cost_class, it.cost_class)
            base = hw.efficiency.for_class(cls_name)
            prm[i] = (base.compute, base.memory, base.flops_half, base.bytes_half)
            if k is None or k.model == "hardware":
                if self.grouped[i] and not it.kernel:
                    model[i] = self.EFFICIENCY     # the class figures, grouped fixed costs
                continue
            if k.model == "roofline":
                model[i] = self.ROOFLINE
                if k.peak_dtype:
                    peak[i] = hw.peak(k.peak_dtype)
                elif it.cost_class in ("elementwise", "reduction", "copy"):
                    peak[i] = hw.peak("fp32")     # vector work runs on the vector units
                continue
            if k.model == "measured" and self.arch not in k.params:
                if cm.weight_numel[i]:
                    model[i] = self.MEASURED
                    measured.append((i, k, i))
                continue
            p = k.params_for(self.arch) or {}
            model[i] = self.EFFICIENCY
            prm[i] = (float(p.get("compute", base.compute)), float(p.get("memory", base.memory)),
                      float(p["flops_half_gflop"]) * _GFLOP if "flops_half_gflop" in p else base.flops_half,
                      float(p["bytes_half_mb"]) * _MB if "bytes_half_mb" in p else base.bytes_half)
            if k.peak_dtype:
                peak[i] = hw.peak(k.peak_dtype)
        return {"model": model, "eff": np.flatnonzero(model == self.EFFICIENCY),
                "roof": np.flatnonzero(model == self.ROOFLINE), "measured": measured,
                "prm": prm, "peak": peak}

    def _subset(self, pl: dict, rows) -> dict:
        key = (id(pl), rows.tobytes())
        cache = self.__dict__.setdefault("_subsets", {})
        if key not in cache:
            model = pl["model"][rows]
            pos = {int(i): j for j, i in enumerate(rows)}
            cache[key] = {"model": model, "eff": np.flatnonzero(model == self.EFFICIENCY),
                          "roof": np.flatnonzero(model == self.ROOFLINE), "prm": pl["prm"][rows],
                          "peak": pl["peak"][rows],
                          "measured": [(pos[i], k, i) for i, k, *_ in pl["measured"] if i in pos]}
        return cache[key]

    def dense_gemm(self, k: Kernel):
        """The efficiency of the dense GEMM a measured kernel's ratio is taken against: this
        profile's own dense kernel of that dtype when it prices one (``efficiency``), else the
        hardware's gemm class."""
        hw = self.cm.hw
        base = hw.efficiency.for_class("gemm")
        ref = kf.dense_reference(k.measured)
        dk = self.rt.kernel(f"gemm.{ref.dense_dtype}")
        prm = dk.params_for(self.arch) if dk is not None and dk.model == "efficiency" else None
        if not prm:
            return base
        return ClassEfficiency(float(prm.get("compute", base.compute)), float(prm.get("memory", base.memory)),
                               float(prm["flops_half_gflop"]) * _GFLOP if "flops_half_gflop" in prm else base.flops_half,
                               float(prm["bytes_half_mb"]) * _MB if "bytes_half_mb" in prm else base.bytes_half)

    def override(self, flops, w, a, kv, fx, phase, time, att_f, bound, shard=None, rows=None):
        """Re-price the ops whose kernel is not the hardware class; in place on ``time``,
        ``att_f``, ``bound`` (arrays ``(n_ops, n_points)``; ``rows``: the item indices they hold)."""
        cm, hw = self.cm, self.cm.hw
        pl = self.plan["decode" if phase == "decode" else "prefill"]
        if rows is not None:
            pl = self._subset(pl, rows)
        launch = hw.efficiency.launch_overhead_s
        bw = hw.memory_bandwidth
        p16 = hw.peak("fp16")
        grouped = self.grouped if rows is None else self.grouped[rows]
        if grouped.any():
            fx = fx.copy()
            fx[grouped] = (self.moe_fixed if rows is None else self.moe_fixed[rows])[grouped][:, None]
        e = pl["eff"]
        if len(e):
            c, m, fh, bh = (pl["prm"][e, j][:, None] for j in range(4))
            pk = pl["peak"][e][:, None]
            f_, b_ = flops[e], w[e] + a[e] + kv[e]
            # compiler.perf.efficiency.kernel_time, one parameter row per op
            t_c = (f_ + fh * fx[e] * (pk / p16)) / (pk * c)
            t_m = (b_ + bh * fx[e]) / (bw * m)
            t = np.maximum(t_c, t_m) + launch * fx[e]
            pure = np.maximum(f_ / (pk * c), b_ / (bw * m))
            time[e] = t
            bound[e] = np.where(t - pure > pure, 2, np.where(f_ / (pk * c) >= b_ / (bw * m), 0, 1))
            att_f[e] = np.where(t > 0, f_ / np.maximum(t - launch * fx[e], 1e-30), 0.0)
        r = pl["roof"]
        if len(r):
            pk = pl["peak"][r][:, None]
            f_, b_ = flops[r], w[r] + a[r] + kv[r]
            t_c, t_m = f_ / pk, b_ / bw
            time[r] = np.maximum(t_c, t_m)
            bound[r] = np.where(t_c >= t_m, 0, 1)
            att_f[r] = np.where(time[r] > 0, f_ / np.maximum(time[r], 1e-30), 0.0)
        for j, k, i in pl["measured"]:
            time[j] = cm.measured_gemm_time(i, k.measured, flops[j], w[j], w[j] + a[j] + kv[j], fx[j],
                                            1.0 if shard is None else float(shard[j]), self.dense_gemm(k))
            att_f[j] = np.where(time[j] > 0, flops[j] / np.maximum(time[j] - launch * fx[j], 1e-30), 0.0)


# --------------------------------------------------------------------------- loading

def _band(b: Mapping | None) -> tuple[float | None, float | None, str]:
    if not b:
        return None, None, ""
    return float(b["median"]), (None if b.get("p90") is None else float(b["p90"])), str(b.get("basis") or "")


def _fail(where: str, path: str, problem: str, fix: str):
    raise ConfigError(f"{where}: field '{path}' {problem}. {fix}")


def load_runtime(cfg: Any, source: str | None = None) -> Runtime:
    """Validate a runtime mapping (``cfg.runtime``) and return a :class:`Runtime`; a problem is a
    one-paragraph :class:`ConfigError` naming the field and the fix."""
    data = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, Mapping) else dict(cfg)
    where = source or f"runtime '{data.get('name', '?')}'"
    try:
        top = OmegaConf.to_container(structured.check(RuntimeYaml, data), resolve=True)
    except structured.ProblemError as e:
        p = e.problem
        near = structured.nearest(p.key, p.valid) if p.kind == "unknown" else []
        _fail(where, p.path, {"unknown": "is not a known field", "missing": "is missing",
                              "type": f"is {p.value!r}, not {p.expected or 'of the right type'}"}.get(p.kind, p.raw),
              (f"Did you mean '{near[0]}'? " if near else "") + "See compiler/perf/runtime.py for the schema.")
    if top["lm_head"] not in ("all", "last"):
        _fail(where, "lm_head", f"is {top['lm_head']!r}", "Write all or last.")
    if top["moe_dispatch"] not in ("per_expert", "grouped"):
        _fail(where, "moe_dispatch", f"is {top['moe_dispatch']!r}", "Write per_expert or grouped.")
    kv_formats = []
    for f in top["kv_cache_in_kernel"]:
        if f not in ("fp8", "int8", "fp16", "bf16"):
            _fail(where, "kv_cache_in_kernel", f"lists {f!r}", "List KV formats among fp8, int8.")
        kv_formats.append(f)
    kernels = {}
    for fam, k in top["kernels"].items():
        if fam not in FAMILIES:
            near = structured.nearest(fam, FAMILIES)
            _fail(where, f"kernels.{fam}", "is not an op family",
                  f"Families: {', '.join(FAMILIES)}." + (f" Did you mean '{near[0]}'?" if near else ""))
        if k["model"] not in MODELS:
            _fail(where, f"kernels.{fam}.model", f"is {k['model']!r}", f"Write one of {', '.join(MODELS)}.")
        if k["model"] == "measured" and (not k.get("measured") or k["measured"] not in kf.KERNELS):
            _fail(where, f"kernels.{fam}.measured", f"is {k.get('measured')!r}, not a measured kernel family",
                  f"Name one of compiler/perf/kernel_families.py KERNELS: {', '.join(sorted(kf.KERNELS))}.")
        if k["model"] == "efficiency":
            for arch, prm in (k.get("params") or {}).items():
                for key, v in prm.items():
                    if key not in ("compute", "memory", "flops_half_gflop", "bytes_half_mb"):
                        _fail(where, f"kernels.{fam}.params.{arch}.{key}", "is not an efficiency parameter",
                              "Use compute, memory, flops_half_gflop, bytes_half_mb.")
                    if key in ("compute", "memory") and not (0 < v <= 1):
                        _fail(where, f"kernels.{fam}.params.{arch}.{key}", f"is {v!r}",
                              "A fraction of peak is in (0, 1].")
        med, p90, basis = _band(k.get("error_band"))
        kernels[fam] = Kernel(family=fam, kernel=k["kernel"], model=k["model"], source=k["source"],
                              peak_dtype=k.get("peak_dtype"), params=k.get("params") or {},
                              measured=k.get("measured"), error_median=med, error_p90=p90, error_basis=basis)
    host = {}
    for key, h in top["host"].items():
        if key not in HOST_KEYS:
            _fail(where, f"host.{key}", "is not a host overhead", f"Use {', '.join(HOST_KEYS)}.")
        if h["value"] < 0:
            _fail(where, f"host.{key}.value", f"is {h['value']!r}", "A host time is ≥ 0 µs.")
        med, p90, basis = _band(h.get("error_band"))
        host[key] = HostFigure(float(h["value"]) * _US, h["source"], med, p90, basis)
    collectives = {}
    for kind, c in (top.get("collectives") or {}).items():
        if kind not in COLLECTIVES:
            _fail(where, f"collectives.{kind}", "is not a collective", f"Use {', '.join(COLLECTIVES)}.")
        if c["latency_us"] < 0:
            _fail(where, f"collectives.{kind}.latency_us", f"is {c['latency_us']!r}", "A latency is ≥ 0 µs.")
        if not (0 < c["bandwidth_fraction"] <= 1):
            _fail(where, f"collectives.{kind}.bandwidth_fraction", f"is {c['bandwidth_fraction']!r}",
                  "A fraction of the bus bandwidth is in (0, 1].")
        med, p90, basis = _band(c.get("error_band"))
        collectives[kind] = CollectiveFigure(float(c["latency_us"]) * _US, float(c["bandwidth_fraction"]),
                                             c["source"], med, p90, basis)
    sv = top["serve"]
    if sv["admission"] not in ADMISSION:
        _fail(where, "serve.admission", f"is {sv['admission']!r}", "Write preempt or no_evict.")
    if not (0 < sv["gpu_utilization"] <= 1):
        _fail(where, "serve.gpu_utilization", f"is {sv['gpu_utilization']!r}", "Write a fraction in (0, 1].")
    for d in top["devices"]:
        if d not in ("gpu", "cpu", "soc"):
            _fail(where, "devices", f"lists {d!r}", "List hardware kinds among gpu, cpu, soc.")
    return Runtime(name=top["name"], engine=top["engine"], description=top["description"],
                   devices=tuple(top["devices"]), lm_head=top["lm_head"], kv_cache_in_kernel=tuple(kv_formats), moe_dispatch=top["moe_dispatch"],
                   kernels=kernels, host=host, collectives=collectives, max_num_seqs=int(sv["max_num_seqs"]),
                   max_batched_tokens=int(sv["max_batched_tokens"]), admission=sv["admission"],
                   gpu_utilization=float(sv["gpu_utilization"]), chunked_prefill=bool(sv["chunked_prefill"]),
                   serve_source=sv["source"])


def runtime_dir() -> Path:
    return resources.conf_dir() / "runtime"


def available_runtimes() -> list[str]:
    d = runtime_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


_CACHE: dict[str, Runtime] = {}


def runtime_by_name(name: str) -> Runtime:
    """Load ``conf/runtime/<name>.yaml``; an unknown name lists the valid ones."""
    if name not in _CACHE:
        names = available_runtimes()
        if name not in names:
            raise ConfigError(f"runtime {name!r} is not a runtime profile; choose one of {', '.join(names)} "
                              f"(runtime=<name>; conf/runtime/*.yaml).")
        path = runtime_dir() / f"{name}.yaml"
        _CACHE[name] = load_runtime(OmegaConf.to_container(OmegaConf.load(path)), str(path))
    return _CACHE[name]
