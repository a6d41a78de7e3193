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

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from compiler.errors import ConfigError
from compiler.resources import conf_dir

#: S at or below which a step's attention is priced with the decode attention class (calibrated on
#: single-query steps); multi-token steps (verify, chunked prefill) use the prefill class, whose
#: calibration covers many query rows — on the H200 verify measurement (T = 2…256 against 4096
#: cached tokens) that is the better fit (compiler/perf/calibration/data/h200_kernels.json).
DECODE_LIKE_MAX_S = 1
DEFAULT_GAMMAS = tuple(range(1, 17))
EVAL_TEXT = (
    "Speculative decoding runs a small draft model ahead of a large target model. The draft proposes "
    "a few tokens, the target checks all of them in a single forward pass, and every proposal that "
    "agrees with what the target would have sampled is kept. Because a forward pass over a handful of "
    "tokens costs about as much as a pass over one token when decoding is limited by memory bandwidth, "
    "the accepted tokens come almost for free. The gain depends on how often the draft agrees with the "
    "target and on how cheap the draft is compared with the target.")


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


def _conf_dir() -> str:
    return str(conf_dir())


def load_model_config(name: str) -> dict[str, Any]:
    """``conf/model/<name>.yaml`` as a plain dict."""
    import yaml
    mdir = os.path.join(_conf_dir(), "model")
    path = os.path.join(mdir, f"{name}.yaml")
    if not os.path.isfile(path):
        names = sorted(f[:-5] for f in os.listdir(mdir) if f.endswith(".yaml") and f != "onnx.yaml")
        raise ConfigError(f"speculative.draft_model={name!r} is not a model in the library. Use one of "
                          f"{', '.join(names)}, or 'self' for layer-skip self-speculation, e.g. "
                          f"speculative.draft_model=tinyllama_1b for a Llama-2 target.")
    with open(path, encoding="utf-8") as f:
        return dict(yaml.safe_load(f))


def _vocab(mcfg: Mapping) -> int | None:
    v = (mcfg.get("config") or {}).get("vocab_size")
    return int(v) if v is not None else None


def _layers(mcfg: Mapping) -> int | None:
    c = mcfg.get("config") or {}
    for k in ("num_hidden_layers", "n_layer", "num_layers"):
        if k in c:
            return int(c[k])
    return None


def check_draft(target: Mapping, draft: Mapping) -> None:
    """Refuse a draft that cannot draft for the target (different vocabulary, not a causal LM)."""
    if str(target.get("task", "causal_lm")) != "causal_lm" or str(target.get("source")) == "onnx":
        raise ConfigError("speculative decoding needs a causal LM target built from a model config "
                          f"(model={target.get('name')} is not); unset speculative.draft_model.")
    if str(draft.get("task", "causal_lm")) != "causal_lm":
        raise ConfigError(f"speculative.draft_model={draft.get('name')} is not a causal LM; pick a "
                          f"decoder such as tinyllama_1b or llama3_1b.")
    vt, vd = _vocab(target), _vocab(draft)
    if vt is None or vd is None or vt != vd:
        raise ConfigError(
            f"speculative.draft_model={draft.get('name')} has a vocabulary of {vd} tokens but the target "
            f"{target.get('name')} has {vt}: a draft must share the target's tokenizer, or its proposals "
            f"cannot be verified. Pick a draft of the same family (Llama-2 32 000: tinyllama_1b; "
            f"Llama-3 128 256: llama3_1b), or speculative.draft_model=self.")


# ------------------------------------------------------------------------------------------------
# measured acceptance

def eval_token_ids(vocab: int, n: int) -> np.ndarray:
    """Deterministic evaluation tokens: the built-in English paragraph as UTF-8 bytes (a byte-level
    tokenization), repeated to ``n`` tokens, folded into the vocabulary."""
    raw = np.frombuffer(EVAL_TEXT.encode("utf-8"), dtype=np.uint8).astype(np.int64)
    ids = np.resize(raw, n)
    return ids % vocab


def _logits_by_depth(model, ids, depths):
    """Next-token logits of an HF causal LM at the final layer and after each of ``depths`` layers
    (exit head = the model's final norm + LM head on that layer's hidden state)."""
    import torch
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=False, output_hidden_states=True)
        hs = out.hidden_states   # embeddings, then after each layer (the last one already normed)
        inner = model.model
        res = {"final": out.logits}
        for d in depths:
            res[d] = out.logits if d >= len(hs) - 1 else model.lm_head(inner.norm(hs[d]))
    return res


def acceptance_from_logits(p_logits, q_logits) -> float:
    """α = mean over positions of Σ_x min(p(x), q(x)) (softmax of each)."""
    import torch
    p = torch.softmax(p_logits.double(), -1)
    q = torch.softmax(q_logits.double(), -1)
    return float(torch.minimum(p, q).sum(-1).mean())


def measure_acceptance(target_cfg: Mapping, draft_cfg: Mapping | None, draft_layers: int | None,
                       n_tokens: int) -> dict[str, Any]:
    """Measure α on evaluation tokens with both models' (seeded / real) weights in torch eager."""
    from compiler.frontends.models import build_hf
    for c in [target_cfg] + ([draft_cfg] if draft_cfg is not None else []):
        if str(c.get("weights", "random")) == "meta" or str(c.get("source")) != "hf_config":
            raise ConfigError(
                f"speculative.acceptance=measured needs weights for both models, but {c.get('name')} is "
                f"built with model.weights={c.get('weights')} (source {c.get('source')}). Give the rate "
                f"instead (speculative.acceptance=0.7), or use models with weights.")
    import torch
    target = build_hf(target_cfg)
    ids = torch.as_tensor(eval_token_ids(_vocab(target_cfg), n_tokens))[None]
    if draft_cfg is None:
        logits = _logits_by_depth(target, ids, [draft_layers])
        alpha = acceptance_from_logits(logits["final"], logits[draft_layers])
    else:
        draft = build_hf(draft_cfg)
        with torch.no_grad():
            alpha = acceptance_from_logits(target(input_ids=ids, use_cache=False).logits,
                                           draft(input_ids=ids, use_cache=False).logits)
    return {"alpha": alpha, "tokens": int(n_tokens), "text": "built-in paragraph, UTF-8 bytes as token ids"}


# ------------------------------------------------------------------------------------------------
# the report section

def _self_draft_cost(cm, graph, n_layers: int):
    """A cost evaluator over the layer-skip draft's ops: everything before the first layer, layers
    < n_layers, and the head (final norm + LM head) — compiler.analysis.early_exit.op_layers."""
    from compiler.analysis.early_exit import layer_masks
    pos, total = layer_masks(graph, cm)
    keep = (pos < n_layers) | (pos == total)

    class _Masked:
        def phase_time(self, b, s, p, phase):
            t = cm.evaluate(b, s, p, phase)["time"]
            return t[keep].sum(axis=0)
    return _Masked()


def analyze(cfg: Mapping, wl: Mapping, hw, g, cm, sched, base: Mapping) -> dict[str, Any] | None:
    """The ``speculative`` report section (None when off). ``base``: the report's memory/latency
    figures of the target alone (tpot_s, weights_bytes, kv_bytes_per_token, tokens, reserve)."""
    sc = spec_config(cfg)
    if sc is None:
        return None
    from compiler.perf.cost import CostModel
    target_cfg = dict(cfg["model"])
    b, ctx = wl["batch"], wl["context_len"]
    gamma = sc["gamma"]
    n_target_layers = _layers(target_cfg) or 0
    if sc["draft_model"] == "self":
        dl = sc["draft_layers"]
        dl = max(1, n_target_layers // 4) if dl is None else int(dl)
        if not 1 <= dl < max(n_target_layers, 2):
            raise ConfigError(f"speculative.draft_layers={dl} must be between 1 and {n_target_layers - 1} "
                              f"(the target has {n_target_layers} layers) for draft_model=self.")
        draft_cfg, draft_cm = None, _self_draft_cost(cm, g, dl)
        draft_w = draft_kv_tok = 0.0
        draft_desc = {"name": "self", "layers": dl, "shares_weights": True}
    else:
        dl = None
        draft_cfg = load_model_config(sc["draft_model"])
        check_draft(target_cfg, draft_cfg)
        dg = g.meta.pop("_draft_graph", None)   # the driver's import (same passes as the target)
        if dg is None:
            from compiler.frontends.models import import_torch
            dg = import_torch(dict(draft_cfg, weights="meta"))
        draft_cm = CostModel(dg, hw)
        draft_w, draft_kv_tok = _weights_bytes(dg), _kv_bytes_per_token(dg)
        draft_desc = {"name": draft_cfg.get("name"), "layers": _layers(draft_cfg),
                      "weights_bytes": draft_w, "kv_bytes_per_token": draft_kv_tok, "shares_weights": False}

    if sc["acceptance"] == "measured":
        meas = measure_acceptance(target_cfg, draft_cfg, dl, sc["eval_tokens"])
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


def _weights_bytes(g) -> float:
    from compiler.ir.ops import Classifier
    cls = Classifier(g)
    return float(sum(cls.weight_bytes(p) for p in g.params))


def _kv_bytes_per_token(g) -> float:
    import sympy
    from compiler.ir import B, P
    total = 0
    kv = set(g.meta.get("kv_tensors", ()))
    for t in g.inputs:
        if t in kv:
            ty = g.type(t)
            total += sympy.diff(ty.numel() * sympy.Rational(ty.itemsize).limit_denominator(2), P).subs(B, 1)
    return float(total)


def validate(cfg: Mapping) -> None:
    """Check ``speculative`` and ``workload.prefill_chunk`` before any work is done (bad input →
    ConfigError, exit 2)."""
    chunk = (cfg.get("workload") or {}).get("prefill_chunk")
    if chunk is not None and (not str(chunk).isdigit() or int(chunk) < 1):
        raise ConfigError(f"workload.prefill_chunk={chunk!r} is not a whole number ≥ 1; set the chunk size in "
                          f"tokens (e.g. workload.prefill_chunk=256) or null to prefill in one step.")
    sc = spec_config(cfg)
    if sc is None:
        return
    if sc["draft_model"] != "self":
        check_draft(dict(cfg["model"]), load_model_config(sc["draft_model"]))
    elif str(cfg["model"].get("task", "causal_lm")) != "causal_lm" or str(cfg["model"].get("source")) == "onnx":
        raise ConfigError("speculative.draft_model=self needs a causal LM target built from a model config; "
                          "unset speculative.draft_model.")
