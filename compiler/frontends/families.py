"""Model-family knowledge in one place: what each Hugging Face family calls a dimension.

Families name the same fact differently — GPT-2's ``n_layer`` is Llama's ``num_hidden_layers``,
Mixtral's ``num_local_experts`` is Qwen-MoE's ``num_experts`` and DeepSeek's ``n_routed_experts``,
DBRX nests its experts under ``ffn_config``. :data:`ALIASES` lists, per fact, every key a family
uses (first match wins); :func:`fact` reads one from a config mapping (nested ``text_config`` /
``ffn_config`` / ``attn_config`` blocks included) and :func:`dims` builds the
:class:`compiler.ir.facts.ModelDims` every analysis reads. Nothing else in rooftop spells a
family-specific config key.

Adding a family whose keys are new: add its spelling to the fact's tuple below (and a test that
``dims`` reads its config).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from compiler.errors import ConfigError
from compiler.ir.facts import ModelDims
from compiler.ir.ops import UnsupportedOpError


class ModelFactsError(ConfigError, ValueError):
    """A model config without the facts rooftop needs (a ValueError too, for older callers)."""

#: fact -> the config keys families use for it, in order of preference
ALIASES: dict[str, tuple[str, ...]] = {
    "layers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
    "hidden": ("hidden_size", "n_embd", "d_model", "dim"),
    "heads": ("num_attention_heads", "n_head", "num_heads", "n_heads", "encoder_attention_heads"),
    "kv_heads": ("num_key_value_heads", "n_head_kv", "num_kv_heads", "n_kv_heads", "multi_query_group_num",
                 "kv_n_heads"),
    "head_dim": ("head_dim", "attention_head_dim"),
    "vocab": ("vocab_size", "padded_vocab_size"),
    "experts": ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts", "num_routed_experts"),
    "top_k": ("num_experts_per_tok", "moe_top_k", "num_selected_experts", "experts_per_token", "moe_k"),
    "shared_experts": ("n_shared_experts", "num_shared_experts"),
    "max_positions": ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx",
                      "max_sequence_length"),
    "intermediate": ("intermediate_size", "ffn_dim", "n_inner", "ffn_hidden_size"),
    "moe_intermediate": ("moe_intermediate_size", "expert_intermediate_size"),
    "shared_intermediate": ("shared_expert_intermediate_size",),
    # attention windows: one window for every windowed layer, and which layers are windowed
    "sliding_window": ("sliding_window",),
    "layer_types": ("layer_types",),
    "attn_softcap": ("attn_logit_softcapping",),
    "final_softcap": ("final_logit_softcapping",),
    "partial_rotary": ("partial_rotary_factor", "rotary_pct"),
    # multi-head latent attention (DeepSeek-V2/V3, Kimi-K2)
    "kv_lora_rank": ("kv_lora_rank",),
    "q_lora_rank": ("q_lora_rank",),
    "qk_rope_dim": ("qk_rope_head_dim",),
    "qk_nope_dim": ("qk_nope_head_dim",),
    "v_head_dim": ("v_head_dim",),
    # dense layers before the first MoE layer (DeepSeek), MoE every n-th layer (Qwen-MoE)
    "first_dense_layers": ("first_k_dense_replace",),
    "moe_every": ("decoder_sparse_step", "moe_layer_freq"),
    "dense_layer_list": ("mlp_only_layers",),
    # multi-token prediction modules (DeepSeek-V3)
    "mtp_layers": ("num_nextn_predict_layers",),
}

#: config keys modeling code reads with ``getattr(config, key, default)`` although some config
#: classes do not declare them (Qwen3-MoE's ``head_dim``): a model YAML may set them
GETATTR_KEYS = frozenset({"head_dim"})
#: families whose attention has learned per-head sink logits (an architecture fact, no config key)
SINK_FAMILIES = frozenset({"gpt_oss"})
#: families that RMS-normalize q and k per head before the rotary embedding (Qwen3, Gemma-3, OLMo-2)
QK_NORM_FAMILIES = frozenset({"qwen3", "qwen3_moe", "gemma3", "gemma3_text", "olmo2", "olmoe"})
#: families whose attention adds ALiBi slopes instead of a rotary embedding
ALIBI_FAMILIES = frozenset({"bloom", "mpt", "falcon_alibi"})
#: families transformers runs only through its eager attention (no SDPA): rooftop's own attention
#: implementation (compiler/frontends/attention.py) imports them
EAGER_ONLY_FAMILIES = frozenset({"gpt_oss"})

#: nested blocks some families keep facts in (DBRX: ffn_config / attn_config; multimodal: text_config)
NESTED = ("text_config", "ffn_config", "attn_config", "language_config")


def _lookup(c: Mapping, keys) -> Any:
    for k in keys:
        v = c.get(k)
        if v is not None and v is not False:
            return v
    for blk in NESTED:
        inner = c.get(blk)
        if isinstance(inner, Mapping):
            v = _lookup(inner, keys)
            if v is not None:
                return v
    return None


def fact(config: Mapping | Any, name: str, default: Any = None) -> Any:
    """The value of ``name`` (a key of :data:`ALIASES`) in a config mapping or a transformers
    ``PretrainedConfig`` object, else ``default``."""
    c = config if isinstance(config, Mapping) else _as_mapping(config)
    v = _lookup(c, ALIASES[name])
    return default if v is None else v


def _as_mapping(obj) -> Mapping:
    if obj is None:
        return {}
    to_dict = getattr(obj, "to_dict", None)
    return to_dict() if callable(to_dict) else dict(vars(obj))


def shared_experts(config: Mapping | Any) -> int:
    """Always-on experts per MoE layer (DeepSeek: ``n_shared_experts``; Qwen-MoE: one shared
    expert of ``shared_expert_intermediate_size``)."""
    n = fact(config, "shared_experts")
    if n:
        return int(n)
    c = config if isinstance(config, Mapping) else _as_mapping(config)
    return 1 if c.get("shared_expert_intermediate_size") else 0


def has_experts(config: Mapping | Any) -> bool:
    return bool(fact(config, "experts"))


def model_type(config: Mapping | Any) -> str:
    c = config if isinstance(config, Mapping) else _as_mapping(config)
    return str(c.get("model_type") or "")


def hf_config(config: Mapping | Any):
    """The ``transformers`` config object of a config mapping (``model_type`` + kwargs), as
    transformers itself completes it (derived per-layer types, defaults of the family); an object
    is returned as is; None when there is no ``model_type`` or transformers refuses the values."""
    if not isinstance(config, Mapping):
        return config
    key = repr(sorted((k, repr(v)) for k, v in config.items()))
    if key not in _HF_CONFIGS:
        try:
            import transformers
            conf = dict(config)
            level = transformers.logging.get_verbosity()
            transformers.logging.set_verbosity_error()
            try:
                _HF_CONFIGS[key] = transformers.AutoConfig.for_model(conf.pop("model_type"), **conf)
            finally:
                transformers.logging.set_verbosity(level)
        except Exception:  # noqa: BLE001 - a bad config fails at import with its own message
            _HF_CONFIGS[key] = None
    return _HF_CONFIGS[key]


_HF_CONFIGS: dict[str, Any] = {}


def _completed(config: Mapping | Any) -> Mapping:
    """The config as a mapping, completed by transformers where it can (derived layer types)."""
    obj = hf_config(config) if isinstance(config, Mapping) and config.get("model_type") else config
    return _as_mapping(obj) if obj is not None and not isinstance(obj, Mapping) else (
        config if isinstance(config, Mapping) else _as_mapping(config))


def layer_windows(config: Mapping | Any) -> tuple[int | None, ...]:
    """The attention window of every decoder layer (None: attends to the whole context).

    ``layer_types`` (Gemma-2/3, gpt-oss, Qwen3 with ``use_sliding_window``: ``sliding_attention``
    / ``full_attention`` per layer, completed by transformers from e.g. Gemma-3's
    ``sliding_window_pattern``) with ``sliding_window``; without per-layer types, a
    ``sliding_window`` windows every layer (Mistral v0.1)."""
    c = _completed(config)
    n = int(fact(c, "layers") or 0)
    w = fact(c, "sliding_window")
    w = int(w) if isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0 else None
    types = fact(c, "layer_types")
    if types and len(types) >= n:
        return tuple(w if str(t) in ("sliding_attention", "sliding", "local", "chunked_attention") else None
                     for t in list(types)[:n])
    if c.get("use_sliding_window") is False:
        return (None,) * n
    return (w,) * n


def moe_layer_mask(config: Mapping | Any) -> tuple[bool, ...]:
    """Which decoder layers are MoE layers: all of them for an MoE family, except DeepSeek's first
    ``first_k_dense_replace`` dense layers, Qwen-MoE's ``mlp_only_layers`` and layers off the
    ``decoder_sparse_step`` period; none for a dense model."""
    c = _completed(config)
    n = int(fact(c, "layers") or 0)
    if not has_experts(c):
        return (False,) * n
    first = int(fact(c, "first_dense_layers") or 0)
    every = int(fact(c, "moe_every") or 1)
    dense = set(fact(c, "dense_layer_list") or ())
    return tuple(i >= first and i not in dense and (i + 1) % every == 0 if every > 1 else
                 (i >= first and i not in dense) for i in range(n))


def mla(config: Mapping | Any) -> dict[str, int] | None:
    """Multi-head latent attention dims (``kv_lora_rank``, ``rope_dim``, ``nope_dim``,
    ``v_head_dim``, ``q_lora_rank`` — 0 without a query LoRA), or None for other attention."""
    c = config if isinstance(config, Mapping) else _as_mapping(config)
    r = fact(c, "kv_lora_rank")
    if not r:
        return None
    return {"kv_lora_rank": int(r), "rope_dim": int(fact(c, "qk_rope_dim") or 0),
            "nope_dim": int(fact(c, "qk_nope_dim") or 0), "v_head_dim": int(fact(c, "v_head_dim") or 0),
            "q_lora_rank": int(fact(c, "q_lora_rank") or 0)}


def attention_facts(config: Mapping | Any) -> dict[str, Any]:
    """What a family's attention does beyond plain causal SDPA, from its config: per-layer
    ``windows``, ``sinks``, ``softcap`` (attention logits), ``final_softcap`` (LM-head logits),
    ``qk_norm``, ``alibi``, ``partial_rotary`` (fraction of head_dim rotated), ``head_dim`` when
    it differs from hidden/heads, ``mla`` dims; ``rooftop_attention``: import it through
    rooftop's attention implementation (compiler/frontends/attention.py) — a window, sinks or a
    softcap, or a family transformers runs only eagerly."""
    c = _completed(config)
    mt = model_type(c)
    windows = layer_windows(c)
    hidden, heads = fact(c, "hidden"), fact(c, "heads")
    hd = fact(c, "head_dim")
    pr = fact(c, "partial_rotary")
    softcap = fact(c, "attn_softcap")
    out = {"windows": windows, "sinks": mt in SINK_FAMILIES, "softcap": float(softcap) if softcap else None,
           "final_softcap": float(fact(c, "final_softcap")) if fact(c, "final_softcap") else None,
           "qk_norm": mt in QK_NORM_FAMILIES, "alibi": mt in ALIBI_FAMILIES,
           "partial_rotary": float(pr) if pr and float(pr) < 1 else None,
           "head_dim": int(hd) if hd and hidden and heads and int(hd) != int(hidden) // int(heads)
           and not mla(c) else None,
           "mla": mla(c)}
    out["rooftop_attention"] = bool(any(windows) or out["sinks"] or out["softcap"] or mt in EAGER_ONLY_FAMILIES)
    return out


def layer_kinds(config: Mapping | Any) -> tuple[str, ...]:
    """A label per decoder layer naming what makes it differ from the others (the window and
    whether it is an MoE layer): layers with equal labels have the same structure, so a
    cost-only import can replicate one of them (compiler/frontends/stacking.py)."""
    windows, moe_mask = layer_windows(config), moe_layer_mask(config)
    return tuple(f"{'local' + str(w) if w else 'global'}/{'moe' if m else 'dense'}"
                 for w, m in zip(windows, moe_mask))


def _windows_or_empty(config) -> tuple:
    if not fact(config, "sliding_window"):
        return ()
    w = layer_windows(config)
    return w if any(w) else ()


def dims(config: Mapping | Any) -> ModelDims:
    """:class:`ModelDims` of a transformers config (mapping or object). Raises ``ValueError``
    when the config has no layer count, hidden size or head count."""
    hidden, heads, layers = fact(config, "hidden"), fact(config, "heads"), fact(config, "layers")
    if not (hidden and heads and layers):
        raise ModelFactsError("the model config has no hidden size, head count or layer count (model.config: "
                              "e.g. hidden_size, num_attention_heads, num_hidden_layers)")
    hidden, heads, layers = int(hidden), int(heads), int(layers)
    experts = int(fact(config, "experts", 0) or 0)
    return ModelDims(layers=layers, hidden=hidden, heads=heads,
                     kv_heads=int(fact(config, "kv_heads") or heads),
                     head_dim=int(fact(config, "head_dim") or hidden // heads),
                     vocab=int(fact(config, "vocab", 0) or 0), experts=experts,
                     top_k=int(fact(config, "top_k", 0) or 0) if experts else 0,
                     shared_experts=shared_experts(config) if experts else 0,
                     windows=_windows_or_empty(config),
                     moe_layers=sum(moe_layer_mask(config)) if experts else 0,
                     kv_lora_rank=int(fact(config, "kv_lora_rank") or 0),
                     qk_rope_dim=int(fact(config, "qk_rope_dim") or 0) if fact(config, "kv_lora_rank") else 0)


#: model types whose layers are (or include) state-space selective scans instead of attention
STATE_SPACE_TYPES = ("mamba", "mamba2", "falcon_mamba", "jamba", "zamba", "zamba2", "bamba", "falcon_h1",
                     "granitemoehybrid", "nemotron_h", "plamo2", "lfm2", "rwkv", "recurrent_gemma", "xlstm")
#: config keys only state-space layers have
STATE_SPACE_KEYS = ("state_size", "mamba_d_state", "ssm_state_size", "mamba_d_ssm", "d_state")


def state_space(config: Mapping | Any, model_type: str | None = None) -> str | None:
    """Why ``config`` describes a state-space / recurrent model (None: it does not)."""
    c = config if isinstance(config, Mapping) else _as_mapping(config)
    mt = str(model_type or c.get("model_type") or "")
    if mt in STATE_SPACE_TYPES:
        return f"model_type {mt!r} is a state-space / recurrent architecture"
    key = next((k for k in STATE_SPACE_KEYS if c.get(k)), None)
    return f"its config has the state-space key {key!r}" if key else None


def refuse_state_space(config: Mapping | Any, model_type: str | None = None) -> None:
    """Raise the exit-2 refusal for a state-space model (Mamba, Jamba, …)."""
    why = state_space(config, model_type)
    if why is None:
        return
    raise UnsupportedOpError(
        f"model {model_type or ''} is not supported: {why}. Its layers run a selective scan — a "
        f"recurrence over the sequence that carries a fixed-size state per sequence instead of "
        f"attention over a KV cache — and rooftop's IR, KV-cache passes and cost formulas describe "
        f"attention transformers only, so neither the cost report nor the ONNX artifact would be "
        f"right. Cost an attention model (e.g. model=llama3_8b), or export the scan with your own "
        f"runtime; support for state-space layers would need a scan op in compiler/ir/ops.py.")


__all__ = ["ALIASES", "NESTED", "fact", "dims", "shared_experts", "has_experts", "layer_windows", "moe_layer_mask",
           "mla", "attention_facts", "layer_kinds", "hf_config", "model_type", "SINK_FAMILIES", "QK_NORM_FAMILIES",
           "ALIBI_FAMILIES", "GETATTR_KEYS", "state_space", "refuse_state_space", "STATE_SPACE_TYPES"]
