"""Speculative decoding and multi-token steps: the verify phase, chunked prefill, the expected speed-up.

A draft model proposes ``γ`` tokens autoregressively; the target verifies them in one forward pass
over ``γ + 1`` new tokens against its KV cache (S = γ+1, P = context) — the same graph and cost rules
as prefill (S = prompt, P = 0) and decode (S = 1, P = context). Chunked prefill is the same machinery
with S = chunk, P = offset.

With a per-token acceptance rate α (Leviathan et al. 2023, "Fast Inference from Transformers via
Speculative Decoding", eq. 1), a step yields on average

    E[tokens] = (1 − α^(γ+1)) / (1 − α)        (γ + 1 when α = 1)

tokens per sequence, and costs ``γ`` draft decode steps plus one target verify step, so

    TPOT_spec = (γ·t_draft + t_verify) / E[tokens],   speed-up = TPOT_target / TPOT_spec.

α is given (``speculative.acceptance``) or measured (``speculative.acceptance=measured``) on
evaluation tokens as α = E_position[Σ_x min(p(x), q(x))] between the target's next-token
distribution p and the draft's q (Leviathan et al. §3.1: the expected acceptance of speculative
sampling). ``speculative.draft_model=self`` is layer-skip self-speculation: the draft is the
target's first ``speculative.draft_layers`` layers plus the shared final norm and LM head (an early
exit); it costs the ops of those layers and shares the weights and (for those layers) the KV cache.

Memory: a separate draft adds its weights and its own KV cache (``kv_bytes_per_token`` of the draft
× batch × tokens); ``capacity.max_batch`` of the speculative section accounts for both.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from compiler.analysis.context import RunContext
from compiler.analysis.early_exit import layer_masks
from compiler.errors import ConfigError
from compiler.perf.cost import CostModel
from compiler.perf.memory import kv_bytes_per_token, weights_bytes

#: S at or below which a step's attention is priced with the decode attention class (calibrated on
#: single-query steps); multi-token steps (verify, chunked prefill) use the prefill class, whose
#: calibration covers many query rows — on the H200 verify measurement (T = 2…256 against 4096
#: cached tokens) that is the better fit (compiler/perf/calibration/data/h200_kernels.json).
DECODE_LIKE_MAX_S = 1
DEFAULT_GAMMAS = tuple(range(1, 17))


def attention_class(s: int) -> str:
    """The attention efficiency class of a step with ``s`` new tokens."""
    return "decode" if int(s) <= DECODE_LIKE_MAX_S else "prefill"


def expected_tokens_per_step(alpha, gamma):
    """Leviathan et al. eq. 1: expected tokens a speculative step yields (accepted drafts + the
    target's own bonus/correction token). Works elementwise on arrays; α = 1 gives γ + 1."""
    a = np.asarray(alpha, dtype=float)
    g = np.asarray(gamma, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(np.isclose(a, 1.0), g + 1, (1 - a ** (g + 1)) / (1 - a))
    return out if out.ndim else float(out)


def step_time(cm, b: int, s: int, p: int) -> float:
    """Time of one forward pass over ``s`` new tokens against ``p`` cached ones."""
    return float(cm.phase_time(b, s, p, attention_class(s))[0])


def chunked_prefill(cm, b: int, prompt: int, chunk: int) -> dict[str, Any]:
    """Prefill in chunks of ``chunk`` tokens: chunk i is a step with S = its length, P = i·chunk."""
    starts = np.arange(0, prompt, chunk)
    lens = np.minimum(chunk, prompt - starts)
    times = [step_time(cm, b, int(s), int(p)) for s, p in zip(lens, starts)]
    return {"chunk": int(chunk), "chunks": len(times), "time_s": float(sum(times)),
            "chunk_times_s": times, "offsets": [int(x) for x in starts]}


# ------------------------------------------------------------------------------------------------
# configuration

def spec_config(cfg: Mapping) -> dict[str, Any] | None:
    """The validated ``speculative`` block, or None when speculative decoding is off."""
    sc = dict(cfg.get("speculative") or {})
    draft = sc.get("draft_model")
    if draft in (None, "", "none", "null", False):
        return None
    try:
        gamma = int(sc.get("gamma", 4))
    except (TypeError, ValueError):
        gamma = -1
    if gamma < 1 or str(gamma) != str(sc.get("gamma", 4)).strip():
        raise ConfigError(f"speculative.gamma={sc.get('gamma')!r} is not a whole number ≥ 1; it is how many "
                          f"tokens the draft proposes per step, e.g. speculative.gamma=4.")
    acc = sc.get("acceptance", 0.7)
    if isinstance(acc, str) and acc != "measured":
        try:
            acc = float(acc)
        except ValueError:
            acc = None
    if acc is None or (acc != "measured" and not 0.0 <= float(acc) <= 1.0):
        raise ConfigError(f"speculative.acceptance={sc.get('acceptance')!r} is neither a rate in [0, 1] nor "
                          f"'measured'; set e.g. speculative.acceptance=0.7, or speculative.acceptance=measured "
                          f"to measure it between the draft and the target on evaluation text.")
    out = {"draft_model": str(draft), "gamma": gamma, "acceptance": acc,
           "draft_layers": sc.get("draft_layers"), "eval_tokens": int(sc.get("eval_tokens", 128)),
           "gammas": [int(x) for x in (sc.get("gammas") or DEFAULT_GAMMAS)]}
    return out


# ------------------------------------------------------------------------------------------------
# the report section

def self_draft_layers(sc: Mapping, n_target_layers: int) -> int:
    """Layers the layer-skip self-draft runs (``speculative.draft_layers``; null: a quarter)."""
    dl = sc["draft_layers"]
    dl = max(1, n_target_layers // 4) if dl is None else int(dl)
    if not 1 <= dl < max(n_target_layers, 2):
        raise ConfigError(f"speculative.draft_layers={dl} must be between 1 and {n_target_layers - 1} "
                          f"(the target has {n_target_layers} layers) for draft_model=self.")
    return dl


def _self_draft_cost(cm, graph, n_layers: int):
    """A cost evaluator over the layer-skip draft's ops: everything before the first layer, layers
    < n_layers, and the head (final norm + LM head) — compiler.ir.op_layers."""
    pos, total = layer_masks(graph, cm)
    keep = (pos < n_layers) | (pos == total)

    class _Masked:
        def phase_time(self, b, s, p, phase):
            t = cm.evaluate(b, s, p, phase)["time"]
            return t[keep].sum(axis=0)
    return _Masked()


def analyze(rc: RunContext, base: Mapping) -> dict[str, Any] | None:
    """The ``speculative`` report section (None when off). ``base``: the report's memory/latency
    figures of the target alone (tpot_s, weights_bytes, kv_bytes_per_token, tokens, reserve). The
    draft (a library model) is the driver's ``rc.draft``; a measured acceptance rate is
    ``rc.measured["acceptance"]`` (compiler/frontends/measure.py)."""
    sc = spec_config(rc.cfg)
    if sc is None:
        return None
    wl, hw, g, cm, sched = rc.workload, rc.hardware, rc.graph, rc.cost, rc.schedule
    b, ctx = wl["batch"], wl["context_len"]
    gamma = sc["gamma"]
    n_target_layers = rc.dims.layers if rc.dims is not None else 0
    if sc["draft_model"] == "self":
        dl = self_draft_layers(sc, n_target_layers)
        draft_cm = _self_draft_cost(cm, g, dl)
        draft_w = draft_kv_tok = 0.0
        draft_desc = {"name": "self", "layers": dl, "shares_weights": True}
    else:
        draft = rc.draft     # imported by the driver, through the same passes as the target
        dg = draft.graph
        draft_cm = CostModel(dg, hw)
        draft_w, draft_kv_tok = weights_bytes(dg), kv_bytes_per_token(dg)
        draft_desc = {"name": draft.config.get("name"), "layers": draft.dims.layers if draft.dims else None,
                      "weights_bytes": draft_w, "kv_bytes_per_token": draft_kv_tok, "shares_weights": False}

    if sc["acceptance"] == "measured":
        meas = rc.measured["acceptance"]
        alpha, alpha_src = meas["alpha"], {"source": "measured", **meas}
    else:
        alpha, alpha_src = float(sc["acceptance"]), {"source": "config"}

    t_target = float(base["tpot_s"])
    t_draft = step_time(draft_cm, b, 1, ctx)
    gammas = sorted(set(sc["gammas"]) | {gamma})
    verify = {gm: step_time(cm, b, gm + 1, ctx) for gm in gammas}
    rows = []
    for gm in gammas:
        e = expected_tokens_per_step(alpha, gm)
        step = gm * t_draft + verify[gm]
        rows.append({"gamma": gm, "expected_tokens_per_step": e, "draft_s": gm * t_draft,
                     "verify_s": verify[gm], "step_s": step, "tpot_s": step / e, "speedup": t_target / (step / e)})
    best = max(rows, key=lambda r: r["speedup"])
    cur = next(r for r in rows if r["gamma"] == gamma)

    # memory and capacity with the draft resident beside the target
    tokens = base["tokens"]
    w_total = base["weights_bytes"] + draft_w
    kv_tok_total = base["kv_bytes_per_token"] + draft_kv_tok
    batches = np.arange(1, 4097)
    act = np.maximum(sched.activation_peak(batches, wl["prompt_len"], 0),
                     sched.activation_peak(batches, gamma + 1, ctx))
    need = w_total + batches * kv_tok_total * tokens + act + base["reserve"]
    fits = need <= hw.memory_bytes
    max_batch = int(batches[fits].max()) if fits.any() else 0
    return {
        "draft": draft_desc, "gamma": gamma, "acceptance": alpha, "acceptance_source": alpha_src,
        "expected_tokens_per_step": cur["expected_tokens_per_step"],
        "draft_step_s": t_draft, "draft_s": cur["draft_s"], "verify_s": cur["verify_s"],
        "step_s": cur["step_s"], "tpot_s": cur["tpot_s"], "target_tpot_s": t_target,
        "speedup": cur["speedup"],
        "verify_over_decode": cur["verify_s"] / t_target,
        "memory": {"draft_weights_bytes": draft_w, "draft_kv_bytes_per_token": draft_kv_tok,
                   "draft_kv_cache_bytes": draft_kv_tok * b * tokens,
                   "total_weights_bytes": w_total, "total_kv_bytes_per_token": kv_tok_total},
        "capacity": {"max_batch": max_batch},
        "best_gamma": best["gamma"], "best_speedup": best["speedup"],
        "gamma_sweep": rows,
    }
