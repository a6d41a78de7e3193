"""Disaggregated prefill/decode serving: exact figures on a linear step-time model (transfer,
TTFT, TPOT by hand), the FIFO link, and DistServe's qualitative findings on a 13B-on-A100-like
roofline step model (Zhong et al., OSDI 2024): disaggregation wins goodput per GPU under tight
TTFT + TPOT SLOs with the right P:D ratio, and loses when the link is slow or (at 1P1D) the SLOs
are loose."""
from __future__ import annotations

import numpy as np
import pytest

from compiler.analysis.disaggregated import (Link, Pool, is_steady, link_schedule, simulate_decode_pool,
                                             simulate_disaggregated, simulate_prefill_pool, sustained,
                                             transfer_times)
from compiler.analysis.serving import (ServeConfig, StepTable, max_rate_meeting_slo, simulate, with_rate)
from compiler.errors import ConfigError

A, PER_TOKEN, PER_CTX = 5e-3, 2e-5, 2e-7


def linear_step(b, p, s):
    b, p, s = (np.asarray(x, float) for x in (b, p, s))
    return A + PER_TOKEN * b * s + PER_CTX * b * (p + s)


KV13 = 819200          # 13B: 40 layers x 5120 x 2 (K, V) x 2 bytes


def a100_13b(b, p, s):
    """A 13B model on an A100-like device: 26 GB of weights at 2 TB/s, 0.8 MB of KV per token,
    2 x 13 GFLOP per token at 200 TFLOP/s, 1 ms of fixed overhead."""
    b, p, s = (np.asarray(x, float) for x in (b, p, s))
    return np.maximum((26e9 + b * (p + s) * KV13) / 2.0e12, b * s * 2 * 13e9 / 200e12) + 1e-3


def test_transfer_time_by_hand():
    link = Link("test", 10e9, 20e-6, overlapped=False)
    # 1000 tokens x 1 MB over 2 lanes of 10 GB/s: 50 ms + 20 us
    t = transfer_times(np.array([1000]), np.array([0.01]), kv_bytes_per_token=1e6, link=link, lanes=2, layers=10)
    assert t[0] == pytest.approx(0.05 + 20e-6)
    ov = Link("test", 10e9, 20e-6, overlapped=True)
    # overlapped with a 10 ms prefill: 50 - 10 = 40 ms remain (more than the last layer's 5 ms)
    assert transfer_times(np.array([1000]), np.array([0.01]), kv_bytes_per_token=1e6, link=ov, lanes=2,
                          layers=10)[0] == pytest.approx(0.04 + 20e-6)
    # a long prefill hides all but the last layer's share
    assert transfer_times(np.array([1000]), np.array([1.0]), kv_bytes_per_token=1e6, link=ov, lanes=2,
                          layers=10)[0] == pytest.approx(0.005 + 20e-6)
    with pytest.raises(ConfigError, match="link_bandwidth_gbs"):
        transfer_times(np.array([1]), np.array([0.0]), kv_bytes_per_token=1.0, link=Link("x", 0.0, 0.0), lanes=1,
                       layers=1)


def test_link_is_a_fifo_queue_per_prefill_instance():
    link = Link("slow", 1e9, 0.0, overlapped=False)
    end = np.array([1.0, 1.0, 1.0])
    wire = np.array([0.5, 0.5, 0.5])
    ready = link_schedule(end, np.zeros(3), np.array([0, 0, 1]), wire, link=link, layers=1)
    # instance 0 sends its two caches one after the other; instance 1 has its own link
    np.testing.assert_allclose(ready, [1.5, 2.0, 1.5])


def test_trickle_gives_the_single_request_figures():
    """One request at a time: TTFT = its prefill T(1, 0, P); then the transfer; then G - 1 decode
    steps at batch 1 over caches of P + 1 .. P + G - 1 tokens (as the co-located simulation); TPOT = (transfer + steps) / (G - 1)."""
    P, G = 300, 50
    cfg = ServeConfig(rate=0.001, requests=10, prompt=P, output=G)
    link = Link("l", 10e9, 1e-4, overlapped=False)
    pt = StepTable(linear_step, 1, P + G, P)
    dt = StepTable(linear_step, 8, P + G, 2)
    kv_tok = 1e5
    r = simulate_disaggregated(cfg, prefill=Pool(1), decode=Pool(1), prefill_table=pt, decode_table=dt, link=link,
                               kv_bytes_per_token=kv_tok, layers=4, decode_kv_blocks=1000).result
    prefill = A + PER_TOKEN * P + PER_CTX * P
    xfer = 1e-4 + P * kv_tok / 10e9
    steps = sum(A + PER_TOKEN + PER_CTX * (P + 1 + k + 1) for k in range(G - 1))   # T(1, ctx, 1), ctx = P + 1 + k
    assert r.ttft_p50_s == pytest.approx(prefill, rel=1e-9)
    assert r.tpot_p50_s == pytest.approx((xfer + steps) / (G - 1), rel=1e-6)
    assert r.slo_attainment is None


def test_prefill_pool_batches_queued_requests_fcfs():
    tab = StepTable(linear_step, 1, 400, 400)
    arrival = np.array([0.0, 0.0, 0.0, 0.0])
    new = np.array([100, 100, 100, 100])
    end, dur, inst, batches, bsum = simulate_prefill_pool(tab, arrival, new, np.zeros(4, np.int64), instances=1,
                                                          max_batched_tokens=250)
    # two batches of two (250 tokens admit two prompts of 100), the second after the first
    assert batches == 2 and bsum == 4
    assert end[0] == end[1] < end[2] == end[3]
    # two prompts in one step share one weight pass: T(1,0,100) * 2 - T(1,0,1)
    one = A + PER_TOKEN * 100 + PER_CTX * 100
    assert dur[0] == pytest.approx(2 * one - (A + PER_TOKEN + PER_CTX), rel=1e-9)
    end2 = simulate_prefill_pool(tab, arrival, new, np.zeros(4, np.int64), instances=2, max_batched_tokens=250)[0]
    assert end2.max() < end.max()        # a second instance takes the second batch at once


def test_decode_pool_reserves_whole_requests_and_rejects_oversized():
    tab = StepTable(linear_step, 4, 200, 2)
    ready = np.zeros(3)
    fin, steps, bsum, bmax = simulate_decode_pool(tab, ready, np.array([100, 100, 100]), np.array([10, 10, 10]),
                                                  instances=1, kv_blocks=2 * 7, block_size=16, max_num_seqs=8)
    # each request holds ceil(110 / 16) = 7 blocks: two run together, the third after them
    assert bmax == 2 and fin[2] > fin[0] == fin[1]
    with pytest.raises(ConfigError, match="decode instance holds"):
        simulate_decode_pool(tab, ready, np.array([100, 100, 100]), np.array([10, 10, 10]), instances=1,
                             kv_blocks=6, block_size=16, max_num_seqs=8)


def test_deterministic():
    cfg = ServeConfig(rate=5, requests=200, seed=2, prompt={"kind": "uniform", "low": 64, "high": 512},
                      output={"kind": "uniform", "low": 8, "high": 64}, slo_ttft_s=0.5, slo_tpot_s=0.05)
    pt, dt = StepTable(a100_13b, 1, 600, 512), StepTable(a100_13b, 64, 600, 2)
    kw = dict(prefill=Pool(2), decode=Pool(1), prefill_table=pt, decode_table=dt, link=Link("l", 300e9, 1e-5),
              kv_bytes_per_token=KV13, layers=40, decode_kv_blocks=3000)
    a = simulate_disaggregated(cfg, **kw).result.to_dict()
    b = simulate_disaggregated(cfg, **kw).result.to_dict()
    assert a == b


# --------------------------------------------------------------------------- DistServe's findings

WORK = dict(requests=250, prompt={"kind": "uniform", "low": 256, "high": 1024},
            output={"kind": "uniform", "low": 16, "high": 128}, max_num_seqs=128)
BLOCKS = int(50e9 / (KV13 * 16))     # 50 GB of KV per 80 GB device beside 26 GB of weights


@pytest.fixture(scope="module")
def tables():
    return (StepTable(a100_13b, 1, 1200, 1024), StepTable(a100_13b, 128, 1200, 2),
            StepTable(a100_13b, 128, 1200, 1200))


def goodput_per_gpu(tables, ttft, tpot, n_p, n_d, *, bandwidth=300e9):
    """(disaggregated, co-located) goodput per GPU at the same GPU count (n_p + n_d)."""
    pt, dt, ct = tables
    cfg = ServeConfig(rate=1.0, slo_ttft_s=ttft, slo_tpot_s=tpot, **WORK)
    link = Link("l", bandwidth, 1e-5, True)
    gpus = n_p + n_d

    def dis(r):
        return sustained(simulate_disaggregated(with_rate(cfg, r), prefill=Pool(n_p), decode=Pool(n_d), prefill_table=pt,
                                                decode_table=dt, link=link, kv_bytes_per_token=KV13, layers=40,
                                                decode_kv_blocks=BLOCKS).result)

    def co(r):
        return sustained(simulate(None, with_rate(cfg, r / gpus), kv_blocks=BLOCKS, table=ct))
    d = max_rate_meeting_slo(dis, cfg, start=2.0)[0] / gpus
    c = max_rate_meeting_slo(co, cfg, start=2.0)[0] / gpus
    return d, c


def test_distserve_tight_slos_favour_disaggregation(tables):
    """Tight TTFT + TPOT: two prefill GPUs and one decode GPU beat three co-located replicas, whose
    prefills stall the running decodes."""
    d, c = goodput_per_gpu(tables, 0.2, 0.03, 2, 1)
    assert d > 1.2 * c


def test_distserve_slow_link_loses(tables):
    """The same deployment with a 0.5 GB/s link: every request ships ~0.5 GB of KV, the link's
    capacity (≈ 1 request/s per prefill instance) caps the rate."""
    d, c = goodput_per_gpu(tables, 0.2, 0.03, 2, 1, bandwidth=0.5e9)
    assert d < 0.5 * c


def test_distserve_loose_slos_lose_the_advantage(tables):
    """Loose SLOs: throughput decides, and a 1P1D split leaves the prefill GPU idle half the time —
    the co-located pair serves more."""
    tight_d, tight_c = goodput_per_gpu(tables, 0.2, 0.03, 1, 1)
    loose_d, loose_c = goodput_per_gpu(tables, 4.0, 0.4, 1, 1)
    assert loose_d < loose_c
    assert loose_d / loose_c < tight_d / tight_c


def test_sustained_rejects_a_growing_backlog():
    cfg = ServeConfig(rate=1.0, slo_ttft_s=10.0, slo_tpot_s=1.0, **WORK)
    ok = simulate(a100_13b, with_rate(cfg, 1.0), kv_blocks=BLOCKS)
    over = simulate(a100_13b, with_rate(cfg, 200.0), kv_blocks=BLOCKS)
    assert is_steady(ok) and sustained(ok).slo_attainment == ok.slo_attainment
    assert not is_steady(over) and sustained(over).slo_attainment == 0.0


# --------------------------------------------------------------------------- through the pipeline

TINY = ["pipeline=cache", "pipeline.record_cost=false", "report.html=false", "progress=false", "emit.enabled=false",
        "kv=paged", "workload.prompt_len=64", "workload.gen_len=16", "serve.rate=50", "serve.requests=200",
        "slo.ttft_ms=5", "slo.tpot_ms=2"]


def test_pipeline_report_keys_and_off_by_default(tmp_path):
    """llama_tiny on an A100: serve.disaggregated (a tp=2 decode pool) and serve.prefix land in
    report.json (schema-checked); with both off the serve section has none of their keys."""
    from compiler.driver.pipeline import run
    from tests.conftest import compose
    on = run(compose(TINY + ["serve.disaggregated.enabled=true", "serve.disaggregated.prefill_instances=2",
                             "serve.disaggregated.decode_tp=2", "serve.prefix.enabled=true",
                             "serve.prefix.prefix_len=32"]), str(tmp_path / "on"), show_progress=False)
    d, p = on["serve"]["disaggregated"], on["serve"]["prefix"]
    assert d["devices"] == 2 + 2 and d["colocated"]["replicas"] == 4 and d["decode"]["tp"] == 2
    assert d["link"]["lanes"] == 1 and d["link"]["name"].startswith("NVLink")
    kv_tok = on["memory"]["kv_bytes_per_token"]
    assert d["transfer"]["bytes_mean"] == pytest.approx(kv_tok * p["prompt_tokens_mean"])
    assert d["goodput"]["disaggregated_per_gpu_req_s"] > 0 and len(d["sweep"]) == 7
    assert p["hit_rate"] == pytest.approx(32 / 64 * (199 / 200))        # one cold request
    assert 0 < p["prefill_flops_saved_fraction"] < p["hit_rate"] + 1e-9
    off = run(compose(TINY), str(tmp_path / "off"), show_progress=False)
    assert "disaggregated" not in off["serve"] and "prefix" not in off["serve"]


@pytest.mark.parametrize("extra, match", [
    (["serve.prefix.enabled=true", "serve.prefix.prefix_len=32", "kv=contiguous"], "needs a paged KV cache"),
    (["serve.disaggregated.enabled=true", "serve.disaggregated.decode_hardware=nope"], "nope"),
    (["serve.disaggregated.enabled=true", "serve.disaggregated.link_bandwidth_gbs=0"], "link_bandwidth_gbs"),
])
def test_bad_settings_are_bad_input(tmp_path, extra, match):
    from compiler.driver.pipeline import run
    from tests.conftest import compose
    with pytest.raises(ConfigError, match=match):
        run(compose(TINY + extra), str(tmp_path / "x"), show_progress=False)
    assert not any((tmp_path / "x").glob("report.*"))
