"""Measurements on the source model itself (torch eager, seeded or real weights, evaluation text):
what the cost analyses take as inputs when the config asks for a measured figure rather than a
given one — the speculative draft's acceptance rate (``speculative.acceptance=measured``) and
early-exit probabilities calibrated against a confidence threshold (``early_exit.threshold``).
The driver calls these and hands the results to the analyses in the run context."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from compiler.errors import ConfigError
from compiler.frontends import families
from compiler.frontends.models import build_hf
from compiler.resources import EVAL_TEXT

def eval_token_ids(vocab: int, n: int) -> np.ndarray:
    """Deterministic evaluation tokens: the shipped evaluation text (compiler/data/eval_text.txt,
    the accuracy stage's text) as UTF-8 bytes (a byte-level tokenization), repeated to ``n``
    tokens, folded into the vocabulary."""
    raw = np.frombuffer(EVAL_TEXT.read_bytes(), dtype=np.uint8).astype(np.int64)
    ids = np.resize(raw, n)
    return ids % vocab


def _logits_by_depth(model, ids, depths):
    """Next-token logits of an HF causal LM at the final layer and after each of ``depths`` layers
    (exit head = the model's final norm + LM head on that layer's hidden state)."""
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
    p = torch.softmax(p_logits.double(), -1)
    q = torch.softmax(q_logits.double(), -1)
    return float(torch.minimum(p, q).sum(-1).mean())


def measure_acceptance(target_cfg: Mapping, draft_cfg: Mapping | None, draft_layers: int | None,
                       n_tokens: int) -> dict[str, Any]:
    """Measure α on evaluation tokens with both models' (seeded / real) weights in torch eager."""
    for c in [target_cfg] + ([draft_cfg] if draft_cfg is not None else []):
        if str(c.get("weights", "random")) == "meta" or str(c.get("source")) != "hf_config":
            raise ConfigError(
                f"speculative.acceptance=measured needs weights for both models, but {c.get('name')} is "
                f"built with model.weights={c.get('weights')} (source {c.get('source')}). Give the rate "
                f"instead (speculative.acceptance=0.7), or use models with weights.")
    target = build_hf(target_cfg)
    ids = torch.as_tensor(eval_token_ids(int(families.fact(target_cfg.get('config') or {}, 'vocab')), n_tokens))[None]
    if draft_cfg is None:
        logits = _logits_by_depth(target, ids, [draft_layers])
        alpha = acceptance_from_logits(logits["final"], logits[draft_layers])
    else:
        draft = build_hf(draft_cfg)
        with torch.no_grad():
            alpha = acceptance_from_logits(target(input_ids=ids, use_cache=False).logits,
                                           draft(input_ids=ids, use_cache=False).logits)
    return {"alpha": alpha, "tokens": int(n_tokens), "text": "compiler/data/eval_text.txt, UTF-8 bytes as token ids"}


def calibrate(model_cfg, layers: Sequence[int], threshold: float, n_tokens: int) -> dict:
    """CALM-style exits on evaluation text: a token leaves at the first exit whose softmax margin
    (top-1 − top-2 probability) reaches ``threshold``. Returns the conditional exit probabilities
    and how often the emitted token agrees with the full model's."""
    if str(model_cfg.get("weights", "random")) == "meta" or str(model_cfg.get("source")) != "hf_config":
        raise ConfigError(f"early_exit.threshold calibrates on evaluation text and needs weights, but "
                          f"{model_cfg.get('name')} is built with model.weights={model_cfg.get('weights')}. Give "
                          f"early_exit.probabilities instead, or use model.weights=random.")
    m = build_hf(model_cfg)
    vocab = int(model_cfg["config"]["vocab_size"])
    ids = torch.as_tensor(eval_token_ids(vocab, n_tokens))[None]
    with torch.no_grad():
        out = m(input_ids=ids, use_cache=False, output_hidden_states=True)
        final = out.logits[0].argmax(-1)
        exit_tok, margins = {}, {}
        for ell in layers:
            lg = m.lm_head(m.model.norm(out.hidden_states[ell + 1]))[0]
            pr = torch.softmax(lg.double(), -1)
            top = pr.topk(2, -1).values
            margins[ell] = (top[:, 0] - top[:, 1])
            exit_tok[ell] = lg.argmax(-1)
    n = ids.shape[1]
    alive = torch.ones(n, dtype=torch.bool)
    emitted = final.clone()
    rows = []
    for ell in layers:
        leave = alive & (margins[ell] >= threshold)
        reach = int(alive.sum())
        emitted[leave] = exit_tok[ell][leave]
        agree = float((exit_tok[ell][leave] == final[leave]).float().mean()) if int(leave.sum()) else None
        rows.append({"layer": ell, "reached": reach, "exited": int(leave.sum()),
                     "probability": int(leave.sum()) / reach if reach else 0.0, "agreement": agree,
                     "agreement_all_tokens": float((exit_tok[ell] == final).float().mean())})
        alive &= ~leave
    return {"exits": rows, "tokens": n, "agreement": float((emitted == final).float().mean()),
            "threshold": threshold, "text": "compiler/data/eval_text.txt, UTF-8 bytes as token ids"}
