"""Serving modes (serve.mode offline | online) and admission policies (preempt | no_evict), with
exact figures on a linear step-time model and the engines' scheduler defaults from the runtime
profile."""
from __future__ import annotations

import numpy as np
import pytest

from compiler.analysis.serving import ServeConfig, config_of, sample_requests, serve_section, simulate
from compiler.driver.pipeline import with_runtime_defaults
from compiler.errors import ConfigError
from compiler.perf.runtime import runtime_by_name

A, PER_TOKEN, PER_CTX = 5e-3, 2e-5, 2e-7


def linear_step(b, p, s):
    b, p, s = (np.asarray(x, float) for x in (b, p, s))
    return A + PER_TOKEN * b * s + PER_CTX * b * (p + s)


def test_offline_requests_all_arrive_at_time_zero_with_the_same_lengths():
    kw = dict(requests=40, seed=2, prompt={"kind": "uniform", "low": 16, "high": 256},
              output={"kind": "uniform", "low": 4, "high": 64})
    on = sample_requests(ServeConfig(rate=3.0, **kw))
    off = sample_requests(ServeConfig(mode="offline", **kw))
    assert (off[0] == 0).all() and (on[0] > 0).all()
    np.testing.assert_array_equal(on[1], off[1])
    np.testing.assert_array_equal(on[2], off[2])


@pytest.mark.parametrize("admission", ["preempt", "no_evict"])
def test_offline_throughput_is_waves_of_the_batch_limit(admission):
    """Fixed lengths, all requests at t = 0, at most k running and room for all of them: requests
    run in waves of k — one prefill step of k prompts, then G - 1 decode steps over a growing cache
    — so the makespan is n/k waves, computed here from the step-time model directly."""
    n, k, P, G = 24, 8, 100, 20
    cfg = ServeConfig(mode="offline", requests=n, prompt=P, output=G, max_num_seqs=k, admission=admission)
    r = simulate(linear_step, cfg, kv_blocks=10_000, block_size=16)
    seg = float(linear_step(1, 0, P))
    weights_pass = float(linear_step(1, 0, 1))
    prefill = k * seg - (k - 1) * weights_pass          # k prompt segments stream the weights once
    decode = sum(float(linear_step(k, P + j, 1)) for j in range(1, G))
    wave = prefill + decode
    assert r.duration_s == pytest.approx(n / k * wave, rel=1e-6)
    assert r.throughput_tok_s == pytest.approx(n * G / (n / k * wave), rel=1e-6)
    assert r.max_batch == k and r.preemptions == 0
    # the first wave's TTFT is its prefill; the last wave waited for two before it
    assert r.ttft_s.min() == pytest.approx(prefill, rel=1e-6)
    assert r.ttft_s.max() == pytest.approx(2 * wave + prefill, rel=1e-6)


def test_no_evict_reserves_the_final_length_and_never_preempts():
    """A KV budget that holds the prompts of many requests but the final lengths of only a few:
    preempt-and-recompute admits on the prompt's blocks and must evict as the caches grow;
    no_evict admits only as many as fit at their final length (TensorRT-LLM's
    GUARANTEED_NO_EVICT) and never evicts."""
    P, G, bs = 64, 192, 16
    per_request = -(-(P + G) // bs)                      # 16 blocks at the final length
    blocks = 5 * per_request + 3
    cfg = dict(mode="offline", requests=30, prompt=P, output=G, max_num_seqs=64)
    pre = simulate(linear_step, ServeConfig(admission="preempt", **cfg), kv_blocks=blocks, block_size=bs)
    ne = simulate(linear_step, ServeConfig(admission="no_evict", **cfg), kv_blocks=blocks, block_size=bs)
    assert pre.preemptions > 0
    assert ne.preemptions == 0
    assert ne.max_batch == blocks // per_request == 5
    assert pre.max_batch > ne.max_batch
    # every request completes under both policies, each generating its output
    assert np.isfinite(ne.tpot_s).all() and np.isfinite(pre.tpot_s).all()


def test_offline_serve_section_has_no_rate_and_no_sweep():
    sec = serve_section(linear_step, {"mode": "offline", "requests": 50, "prompt_len": 64, "output_len": 16,
                                      "max_num_seqs": 10}, None, kv_blocks=5000, static_max_batch=10)
    assert sec["mode"] == "offline" and sec["rate"] is None and sec["sweep"] == []
    assert sec["max_num_seqs"] == 10 and sec["admission"] == "preempt"
    assert sec["throughput_tok_s"] > 0 and sec["static"]["throughput_tok_s"] > 0


def test_bad_mode_and_admission_are_config_errors():
    with pytest.raises(ConfigError, match="serve.mode"):
        config_of({"mode": "batch"}, None)
    with pytest.raises(ConfigError, match="serve.admission"):
        config_of({"admission": "lifo"}, None)


def test_engine_defaults_fill_only_what_the_user_left_null():
    cfg = {"serve": {"max_num_seqs": None, "max_batched_tokens": 4096, "admission": None, "chunked_prefill": None},
           "memory": {"gpu_utilization": None, "runtime_reserve_gb": 0.5}}
    trt = runtime_by_name("trtllm")
    out = with_runtime_defaults(cfg, trt)
    assert out["serve"]["max_num_seqs"] == trt.max_num_seqs
    assert out["serve"]["max_batched_tokens"] == 4096               # the user's value stays
    assert out["serve"]["admission"] == "no_evict"
    assert out["memory"]["gpu_utilization"] == trt.gpu_utilization
    eager = with_runtime_defaults(cfg, runtime_by_name("eager"))    # today's defaults
    assert (eager["serve"]["max_num_seqs"], eager["serve"]["admission"], eager["memory"]["gpu_utilization"]) == \
        (256, "preempt", 1.0)
    assert cfg["serve"]["max_num_seqs"] is None                      # the input is not changed
