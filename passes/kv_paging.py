"""Page the KV cache: the contiguous past of every attention becomes a block pool read through a
block table (vLLM's PagedAttention layout).

Runs after the KV cache is lifted (``lift_kv_cache`` / ``kv_cache``) and after fusion. Each
Attention (layer ``i``) that reads ``past_key.i`` / ``past_value.i`` ``[B, kv_heads, P, head_dim]``
then reads instead

- ``key_cache.i`` / ``value_cache.i`` ``[num_blocks, kv_heads, block_size, head_dim]`` — the
  layer's block pool (``num_blocks`` is the runtime's choice);
- ``block_table`` int64 ``[B, max_blocks]`` (one, shared by the layers) — row ``b`` lists the
  pool blocks of sequence ``b`` in order; entries past its context are any valid block id;
- ``context_lens`` int64 ``[B]`` — tokens of each sequence already in the pool (its context
  before this step; the new tokens are not counted).

``PagedKVGather`` (compiler/ir/ops.py; ONNX Gather → Transpose → Reshape) turns pool + table into
the ``[B, kv_heads, max_blocks·block_size, head_dim]`` past the Attention reads. A boolean mask
derived in the graph from ``context_lens`` (Range < context_lens; every new token kept) hides the
unused tail of every sequence's last block and of shorter sequences' tables, so one batch mixes
sequences of different lengths; ``is_causal`` (bottom-right aligned with a past) keeps each new
token from seeing the later ones, so right-padded prompts need nothing more. The new tokens' K/V
are outputs ``new_key.i`` / ``new_value.i`` ``[B, kv_heads, S, head_dim]`` that the runtime
scatters into its pool (token ``t`` of sequence ``b`` at position ``context_lens[b] + t``:
block ``block_table[b, pos // block_size]``, slot ``pos % block_size``); ``present_*`` are no
longer outputs. ``position_ids`` stay an input: the runtime feeds ``context_lens[b] + t``.

In the IR the gathered length is ``P`` (``max_blocks = P / block_size``, ``num_blocks =
B·P / block_size`` for costing): the cost model then charges each attention the blocks it reads
— the context rounded up to whole blocks — and the KV bytes per token stay those of the
contiguous cache. Every Attention gets ``kv_layout = KVLayout("paged", block_size)``.

``max_model_len`` (optional) is checked against the model's positions and recorded in the
artifact's metadata (``rooftop.kv_paging``: block_size, max_model_len, max_blocks_per_seq) for
the runtime that sizes its block tables.
"""
from __future__ import annotations

import json
import math

import numpy as np

from compiler.ir import annotations as ann
from compiler.ir.annotations import KVLayout
from compiler.errors import ConfigError
from compiler.ir import DTYPES, B, Graph, P, S, TensorType
from passes.base import Pass, PassResult
from compiler.ir.ops import broadcast_shapes
from passes.cleanup import eliminate_dead_code

BLOCK_TABLE = "block_table"
CONTEXT_LENS = "context_lens"
DEFAULT_BLOCK_SIZE = 16   # vLLM's default


def _free_of_p(v) -> bool:
    if isinstance(v, (list, tuple)):
        return all(_free_of_p(x) for x in v)
    return P not in getattr(v, "free_symbols", ())


def _check(g: Graph, block_size: int, max_model_len: int | None) -> list:
    """The Attention nodes to page; ConfigError when the graph cannot be paged."""
    kv = set(g.meta.get("kv_tensors", ()))
    attn = [n for n in g.topo_order() if n.op == "Attention" and len(n.inputs) > 5
            and n.inputs[4] in g.inputs and n.inputs[4] in kv and n.inputs[5] in kv]
    if not attn:
        why = g.meta.get("kv_cache_refused")
        raise ConfigError(
            "kv paging (pass kv_paging) needs a decoder with a KV cache, but this model has none"
            + (f" (its cache was not lifted: {why})" if why else "") +
            ". Page a causal decoder whose cache is lifted first (run lift_kv_cache / kv_cache "
            "before kv_paging, as pipeline=default does), or use kv=contiguous.")
    if "position_ids" not in g.inputs:
        derived = sorted({n.name for n in g if n.op != "Attention" and not _free_of_p(list(n.attrs.values()))})
        if derived:
            raise ConfigError(
                f"kv paging needs the decoder to take position_ids: this model derives positions "
                f"from the cache length P (e.g. {derived[0]}), which sequences of one paged batch "
                f"do not share. Export the model with a position_ids input, or use kv=contiguous.")
    max_pos = g.meta.get("max_positions")
    if max_model_len is not None and max_pos and max_model_len > int(max_pos):
        raise ConfigError(
            f"kv.max_model_len={max_model_len} exceeds the {int(max_pos)} positions this model "
            f"supports; set kv.max_model_len ≤ {int(max_pos)}.")
    for n in attn:
        kt = g.type(n.inputs[4])
        if kt.rank != 4 or kt.shape[2] != P or not all(isinstance(d, int) for d in (kt.shape[1], kt.shape[3])):
            raise ConfigError(f"kv paging: {n.name} reads a past of type {kt}; it needs "
                              f"[B, kv_heads, P, head_dim] with static heads and head_dim.")
    return attn


def _context_mask(g: Graph, block_size: int) -> str:
    """bool [B, 1, S, P + S]: past position j of sequence b is kept iff j < context_lens[b];
    every new token is kept (causality is the Attention's is_causal)."""
    pos = g.add_op("Range", [], 1, {"start": 0, "limit": P, "delta": 1},
                   types=[TensorType("int64", (P,))]).outputs[0]
    pos = g.add_op("Unsqueeze", [pos], 1, {"axes": [0]}).outputs[0]                 # [1, P]
    ctx = g.add_op("Unsqueeze", [CONTEXT_LENS], 1, {"axes": [1]}).outputs[0]        # [B, 1]
    past_ok = g.add_op("Less", [pos, ctx], 1).outputs[0]                             # [B, P]
    new_ok = g.add_op("ConstantOfShape", [], 1, {"shape": [B, S], "value": np.array([True])},
                      types=[TensorType("bool", (B, S))]).outputs[0]
    keep = g.add_op("Concat", [past_ok, new_ok], 1, {"axis": 1}).outputs[0]          # [B, P + S]
    keep = g.add_op("Unsqueeze", [keep], 1, {"axes": [1, 2]}).outputs[0]            # [B, 1, 1, P + S]
    # onnxruntime wants the query axis spelled out
    return g.add_op("Expand", [keep], 1, {"shape": [B, 1, S, P + S]}).outputs[0]    # [B, 1, S, P + S]


def _combine_mask(g: Graph, old: str, mask: str, cache: dict) -> str:
    """The Attention's own mask (bool or additive float) restricted to ``mask``."""
    if not old:
        return mask
    if old in cache:
        return cache[old]
    ty = g.type(old)
    if ty.dtype == "bool":
        out = g.add_op("And", [old, mask], 1, types=[TensorType("bool", _bshape(g, old, mask))]).outputs[0]
    else:
        ninf = g.add_param(g.fresh("paged_mask_neg_inf"), TensorType(ty.dtype, ()),
                           np.array(-np.inf, dtype=DTYPES[ty.dtype][1] or np.float32), const=True)
        out = g.add_op("Where", [mask, old, ninf], 1).outputs[0]
    cache[old] = out
    return out


def _bshape(g, a, b):
    return broadcast_shapes(g.type(a).shape, g.type(b).shape)


def _new_kv(g: Graph, n, t: str, heads: int, name: str) -> str:
    """The Attention's new K or V ``t`` (4-D [B, Hkv, S, D], or the 3-D form [B, S, Hkv·D]) as
    the graph output ``name`` [B, Hkv, S, D]."""
    ty = g.type(t)
    if ty.rank == 4:
        return g.add_op("Identity", [t], [name]).outputs[0]
    d = ty.shape[2] // heads
    r = g.add_op("Reshape", [t], 1, {"shape": [B, S, heads, d]}).outputs[0]
    return g.add_op("Transpose", [r], [name], {"perm": [0, 2, 1, 3]}).outputs[0]


def page_kv_cache(g: Graph, block_size: int = DEFAULT_BLOCK_SIZE, max_model_len: int | None = None) -> dict[str, int]:
    """Rewrite ``g`` in place (see the module doc); returns stats. Raises ConfigError when the
    graph has no lifted KV cache or derives positions from the cache length."""
    attn = _check(g, block_size, max_model_len)
    if (g.meta.get("kv_cache") or {}).get("padding") in g.inputs:
        # the lift's padding mask: a paged runtime says which tokens exist through context_lens
        pad_in = g.meta["kv_cache"]["padding"]
        for n in attn:
            if len(n.inputs) > 3 and n.inputs[3]:
                g.set_input(n, 3, "")
        eliminate_dead_code(g)
        if not g.consumers(pad_in):
            g.remove_input(pad_in)
        g.meta["kv_cache"] = {k: v for k, v in g.meta["kv_cache"].items() if k != "padding"}
    kv = set(g.meta.get("kv_tensors", ()))
    bs = int(block_size)
    first_kv = min(g.inputs.index(n.inputs[4]) for n in attn)
    g.add_input(BLOCK_TABLE, TensorType("int64", (B, P / bs)))
    g.add_input(CONTEXT_LENS, TensorType("int64", (B,)))
    mask = _context_mask(g, bs)
    masks: dict[str, str] = {}
    pools, new_outputs, old = [], {}, []
    for i, n in enumerate(attn):
        layer = ann.get(n, "layer")
        layer = i if layer is None else layer
        pk, pv = n.inputs[4], n.inputs[5]
        pools_i = []
        for what, past in (("key", pk), ("value", pv)):
            ty = g.type(past)
            _, h, _, d = ty.shape
            pool = g.add_input(f"{what}_cache.{layer}", TensorType(ty.dtype, (B * P / bs, h, bs, d)))
            gathered = g.add_op("PagedKVGather", [pool, BLOCK_TABLE], 1).outputs[0]
            g.set_input(n, 4 if what == "key" else 5, gathered)
            pools_i.append(pool)
            kv |= {pool, gathered}
        pools += pools_i
        g.set_input(n, 3, _combine_mask(g, n.inputs[3] if len(n.inputs) > 3 else "", mask, masks))
        hkv = g.type(pk).shape[1]
        for what, t, present in (("key", n.inputs[1], n.outputs[1]), ("value", n.inputs[2], n.outputs[2])):
            out = _new_kv(g, n, t, hkv, f"new_{what}.{layer}")
            new_outputs[present] = out
            kv.add(out)
        old += [pk, pv]
        prev = ann.get(n, "kv_layout")
        ann.set(n, "kv_layout", KVLayout("paged", block_size=bs, dtype=prev.dtype if prev else None))
    g.set_outputs(new_outputs.get(o, o) for o in g.outputs)
    for t in old:
        g.remove_input(t)
        kv.discard(t)
    # inputs: the others, then block_table, context_lens and the pools where the past KV was
    others = [t for t in g.inputs if t not in (BLOCK_TABLE, CONTEXT_LENS) and t not in pools]
    first_kv = min(first_kv, len(others))
    g.set_inputs(others[:first_kv] + [BLOCK_TABLE, CONTEXT_LENS] + pools + others[first_kv:])
    g.meta["kv_tensors"] = sorted(kv)
    # new dicts: Graph.copy() shares meta values, and the contiguous original keeps its sources
    g.meta["dim_sources"] = {**g.meta.get("dim_sources", {}), "P": (BLOCK_TABLE, 1, bs)}
    g.meta["dim_names"] = {**g.meta.get("dim_names", {}), str(P / bs): "max_blocks",
                           str(B * P / bs): "num_blocks"}
    info = {"block_size": bs, "layers": len(attn), "block_table": BLOCK_TABLE, "context_lens": CONTEXT_LENS,
            "pools": pools, "new_kv": [new_outputs[n.outputs[j]] for n in attn for j in (1, 2)]}
    if max_model_len is not None:
        info.update(max_model_len=int(max_model_len), max_blocks_per_seq=math.ceil(max_model_len / bs))
    g.meta["kv_paging"] = info
    g.meta["onnx_metadata"] = {**(g.meta.get("onnx_metadata") or {}), "rooftop.kv_paging": json.dumps(info, sort_keys=True)}
    eliminate_dead_code(g)
    return {"layers": len(attn), "block_size": bs}


class KVPaging(Pass):
    """Registered as ``kv_paging`` (params ``block_size``, default 16, and ``max_model_len``):
    the paged-KV artifact of a decoder with a lifted cache (module doc). A graph already paged is
    left as it is; one without a KV cache is a config error."""

    name = "kv_paging"

    def __init__(self, block_size: int = DEFAULT_BLOCK_SIZE, max_model_len: int | None = None, **unknown):
        if unknown:
            raise ConfigError(f"pass 'kv_paging' takes block_size and max_model_len, got also "
                              f"{sorted(unknown)}; remove them from its pipeline entry.")
        super().__init__(block_size=block_size, max_model_len=max_model_len)
        self.block_size = int(block_size)
        self.max_model_len = None if max_model_len is None else int(max_model_len)

    def check_params(self) -> None:
        bs, mml = self.params["block_size"], self.params["max_model_len"]
        if isinstance(bs, bool) or not isinstance(bs, (int, np.integer)) or bs < 1:
            raise ConfigError(f"kv paging: block_size={bs!r} is impossible; a block holds a whole "
                              f"number ≥ 1 of tokens (vLLM uses 16). Set kv.block_size to a positive integer.")
        if mml is not None and (isinstance(mml, bool) or not isinstance(mml, (int, np.integer)) or mml < 1):
            raise ConfigError(f"kv paging: max_model_len={mml!r} is impossible; it is the most tokens "
                              f"(prompt + generated) one sequence may hold, an integer ≥ 1. Set "
                              f"kv.max_model_len to one, or leave it unset.")

    def run(self, g: Graph) -> PassResult:
        if g.meta.get("kv_paging"):
            return PassResult(g, False, {"layers": 0})
        stats = page_kv_cache(g, self.block_size, self.max_model_len)
        return PassResult(g, True, stats)


__all__ = ["KVPaging", "page_kv_cache", "BLOCK_TABLE", "CONTEXT_LENS", "DEFAULT_BLOCK_SIZE"]
