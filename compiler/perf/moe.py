"""Mixture-of-experts cost rules: how routed experts scale an op's rows, fixed costs and weight
reads (the ``moe`` annotation, :class:`compiler.ir.annotations.MoERouting`).

For T = B·S tokens in a step and an expert chosen by a fraction p_e of the k·T routing slots
(p_e = 1/E uniform)::

    rows_e      = k·p_e·T                         (FLOPs and activation bytes scale with it)
    P(touched)  = 1 − (1 − k·p_e)^T               (its weights are read once iff touched)
    distinct    = Σ_e P(touched) = E·(1 − (1 − k/E)^T)  uniform

and the per-kernel fixed costs (launch, ramp) of an expert's ops are paid only when it is touched
(a dispatch that loops over the hit experts; what the H200 measurement in
``compiler/perf/calibration/data/h200_kernels.json`` ran). Capacity and memory hold all experts' weights.

A grouped expert GEMM (``MoEMatMul``: every routed row of one projection in one kernel, what fused
MoE kernels run) reads the distinct experts' weights — a fraction distinct/E of its stacked
weight — and pays one kernel's fixed cost (``dispatch=grouped``) or one per touched expert
(``dispatch=loop``: the per-expert loop, costed on the same op) — :func:`grouped_factors`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import sympy


def routing(route) -> np.ndarray:
    """p_e, the share of routing slots each expert receives (sums to 1)."""
    E = route.experts
    if route.probabilities is not None:
        return np.asarray(route.probabilities, dtype=float)
    if route.distribution == "zipf" and route.skew:
        w = 1.0 / np.arange(1, E + 1) ** float(route.skew)
        return w / w.sum()
    return np.full(E, 1.0 / E)


def _share(route) -> sympy.Expr:
    """k·p_e as an exact sympy number (capped at 1: an expert cannot take a slot twice per token)."""
    if route.distribution == "uniform" and route.probabilities is None:
        return sympy.Rational(route.top_k, route.experts)
    p = float(routing(route)[route.expert])
    return sympy.Float(min(1.0, route.top_k * p), 15)


def expert_factors(route, tokens) -> tuple[Any, Any]:
    """(rows factor, fixed-cost multiplier) of an op of expert ``route.expert`` in a step of
    ``tokens`` tokens: the IR's per-expert shapes hold k·T/E rows, so rows scale by E·p_e; an
    expert's compute ops (and weight reads) happen with its touched probability; its dispatch
    bookkeeping ops share one kernel's fixed cost with the other experts' (1/E each)."""
    share = _share(route)
    rows = share * route.experts / route.top_k
    if getattr(route, "dispatch", False):
        return rows, sympy.Rational(1, route.experts)
    touched = 1 - (1 - share) ** tokens
    return rows, touched


def distinct_experts(E: int, k: int, tokens, probabilities: Sequence[float] | None = None):
    """Expected number of distinct experts T tokens touch: E·(1 − (1 − k/E)^T) uniform, or
    Σ_e 1 − (1 − k·p_e)^T with a routing histogram p."""
    t = np.asarray(tokens, dtype=float)
    if probabilities is None:
        return E * (1 - (1 - k / E) ** t)
    p = np.minimum(1.0, k * np.asarray(probabilities, dtype=float))
    return np.sum(1 - (1 - p[:, None]) ** np.atleast_1d(t)[None, :], axis=0).reshape(t.shape)


def touched_total(route, tokens) -> Any:
    """Σ_e P(expert e touched) in a step of ``tokens`` tokens, as a sympy expression: the
    expected distinct experts, E·(1 − (1 − k/E)^T) under uniform routing."""
    E, k = route.experts, route.top_k
    if route.distribution == "uniform" and route.probabilities is None:
        return E * (1 - (1 - sympy.Rational(k, E)) ** tokens)
    p = np.minimum(1.0, k * routing(route))
    return sum(1 - (1 - sympy.Float(float(pe), 15)) ** tokens for pe in p)


#: how routed experts are dispatched: one grouped GEMM per projection, or a loop over the experts
DISPATCH = ("grouped", "loop")


def grouped_factors(route, tokens) -> tuple[Any, Any]:
    """(weight-bytes factor, fixed-cost multiplier) of a grouped expert GEMM (``MoEMatMul``) in a
    step of ``tokens`` tokens: the distinct experts' share of the stacked weight, and one kernel
    (``form=grouped``) or one kernel per touched expert (``form=loop``)."""
    distinct = touched_total(route, tokens)
    return distinct / route.experts, layer_fixed(route, tokens)


def layer_fixed(route, tokens) -> Any:
    """Fixed-cost multiplier of an MoE layer's row-wise op: 1 (grouped: one kernel for all routed
    rows) or the expected distinct experts (loop: once per touched expert)."""
    return touched_total(route, tokens) if route.form == "loop" else sympy.Integer(1)
