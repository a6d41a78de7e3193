"""The ``runtime`` section: which engine the prediction describes, and how far it is from the bound.

report.json ``runtime`` names the profile (``runtime=``, :mod:`compiler.perf.runtime`) with every
kernel it prices differently from the hardware's classes (kernel, model, source, error band), its
host overheads and scheduler defaults, and ``runtime.roofline``: the same graph at the same
workload under the ``ideal`` profile (datasheet peak FLOP/s and bandwidth alone, no launch or
host time) beside the engine's figures, per phase —

    fraction = ideal time / engine time      ("this engine reaches N % of the roofline bound")

and the gap (engine − ideal) split by where it goes: GEMMs, attention, MoE experts, vector kernels
(norms, activations, copies) and host time. Under a parallel plan the comparison is per device
(one device's phases, collectives excluded).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from compiler.analysis.context import RunContext
from compiler.perf.cost import CostModel
from compiler.perf.runtime import Runtime, runtime_by_name

IDEAL = "ideal"
#: gap parts: op family prefix -> part name
_PARTS = (("gemm", "gemm"), ("moe", "moe_experts"), ("attention", "attention"),
          ("elementwise", "vector"), ("reduction", "vector"), ("copy", "vector"))


def _part(family: str) -> str:
    for pre, part in _PARTS:
        if family.startswith(pre):
            return part
    return "vector"


def phase_gap(cm: CostModel, ideal: CostModel, b: int, s: int, p: int, phase: str) -> dict[str, Any]:
    """Engine vs ideal time of one step and the gap by part (seconds)."""
    e = cm.evaluate(b, s, p, phase)["time"][:, 0]
    i = ideal.evaluate(b, s, p, phase)["time"][:, 0]
    host = float(cm.host_time(b, s)) if cm.runtime is not None else 0.0
    engine = float(e.sum()) + host
    bound = float(i.sum())
    gap: dict[str, float] = {}
    for it, te, ti in zip(cm.items, e, i):
        k = _part(it.family)
        gap[k] = gap.get(k, 0.0) + float(te - ti)
    gap["host"] = host
    return {"point": {"B": b, "S": s, "P": p}, "time_s": engine, "bound_s": bound,
            "fraction_of_bound": bound / engine if engine > 0 else None,
            "gap_s": {k: gap[k] for k in sorted(gap)}}


def section(rc: RunContext, generative: bool) -> dict[str, Any] | None:
    """The report's ``runtime`` block (see the module doc); None without a profile."""
    rt: Runtime | None = rc.runtime
    if rt is None:
        return None
    out = rt.describe()
    wl = rc.workload
    b, prompt, ctx = wl["batch"], wl["prompt_len"], wl["context_len"]
    ideal = CostModel(rc.graph, rc.hardware, runtime_by_name(IDEAL)) if rt.name != IDEAL else rc.cost
    roof: dict[str, Any] = {"runtime": IDEAL,
                            "what": "the same graph and workload at datasheet peak FLOP/s and bandwidth "
                                    "(no efficiency below 1, no launch or host time)"}
    roof["prefill"] = phase_gap(rc.cost, ideal, b, prompt, 0, "prefill")
    if generative:
        roof["decode"] = phase_gap(rc.cost, ideal, b, 1, ctx, "decode")
    if rt.request_s:
        roof["request_overhead_s"] = rt.request_s
    out["roofline"] = roof
    return out


def headline(sec: Mapping) -> str | None:
    """"This engine reaches N % of the roofline bound …" for the report's text."""
    roof = (sec or {}).get("roofline") or {}
    ph = roof.get("decode") or roof.get("prefill")
    if not ph or not ph.get("fraction_of_bound"):
        return None
    gap = {k: v for k, v in ph["gap_s"].items() if v > 0}
    total = sum(gap.values()) or 1.0
    parts = sorted(gap.items(), key=lambda kv: -kv[1])[:3]
    words = ", ".join(f"{k.replace('_', ' ')} {100 * v / total:.0f} %" for k, v in parts)
    return (f"{sec['name']} reaches {100 * ph['fraction_of_bound']:.0f} % of the roofline bound "
            f"({'decode' if roof.get('decode') else 'prefill'} step); the gap is {words}")


__all__ = ["section", "phase_gap", "headline", "IDEAL"]
