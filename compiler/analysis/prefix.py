"""Prefix caching: shared system prompts and multi-turn chats reuse cached KV blocks.

vLLM's automatic prefix caching hashes every *full* KV block by its tokens and the blocks before
it; SGLang's RadixAttention keeps a radix tree of token sequences. Either way a new request skips
the prefill of its longest cached prefix, rounded down to whole blocks (vLLM reuses full blocks
only), and always computes at least its last prompt token. Two workload models
(``serve.prefix.*``):

* **shared prefix** (``turns: 1``): a fraction ``share`` of the requests starts with one of
  ``prefixes`` system prompts of ``prefix_len`` tokens (drawn uniformly; ``serve.prompt_len`` is
  the whole prompt, lengthened to ``prefix_len + 1`` where shorter). The first request of each
  prefix computes it (a cold cache); every later one finds ``floor(prefix_len / block) x block``
  tokens cached. Those blocks are held once for all requests (pinned: ``prefixes x`` the prefix's
  full blocks come off the KV budget), so a sequence holds fewer blocks of its own — capacity rises.
* **multi-turn** (``turns`` > 1): requests form conversations of ``turns`` consecutive requests;
  turn k's prompt re-sends the history (the earlier turns' prompts and outputs) plus its own
  ``serve.prompt_len`` tokens, and finds the history's full blocks cached (the previous turn left
  them in the cache). The history's blocks are the request's own (nothing is shared between
  conversations). Turns arrive as Poisson requests like any other (no think time is modelled,
  and a turn may arrive before the previous one finished — the cache is assumed warm).

The hit rate is token-level: cached prompt tokens / prompt tokens. A cached prefix turns a prefill
of S tokens into one of S − h new tokens over h cached ones (``T(1, h, S − h)``): the GEMMs shrink
by the hit fraction, the attention of the new tokens still reads the cached keys.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from compiler.errors import ConfigError

__all__ = ["PrefixModel", "prefix_model_of", "prefix_hook", "apply_prefix", "pinned_blocks",
           "prefix_section", "check_prefix"]


@dataclass(frozen=True)
class PrefixModel:
    share: float = 1.0
    prefix_len: int = 0
    prefixes: int = 1
    turns: int = 1
    seed: int = 0
    block_size: int = 16

    def __post_init__(self):
        if not (0.0 <= self.share <= 1.0):
            raise ConfigError(f"serve.prefix.share={self.share!r} must be a fraction in [0, 1].")
        for k, lo in (("prefix_len", 0), ("prefixes", 1), ("turns", 1), ("block_size", 1)):
            v = getattr(self, k)
            if int(v) != v or v < lo:
                raise ConfigError(f"serve.prefix.{k}={v!r} must be an integer >= {lo}.")
        if self.turns > 1 and self.prefix_len > 0:
            raise ConfigError("serve.prefix: give either a shared prefix (prefix_len > 0, turns 1) or "
                              "multi-turn conversations (turns > 1, prefix_len 0), not both.")

    @property
    def shared(self) -> bool:
        return self.turns == 1


def check_prefix(p: Mapping) -> None:
    """Range checks of ``serve.prefix.*`` (compiler/driver/config.py)."""
    if p.get("enabled"):
        prefix_model_of(p)


def prefix_model_of(p: Mapping, seed: int = 0, block_size: int = 16) -> PrefixModel:
    return PrefixModel(share=float(p.get("share", 1.0)), prefix_len=int(p.get("prefix_len") or 0),
                       prefixes=int(p.get("prefixes") or 1), turns=int(p.get("turns") or 1), seed=int(seed),
                       block_size=int(block_size))


def apply_prefix(model: PrefixModel, prompt: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(prompts, cached tokens per request) of the workload model (module doc); deterministic."""
    n = len(prompt)
    bs = model.block_size
    prompt = np.asarray(prompt, np.int64).copy()
    if model.turns > 1:
        conv = np.arange(n) // model.turns
        turn_tokens = prompt + np.asarray(out, np.int64)
        csum = np.cumsum(turn_tokens)
        start = np.searchsorted(conv, conv, side="left")          # first request of the conversation
        before = csum - turn_tokens - np.where(start > 0, csum[start - 1], 0)
        history = np.where(np.arange(n) > start, before, 0)
        cached = (history // bs) * bs
        return prompt + history, np.minimum(cached, prompt + history - 1)
    rng = np.random.default_rng([model.seed, 0x9E37])             # a stream apart from the arrivals
    has = rng.random(n) < model.share
    pid = rng.integers(0, model.prefixes, n)
    if model.prefix_len < 1:
        return prompt, np.zeros(n, np.int64)
    prompt = np.where(has, np.maximum(prompt, model.prefix_len + 1), prompt)
    hit = (model.prefix_len // bs) * bs
    first = np.zeros(n, bool)
    seen: set[int] = set()
    for i in np.flatnonzero(has).tolist():
        if pid[i] not in seen:
            seen.add(int(pid[i]))
            first[i] = True
    cached = np.where(has & ~first, hit, 0).astype(np.int64)
    return prompt, cached


def prefix_hook(model: PrefixModel, *, caching: bool = True) -> Callable:
    """The hook of :func:`compiler.analysis.serving.simulate`: ``(prompt, out) -> (prompt, cached,
    shared)``; ``caching=False`` gives the same prompts with nothing cached (the baseline)."""
    def hook(prompt, out):
        p, c = apply_prefix(model, prompt, out)
        return p, (c if caching else np.zeros_like(c)), model.shared
    return hook


def pinned_blocks(model: PrefixModel) -> int:
    """KV blocks the shared prefixes hold once for all requests (0 for multi-turn)."""
    if not model.shared or model.prefix_len < 1 or model.share <= 0:
        return 0
    return model.prefixes * (model.prefix_len // model.block_size)


def prefix_section(model: PrefixModel, prompt: np.ndarray, out: np.ndarray, *, flops: Callable,
                   prefill_time: Callable, kv_blocks: int, with_cache: Mapping, without_cache: Mapping) -> dict[str, Any]:
    """``serve.prefix`` of report.json: hit rate, prefill work (tokens, FLOPs) with and without the
    cache, blocks per request and the sequences the KV budget holds, and the simulation's TTFT /
    throughput without caching beside the headline (cached) one.

    ``flops(s, p)`` / ``prefill_time(s, p)``: prefill FLOPs / seconds of one request computing
    ``s`` new tokens over ``p`` cached ones (arrays)."""
    p, c = apply_prefix(model, prompt, out)
    bs = model.block_size
    f_with = float(np.sum(flops(p - c, c)))
    f_without = float(np.sum(flops(p, np.zeros_like(p))))
    t_with = float(np.mean(prefill_time(p - c, c)))
    t_without = float(np.mean(prefill_time(p, np.zeros_like(p))))
    own = p + out - (c if model.shared else 0)
    blocks_own = float(np.mean(-(-own // bs)))
    blocks_all = float(np.mean(-(-(p + out) // bs)))
    pinned = pinned_blocks(model)
    return {
        "model": "multi_turn" if model.turns > 1 else "shared_prefix",
        "share": model.share, "prefix_len": model.prefix_len, "prefixes": model.prefixes, "turns": model.turns,
        "block_size": bs,
        "hit_rate": float(c.sum() / p.sum()),
        "requests_hit": float(np.mean(c > 0)),
        "prompt_tokens_mean": float(p.mean()),
        "cached_tokens_mean": float(c.mean()),
        "prefill_tokens_computed_fraction": float((p - c).sum() / p.sum()),
        "prefill_flops": f_with, "prefill_flops_without_cache": f_without,
        "prefill_flops_saved_fraction": 1.0 - f_with / f_without if f_without else 0.0,
        "prefill_time_mean_s": t_with, "prefill_time_mean_without_cache_s": t_without,
        "pinned_blocks": pinned,
        "blocks_per_request_mean": blocks_own, "blocks_per_request_mean_without_cache": blocks_all,
        "sequences_at_mean": (kv_blocks - pinned) / blocks_own if blocks_own else None,
        "sequences_at_mean_without_cache": kv_blocks / blocks_all if blocks_all else None,
        "with_cache": dict(with_cache), "without_cache": dict(without_cache),
    }
