"""Capacity planning against hand-derived figures (the A10 arithmetic, PagedAttention)."""
from __future__ import annotations

import numpy as np
import pytest

from compiler.analysis.capacity import kv_budget, kv_bytes_per_token_for, kv_token_bytes, plan_capacity
from compiler.errors import ConfigError
from compiler.perf.hardware import hardware_by_name

# Llama-2-7B (Touvron et al. 2023, Table 1): 32 layers, hidden 4096, 32 heads (MHA), MLP 11008,
# vocab 32000, untied embeddings. Parameter count by hand:
LAYER = 4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096
PARAMS_7B = 32 * LAYER + 2 * 32000 * 4096 + 4096
W7B_FP16 = 2 * PARAMS_7B
KV_TOK_7B = 2 * 32 * 32 * 128 * 2          # K and V, 32 layers, 32 heads x 128, fp16


def test_hand_figures():
    assert PARAMS_7B == 6_738_415_616
    assert KV_TOK_7B == 2**19                # 0.5 MiB per token
    assert kv_token_bytes(32, 32, 128, "fp16") == KV_TOK_7B
    assert kv_token_bytes(32, 32, 128, "fp8") == KV_TOK_7B / 2


@pytest.fixture(scope="module")
def a10():
    return hardware_by_name("a10")


def test_llama2_7b_on_a10_holds_five_4096_token_sequences_contiguous(a10):
    plan = plan_capacity(memory_bytes=a10.memory_bytes, weights_bytes=W7B_FP16,
                         kv_bytes_per_token=KV_TOK_7B, sequence_tokens=4096, max_model_len=4096,
                         reserve_bytes=0.5e9, activation_peak_bytes=0.1e9)
    # (24 GiB - 13.48 GB - 0.6 GB) / 2 GiB = 5.4
    assert plan.contiguous_max_sequences == 5
    assert plan.kv_budget_bytes == pytest.approx(24 * 2**30 - W7B_FP16 - 0.6e9)
    # a 4096-token sequence fills its 256 blocks exactly: same count paged, no fragmentation
    assert plan.paged_max_sequences == 5
    assert plan.paged_fragmentation_tokens == 0
    assert plan.contiguous_reservation_waste_fraction == 0


def test_paged_capacity_is_about_4x_for_512_plus_512_requests(a10):
    plan = plan_capacity(memory_bytes=a10.memory_bytes, weights_bytes=W7B_FP16,
                         kv_bytes_per_token=KV_TOK_7B, sequence_tokens=512 + 512,
                         max_model_len=4096, reserve_bytes=0.5e9, block_size=16)
    budget = 24 * 2**30 - W7B_FP16 - 0.5e9
    assert plan.kv_blocks == int(budget // (16 * KV_TOK_7B))
    assert plan.paged_blocks_per_sequence == 64
    assert plan.paged_max_sequences == plan.kv_blocks // 64
    assert plan.contiguous_max_sequences == 5
    assert 3.5 <= plan.paged_vs_contiguous <= 4.5
    assert plan.contiguous_reservation_waste_fraction == pytest.approx(0.75)


def test_fragmentation_is_the_tail_of_the_last_block():
    plan = plan_capacity(memory_bytes=1e9, weights_bytes=0, kv_bytes_per_token=1000,
                         sequence_tokens=[17, 32, 33], max_model_len=64, block_size=16)
    # blocks 2, 2, 3 -> tails 15, 0, 15 tokens
    assert plan.paged_blocks_per_sequence == pytest.approx(7 / 3)
    assert plan.paged_fragmentation_tokens == pytest.approx(10)
    assert plan.paged_fragmentation_fraction == pytest.approx(30 / (7 * 16))
    assert plan.kv_blocks == int(1e9 // 16000)
    assert plan.paged_max_sequences_guaranteed == plan.kv_blocks // 3
    assert plan.contiguous_max_sequences == int(1e9 // 64000)


def test_distribution_expected_concurrency_follows_mean_blocks():
    rng = np.random.default_rng(0)
    L = rng.integers(64, 2048, 5000)
    plan = plan_capacity(memory_bytes=8e9, weights_bytes=2e9, kv_bytes_per_token=2**17,
                         sequence_tokens=L, max_model_len=2048)
    mean_blocks = np.ceil(L / 16).mean()
    assert plan.paged_max_sequences == int(plan.kv_blocks // mean_blocks)
    assert plan.paged_max_sequences_guaranteed <= plan.paged_max_sequences


def test_kv_dtype_halves_the_cache_and_doubles_capacity(a10):
    fp8_tok = kv_bytes_per_token_for(KV_TOK_7B, "fp16", "fp8")
    assert fp8_tok == KV_TOK_7B / 2
    base = dict(memory_bytes=a10.memory_bytes, weights_bytes=W7B_FP16, sequence_tokens=1024,
                max_model_len=4096)
    p16 = plan_capacity(kv_bytes_per_token=KV_TOK_7B, **base)
    p8 = plan_capacity(kv_bytes_per_token=fp8_tok, kv_dtype="fp8", **base)
    assert p8.kv_blocks == 2 * p16.kv_blocks or p8.kv_blocks == 2 * p16.kv_blocks + 1
    assert kv_bytes_per_token_for(100, "fp16", "int8", scale_bytes_per_token=4) == 54


def test_gpu_utilization_scales_the_budget():
    assert kv_budget(100.0, 30.0, 5.0, 5.0, 0.9) == pytest.approx(50.0)
    with pytest.raises(ConfigError):
        kv_budget(100.0, 30.0, gpu_utilization=1.5)


def test_model_that_does_not_fit_has_no_blocks():
    plan = plan_capacity(memory_bytes=80 * 2**30, weights_bytes=138e9, kv_bytes_per_token=327680,
                         sequence_tokens=4096, max_model_len=4096)
    assert plan.kv_budget_bytes < 0 and plan.kv_blocks == 0 and plan.contiguous_max_sequences == 0


@pytest.mark.parametrize("kw, msg", [
    ({"block_size": 0}, "kv.block_size"),
    ({"max_model_len": 100}, "kv.max_model_len"),
    ({"kv_dtype": "fp4"}, "kv.dtype"),
])
def test_bad_input_names_the_key(kw, msg):
    base = dict(memory_bytes=1e9, weights_bytes=0, kv_bytes_per_token=10, sequence_tokens=512,
                max_model_len=1024)
    base.update(kw)
    with pytest.raises(ConfigError, match=msg):
        plan_capacity(**base)


def test_capacity_section_reports_both_layouts(a10):
    from compiler.analysis.capacity import capacity_section
    sec = capacity_section(kv={"layout": "paged", "block_size": 16, "max_model_len": 4096, "dtype": None},
                           gpu_utilization=1.0, memory_bytes=a10.memory_bytes, weights_bytes=W7B_FP16,
                           kv_bytes_per_token=KV_TOK_7B, model_kv_dtype="fp16",
                           activation_peak_bytes=0.0, reserve_bytes=0.5e9, sequence_tokens=1024)
    assert sec["kv_blocks"] == int((24 * 2**30 - W7B_FP16 - 0.5e9) // (16 * KV_TOK_7B))
    assert sec["max_sequences"] == sec["paged"]["max_sequences"] == sec["kv_blocks"] // 64
    assert sec["contiguous"]["max_sequences"] == 5
    fp8 = capacity_section(kv={"layout": "contiguous", "max_model_len": 4096, "dtype": "fp8"},
                           gpu_utilization=0.9, memory_bytes=a10.memory_bytes, weights_bytes=W7B_FP16,
                           kv_bytes_per_token=KV_TOK_7B, model_kv_dtype="fp16",
                           activation_peak_bytes=0.0, reserve_bytes=0.5e9, sequence_tokens=1024)
    assert fp8["kv_bytes_per_token"] == KV_TOK_7B / 2
    assert fp8["max_sequences"] == int((0.9 * 24 * 2**30 - W7B_FP16 - 0.5e9) // (4096 * KV_TOK_7B / 2))
    with pytest.raises(ConfigError, match="kv.layout"):
        capacity_section(kv={"layout": "ring"}, gpu_utilization=1.0, memory_bytes=1e9, weights_bytes=0,
                         kv_bytes_per_token=1, model_kv_dtype="fp16", activation_peak_bytes=0,
                         reserve_bytes=0, sequence_tokens=16)


class _LinearPeak:
    """An activation peak of ``per_seq`` bytes per sequence (the schedule's interface)."""

    def __init__(self, per_seq: float):
        self.per_seq = per_seq

    def activation_peak(self, b, s, p):
        return np.atleast_1d(np.asarray(b, dtype=float)) * self.per_seq


@pytest.mark.parametrize("usable", [1e6 + 3000 * 200.0, 1e6 + 10_000 * 200.0 + 199, 1e6 + 123_457 * 200.0])
def test_fit_count_is_exact_beyond_the_search_table(usable):
    from compiler.analysis.phases import CAPACITY_SEARCH_MAX, fit_count
    # weights 1 MB, 100 KV tokens of 1 byte + 100 bytes of activations per sequence: B = (usable - 1e6) // 200
    best, fits = fit_count(_LinearPeak(100.0), 1e6, 1.0, 100, 8, 0.0, usable)
    assert best == int((usable - 1e6) // 200)
    assert len(fits) == CAPACITY_SEARCH_MAX and fits.sum() == min(best, CAPACITY_SEARCH_MAX)
