"""Early exit: depth distributions, their expected cost, and the layer structure both need.

A token leaves after decoder layer ℓ_j (0-based; an exit "after layer ℓ" has run ℓ+1 layers) with
conditional probability h_j (the probability it exits there given it reached it); the last layer
always ends it. Its depth D (layers run) then has

    P(D > d) = Π_{j: ℓ_j + 1 ≤ d} (1 − h_j)                 (survival)
    E[D]     = Σ_{d=0}^{L−1} P(D > d)                       (survival-weighted sum of layer costs)

Per token the cost is Σ_d P(D > d)·layer_cost(d) plus, for each exit head j, P(D > ℓ_j)·head_cost
(the head runs on every token that reaches it). A batched decode step runs until its deepest
token leaves, so with b tokens (independent) the step's depth is M = max of b draws:

    P(M ≤ d) = P(D ≤ d)^b,   E[M] = Σ_d (1 − P(D ≤ d)^b)

— not E[D]: at batch 64 a 30 % chance per token of running the full depth makes almost every step
run it. Exit heads run on the step's whole batch while any token is active: P(M > ℓ_j).

Skipped layers' K/V: later tokens attend to every layer's K/V of earlier tokens, so the layers a
token skipped must still produce its K and V. Two policies (``early_exit.kv``):
- ``propagate`` (CALM, Schuster et al. 2022): the exiting hidden state is copied to the skipped
  layers and only their K/V projections run on it — cost per skipped layer = its K and V GEMMs;
- ``recompute``: the skipped layers run in full later (batched with the next token's step): the
  saving is only the latency of the current step, not the work — cost per skipped layer = the
  whole layer, paid on a later step (throughput unchanged; TPOT of a single stream improves).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


# ------------------------------------------------------------------------------------------------
# depth distributions

def depth_distribution(n_layers: int, exits: Sequence[int], probs: Sequence[float]) -> np.ndarray:
    """P(D = d) for d = 1..n_layers (index d-1) with exits after layers ``exits`` (0-based)
    taken with conditional probabilities ``probs``."""
    pmf = np.zeros(n_layers)
    alive = 1.0
    for layer, h in sorted(zip(exits, probs)):
        if not 0 <= layer < n_layers - 1:
            raise ValueError(f"exit after layer {layer} is outside 0..{n_layers - 2}")
        pmf[layer] += alive * float(h)
        alive *= 1.0 - float(h)
    pmf[-1] += alive
    return pmf


def survival(pmf: np.ndarray) -> np.ndarray:
    """P(D > d) for d = 0..L-1: the probability that layer d (0-based) runs."""
    cdf = np.cumsum(pmf)
    return np.concatenate([[1.0], 1.0 - cdf[:-1]])


def expected_depth(pmf: np.ndarray) -> float:
    return float(survival(pmf).sum())


def max_survival(pmf: np.ndarray, batch: int) -> np.ndarray:
    """P(M > d) for the max depth M over ``batch`` independent tokens: 1 − P(D ≤ d)^batch."""
    cdf_before = np.concatenate([[0.0], np.cumsum(pmf)[:-1]])   # P(D ≤ d) for d = 0..L-1
    return 1.0 - np.clip(cdf_before, 0.0, 1.0) ** int(batch)


def expected_max_depth(pmf: np.ndarray, batch: int) -> float:
    return float(max_survival(pmf, batch).sum())


# ------------------------------------------------------------------------------------------------
# which ops belong to which layer

def op_layers(g) -> tuple[dict[str, int], int]:
    """Each op's layer position: -1 before the first layer (embedding, rotary tables), 0..L-1 the
    decoder layers, L the head after the last layer (final norm, LM head). Ops the importer left
    without a ``layer`` annotation (fused ops spanning two layers, e.g. a residual add + the next
    norm) take the latest layer among their producers. Returns (name → position, L)."""
    ann = {n.name: n.annotations.get("layer") for n in g}
    known = [v for v in ann.values() if v is not None]
    n_layers = max(known) + 1 if known else 0
    pos: dict[str, int] = {}
    for n in g.topo_order():
        if ann[n.name] is not None:
            pos[n.name] = int(ann[n.name])
            continue
        preds = [pos[p] for p in g.nx.predecessors(n.name) if p in pos]
        inferred = max(preds, default=-1)
        pos[n.name] = n_layers if (inferred == n_layers - 1 and n_layers) else inferred
    return pos, n_layers


def layer_masks(g, cm) -> tuple[np.ndarray, int]:
    """Position (-1 … L) of each cost item of ``cm`` (a CostModel over ``g``)."""
    pos, n_layers = op_layers(g)
    return np.array([pos.get(it.name, -1) for it in cm.items]), n_layers
