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

from compiler.ir.facts import ModelDims
from compiler.ir.ops import UnsupportedOpError

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
}

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


def dims(config: Mapping | Any) -> ModelDims:
    """:class:`ModelDims` of a transformers config (mapping or object). Raises ``ValueError``
    when the config has no layer count, hidden size or head count."""
    hidden, heads, layers = fact(config, "hidden"), fact(config, "heads"), fact(config, "layers")
    if not (hidden and heads and layers):
        raise ValueError("the config has no hidden size, head count or layer count")
    hidden, heads, layers = int(hidden), int(heads), int(layers)
    experts = int(fact(config, "experts", 0) or 0)
    return ModelDims(layers=layers, hidden=hidden, heads=heads,
                     kv_heads=int(fact(config, "kv_heads") or heads),
                     head_dim=int(fact(config, "head_dim") or hidden // heads),
                     vocab=int(fact(config, "vocab", 0) or 0), experts=experts,
                     top_k=int(fact(config, "top_k", 0) or 0) if experts else 0,
                     shared_experts=shared_experts(config) if experts else 0)


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


__all__ = ["ALIASES", "NESTED", "fact", "dims", "shared_experts", "has_experts", "state_space",
           "refuse_state_space", "STATE_SPACE_TYPES"]
