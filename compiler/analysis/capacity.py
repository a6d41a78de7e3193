"""KV-cache capacity planning: how many sequences fit, contiguous vs paged, side by side.

Pure functions of a few figures the cost report already has (weights, activation peak, KV bytes
per token) and the device memory; no graph, no cost model.

KV budget (the memory left for the cache)::

    kv_budget = device_memory x memory.gpu_utilization - weights - activation_peak - runtime_reserve

``gpu_utilization`` is the fraction of device memory the server may use (vLLM's
``gpu_memory_utilization``, 0.9 there; 1.0 here by default so the textbook A10 arithmetic holds: docs/guide/kv_cache.md).

Two layouts over the same budget
--------------------------------
* **contiguous** — every admitted sequence reserves ``kv.max_model_len`` tokens of cache up front
  (what a static KV allocation does): ``floor(kv_budget / (max_model_len x kv_bytes_per_token))``
  sequences; the *reservation waste* is ``max_model_len - L`` tokens per sequence of length ``L``.
* **paged** (PagedAttention, Kwon et al. 2023) — the budget is cut into ``kv_blocks`` blocks of
  ``kv.block_size`` tokens; a sequence of ``L`` tokens holds ``ceil(L / block_size)`` blocks; the
  only waste is *internal fragmentation*, the unused tail of its last block (< 1 block).
  Max concurrent sequences = ``floor(kv_blocks / blocks_per_sequence)`` for a fixed length; for a
  length distribution, the mean number of blocks a sequence holds sets the expected concurrency
  and the longest sequence the guaranteed one.

``kv.dtype``: fp16/bf16 store 2 bytes per element, fp8/int8 one; the quantized formats add a scale
(``scale_bytes_per_token``, e.g. one fp16 scale per token and KV head) — per-tensor scales are
negligible and default to 0.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from compiler.errors import ConfigError
from compiler.ir.tensors import HW_DTYPE_BYTES, hw_dtype

__all__ = ["KV_DTYPE_BYTES", "kv_bytes_per_token_for", "kv_budget", "CapacityPlan", "plan_capacity",
           "kv_token_bytes"]

#: Bytes per stored KV element by ``kv.dtype`` (the KV-cache formats among the hardware classes).
KV_DTYPE_BYTES = {d: HW_DTYPE_BYTES[d] for d in ("fp32", "fp16", "bf16", "fp8", "int8")}


def _kv_dtype(dtype: str) -> str:
    d = hw_dtype(str(dtype))
    if d not in KV_DTYPE_BYTES:
        raise ConfigError(f"kv.dtype={dtype!r} is not a KV-cache format rooftop knows; use one of "
                          f"{', '.join(KV_DTYPE_BYTES)} (e.g. kv.dtype=fp8 halves an fp16 cache).")
    return d


def kv_token_bytes(layers: int, kv_heads: int, head_dim: int, dtype: str = "fp16") -> float:
    """KV bytes one token adds: 2 (K and V) x layers x kv_heads x head_dim x bytes/element."""
    return 2.0 * layers * kv_heads * head_dim * KV_DTYPE_BYTES[_kv_dtype(dtype)]


def kv_bytes_per_token_for(base_bytes_per_token: float, base_dtype: str, kv_dtype: str | None,
                           scale_bytes_per_token: float = 0.0) -> float:
    """Rescale a model's KV bytes per token (stored in ``base_dtype``) to ``kv_dtype``."""
    if kv_dtype is None:
        return float(base_bytes_per_token)
    b0 = KV_DTYPE_BYTES[_kv_dtype(base_dtype)]
    b1 = KV_DTYPE_BYTES[_kv_dtype(kv_dtype)]
    return float(base_bytes_per_token) * b1 / b0 + float(scale_bytes_per_token)


def kv_budget(memory_bytes: float, weights_bytes: float, activation_peak_bytes: float = 0.0,
              reserve_bytes: float = 0.0, gpu_utilization: float = 1.0) -> float:
    """Device memory left for the KV cache (may be negative: the model does not fit)."""
    if not (0.0 < gpu_utilization <= 1.0):
        raise ConfigError(f"memory.gpu_utilization={gpu_utilization!r} must be in (0, 1]; it is "
                          "the fraction of device memory the server may use (vLLM uses 0.9).")
    return memory_bytes * gpu_utilization - weights_bytes - activation_peak_bytes - reserve_bytes


@dataclass(frozen=True)
class CapacityPlan:
    """Every planning figure, in bytes / tokens / sequences (see the module doc)."""

    kv_budget_bytes: float
    kv_bytes_per_token: float
    kv_dtype: str
    block_size: int                      # tokens per block
    block_bytes: float
    kv_blocks: int                       # blocks the budget holds (paged)
    kv_tokens: int                       # kv_blocks x block_size
    max_model_len: int
    mean_sequence_tokens: float          # prompt + generated, mean of the requests given
    max_sequence_tokens: int
    # contiguous: a reservation of max_model_len per sequence
    contiguous_max_sequences: int
    contiguous_reservation_waste_tokens: float     # mean per sequence
    contiguous_reservation_waste_fraction: float   # of the reserved memory
    # paged
    paged_blocks_per_sequence: float               # mean
    paged_max_sequences: int                       # expected (mean blocks per sequence)
    paged_max_sequences_guaranteed: int            # every sequence at the longest length
    paged_fragmentation_tokens: float              # mean unused tail of the last block
    paged_fragmentation_fraction: float            # of the allocated blocks
    paged_vs_contiguous: float | None              # ratio of max sequences

    def to_dict(self) -> dict:
        return asdict(self)


def plan_capacity(*, memory_bytes: float, weights_bytes: float, kv_bytes_per_token: float,
                  sequence_tokens: int | Sequence[int] | np.ndarray, max_model_len: int,
                  activation_peak_bytes: float = 0.0, reserve_bytes: float = 0.0,
                  gpu_utilization: float = 1.0, block_size: int = 16,
                  kv_dtype: str = "fp16") -> CapacityPlan:
    """The capacity of one device (or one tensor-parallel shard: pass per-device figures).

    ``sequence_tokens`` is the length (prompt + generated) of every request, one int or a sample of
    a distribution; ``kv_bytes_per_token`` is already in ``kv_dtype``.
    """
    if int(block_size) != block_size or block_size < 1:
        raise ConfigError(f"kv.block_size={block_size!r} must be a positive integer (16 in vLLM).")
    if int(max_model_len) != max_model_len or max_model_len < 1:
        raise ConfigError(f"kv.max_model_len={max_model_len!r} must be a positive integer.")
    if kv_bytes_per_token <= 0:
        raise ConfigError("the model has no KV cache (0 bytes per token): capacity planning "
                          "applies to causal decoders with a cache.")
    L = np.atleast_1d(np.asarray(sequence_tokens, dtype=np.int64))
    if L.size == 0 or (L < 1).any():
        raise ConfigError("request lengths must be positive token counts (prompt + generated).")
    if (L > max_model_len).any():
        raise ConfigError(f"a request of {int(L.max())} tokens exceeds kv.max_model_len="
                          f"{max_model_len}; raise kv.max_model_len or shorten the requests.")
    budget = kv_budget(memory_bytes, weights_bytes, activation_peak_bytes, reserve_bytes,
                       gpu_utilization)
    usable = max(budget, 0.0)
    bs = int(block_size)
    block_bytes = bs * kv_bytes_per_token
    kv_blocks = int(usable // block_bytes)
    blocks = -(-L // bs)                                  # ceil
    frag = blocks * bs - L
    contiguous = int(usable // (max_model_len * kv_bytes_per_token))
    mean_blocks = float(blocks.mean())
    paged = int(kv_blocks // mean_blocks) if mean_blocks else 0
    guaranteed = int(kv_blocks // int(blocks.max()))
    return CapacityPlan(
        kv_budget_bytes=float(budget), kv_bytes_per_token=float(kv_bytes_per_token),
        kv_dtype=_kv_dtype(kv_dtype), block_size=bs, block_bytes=float(block_bytes),
        kv_blocks=kv_blocks, kv_tokens=kv_blocks * bs, max_model_len=int(max_model_len),
        mean_sequence_tokens=float(L.mean()), max_sequence_tokens=int(L.max()),
        contiguous_max_sequences=contiguous,
        contiguous_reservation_waste_tokens=float((max_model_len - L).mean()),
        contiguous_reservation_waste_fraction=float(1.0 - L.mean() / max_model_len),
        paged_blocks_per_sequence=mean_blocks, paged_max_sequences=paged,
        paged_max_sequences_guaranteed=guaranteed,
        paged_fragmentation_tokens=float(frag.mean()),
        paged_fragmentation_fraction=float(frag.sum() / (blocks.sum() * bs)),
        paged_vs_contiguous=(paged / contiguous) if contiguous else None,
    )


def fits(plan: CapacityPlan) -> bool:
    return plan.kv_budget_bytes > 0 and not math.isnan(plan.kv_budget_bytes)


def capacity_section(*, kv: Mapping | None, gpu_utilization: float, memory_bytes: float,
                     weights_bytes: float, kv_bytes_per_token: float, model_kv_dtype: str,
                     activation_peak_bytes: float, reserve_bytes: float,
                     sequence_tokens) -> dict:
    """The report's ``capacity`` additions for the ``kv=`` group (layout, block_size,
    max_model_len, dtype): ``kv_blocks`` and both layouts side by side."""
    kv = dict(kv or {})
    layout = str(kv.get("layout", "contiguous"))
    if layout not in ("contiguous", "paged"):
        raise ConfigError(f"kv.layout={layout!r}: use kv=contiguous or kv=paged.")
    dtype = kv.get("dtype") or model_kv_dtype
    L = np.atleast_1d(np.asarray(sequence_tokens, dtype=np.int64))
    max_len = kv.get("max_model_len") or int(L.max())
    tok = kv_bytes_per_token_for(kv_bytes_per_token, model_kv_dtype, dtype,
                                 float(kv.get("scale_bytes_per_token") or 0.0))
    plan = plan_capacity(memory_bytes=memory_bytes, weights_bytes=weights_bytes, kv_bytes_per_token=tok,
                         sequence_tokens=L, max_model_len=int(max_len),
                         activation_peak_bytes=activation_peak_bytes, reserve_bytes=reserve_bytes,
                         gpu_utilization=gpu_utilization, block_size=int(kv.get("block_size") or 16),
                         kv_dtype=dtype)
    d = plan.to_dict()
    out = {"kv_layout": layout, "kv_blocks": plan.kv_blocks, "tokens_per_block": plan.block_size,
           "kv_budget_bytes": plan.kv_budget_bytes, "kv_dtype": plan.kv_dtype,
           "kv_bytes_per_token": plan.kv_bytes_per_token, "gpu_utilization": gpu_utilization,
           "max_model_len": plan.max_model_len,
           "max_sequences": plan.paged_max_sequences if layout == "paged" else plan.contiguous_max_sequences,
           "contiguous": {k[len("contiguous_"):]: v for k, v in d.items() if k.startswith("contiguous_")},
           "paged": {k[len("paged_"):]: v for k, v in d.items() if k.startswith("paged_")},
           "sequence_tokens": {"mean": plan.mean_sequence_tokens, "max": plan.max_sequence_tokens}}
    return out
