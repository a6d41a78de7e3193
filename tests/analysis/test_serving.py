"""The serving simulation: exact figures on a linear step-time model, and the known shapes
(throughput rises with load until the KV budget or the TPOT SLO binds; continuous batching beats
static batching when lengths vary; chunked prefill shortens decode stalls)."""
from __future__ import annotations

import numpy as np
import pytest

from compiler.errors import ConfigError
from compiler.analysis.serving import (LengthDist, ServeConfig, StepTable, cost_model_step_time,
                              max_rate_meeting_slo, sample_requests, simulate, simulate_static,
                              with_rate)

# A linear step-time model (seconds): a weight pass, per-token compute, per-cached-token KV reads.
A, PER_TOKEN, PER_CTX = 5e-3, 2e-5, 2e-7


def linear_step(b, p, s):
    b, p, s = (np.asarray(x, float) for x in (b, p, s))
    return A + PER_TOKEN * b * s + PER_CTX * b * (p + s)


def roofline_step(b, p, s):
    """A 7B-on-one-GPU-like step: weights 13.5 GB at 1.6 TB/s, 0.5 MiB of KV per token,
    2 x 6.7 GFLOP per token at 250 TFLOP/s, 2 ms of fixed overhead."""
    b, p, s = (np.asarray(x, float) for x in (b, p, s))
    mem = (13.5e9 + b * (p + s) * 2**19) / 1.6e12
    flops = b * s * 2 * 6.7e9 / 250e12
    return np.maximum(mem, flops) + 2e-3


VAR = dict(prompt={"kind": "uniform", "low": 32, "high": 1024},
           output={"kind": "uniform", "low": 8, "high": 512})


def test_requests_are_deterministic_and_scale_with_rate():
    a = sample_requests(ServeConfig(rate=2.0, requests=50, seed=3, **VAR))
    b = sample_requests(ServeConfig(rate=2.0, requests=50, seed=3, **VAR))
    c = sample_requests(ServeConfig(rate=4.0, requests=50, seed=3, **VAR))
    d = sample_requests(ServeConfig(rate=2.0, requests=50, seed=4, **VAR))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_allclose(c[0], a[0] / 2)
    np.testing.assert_array_equal(c[1], a[1])
    assert not np.array_equal(a[1], d[1])
    assert 32 <= a[1].min() and a[1].max() <= 1024


def test_simulation_is_deterministic():
    cfg = ServeConfig(rate=20, requests=300, seed=1, slo_ttft_s=0.5, slo_tpot_s=0.05, **VAR)
    r1 = simulate(roofline_step, cfg, kv_blocks=2000).to_dict()
    r2 = simulate(roofline_step, cfg, kv_blocks=2000).to_dict()
    assert r1 == r2


def test_light_load_gives_the_single_request_figures():
    """At a trickle each request runs alone: TTFT = its prefill, TPOT = a batch-1 decode step over
    the mean context, exactly (the step-time model is linear, the table interpolates exactly)."""
    P, G = 300, 50
    cfg = ServeConfig(rate=0.001, requests=20, prompt=P, output=G)
    r = simulate(linear_step, cfg, kv_blocks=10_000)
    ttft = float(linear_step(1, 0, P))
    ctx = P + np.arange(1, G)                       # cache length at each decode step
    tpot = float(linear_step(1, ctx, 1).mean())
    assert r.ttft_p50_s == pytest.approx(ttft, rel=1e-9)
    assert r.ttft_p99_s == pytest.approx(ttft, rel=1e-9)
    assert r.tpot_p50_s == pytest.approx(tpot, rel=1e-6)
    assert r.mean_batch == pytest.approx(1.0)
    assert r.preemptions == 0
    assert r.throughput_tok_s == pytest.approx(20 * G / r.duration_s)


def test_throughput_rises_with_load_until_the_kv_budget_binds():
    kv_blocks = 1500
    rates = [0.5, 1, 2, 4, 8, 16, 32, 64]
    res = [simulate(roofline_step, ServeConfig(rate=q, requests=400, seed=0, **VAR), kv_blocks=kv_blocks)
           for q in rates]
    thr = np.array([r.throughput_tok_s for r in res])
    # rising: at low load throughput tracks the offered load
    assert np.all(np.diff(thr[:4]) > 0)
    offered = np.array(rates[:3]) * np.mean(sample_requests(ServeConfig(rate=1, requests=400, **VAR))[2])
    np.testing.assert_allclose(thr[:3], offered, rtol=0.25)
    # then it saturates: the last doublings of the rate add < 5 %, and the batch is bounded by the
    # sequences the KV budget holds (mean ~ (528 + 260) tokens / 16 = 50 blocks each)
    assert thr[-1] / thr[-3] < 1.05
    mean_blocks = np.mean(np.ceil((sample_requests(ServeConfig(rate=1, requests=400, **VAR))[1]
                                   + sample_requests(ServeConfig(rate=1, requests=400, **VAR))[2]) / 16))
    assert res[-1].mean_batch <= 1.4 * kv_blocks / mean_blocks
    assert res[-1].preemptions > 0
    # every request finished and TTFT grows with queueing
    assert res[-1].ttft_p50_s > 10 * res[0].ttft_p50_s


def test_more_kv_blocks_raise_the_saturated_throughput():
    cfg = ServeConfig(rate=64, requests=400, **VAR)
    small = simulate(roofline_step, cfg, kv_blocks=800)
    large = simulate(roofline_step, cfg, kv_blocks=4000)
    assert large.throughput_tok_s > 1.3 * small.throughput_tok_s
    assert large.mean_batch > small.mean_batch


def test_tpot_slo_binds_and_bisection_finds_the_edge():
    cfg = ServeConfig(requests=300, slo_tpot_s=0.015, slo_target=0.9, **VAR)
    run = lambda q: simulate(roofline_step, with_rate(cfg, q), kv_blocks=20_000)  # noqa: E731
    rate, runs = max_rate_meeting_slo(run, cfg)
    assert rate > 0
    assert run(rate).slo_attainment >= 0.9
    assert run(rate * 1.3).slo_attainment < 0.9
    # the binding constraint is TPOT, not memory: no preemption at the edge
    assert run(rate).preemptions == 0
    assert len(runs) < 40


def test_continuous_beats_static_when_lengths_vary():
    cfg = ServeConfig(rate=50, requests=400, seed=2, **VAR)
    cont = simulate(roofline_step, cfg, kv_blocks=3000)
    stat = simulate_static(roofline_step, cfg, max_batch=16)
    assert cont.throughput_tok_s > 2.0 * stat.throughput_tok_s
    assert cont.ttft_p50_s < stat.ttft_p50_s
    # with equal lengths static batching wastes nothing on padding: the gap shrinks
    eq = ServeConfig(rate=50, requests=400, seed=2, prompt=512, output=256)
    gap_eq = simulate(roofline_step, eq, kv_blocks=3000).throughput_tok_s / \
        simulate_static(roofline_step, eq, max_batch=16).throughput_tok_s
    assert gap_eq < cont.throughput_tok_s / stat.throughput_tok_s


def test_contiguous_reservation_holds_fewer_sequences_than_paging():
    cfg = ServeConfig(rate=64, requests=300, prompt=256, output=256)
    paged = simulate(roofline_step, cfg, kv_blocks=2048)
    contiguous = simulate(roofline_step, cfg, kv_blocks=2048, reserve_tokens=4096)
    assert contiguous.max_batch == 2048 * 16 // 4096
    assert paged.max_batch > 3 * contiguous.max_batch
    assert paged.throughput_tok_s > contiguous.throughput_tok_s


def test_chunked_prefill_shortens_decode_stalls():
    """Long prompts stall running decodes for a whole prefill without chunking; chunks bound the
    stall (Sarathi-Serve), so the TPOT tail falls."""
    cfg = dict(rate=6, requests=300, prompt={"kind": "uniform", "low": 1024, "high": 4096},
               output={"kind": "uniform", "low": 64, "high": 256})

    def heavy(b, p, s):  # prefill-heavy: compute-bound prompts, cheap decodes
        b, p, s = (np.asarray(x, float) for x in (b, p, s))
        return 4e-3 + 2e-4 * b * s + 1e-7 * b * p
    plain = simulate(heavy, ServeConfig(**cfg), kv_blocks=50_000)
    chunk = simulate(heavy, ServeConfig(chunked_prefill=True, chunk_tokens=256, **cfg), kv_blocks=50_000)
    assert chunk.tpot_p99_s < 0.7 * plain.tpot_p99_s
    assert chunk.policy == "continuous_chunked"


def test_preemption_recovers_every_request():
    cfg = ServeConfig(rate=100, requests=200, prompt=200, output=300)
    r = simulate(linear_step, cfg, kv_blocks=200)       # 32 tokens of room per ... 200 blocks
    assert r.preemptions > 0
    assert np.isfinite(r.ttft_s).all() and (r.ttft_s > 0).all()
    assert r.max_batch <= 200 * 16 // 200


def test_bad_inputs_are_config_errors():
    with pytest.raises(ConfigError, match="KV blocks"):
        simulate(linear_step, ServeConfig(prompt=4000, output=200, requests=5), kv_blocks=100)
    with pytest.raises(ConfigError, match="serve.rate"):
        ServeConfig(rate=0)
    with pytest.raises(ConfigError, match="unknown"):
        LengthDist.of({"kind": "uniform", "lo": 3})
    with pytest.raises(ConfigError, match="SLO"):
        max_rate_meeting_slo(lambda q: None, ServeConfig())


def test_cost_model_step_time_matches_phase_time():
    from compiler.perf.cost import CostModel
    from compiler.perf.hardware import hardware_by_name
    from tests.conftest import imported
    g = imported("llama_tiny")
    cm = CostModel(g, hardware_by_name("a10"))
    st = cost_model_step_time(cm)
    b = np.array([1, 4, 8, 2])
    p = np.array([0, 100, 37, 0])
    s = np.array([64, 1, 1, 5])
    got = st(b, p, s)
    np.testing.assert_allclose(got[[0, 3]], cm.phase_time(b[[0, 3]], s[[0, 3]], p[[0, 3]], "prefill"))
    np.testing.assert_allclose(got[[1, 2]], cm.phase_time(b[[1, 2]], s[[1, 2]], p[[1, 2]], "decode"))
    tab = StepTable(st, 16, 512, 512)
    assert tab.decode_time(4, 100.0) == pytest.approx(float(got[1]), rel=0.02)


def test_serve_section_runs_the_configured_simulation():
    from compiler.analysis.serving import serve_section
    serve = {"rate": 4, "requests": 200, "prompt_len": {"kind": "uniform", "low": 64, "high": 1024},
             "output_len": 128, "sweep": [1, 4, 16, 64]}
    sec = serve_section(roofline_step, serve, {"tpot_ms": 20}, kv_blocks=3000, static_max_batch=8)
    direct = simulate(roofline_step, ServeConfig(rate=4, requests=200, prompt=serve["prompt_len"],
                                                  output=128, slo_tpot_s=0.02), kv_blocks=3000)
    assert sec["throughput_tok_s"] == pytest.approx(direct.throughput_tok_s, rel=0.02)
    assert sec["slo_attainment"] == pytest.approx(direct.slo_attainment, abs=0.02)
    assert sec["static"]["max_batch_static"] == 8
    assert sec["max_rate_meeting_slo"] > 0
    thr = [r["throughput_tok_s"] for r in sec["sweep"]]
    assert thr[1] > thr[0] and [r["rate"] for r in sec["sweep"]] == [1, 4, 16, 64]
    assert sec["sweep"][-1]["throughput_tok_s"] > sec["sweep"][-1]["static_throughput_tok_s"]
    with pytest.raises(ConfigError, match="serve.speed"):
        serve_section(roofline_step, {"speed": 3}, {}, kv_blocks=100)


def test_planning_sections_plan_one_device_of_a_tensor_parallel_group():
    from compiler.perf.cost import CostModel
    from compiler.perf.hardware import hardware_by_name
    from compiler.perf.schedule import schedule
    from compiler.analysis.context import RunContext
    from compiler.analysis.phases import planning_sections
    from compiler.frontends import families
    from tests.conftest import imported, model_cfg
    g = imported("llama_tiny")
    hw = hardware_by_name("a10")
    cm = CostModel(g, hw)
    sched = schedule(g)
    cfg = {"model": model_cfg("llama_tiny"), "memory": {"gpu_utilization": 0.9},
           "kv": {"layout": "paged", "block_size": 16, "max_model_len": 2048}, "parallel": {"tp": 2},
           "serve": {"enabled": True, "rate": 50, "requests": 100, "sweep": [10, 50],
                     "output_len": {"kind": "uniform", "low": 8, "high": 256}},
           "slo": {"tpot_ms": 5}}
    wl = {"batch": 1, "prompt_len": 128, "gen_len": 64, "context_len": 128}
    kv_tok = 2 * 4 * 2 * 16 * 4                       # llama_tiny: 4 layers, 2 KV heads x 16, fp32
    def ctx(c):
        return RunContext(cfg=c, workload=wl, hardware=hw, graph=g, cost=cm, schedule=sched,
                          dims=families.dims(c["model"]["config"]))
    r = planning_sections(ctx(cfg), weights_bytes=4e6, kv_bytes_per_token=kv_tok, tokens=192, reserve_bytes=0.5e9)
    par = r["parallel"]
    assert par["tp"] == 2 and par["memory_per_device"]["kv_bytes_per_token"] == kv_tok / 2
    budget = 0.9 * hw.memory_bytes - par["memory_per_device"]["weights_bytes"] \
        - float(sched.activation_peak(1, 128, 0)[0]) - 0.5e9
    assert r["capacity"]["kv_blocks"] == int(budget // (16 * kv_tok / 2))
    s = r["serve"]
    assert s["requests"] == 100 and s["layout"] == "paged" and len(s["sweep"]) == 2
    assert 0 <= s["slo_attainment"] <= 1 and s["max_rate_meeting_slo"] > 0
    assert s["static"]["max_batch_static"] == 256
    # serving off: capacity still planned, no simulation
    off = planning_sections(ctx({**cfg, "serve": {"enabled": False}}), weights_bytes=4e6,
                            kv_bytes_per_token=kv_tok, tokens=192, reserve_bytes=0.5e9)
    assert "serve" not in off and off["capacity"]["kv_blocks"] == r["capacity"]["kv_blocks"]


def test_serving_figure_is_deterministic():
    from compiler.analysis.serving import serve_section
    from reports.plots import to_png
    from reports.plots import fig_serving
    sec = serve_section(linear_step, {"rate": 4, "requests": 60, "sweep": [1, 4, 16]}, {"tpot_ms": 10},
                        kv_blocks=2000, static_max_batch=8)
    a, b = to_png(fig_serving({"serve": sec})), to_png(fig_serving({"serve": sec}))
    assert a == b and a[:4] == b"\x89PNG"
    assert to_png(fig_serving({}))[:4] == b"\x89PNG"        # no simulation: an explanatory panel
