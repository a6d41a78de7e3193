"""search=sizing: the search finds the exhaustive optimum on a small grid, deterministically and in
seconds; the Pareto front is non-dominated; Splitwise's finding (Patel et al., ISCA 2024) — a
compute-rich device for prefill and a cheaper bandwidth-per-dollar device for decode serve more per
dollar than either alone; and one real run through the pipeline (report.json ``sizing``)."""
from __future__ import annotations

import time

import numpy as np
import pytest

from compiler.analysis.disaggregated import Link, PoolModel, Pool
from compiler.analysis.serving import ServeConfig
from compiler.driver.sizing import Sizer, candidates, exhaustive, launch_commands, pareto, search
from compiler.errors import ConfigError

# 7B-like: 13.5 GB of weights, 0.5 MiB of KV per token, 2 x 6.7 GFLOP per token
W, KV, FLOP = 13.5e9, 2 ** 19, 2 * 6.7e9
# device kinds: (attainable FLOP/s, bandwidth B/s, memory B, USD per hour)
KINDS = {"fast": (600e12, 3.0e12, 80e9, 2.99),      # H100-like
         "cheap": (200e12, 1.9e12, 80e9, 1.79)}     # A100-like


def pool_factory(kind, tp, pp):
    flops, bw, mem, _ = KINDS[kind]
    comm = 0.0 if tp == 1 else 32 * 2 * 15e-6        # two all-reduces per layer, 15 us each

    def step(b, p, s):
        b, p, s = (np.asarray(x, float) for x in (b, p, s))
        return np.maximum((W / tp + b * (p + s) * KV / tp) / bw, b * s * FLOP / tp / flops) + 1e-3 + comm
    blocks = int((mem * 0.9 - W / tp) // (KV / tp * 16))
    return PoolModel(Pool(1, tp, pp, kind), None, step, blocks)


def sizer(rate=6.0, requests=120, ttft=0.3, tpot=0.03):
    cfg = ServeConfig(rate=rate, requests=requests, seed=0, prompt={"kind": "uniform", "low": 128, "high": 1024},
                      output={"kind": "uniform", "low": 16, "high": 128}, slo_ttft_s=ttft, slo_tpot_s=tpot)
    return Sizer(cfg, pool=pool_factory, link=lambda a, b: Link("nvlink", 300e9, 1e-5), kv_bytes_per_token=KV,
                 layers=32, block_size=16)


def price(k):
    return KINDS[k][3]


GRID = dict(kinds=["fast", "cheap"], tps=[1, 2], pps=[1], seqs=[32, 128], modes=["colocated", "disaggregated"],
            max_devices=4, price=price)


def test_search_finds_the_exhaustive_optimum_deterministically():
    s = sizer(rate=120, ttft=0.15, tpot=0.025, requests=200)
    cands = candidates(s, **GRID)
    assert len(cands) > 100
    t0 = time.perf_counter()
    res = search(s, cands, GRID["max_devices"])
    took = time.perf_counter() - t0
    best, r = res["best"]
    ex, rx = exhaustive(sizer(rate=120, ttft=0.15, tpot=0.025, requests=200), cands)
    assert best == ex and r.slo_attainment == rx.slo_attainment
    assert len(res["evaluated"]) + res["pruned"] < len(cands)     # it stopped at the cheapest feasible cost
    assert res["pruned"] > 0
    s2 = sizer(rate=120, ttft=0.15, tpot=0.025, requests=200)
    again = search(s2, candidates(s2, **GRID), GRID["max_devices"])["best"][0]
    assert again == best
    print(f"\nsizing: {len(cands)} candidates, {len(res['evaluated'])} simulated, {res['pruned']} pruned, "
          f"{took:.2f} s; best {best.label()} ${best.cost_per_hour:.2f}/h, attainment {r.slo_attainment:.3f}")
    assert took < 60


def test_pruned_candidates_are_infeasible():
    """The prefill-pool bound prunes only candidates the full simulation rejects."""
    s = sizer(rate=120, ttft=0.15, tpot=0.025, requests=200)
    cands = [c for c in candidates(s, **GRID) if c.mode == "disaggregated" and c.devices <= 3]
    pruned = [c for c in cands if c.instances < s.np_min(c.hardware, c.tp, c.pp, 4 // (c.tp * c.pp))]
    assert pruned
    for c in pruned[:12]:
        assert not s.feasible(s.evaluate(c))


def test_pareto_front_is_non_dominated():
    pts = [(1.0, 2.0), (2.0, 1.0), (2.0, 3.0), (3.0, 3.0), (0.5, 0.1), (4.0, 5.0)]
    front = pareto(pts)
    assert [pts[i] for i in front] == [(0.5, 0.1), (1.0, 2.0), (2.0, 3.0), (4.0, 5.0)]


def _goodput_per_dollar(kp, kd):
    from compiler.analysis.disaggregated import simulate_disaggregated, sustained
    from compiler.analysis.serving import StepTable, max_rate_meeting_slo, with_rate
    s = sizer(requests=200, ttft=0.5, tpot=0.05)
    mp, md = pool_factory(kp, 1, 1), pool_factory(kd, 1, 1)
    pt = StepTable(mp.step_time, 1, 1200, 1024)
    dt = StepTable(md.step_time, 256, 1200, 2)

    def run(r):
        return sustained(simulate_disaggregated(with_rate(s.cfg, r), prefill=Pool(1, hardware=kp), decode=Pool(2, hardware=kd),
                                                prefill_table=pt, decode_table=dt, link=Link("l", 50e9, 1e-5),
                                                kv_bytes_per_token=KV, layers=32, decode_kv_blocks=md.kv_blocks).result)
    rate = max_rate_meeting_slo(run, s.cfg, start=4.0)[0]
    return rate / (price(kp) + 2 * price(kd))


def test_splitwise_mixed_pools_serve_more_per_dollar():
    """Prefill is compute-bound (the H100-like part's 3x FLOP/s for 1.7x the price), decode is
    bandwidth-bound (the A100-like part's 0.63x bandwidth for 0.6x the price): P on fast, D on cheap
    beats both homogeneous deployments in goodput per dollar."""
    mixed = _goodput_per_dollar("fast", "cheap")
    assert mixed > _goodput_per_dollar("fast", "fast")
    assert mixed > _goodput_per_dollar("cheap", "cheap")
    # and the sizing search, free to pick anything, picks that split at 80 requests/s
    s = sizer(rate=80, ttft=0.2, tpot=0.03, requests=200)
    best = search(s, candidates(s, **GRID), 4)["best"][0]
    assert (best.mode, best.hardware, best.decode_hardware) == ("disaggregated", "fast", "cheap")


def test_launch_commands():
    from compiler.driver.sizing import Candidate
    cfg = ServeConfig(rate=1.0, max_batched_tokens=4096)
    co = Candidate("colocated", "h100_sxm", 2, 1, 3, 128, 6, 17.94)
    cmd = launch_commands(co, runtime="vllm", model_id="meta-llama/Llama-2-7b-hf", serve=cfg, block_size=16,
                          utilization=0.9, prefix=True, kv_dtype="fp8")
    line = cmd[1]
    for flag in ("vllm serve meta-llama/Llama-2-7b-hf", "--tensor-parallel-size 2", "--max-num-seqs 128",
                 "--max-num-batched-tokens 4096", "--gpu-memory-utilization 0.9", "--enable-prefix-caching",
                 "--kv-cache-dtype fp8"):
        assert flag in line
    dis = Candidate("disaggregated", "h100_sxm", 1, 1, 2, 64, 4, 10.0, "a100_80g", 2, 1, 1)
    v = launch_commands(dis, runtime="vllm", model_id="m", serve=cfg, block_size=16, utilization=0.9, prefix=False,
                        kv_dtype=None)
    assert sum("--kv-transfer-config" in x for x in v) == 2
    t = launch_commands(dis, runtime="trtllm", model_id="m", serve=cfg, block_size=16, utilization=0.9, prefix=False,
                        kv_dtype=None)
    assert '"context_servers": {"num_instances": 2' in t[0] and "trtllm-serve disaggregated" in t[1]


def test_sizing_run_through_the_pipeline(tmp_path):
    """llama_tiny on the A10 list price: report.json ``sizing`` names the cheapest deployment and its
    flags; without serve.rate it is bad input."""
    from compiler.driver.pipeline import run
    from tests.conftest import compose
    base = ["search=sizing", "hardware=a10", "pipeline=cache", "pipeline.record_cost=false", "report.html=false",
            "progress=false", "sizing.tp=[1]", "sizing.max_num_seqs=[64]", "sizing.max_devices=2",
            "sizing.requests=100", "slo.ttft_ms=50", "slo.tpot_ms=10"]
    rep = run(compose(base + ["serve.rate=20"]), str(tmp_path / "a"), show_progress=False)
    sz = rep["sizing"]
    assert sz["best"]["cost_per_hour"] == pytest.approx(0.75 * sz["best"]["devices"])
    assert sz["prices_usd_per_gpu_hour"] == {"a10": 0.75}
    assert "vllm serve llama_tiny" in sz["best"]["launch"]["commands"][1]
    assert sz["front"] and sz["simulated"] >= 1
    with pytest.raises(ConfigError, match="serve.rate"):
        run(compose(base), str(tmp_path / "b"), show_progress=False)
    with pytest.raises(ConfigError, match="no list price"):
        run(compose(base + ["serve.rate=20", "hardware=l4"]), str(tmp_path / "c"), show_progress=False)
    l4 = run(compose(base + ["serve.rate=20", "hardware=l4", "+sizing.prices.l4=0.5"]),
             str(tmp_path / "d"), show_progress=False)["sizing"]
    assert l4["prices_usd_per_gpu_hour"] == {"l4": 0.5}
    assert l4["best"]["cost_per_hour"] == pytest.approx(0.5 * l4["best"]["devices"])


def test_shipped_prices_cite_a_source():
    from compiler.perf.hardware import available_hardware, hardware_by_name
    priced = [h for h in map(hardware_by_name, available_hardware()) if h.price_usd_per_hour is not None]
    assert {h.name for h in priced} >= {"h100_sxm", "a100_80g", "a10"}
    for h in priced:
        assert "lambdalabs.com" in h.price_source and "20" in h.price_source
