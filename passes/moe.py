"""MoE routing: set the token distribution over experts on every ``moe`` annotation.

The importer (compiler/frontends/moe.py) builds the expert-structured IR with uniform routing. This pass
replaces the distribution by the configured one — ``moe.routing``:

- ``uniform``: every expert receives k/E of the tokens;
- ``zipf``: expert i (0-based) receives a share ∝ 1/(i+1)^``moe.skew`` — a hot-expert skew;
- a list of E numbers: a measured routing histogram (token counts or shares; normalized here).

The cost model then charges each expert k·p_e·T rows and reads its weights with probability
1 − (1 − k·p_e)^T (compiler/perf/moe.py).

``moe.dispatch`` sets how the routed experts run (the annotation's ``form``): ``grouped`` (one
grouped GEMM per projection over every routed row — vLLM's fused_moe, TensorRT-LLM, SGLang,
torch._grouped_mm) or ``loop`` (the layer's row-wise ops once per touched expert — transformers'
eager loop).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from compiler.ir import annotations as ann
from compiler.errors import ConfigError
from compiler.ir import Graph
from passes.base import Pass, PassResult


def routing_fields(routing: Any, skew: float, experts: int) -> dict[str, Any]:
    """MoERouting fields for a ``moe.routing`` setting (validated)."""
    if routing in (None, "uniform"):
        return {"distribution": "uniform", "skew": 0.0, "probabilities": None}
    if routing == "zipf":
        try:
            s = float(skew)
        except (TypeError, ValueError):
            s = -1.0
        if s <= 0:
            raise ConfigError(f"moe.routing=zipf needs moe.skew > 0 (the Zipf exponent), got {skew!r}; "
                              f"e.g. moe.skew=1.0.")
        return {"distribution": "zipf", "skew": s, "probabilities": None}
    if isinstance(routing, Sequence) and not isinstance(routing, str):
        try:
            vals = [float(x) for x in routing]
        except (TypeError, ValueError):
            vals = []
        if len(vals) != experts or min(vals, default=-1) < 0 or sum(vals) <= 0:
            raise ConfigError(f"moe.routing has {len(list(routing))} entries but the model has {experts} experts "
                              f"(or a negative / all-zero entry): give one non-negative token count or share "
                              f"per expert, e.g. moe.routing=[{','.join(['1'] * min(experts, 4))}{',…' if experts > 4 else ''}].")
        tot = sum(vals)
        return {"distribution": "explicit", "skew": 0.0, "probabilities": tuple(v / tot for v in vals)}
    raise ConfigError(f"moe.routing={routing!r} is not uniform, zipf or a list of per-expert token counts; "
                      f"set moe.routing=uniform, moe.routing=zipf (with moe.skew) or moe.routing=[...].")


def apply_routing(g: Graph, moe_cfg: Mapping | None, shared_experts: int | None = None) -> dict[str, int]:
    """Set ``moe.routing`` (and the model's shared-expert count, when given: the driver reads it
    from the model's config) on every ``moe`` annotation."""
    moe_cfg = dict(moe_cfg or {})
    nodes = [n for n in g if ann.get(n, "moe") is not None]
    if not nodes:
        if moe_cfg.get("routing") not in (None, "uniform"):
            raise ConfigError(f"moe.routing={moe_cfg.get('routing')!r} is set but the model has no MoE layers; "
                              f"remove it.")
        return {}
    experts = ann.get(nodes[0], "moe").experts
    fields = routing_fields(moe_cfg.get("routing"), moe_cfg.get("skew", 0.0), experts)
    form = moe_cfg.get("dispatch") or "grouped"
    if form not in ("grouped", "loop"):
        raise ConfigError(f"moe.dispatch={form!r} is not grouped or loop; moe.dispatch=grouped costs one grouped GEMM "
                          f"per projection (fused MoE kernels), moe.dispatch=loop a per-expert loop.")
    fields["form"] = form
    if shared_experts is not None:
        fields["shared_experts"] = int(shared_experts)
    for n in nodes:
        ann.set(n, "moe", dataclasses.replace(ann.get(n, "moe"), **fields))
    return {"moe_ops": len(nodes), "experts": experts}


class MoERoutingPass(Pass):
    """Pipeline form: ``{name: moe_routing, routing: zipf, skew: 1.2, dispatch: grouped}`` (the driver adds it for
    ``moe.*`` with ``shared_experts`` from the model's config)."""

    name = "moe_routing"

    def check_params(self) -> None:
        bad = set(self.params) - {"routing", "skew", "shared_experts", "dispatch"}
        if bad:
            raise ConfigError(f"pass 'moe_routing' takes routing, skew, dispatch and shared_experts, got {sorted(bad)}.")

    def run(self, graph: Graph) -> PassResult:
        p = dict(self.params)
        stats = apply_routing(graph, p, p.pop("shared_experts", None))
        return PassResult(graph, bool(stats), stats)
