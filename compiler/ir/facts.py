"""Facts about the model a graph came from that the graph alone does not state: its transformer
dimensions as its configuration gives them (:mod:`compiler.frontends.families` reads them from a
Hugging Face config, whatever the family calls each key)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelDims:
    """A decoder's dimensions: ``layers``, ``hidden`` size, attention ``heads`` and ``kv_heads``,
    ``head_dim``, ``vocab``; for a mixture of experts the routed ``experts`` per MoE layer, the
    ``top_k`` each token picks and the always-on ``shared_experts`` (0 for a dense model);
    ``windows``: the attention window of every layer (None: global) when the model has windowed
    layers, else empty; ``moe_layers``: how many layers are MoE layers (DeepSeek's first layers are
    dense); ``kv_lora_rank`` / ``qk_rope_dim``: multi-head latent attention's cached latent (0:
    ordinary attention)."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int = 0
    experts: int = 0
    top_k: int = 0
    shared_experts: int = 0
    windows: tuple = ()
    moe_layers: int = 0
    kv_lora_rank: int = 0
    qk_rope_dim: int = 0
