"""The ``moe`` report section: experts, top-k, the distinct experts each phase touches, the
expert weight bytes they read, and the dispatch form (cost rules: :mod:`compiler.perf.moe`).

``dispatch`` compares, per phase, the MoE layers' time with every routed row of a projection in one
grouped GEMM (``grouped``: what fused MoE kernels run) and with the layer's row-wise ops run once
per touched expert (``loop``): the same FLOPs and bytes, one kernel's fixed cost (launch, ramp) vs
one per touched expert — the cost model evaluated twice with those fixed-cost multipliers."""
from __future__ import annotations

from typing import Any

import numpy as np

from compiler.analysis.context import RunContext
from compiler.ir import annotations as ann
from compiler.ir.ops import Classifier
from compiler.perf.moe import distinct_experts, routing


def analyze(rc: RunContext) -> dict[str, Any] | None:
    """``moe`` {experts, top_k, distinct_experts per phase, dispatch, …} for a graph with MoE layers."""
    g, wl, cfg = rc.graph, rc.workload, rc.cfg
    anns = [a for a in (ann.get(n, "moe") for n in g) if a is not None]
    if not anns:
        return None
    a = anns[0]
    probs = None if (a.distribution == "uniform" and a.probabilities is None) else routing(a)
    b, prompt = wl["batch"], wl["prompt_len"]
    phases = {"prefill": b * prompt, "decode": b}
    sc = (cfg or {}).get("speculative") or {}
    if sc.get("draft_model") not in (None, "", "none"):
        phases["verify"] = b * (int(sc.get("gamma", 4)) + 1)
    distinct = {ph: float(distinct_experts(a.experts, a.top_k, t, probs)) for ph, t in phases.items()}
    expert_w = sum(float(_param_bytes(g, p)) for p in g.params if _is_expert_param(g, p))
    layers = len({ann.get(n, "layer") for n in g if ann.get(n, "moe") is not None})
    shared = a.shared_experts
    out = {"experts": a.experts, "top_k": a.top_k, "shared_experts": shared,
           "layers": layers, "expert_params": a.expert_params,
           "routing": {"distribution": a.distribution, "skew": a.skew,
                       "probabilities": list(probs) if probs is not None else None},
           "tokens_per_step": phases, "distinct_experts": distinct,
           "expert_weights_bytes": expert_w,
           "expert_weights_read_bytes": {ph: expert_w * d / a.experts for ph, d in distinct.items()}}
    if rc.cost is not None and any(n.op == "MoEMatMul" for n in g):
        out["dispatch"] = dispatch_section(rc, a, probs)
    return out


def dispatch_section(rc: RunContext, route, probs) -> dict[str, Any]:
    """Per phase, the MoE layers' time under each dispatch form (module doc)."""
    g, cm, wl = rc.graph, rc.cost, rc.workload
    moe_item = np.array([_layer_row_op(g, it.node or it.name) for it in cm.items], dtype=bool)
    points = {"prefill": (wl["batch"], wl["prompt_len"], 0), "decode": (wl["batch"], 1, wl["context_len"])}
    out: dict[str, Any] = {"form": route.form, "kernel": {"grouped": "one grouped GEMM per projection over "
                                                                     "all routed rows (fused MoE kernels)",
                                                          "loop": "the layer's row-wise ops once per touched "
                                                                  "expert (a per-expert loop)"}[route.form]}
    for phase, (b, s, p) in points.items():
        d = float(distinct_experts(route.experts, route.top_k, b * s, probs))
        cur = cm.evaluate(b, s, p, phase)["time"][:, 0]
        # the other form: fixed costs × distinct (grouped → loop) or ÷ distinct (loop → grouped)
        scale = np.where(moe_item, d if route.form == "grouped" else 1.0 / max(d, 1e-12), 1.0)[:, None]
        other = cm.evaluate(b, s, p, phase, fixed_scale=scale)["time"][:, 0]
        t_cur, t_other = float(cur[moe_item].sum()), float(other[moe_item].sum())
        grouped, loop = (t_cur, t_other) if route.form == "grouped" else (t_other, t_cur)
        out[phase] = {"grouped_s": grouped, "loop_s": loop, "loop_vs_grouped": loop / grouped if grouped else None,
                      "distinct_experts": d}
    return out


def _layer_row_op(g, name: str) -> bool:
    """An op of an MoE layer that runs per routed row (not bookkeeping of the per-expert import)."""
    try:
        r = ann.get(g.node(name), "moe")
    except KeyError:
        return False
    return r is not None and r.expert is None and not r.dispatch


def _is_expert_param(g, p: str) -> bool:
    return any(n.op == "MoEMatMul" or getattr(ann.get(n, "moe"), "expert", None) is not None
               for n, _ in g.consumers(p))


def _param_bytes(g, p):
    return Classifier(g).weight_bytes(p)
