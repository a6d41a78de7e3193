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
import sympy

from compiler.analysis.context import RunContext
from compiler.errors import ConfigError
from compiler.ir import B, S, op_layers
from compiler.ir.ops import get


# ------------------------------------------------------------------------------------------------
# depth distributions

def depth_distribution(n_layers: int, exits: Sequence[int], probs: Sequence[float]) -> np.ndarray:
    """P(D = d) for d = 1..n_layers (index d-1) with exits after layers ``exits`` (0-based)
    taken with conditional probabilities ``probs``."""
    pmf = np.zeros(n_layers)
    alive = 1.0
    for layer, h in sorted(zip(exits, probs)):
        if not 0 <= layer < n_layers - 1:
            raise ConfigError(f"early_exit.layers: an exit after layer {layer} is outside 0..{n_layers - 2} "
                              f"(0-based; the model has {n_layers} layers)")
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

def layer_masks(g, cm) -> tuple[np.ndarray, int]:
    """Position (-1 … L) of each cost item of ``cm`` (a CostModel over ``g``)."""
    pos, n_layers = op_layers(g)
    return np.array([pos.get(it.node or it.name, -1) for it in cm.items]), n_layers


# ------------------------------------------------------------------------------------------------
# configuration and calibration

KV_POLICIES = ("propagate", "recompute")


def exit_config(cfg, n_layers: int) -> dict | None:
    """The validated ``early_exit`` block for a model of ``n_layers`` layers (None when off)."""
    ec = dict(cfg.get("early_exit") or {})
    mode = str(ec.get("mode", "none"))
    if mode in ("none", "None", "null"):
        return None
    if mode != "layers":
        raise ConfigError(f"early_exit.mode={mode!r} is not none or layers; choose early_exit=none or early_exit=layers.")
    layers = ec.get("layers")
    if layers is None:
        layers = sorted({max(0, n_layers * q // 4 - 1) for q in (1, 2, 3)} - {n_layers - 1})
    try:
        layers = sorted(int(x) for x in layers)
    except (TypeError, ValueError):
        raise ConfigError(f"early_exit.layers={ec.get('layers')!r} is not a list of layer indices, e.g. [3, 7].") from None
    if not layers or len(set(layers)) != len(layers) or layers[0] < 0 or layers[-1] >= n_layers - 1:
        raise ConfigError(f"early_exit.layers={layers}: give distinct exits after layers 0..{n_layers - 2} "
                          f"(0-based; the model has {n_layers} layers).")
    probs, thr = ec.get("probabilities"), ec.get("threshold")
    if (probs is None) == (thr is None):
        raise ConfigError("early_exit=layers needs exactly one of early_exit.probabilities (the conditional "
                          "probability of leaving at each exit, e.g. [0.2, 0.3]) or early_exit.threshold (a "
                          "softmax-margin confidence threshold calibrated on evaluation text, e.g. 0.9).")
    if probs is not None:
        try:
            probs = [float(p) for p in probs]
        except (TypeError, ValueError):
            probs = []
        if len(probs) != len(layers) or not all(0.0 <= p <= 1.0 for p in probs):
            raise ConfigError(f"early_exit.probabilities={ec.get('probabilities')!r}: give one probability in [0, 1] "
                              f"per exit ({len(layers)} exits after layers {layers}).")
    if thr is not None:
        try:
            thr = float(thr)
        except (TypeError, ValueError):
            thr = -1.0
        if not 0.0 <= thr <= 1.0:
            raise ConfigError(f"early_exit.threshold={ec.get('threshold')!r} must be a softmax margin in [0, 1].")
    kv = str(ec.get("kv", "propagate"))
    if kv not in KV_POLICIES:
        raise ConfigError(f"early_exit.kv={kv!r} is not one of {', '.join(KV_POLICIES)}.")
    return {"layers": layers, "probabilities": probs, "threshold": thr, "kv": kv,
            "eval_tokens": int(ec.get("eval_tokens", 128))}


# ------------------------------------------------------------------------------------------------
# cost

def _kv_projection_fraction(g, cm) -> np.ndarray:
    """Per cost item: the share of its work that produces K and V (the GEMMs feeding each
    Attention's new K and V; a merged QKV GEMM by output width)."""
    index = {it.name: i for i, it in enumerate(cm.items)}
    frac = np.zeros(len(cm.items))
    for n in g:
        if n.op != "Attention":
            continue
        for t in n.inputs[1:3]:
            if not t:
                continue
            per_tok = sympy.simplify(g.type(t).numel() / (B * S))
            cur = g.producer_of(t)
            for _ in range(12):
                if cur is None:
                    break
                if get(cur.op).cost_class == "gemm":
                    width = g.type(cur.outputs[0]).shape[-1]
                    if cur.name in index and per_tok.is_number and isinstance(width, int):
                        frac[index[cur.name]] = min(1.0, frac[index[cur.name]] + float(per_tok) / width)
                    break
                acts = [x for x in cur.inputs if x and x not in g.params]
                cur = g.producer_of(acts[0]) if acts else None
    return frac


def analyze(rc: RunContext) -> dict | None:
    """The ``early_exit`` report section for a graph with exit heads (None otherwise); with
    ``early_exit.threshold`` the exit probabilities are those the driver calibrated on text
    (``rc.measured["early_exit"]``, compiler/frontends/measure.py)."""
    cfg, wl, g, cm = rc.cfg, rc.workload, rc.graph, rc.cost
    exits = g.meta.get("exit_layers")
    if not exits:
        return None
    pos, n_layers = layer_masks(g, cm)
    ec = exit_config(cfg, n_layers)
    is_exit = np.array([("exit_point" in g.node(it.name).annotations) for it in cm.items])
    exit_layer = np.array([g.node(it.name).annotations["exit_point"].layer if e else -2
                           for it, e in zip(cm.items, is_exit)])
    calib = None
    if ec["threshold"] is not None:
        calib = rc.measured["early_exit"]
        probs = [r["probability"] for r in calib["exits"]]
    else:
        probs = ec["probabilities"]
    pmf = depth_distribution(n_layers, exits, probs)
    kvfrac = _kv_projection_fraction(g, cm)
    b, ctx = wl["batch"], wl["context_len"]
    t = cm.evaluate(b, 1, ctx, "decode")["time"][:, 0]
    pre = t[(pos == -1) & ~is_exit].sum()
    layer_t = np.array([t[(pos == d) & ~is_exit].sum() for d in range(n_layers)])
    head_t = t[(pos == n_layers) & ~is_exit].sum()
    exit_head_t = np.array([t[exit_layer == ell].sum() for ell in exits])
    kv_t = np.array([(t * kvfrac)[(pos == d) & ~is_exit].sum() for d in range(n_layers)])
    full = pre + layer_t.sum() + head_t

    def step(surv):
        run = pre + surv @ layer_t + surv[n_layers - 1] * head_t + exit_head_t @ surv[exits]
        skipped = 1.0 - surv
        kv_fill = skipped @ kv_t if ec["kv"] == "propagate" else 0.0
        deferred = skipped @ layer_t if ec["kv"] == "recompute" else 0.0
        return run, kv_fill, deferred

    surv1, survb = survival(pmf), max_survival(pmf, b)
    run1, kv1, def1 = step(surv1)
    runb, kvb, defb = step(survb)
    tpot = runb + kvb
    out = {
        "layers": n_layers, "exit_layers": list(exits), "kv_policy": ec["kv"],
        "exits": [{"layer": ell, "probability": float(p), "p_reach": float(surv1[ell]),
                   "p_exit": float(pmf[ell]), "head_s": float(h)}
                  for ell, p, h in zip(exits, probs, exit_head_t)],
        "depth_pmf": [float(x) for x in pmf],
        "expected_depth": expected_depth(pmf),
        "expected_max_depth": expected_max_depth(pmf, b), "batch": b,
        "full_tpot_s": float(full), "tpot_s": float(tpot),
        "speedup": float(full / tpot),
        "single_stream_tpot_s": float(run1 + kv1), "single_stream_speedup": float(full / (run1 + kv1)),
        "kv_fill_s": float(kvb),
        "deferred_recompute_s": float(defb),
        "amortized_tpot_s": float(tpot + defb),
        "throughput_speedup": float(full / (tpot + defb)),
        "probability_source": "calibrated" if calib else "config",
    }
    if calib:
        out["calibration"] = calib
        out["agreement"] = calib["agreement"]
        for row, c in zip(out["exits"], calib["exits"]):
            row["agreement"] = c["agreement"]
    else:
        out["agreement"] = None
    return out
