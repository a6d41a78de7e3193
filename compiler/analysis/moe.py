"""The ``moe`` report section: experts, top-k, the distinct experts each phase touches and the
expert weight bytes they read (cost rules: :mod:`compiler.perf.moe`)."""
from __future__ import annotations

from typing import Any

from compiler.analysis.context import RunContext
from compiler.ir import annotations as ann
from compiler.ir.ops import Classifier
from compiler.perf.moe import distinct_experts, routing


def analyze(rc: RunContext) -> dict[str, Any] | None:
    """``moe`` {experts, top_k, distinct_experts per phase, …} for a graph with MoE layers."""
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
    return {"experts": a.experts, "top_k": a.top_k, "shared_experts": shared,
            "layers": layers, "expert_params": a.expert_params,
            "routing": {"distribution": a.distribution, "skew": a.skew,
                        "probabilities": list(probs) if probs is not None else None},
            "tokens_per_step": phases, "distinct_experts": distinct,
            "expert_weights_bytes": expert_w,
            "expert_weights_read_bytes": {ph: expert_w * d / a.experts for ph, d in distinct.items()}}


def _is_expert_param(g, p: str) -> bool:
    return any(getattr(ann.get(n, "moe"), "expert", None) is not None for n, _ in g.consumers(p))


def _param_bytes(g, p):
    return Classifier(g).weight_bytes(p)
