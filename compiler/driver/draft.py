"""The speculative draft: which library model drafts for the target, whether it can (same
vocabulary, a causal LM), its import through the target's pass recipe, and the measured
acceptance rate when the config asks for one. The results go into the run context
(:class:`compiler.analysis.context.Draft`, ``measured["acceptance"]``)."""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import yaml

from compiler.analysis.context import Draft
from compiler.analysis.speculative import self_draft_layers, spec_config
from compiler.errors import ConfigError
from compiler.frontends import families
from compiler.frontends.measure import measure_acceptance
from compiler.frontends.models import import_torch
from compiler.resources import conf_dir
from passes import PassContext, run_passes


def library_models() -> list[str]:
    mdir = os.path.join(str(conf_dir()), "model")
    return sorted(f[:-5] for f in os.listdir(mdir) if f.endswith(".yaml") and f != "onnx.yaml")


def load_model_config(name: str) -> dict[str, Any]:
    """``conf/model/<name>.yaml`` as a plain dict."""
    path = os.path.join(str(conf_dir()), "model", f"{name}.yaml")
    if not os.path.isfile(path):
        raise ConfigError(f"speculative.draft_model={name!r} is not a model in the library (conf/model/): "
                          f"{', '.join(library_models())}; or 'self' for layer-skip self-speculation.")
    with open(path, encoding="utf-8") as f:
        return dict(yaml.safe_load(f))


def _vocab(mcfg: Mapping) -> int | None:
    v = families.fact(mcfg.get("config") or {}, "vocab")
    return int(v) if v is not None else None


def _size(mcfg: Mapping) -> float:
    """A model's size for ordering drafts: layers x hidden² (0 when unknown)."""
    try:
        d = families.dims(mcfg.get("config") or {})
    except (TypeError, ValueError):
        return 0.0
    return float(d.layers) * float(d.hidden) ** 2


def compatible_drafts(target: Mapping) -> list[str]:
    """Library models that can draft for ``target``: causal LMs built from a config whose
    vocabulary is the target's, smaller than the target (smallest first), the target excluded."""
    vt = _vocab(target)
    if vt is None:
        return []
    size = _size(target)
    out = []
    for name in library_models():
        if name == target.get("name"):
            continue
        try:
            m = load_model_config(name)
        except (ConfigError, OSError, yaml.YAMLError):
            continue
        if str(m.get("source", "hf_config")) != "hf_config" or str(m.get("task", "causal_lm")) != "causal_lm":
            continue
        if _vocab(m) == vt and (not size or _size(m) < size):
            out.append((_size(m), name))
    return [n for _, n in sorted(out)]


def _advice(target: Mapping) -> str:
    drafts = compatible_drafts(target)
    if drafts:
        return (f"Library models with the target's {_vocab(target)}-token vocabulary: {', '.join(drafts)} "
                f"(e.g. speculative.draft_model={drafts[0]}), or speculative.draft_model=self "
                f"(layer-skip self-speculation).")
    return (f"No library model shares the target's {_vocab(target)}-token vocabulary; use "
            f"speculative.draft_model=self (layer-skip self-speculation), or add a draft's YAML to conf/model/.")


def check_draft(target: Mapping, draft: Mapping) -> None:
    """Refuse a draft that cannot draft for the target (different vocabulary, not a causal LM);
    the advice names the library models that can (computed from their vocabularies)."""
    if str(target.get("task", "causal_lm")) != "causal_lm" or str(target.get("source")) == "onnx":
        raise ConfigError("speculative decoding needs a causal LM target built from a model config "
                          f"(model={target.get('name')} is not); unset speculative.draft_model.")
    if str(draft.get("task", "causal_lm")) != "causal_lm" or str(draft.get("source", "hf_config")) != "hf_config":
        raise ConfigError(f"speculative.draft_model={draft.get('name')} is not a causal LM built from a model "
                          f"config. " + _advice(target))
    vt, vd = _vocab(target), _vocab(draft)
    if vt is None or vd is None or vt != vd:
        raise ConfigError(
            f"speculative.draft_model={draft.get('name')} has a vocabulary of {vd} tokens but the target "
            f"{target.get('name')} has {vt}: a draft must share the target's tokenizer, or its proposals "
            f"cannot be verified. " + _advice(target))


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
    if sc["draft_model"] == "mtp":
        if not families.fact(cfg["model"].get("config") or {}, "mtp_layers"):
            raise ConfigError(f"speculative.draft_model=mtp drafts with the model's multi-token-prediction module, "
                              f"but model {cfg['model'].get('name')!r} has none (no num_nextn_predict_layers in its "
                              f"config; DeepSeek-V3 has one: model=deepseek_v3). Pick a draft model from the library "
                              f"or speculative.draft_model=self.")
        return
    if sc["draft_model"] != "self":
        path = os.path.join(str(conf_dir()), "model", f"{sc['draft_model']}.yaml")
        if not os.path.isfile(path):
            raise ConfigError(f"speculative.draft_model={sc['draft_model']!r} is not a model in the library "
                              f"(conf/model/). " + _advice(dict(cfg["model"])))
        check_draft(dict(cfg["model"]), load_model_config(sc["draft_model"]))
    elif str(cfg["model"].get("task", "causal_lm")) != "causal_lm" or str(cfg["model"].get("source")) == "onnx":
        raise ConfigError("speculative.draft_model=self needs a causal LM target built from a model config; "
                          "unset speculative.draft_model.")


def draft_model(cfg: Mapping, recipe, pass_ctx: PassContext) -> Draft | None:
    """The draft (``speculative.draft_model=<library model>``) imported cost-only and run through
    the target's pass recipe; None when speculative decoding is off or self-drafting."""
    sc = spec_config(cfg)
    if sc is None or sc["draft_model"] in ("self", "mtp"):
        return None
    dcfg = load_model_config(sc["draft_model"])
    graph = import_torch(dict(dcfg, weights="meta"))
    run_passes(graph, recipe, pass_ctx)
    try:
        dims = families.dims(dcfg.get("config") or {})
    except ValueError:
        dims = None
    return Draft(name=str(dcfg.get("name")), config=dcfg, graph=graph, dims=dims)


def measured_acceptance(cfg: Mapping, draft: Draft | None, n_target_layers: int) -> dict[str, Any] | None:
    """``speculative.acceptance=measured``: α between the draft and the target on evaluation text
    (torch eager, compiler/frontends/measure.py); None otherwise."""
    sc = spec_config(cfg)
    if sc is None or sc["acceptance"] != "measured":
        return None
    layers = self_draft_layers(sc, n_target_layers) if sc["draft_model"] == "self" else None
    return measure_acceptance(dict(cfg["model"]), None if draft is None else dict(draft.config), layers,
                              sc["eval_tokens"])


__all__ = ["load_model_config", "check_draft", "compatible_drafts", "validate", "draft_model", "measured_acceptance", "library_models"]
