"""The per-layer breakdown: every costed op's decoder layer and block, the sums per block kind, and
one row per layer (the report's ``phases.<phase>.ops[].layer`` / ``.block``, ``phases.<phase>.blocks``
and ``phases.<phase>.layers``).

**Layer**: the op's decoder layer index (:func:`compiler.ir.op_layers`), null before the first
layer (embedding, rotary tables) and after the last (final norm, LM head).

**Block** (:data:`BLOCKS`): the ``block`` annotation the torch importer writes from the module an op
comes from (a decoder layer's direct child: ``self_attn`` → attention, its FFN → mlp, norms; outside
the layers: embedding, the final norm, the LM head), where it survived fusion; otherwise found from
the graph: attention-class ops, norm ops, MoE-annotated ops; inside a layer, what feeds an attention
is attention, the rest of the layer is its FFN; before the first layer a weight gather is the
embedding, after the last a norm is the final norm and the rest the head. A layer whose FFN has
MoE ops reports its FFN as ``moe`` (shared experts included); DeepSeek's first layers stay ``mlp``.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import networkx as nx

from compiler.ir.annotations import BLOCKS
from compiler.ir import Graph, op_layers
from compiler.ir.ops import REGISTRY

#: op kinds that are a normalization
NORM_OPS = frozenset({"LayerNormalization", "RMSNormalization", "SkipLayerNormalization",
                      "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "ResidualNorm"})


def op_blocks(g: Graph) -> dict[str, tuple[int | None, str]]:
    """Op name → (decoder layer or None, block) for every op of ``g`` (module doc)."""
    pos, n_layers = op_layers(g)
    attention = {n.name for n in g if (d := REGISTRY.get(n.op)) is not None and d.cost_class == "attention"}
    feeds_attention: set[str] = set()
    for a in attention:
        layer = pos.get(a)
        for anc in nx.ancestors(g.nx, a):
            if pos.get(anc) == layer:
                feeds_attention.add(anc)
    moe_layers = {pos[n.name] for n in g if n.annotations.get("moe") is not None}
    out: dict[str, tuple[int | None, str]] = {}
    for n in g:
        p = pos.get(n.name, -1)
        layer = p if 0 <= p < n_layers else None
        block = n.annotations.get("block")
        if block not in BLOCKS:
            block = _found_block(g, n, p, n_layers, attention, feeds_attention)
        if block in ("mlp", "moe") or (layer is not None and n.annotations.get("moe") is not None):
            block = "moe" if p in moe_layers else "mlp"
        out[n.name] = (layer, block)
    return out


def _found_block(g: Graph, n, p: int, n_layers: int, attention, feeds_attention) -> str:
    if n.name in attention:
        return "attention"
    if n.op in NORM_OPS:
        return "norm"
    if n.annotations.get("moe") is not None:
        return "moe"
    if p < 0:
        return "embedding" if n.op == "Gather" and n.inputs and n.inputs[0] in g.params else "other"
    if p >= n_layers:
        return "head"
    return "attention" if n.name in feeds_attention else "mlp"


def annotate(rows: list[dict], blocks: Mapping[str, tuple[int | None, str]], node_of: Mapping[str, str]) -> None:
    """Give each op row (compiler.perf.cost.CostModel.op_table) its ``layer`` and ``block``."""
    for r in rows:
        layer, block = blocks.get(node_of.get(r["name"], r["name"]), (None, "other"))
        r["layer"] = layer
        r["block"] = block


def block_sums(rows: Iterable[dict]) -> dict[str, dict[str, float]]:
    """Time, FLOPs and bytes per block kind (every kind of :data:`BLOCKS`, zeros included)."""
    out = {b: {"time_s": 0.0, "flops": 0.0, "bytes": 0.0, "ops": 0} for b in BLOCKS}
    for r in rows:
        s = out[r["block"]]
        s["time_s"] += r["time_s"]
        s["flops"] += r["flops"]
        s["bytes"] += r["bytes"]
        s["ops"] += 1
    return out


def layer_rows(rows: Iterable[dict], facts: Mapping[int, Mapping[str, Any]] | None = None) -> list[dict]:
    """One row per decoder layer: time, FLOPs, bytes, time per block, and the layer's ``facts``
    (window, attention kind, FFN kind) — what the per-layer table and plot show."""
    by: dict[int, dict] = {}
    for r in rows:
        if r["layer"] is None:
            continue
        row = by.setdefault(r["layer"], {"layer": r["layer"], "time_s": 0.0, "flops": 0.0, "bytes": 0.0,
                                         "time_by_block_s": {}})
        row["time_s"] += r["time_s"]
        row["flops"] += r["flops"]
        row["bytes"] += r["bytes"]
        tb = row["time_by_block_s"]
        tb[r["block"]] = tb.get(r["block"], 0.0) + r["time_s"]
    for k, row in by.items():
        blocks = row["time_by_block_s"]
        row["ffn"] = "moe" if "moe" in blocks else "dense"
        row.update(dict((facts or {}).get(k, {})))
    return [by[k] for k in sorted(by)]


def layer_facts(g: Graph) -> dict[int, dict[str, Any]]:
    """Per decoder layer: its attention ``window`` (null: global) and ``attention`` kind
    (``full``, ``window``, ``latent``)."""
    out: dict[int, dict[str, Any]] = {}
    for n in g:
        d = REGISTRY.get(n.op)
        if d is None or d.cost_class != "attention" or n.annotations.get("layer") is None:
            continue
        spec = n.annotations.get("attention")
        kind = "latent" if n.op == "LatentAttention" else ("window" if spec is not None and spec.window else "full")
        out[int(n.annotations["layer"])] = {"attention": kind, "window": spec.window if spec is not None else None}
    return out


__all__ = ["BLOCKS", "NORM_OPS", "op_blocks", "annotate", "block_sums", "layer_rows", "layer_facts"]
