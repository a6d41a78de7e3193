"""A reference runtime for rooftop's paged-KV artifact (passes/kv_paging.py), in numpy.

What a serving runtime does around the artifact, written down so the tests and the verifier
exercise the contract the way a runtime would: per layer a block pool ``key_cache.i`` /
``value_cache.i`` ``[num_blocks, kv_heads, block_size, head_dim]``, blocks handed out from a
shuffled free list (so a sequence's blocks are not contiguous, nor in order); each step feeds
``block_table [B, max_blocks]`` (unused entries: random valid block ids — the artifact must mask
them) and ``context_lens [B]``, then scatters the step's ``new_key.i`` / ``new_value.i``
``[B, kv_heads, S, head_dim]`` into the pool: token ``t`` of sequence ``b`` goes to position
``context_lens[b] + t``, block ``table[b][pos // block_size]``, slot ``pos % block_size``. Only
each sequence's real tokens are scattered (a batch of unequal new-token counts is right-padded).

The layout facts come from the artifact itself (its ``rooftop.kv_paging`` metadata and input
types), so this runs any paged model rooftop emits.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from compiler.errors import ModelFileError, RooftopError

META_KEY = "rooftop.kv_paging"


class KVBlocksExhausted(RooftopError):
    """The runtime's block pool has no free block for a sequence (a capacity limit of the run, not
    a bug)."""


def paging_info(model: onnx.ModelProto | str) -> dict:
    """The ``rooftop.kv_paging`` metadata of a paged artifact, plus each pool's (kv_heads,
    head_dim) and element type; ModelFileError when the model is not paged."""
    if isinstance(model, str):
        model = onnx.load(model, load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    if META_KEY not in meta:
        raise ModelFileError("the model has no rooftop.kv_paging metadata: it is not a paged-KV artifact (emit it "
                             "with kv=paged)")
    info = json.loads(meta[META_KEY])
    dims = {}
    for i in model.graph.input:
        if i.name in info["pools"]:
            d = [x.dim_value for x in i.type.tensor_type.shape.dim]
            dims[i.name] = (d[1], d[3], onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type))
    info["pool_dims"] = dims
    return info


class PagedKV:
    """Block pools, free list, block tables and context lengths of a batch of sequences."""

    def __init__(self, info: Mapping, num_blocks: int, *, seed: int = 0, garbage: bool = True,
                 dtype=None):
        self.info = dict(info)
        self.bs = int(info["block_size"])
        self.num_blocks = int(num_blocks)
        self.rng = np.random.default_rng(seed)
        self.pools = {}
        for name, (h, d, dt) in info["pool_dims"].items():
            shape = (self.num_blocks, h, self.bs, d)
            dt = dtype or dt
            # never-written slots hold finite garbage: a masking bug shows as a wrong result
            self.pools[name] = (self.rng.standard_normal(shape) * 3).astype(dt) if garbage else np.zeros(shape, dt)
        self.free = list(self.rng.permutation(self.num_blocks))
        self.tables: dict[int, list[int]] = {}
        self.lens: dict[int, int] = {}
        # new_key.i / new_value.i → the pool it is scattered into
        self.targets = dict(zip(info["new_kv"], info["pools"]))

    def add(self, seq: int) -> None:
        self.tables[seq] = []
        self.lens[seq] = 0

    def release(self, seq: int) -> None:
        self.free += self.tables.pop(seq)
        self.lens.pop(seq)

    def _reserve(self, seq: int, tokens: int) -> None:
        need = -(-tokens // self.bs)
        while len(self.tables[seq]) < need:
            if not self.free:
                raise KVBlocksExhausted(f"out of KV blocks: sequence {seq} needs {need} blocks of {self.bs} tokens "
                                        f"and none is free; release a sequence or give the runtime more blocks")
            self.tables[seq].append(int(self.free.pop()))

    def feeds(self, seqs: Sequence[int], extra_columns: int = 0) -> dict[str, np.ndarray]:
        """block_table, context_lens and the pools for one step of ``seqs``; the table is as wide
        as the longest context needs (+ ``extra_columns``), padded with random valid block ids."""
        # only blocks holding context are read; a block reserved but empty stays masked
        width = max([-(-self.lens[s] // self.bs) for s in seqs] + [0]) + extra_columns
        table = self.rng.integers(0, self.num_blocks, (len(seqs), width)).astype(np.int64)
        for r, s in enumerate(seqs):
            used = -(-self.lens[s] // self.bs)
            table[r, :used] = self.tables[s][:used]
        out = {"block_table": table, "context_lens": np.array([self.lens[s] for s in seqs], np.int64)}
        out.update(self.pools)
        return out

    def positions(self, seqs: Sequence[int], s: int) -> np.ndarray:
        """position_ids [B, S]: context_lens[b] + t."""
        return np.array([[self.lens[q] + t for t in range(s)] for q in seqs], np.int64)

    def scatter(self, seqs: Sequence[int], new_tokens: Sequence[int], outputs: Mapping[str, np.ndarray]) -> None:
        """Write each sequence's first ``new_tokens[b]`` new K/V into its blocks; advance its
        context length."""
        for r, (s, n) in enumerate(zip(seqs, new_tokens)):
            start = self.lens[s]
            self._reserve(s, start + n)
            for t in range(n):
                pos = start + t
                blk, slot = self.tables[s][pos // self.bs], pos % self.bs
                for out, pool in self.targets.items():
                    self.pools[pool][blk, :, slot, :] = outputs[out][r, :, t, :]
            self.lens[s] = start + n


__all__ = ["PagedKV", "paging_info", "META_KEY"]
