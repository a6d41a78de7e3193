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

``speculative.draft_model=mtp`` drafts with the model's own multi-token-prediction module
(DeepSeek-V3, ``num_nextn_predict_layers``; DeepSeek-AI, "DeepSeek-V3 Technical Report",
arXiv:2412.19437, §2.2): per drafted token the module RMS-normalizes the last hidden state and the
embedding of the token just predicted, concatenates them, projects 2H → H (``eh_proj``), runs one
decoder layer of the model's own structure (the last layer's kind: MLA + MoE for V3) and the shared
final norm and LM head. Its step is costed from the target's graph (that layer's and the head's ops,
plus the projection and two norms), its weights are that layer's plus the projection (embedding and
head are shared), its KV cache one layer's. Acceptance: the report's §5.4.3 measures 85–90 % for the
second token; ``speculative.acceptance`` left at its default (or ``published``) takes 0.85 for MTP.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from compiler.analysis.context import RunContext
from compiler.analysis.early_exit import layer_masks
from compiler.errors import ConfigError
from compiler.ir.ops import Classifier
from compiler.perf import efficiency as eff
from compiler.perf.cost import CostModel
from compiler.perf.memory import kv_bytes_per_token, kv_input_bytes_per_token, weights_bytes

#: S at or below which a step's attention is priced with the decode attention class (calibrated on
#: single-query steps); multi-token steps (verify, chunked prefill) use the prefill class, whose
#: calibration covers many query rows — on the H200 verify measurement (T = 2…256 against 4096
#: cached tokens) that is the better fit (compiler/perf/calibration/data/h200_kernels.json).
DECODE_LIKE_MAX_S = 1
DEFAULT_GAMMAS = tuple(range(1, 17))
#: ``speculative.acceptance``'s default (compiler/driver/config.py SpeculativeConfig)
DEFAULT_ACCEPTANCE = 0.7


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
    if isinstance(acc, str) and acc not in ("measured", "published"):
        try:
            acc = float(acc)
        except ValueError:
            acc = None
    if acc is None or (acc not in ("measured", "published") and not 0.0 <= float(acc) <= 1.0):
        raise ConfigError(f"speculative.acceptance={sc.get('acceptance')!r} is neither a rate in [0, 1] nor "
                          f"'measured'; set e.g. speculative.acceptance=0.7, or speculative.acceptance=measured "
                          f"to measure it between the draft and the target on evaluation text.")
    if acc == "published" and str(draft) != "mtp":
        raise ConfigError("speculative.acceptance=published is the multi-token-prediction module's published "
                          "rate (speculative.draft_model=mtp); give a rate in [0, 1] or measured for other drafts.")
    out = {"draft_model": str(draft), "gamma": gamma, "acceptance": acc,
           "draft_layers": sc.get("draft_layers"), "eval_tokens": int(sc.get("eval_tokens", 128)),
           "gammas": [int(x) for x in (sc.get("gammas") or DEFAULT_GAMMAS)]}
    return out


# ------------------------------------------------------------------------------------------------
# the report section

def _is_default_acceptance(cfg: Mapping) -> bool:
    """``speculative.acceptance`` left at the schema's default (then MTP takes its published rate)."""
    acc = (cfg.get("speculative") or {}).get("acceptance", DEFAULT_ACCEPTANCE)
    return not isinstance(acc, str) and float(acc) == DEFAULT_ACCEPTANCE


def self_draft_layers(sc: Mapping, n_target_layers: int) -> int:
    """Layers the layer-skip self-draft runs (``speculative.draft_layers``; null: a quarter)."""
    dl = sc["draft_layers"]
    dl = max(1, n_target_layers // 4) if dl is None else int(dl)
    if not 1 <= dl < max(n_target_layers, 2):
        raise ConfigError(f"speculative.draft_layers={dl} must be between 1 and {n_target_layers - 1} "
                          f"(the target has {n_target_layers} layers) for draft_model=self.")
    return dl


#: DeepSeek-V3 Technical Report §5.4.3: "the acceptance rate of the second token prediction
#: ranges between 85% and 90%" — the low end
MTP_ACCEPTANCE = 0.85
MTP_SOURCE = "DeepSeek-V3 Technical Report (arXiv:2412.19437) §5.4.3: 85-90 % acceptance of the second token"


def mtp_draft(cm, graph, dims) -> tuple[Any, dict[str, Any]]:
    """The multi-token-prediction draft (module doc): a step evaluator and its description
    (weights, KV bytes per token)."""
    pos, total = layer_masks(graph, cm)
    last = total - 1
    keep = (pos == last) | (pos == total)
    hw = cm.hw
    h = dims.hidden
    item = next((graph.type(t).itemsize for t in graph.params if not graph.params[t].annotations.get("const")), 2)
    gp = hw.efficiency.for_class("gemm")
    red = hw.efficiency.for_class("reduction")
    pk, bw, launch = hw.peak("bf16" if item == 2 else "fp32"), hw.memory_bandwidth, hw.efficiency.launch_overhead_s

    class _MTP:
        def phase_time(self, b, s, p, phase):
            t = cm.evaluate(b, s, p, phase)["time"][keep].sum(axis=0)
            rows = np.asarray(b, dtype=float) * np.asarray(s, dtype=float)
            proj = eff.op_time(eff.ClassParams(gp.compute, gp.memory, gp.flops_half, gp.bytes_half),
                               2 * rows * 2 * h * h, (2 * h * h + rows * 3 * h) * item, pk, bw, launch)
            norms = 2 * eff.op_time(eff.ClassParams(red.compute, red.memory, red.flops_half, red.bytes_half),
                                    8 * rows * h, 2 * rows * h * item, hw.peak("fp16"), bw, launch)
            return t + proj + norms

    layer_ops = {n.name for n in graph if n.annotations.get("layer") == last}
    cls = Classifier(graph)
    w = sum(float(cls.weight_bytes(t)) for t in {t for n in graph if n.name in layer_ops for t in n.inputs
                                                 if t in graph.params and not graph.params[t].annotations.get("const")})
    w += 2 * h * h * item
    kv = sum(float(v) for k, v in kv_input_bytes_per_token(graph).items() if k.endswith(f".{last}"))
    return _MTP(), {"name": "mtp", "layers": 1, "shares_weights": False, "weights_bytes": w,
                    "kv_bytes_per_token": kv, "module": "eh_proj (2H→H) + 2 RMSNorms + one decoder layer of "
                                                         "the last layer's kind; embedding and LM head shared"}


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
    elif sc["draft_model"] == "mtp":
        draft_cm, draft_desc = mtp_draft(cm, g, rc.dims)
        draft_w, draft_kv_tok = draft_desc["weights_bytes"], draft_desc["kv_bytes_per_token"]
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
    elif sc["draft_model"] == "mtp" and (sc["acceptance"] == "published" or _is_default_acceptance(rc.cfg)):
        alpha, alpha_src = MTP_ACCEPTANCE, {"source": "published", "reference": MTP_SOURCE}
    else:
        alpha, alpha_src = float(sc["acceptance"]), {"source": "config"}

    t_target = float(base["tpot_s"])
    t_draft = step_time(draft_cm, b, 1, ctx)
    gammas = sorted(set(sc["gammas"]) | {gamma})
    plan = base.get("step")
    if plan is not None:   # a parallel plan: the verify steps are the plan's; a draft that is part of
        # the target (self, mtp) is sharded like it — its one-device time scaled as the target's decode step
        verify = {gm: float(plan(b, gm + 1, ctx, attention_class(gm + 1))[0]) for gm in gammas}
        if sc["draft_model"] in ("self", "mtp"):
            t_draft *= t_target / step_time(cm, b, 1, ctx)
    else:
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
    shard = plan is not None and base.get("weights_bytes_device")   # one device's share under a plan
    frac_w = base["weights_bytes_device"] / base["weights_bytes"] if shard else 1.0
    frac_kv = (base["kv_bytes_per_token_device"] / base["kv_bytes_per_token"]
               if shard and base["kv_bytes_per_token"] else 1.0)
    w_total = (base["weights_bytes"] + draft_w) * frac_w
    kv_tok_total = (base["kv_bytes_per_token"] + draft_kv_tok) * frac_kv
    batches = np.arange(1, 4097)
    act = np.maximum(sched.activation_peak(batches, wl["prompt_len"], 0),
                     sched.activation_peak(batches, gamma + 1, ctx))
    need = w_total + batches * kv_tok_total * tokens + act + base["reserve"]
    fits = need <= (base.get("usable_bytes") or hw.memory_bytes) if shard else need <= hw.memory_bytes
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
