"""Prefix caching: the workload models by hand (block flooring, the cold first request, multi-turn
history), TTFT and prefill FLOPs falling in proportion to the hit rate (derived by hand on a step
model linear in the new tokens), pinned shared blocks raising capacity, and the real cost model of
a small Llama saving about the hit fraction of its prefill FLOPs."""
from __future__ import annotations

import numpy as np
import pytest

from compiler.analysis.prefix import (PrefixModel, apply_prefix, pinned_blocks, prefix_hook, prefix_section)
from compiler.analysis.serving import ServeConfig, simulate
from compiler.errors import ConfigError

W, PER_NEW = 4e-3, 5e-5


def new_token_step(b, p, s):
    """Time linear in the new tokens, nothing per cached token: a prefill of s new tokens over p
    cached ones costs W + PER_NEW x s (decode: W + PER_NEW x b)."""
    b, p, s = (np.asarray(x, float) for x in (b, p, s))
    return W + PER_NEW * b * s + 0 * p


def test_shared_prefix_by_hand():
    m = PrefixModel(share=1.0, prefix_len=100, prefixes=2, block_size=16)
    prompt = np.array([300, 300, 50, 300, 300, 300])
    p, c = apply_prefix(m, prompt, np.ones(6, np.int64))
    assert p[2] == 101                             # lengthened to hold the prefix and one more token
    hit = (100 // 16) * 16                         # 96: whole blocks only
    firsts = sorted({int(np.flatnonzero(c == 0)[i]) for i in range(int((c == 0).sum()))})
    assert len(firsts) == 2 and set(c.tolist()) == {0, hit}   # one cold request per prefix
    assert pinned_blocks(m) == 2 * 6
    none = apply_prefix(PrefixModel(share=0.0, prefix_len=100), prompt, np.ones(6, np.int64))
    np.testing.assert_array_equal(none[1], 0)
    np.testing.assert_array_equal(none[0], prompt)


def test_multi_turn_history_by_hand():
    m = PrefixModel(turns=3, block_size=16)
    prompt = np.array([40, 30, 20, 50, 10, 10])
    out = np.array([10, 20, 30, 5, 5, 5])
    p, c = apply_prefix(m, prompt, out)
    # conversation 0: history 0, 40+10 = 50, 50+30+20 = 100; conversation 1: 0, 55, 55+15 = 70
    np.testing.assert_array_equal(p, [40, 30 + 50, 20 + 100, 50, 10 + 55, 10 + 70])
    np.testing.assert_array_equal(c, [0, 48, 96, 0, 48, 64])
    with pytest.raises(ConfigError, match="not both"):
        PrefixModel(turns=2, prefix_len=64)
    with pytest.raises(ConfigError, match="share"):
        PrefixModel(share=1.5)


@pytest.mark.parametrize("share", [0.25, 0.5, 1.0])
def test_ttft_and_flops_fall_in_proportion_to_the_hit_rate(share):
    """At a trickle each request is alone: TTFT = W + PER_NEW x (prompt − cached). The mean TTFT
    therefore falls by PER_NEW x mean(cached) = PER_NEW x hit_rate x mean(prompt); with FLOPs
    2N per new token the prefill FLOPs fall by exactly the hit rate."""
    P, prefix = 1024, 512
    m = PrefixModel(share=share, prefix_len=prefix, prefixes=1, block_size=16)
    cfg = ServeConfig(rate=1e-5, requests=200, prompt=P, output=2, seed=5)   # nobody waits
    with_c = simulate(new_token_step, cfg, kv_blocks=10_000, prefix=prefix_hook(m))
    without = simulate(new_token_step, cfg, kv_blocks=10_000, prefix=prefix_hook(m, caching=False))
    p, c = apply_prefix(m, np.full(200, P), np.full(200, 2))
    hit_rate = c.sum() / p.sum()
    assert hit_rate == pytest.approx(share * 512 / 1024, abs=0.08)          # sampled sharers, one cold
    drop = float(np.mean(without.ttft_s) - np.mean(with_c.ttft_s))
    assert drop == pytest.approx(PER_NEW * hit_rate * P, rel=1e-6)   # (clock resolution at t ~ 1e7 s)
    sec = prefix_section(m, np.full(200, P), np.full(200, 2), flops=lambda s, q: 2 * 7e9 * np.asarray(s, float),
                         prefill_time=lambda s, q: new_token_step(1, q, s), kv_blocks=10_000,
                         with_cache={}, without_cache={})
    assert sec["hit_rate"] == pytest.approx(hit_rate)
    assert sec["prefill_flops_saved_fraction"] == pytest.approx(hit_rate, rel=1e-12)
    assert sec["prefill_time_mean_without_cache_s"] - sec["prefill_time_mean_s"] == pytest.approx(PER_NEW * hit_rate * P)


def test_shared_blocks_raise_capacity():
    """A 1024-token system prompt shared by every request is stored once: under memory pressure
    fewer preemptions and a larger mean batch."""
    m = PrefixModel(share=1.0, prefix_len=1024, prefixes=1, block_size=16)
    cfg = ServeConfig(rate=50, requests=200, prompt=1200, output=64, seed=1)
    blocks = 600
    cached = simulate(new_token_step, cfg, kv_blocks=blocks - pinned_blocks(m), prefix=prefix_hook(m))
    plain = simulate(new_token_step, cfg, kv_blocks=blocks, prefix=prefix_hook(m, caching=False))
    assert cached.mean_batch > 2 * plain.mean_batch
    assert cached.throughput_tok_s > plain.throughput_tok_s
    sec = prefix_section(m, np.full(200, 1200), np.full(200, 64), flops=lambda s, q: np.asarray(s, float),
                         prefill_time=lambda s, q: new_token_step(1, q, s), kv_blocks=blocks, with_cache={},
                         without_cache={})
    assert sec["sequences_at_mean"] > 3 * sec["sequences_at_mean_without_cache"]


def test_real_cost_model_saves_about_the_hit_fraction():
    """Llama (tiny, imported): the GEMMs dominate the prefill FLOPs, so half the prompt cached saves
    nearly half of them — a little less, since the new tokens' attention still reads the cached keys."""
    from compiler.perf.cost import CostModel
    from compiler.perf.hardware import hardware_by_name
    from tests.conftest import imported
    cm = CostModel(imported("llama_tiny"), hardware_by_name("h100_sxm"))
    s_full = cm.totals(1, 64, 0, "prefill")["flops"]
    s_half = cm.totals(1, 32, 32, "prefill")["flops"]
    saved = 1 - s_half / s_full
    assert 0.3 < saved < 0.5
