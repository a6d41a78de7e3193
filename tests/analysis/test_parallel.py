"""Tensor / pipeline / expert parallelism against hand-derived figures."""
from __future__ import annotations

import numpy as np
import pytest

from compiler.frontends import families
from compiler.perf.collectives import collective_time
from compiler.errors import ConfigError
from compiler.perf.hardware import hardware_by_name
from compiler.analysis.parallel import (ModelDims, ParallelPlan, allreduce_ring_bytes, analyze_parallel,
                               check_plan, kv_fraction, kv_heads_per_device,
                               parallel_step_time, pipeline_bubble, shard_table, tp_options)
from tests.conftest import imported, model_cfg

# Llama-2-70B (Touvron et al. 2023, Table 1): 80 layers, hidden 8192, 64 heads, 8 KV heads,
# MLP 28672, vocab 32000. Parameters by hand:
L70 = 80 * (8192 * 8192 * 2 + 8192 * 1024 * 2 + 3 * 8192 * 28672 + 2 * 8192) + 2 * 32000 * 8192 + 8192
DIMS70 = ModelDims(layers=80, hidden=8192, heads=64, kv_heads=8, head_dim=128, vocab=32000)


def test_hand_figures():
    assert L70 == 68_976_648_192
    assert kv_heads_per_device(8, 2) == 4
    assert kv_heads_per_device(8, 8) == 1
    assert kv_heads_per_device(8, 16) == 1           # replicated: one whole head per device
    assert kv_heads_per_device(2, 4) == 1
    assert kv_fraction(2, 4) == 0.5                  # not 1/4: two devices share each head
    # ring all-reduce: each device sends 2(n-1)/n of the buffer
    assert allreduce_ring_bytes(2, 1e6) == pytest.approx(1e6)
    assert allreduce_ring_bytes(8, 1e6) == pytest.approx(1.75e6)
    assert allreduce_ring_bytes(1, 1e6) == 0
    assert pipeline_bubble(4, 1) == pytest.approx(0.75)
    assert pipeline_bubble(4, 8) == pytest.approx(3 / 11)


@pytest.mark.parametrize("hw, need", [("h100_sxm", 2), ("a100_80g", 2), ("h200", 1)])
def test_70b_needs_tp2_on_80gb_parts(hw, need):
    """138 GB of fp16 weights: no 80 GB part holds them; an H200 (141 GB) does, barely."""
    h = hardware_by_name(hw)
    opts = tp_options(weights_bytes=2 * L70, kv_bytes_per_token=2 * 80 * 8 * 128 * 2, dims=DIMS70,
                      hw=h, tokens=2048, activation_peak_bytes=0.3e9, reserve_bytes=0.5e9)
    assert opts["min_tp_that_fits"] == need
    assert [o["tp"] for o in opts["options"]] == [1, 2, 4, 8]
    t2 = next(o for o in opts["options"] if o["tp"] == 2)
    assert t2["weights_bytes"] == pytest.approx(L70)
    assert opts["fits_one_device"] == (need == 1)


def test_plan_checks():
    h = hardware_by_name("h100_sxm")
    with pytest.raises(ConfigError, match="does not divide"):
        check_plan(ParallelPlan(tp=3), DIMS70, h)
    with pytest.raises(ConfigError, match="devices per node"):
        check_plan(ParallelPlan(tp=16), DIMS70, h)
    with pytest.raises(ConfigError, match="mixture-of-experts"):
        check_plan(ParallelPlan(ep=2), DIMS70, h)
    with pytest.raises(ConfigError, match="1 devices per node"):
        check_plan(ParallelPlan(tp=2), DIMS70, hardware_by_name("cpu"))
    with pytest.raises(ConfigError, match="parallel.tp"):
        ParallelPlan(tp=0)


@pytest.fixture(scope="module")
def tiny():
    from compiler.perf.cost import CostModel
    g = imported("llama_tiny")
    cfg = model_cfg("llama_tiny")["config"]
    return CostModel(g, hardware_by_name("h100_sxm")), families.dims(cfg), cfg


def _weights_by_hand(cfg, tp):
    """Per-device fp32 weights of llama_tiny under Megatron tensor parallelism."""
    H, I, V, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    h, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = H // h
    kvd = kv_heads_per_device(kv, tp)
    layer = (H * (h // tp) * d          # q (columns)
             + 2 * H * kvd * d          # k, v (columns; replicated heads when kv < tp)
             + (h // tp) * d * H        # o (rows)
             + 3 * H * I // tp          # gate, up (columns), down (rows)
             + 2 * H)                   # two norms, replicated
    return 4 * (L * layer + 2 * V * H // tp + H + d // 2)   # + rotary inverse frequencies


@pytest.mark.parametrize("tp", [1, 2, 4, 8])
def test_megatron_weights_and_collectives_per_device(tiny, tp):
    cm, dims, cfg = tiny
    t = shard_table(cm, dims, ParallelPlan(tp=tp))
    assert t.weight_bytes_device == pytest.approx(_weights_by_hand(cfg, tp))
    L = cfg["num_hidden_layers"]
    if tp == 1:
        assert t.comms == []
        return
    # two all-reduces per layer (after O and after down) + the vocabulary-parallel embedding
    kinds = [k for k, *_ in t.comms]
    assert kinds.count("all_reduce") == 2 * L + 1
    assert t.row == 2 * L
    assert t.column == 5 * L + 1          # Q, K, V, gate, up per layer (unfused), the LM head
    assert t.kv_fraction == kv_fraction(cfg["num_key_value_heads"], tp)


def test_communication_time_is_latency_plus_ring_bytes(tiny):
    cm, dims, cfg = tiny
    hw = cm.hw
    tp, b, ctx = 4, 8, 100
    r = analyze_parallel(cm, hw, ParallelPlan(tp=tp), dims, batch=b, prompt_len=64, context_len=ctx,
                         tokens=ctx + 1, kv_bytes_per_token=1024.0, activation_peak_bytes=0.0,
                         reserve_bytes=0.0)
    dec = r["phases"]["decode"]
    nbytes = b * 1 * cfg["hidden_size"] * 4               # [B, S, H] fp32 partial sums
    n_ar = 2 * cfg["num_hidden_layers"] + 1
    expect = n_ar * (hw.interconnect.latency_s + 2 * (tp - 1) / tp * nbytes / hw.interconnect.bandwidth)
    assert dec["comm_time_s"] == pytest.approx(expect, rel=1e-9)
    assert dec["collective_bytes"]["all_reduce"] == pytest.approx(n_ar * nbytes)
    assert dec["link_bytes_per_device"]["all_reduce"] == pytest.approx(n_ar * nbytes * 1.5)
    assert r["allreduces_per_forward"] == n_ar
    assert dec["time_s"] == pytest.approx(dec["op_time_s"] + dec["comm_time_s"])
    # decode-sized messages: the latency floor dominates the bytes
    assert n_ar * hw.interconnect.latency_s > 0.9 * dec["comm_time_s"]


def test_sharding_scales_compute_and_weight_traffic(tiny):
    cm, dims, _ = tiny
    r1 = analyze_parallel(cm, cm.hw, ParallelPlan(tp=1), dims, batch=16, prompt_len=512,
                          context_len=512, tokens=600, kv_bytes_per_token=1024.0,
                          activation_peak_bytes=0.0, reserve_bytes=0.0)
    r4 = analyze_parallel(cm, cm.hw, ParallelPlan(tp=4), dims, batch=16, prompt_len=512,
                          context_len=512, tokens=600, kv_bytes_per_token=1024.0,
                          activation_peak_bytes=0.0, reserve_bytes=0.0)
    p1, p4 = r1["phases"]["prefill"], r4["phases"]["prefill"]
    # GEMMs and attention split 4 ways; norms and the residual stream stay whole
    assert 0.25 * p1["compute_time_s"] < p4["compute_time_s"] < 0.5 * p1["compute_time_s"]
    assert p1["comm_time_s"] == 0 and p4["comm_time_s"] > 0
    assert r1["phases"]["decode"]["time_s"] == pytest.approx(r1["phases"]["decode"]["single_device_time_s"])
    m1, m4 = r1["memory_per_device"], r4["memory_per_device"]
    assert m4["kv_bytes_per_token"] == pytest.approx(1024.0 * 0.5)   # 2 KV heads over 4 devices
    assert m4["weights_bytes"] < 0.3 * m1["weights_bytes"]


def test_pipeline_splits_memory_and_adds_bubbles(tiny):
    cm, dims, _ = tiny
    kw = dict(batch=8, prompt_len=256, context_len=256, tokens=300, kv_bytes_per_token=1024.0,
              activation_peak_bytes=0.0, reserve_bytes=0.0)
    r1 = analyze_parallel(cm, cm.hw, ParallelPlan(), dims, **kw)
    r2 = analyze_parallel(cm, cm.hw, ParallelPlan(pp=2, microbatches=4), dims, **kw)
    assert r2["memory_per_device"]["weights_bytes"] == pytest.approx(r1["memory_per_device"]["weights_bytes"] / 2)
    assert r2["phases"]["prefill"]["bubble_fraction"] == pytest.approx(1 / 5)
    # decode crosses both stages: no faster than one device, plus one send
    d1, d2 = r1["phases"]["decode"], r2["phases"]["decode"]
    assert d2["time_s"] == pytest.approx(d1["time_s"] + d2["pipeline_send_s"])


def test_expert_parallel_splits_experts_and_adds_all_to_alls():
    from compiler.perf.cost import CostModel
    g = imported("mixtral_tiny")
    cfg = model_cfg("mixtral_tiny")["config"]
    dims = families.dims(cfg)
    cm = CostModel(g, hardware_by_name("h100_sxm"))
    t1 = shard_table(cm, dims, ParallelPlan())
    t2 = shard_table(cm, dims, ParallelPlan(ep=2))
    E, H, I, L = dims.experts, dims.hidden, cfg["intermediate_size"], dims.layers
    expert_bytes = 4 * L * E * 3 * H * I                     # fp32 gate, up, down per expert
    assert t1.weight_bytes_total - t2.weight_bytes_device == pytest.approx(expert_bytes / 2)
    kinds = [k for k, *_ in t2.comms]
    assert kinds.count("all_to_all") == 2 * L
    r = analyze_parallel(cm, cm.hw, ParallelPlan(ep=2), dims, batch=4, prompt_len=32, context_len=32,
                         tokens=40, kv_bytes_per_token=1.0, activation_peak_bytes=0, reserve_bytes=0)
    tok = 4 * 1 * dims.top_k * H * 4
    assert r["phases"]["decode"]["comm_time_s"] == pytest.approx(
        2 * L * float(collective_time(cm.hw, "all_to_all", 2, tok)))


def test_parallel_step_time_feeds_the_serving_simulation(tiny):
    from compiler.analysis.serving import ServeConfig, simulate
    cm, dims, _ = tiny
    st1 = parallel_step_time(cm, ParallelPlan(tp=1), dims)
    st2 = parallel_step_time(cm, ParallelPlan(tp=2), dims)
    b, p, s = np.array([4, 1]), np.array([50, 0]), np.array([1, 64])
    np.testing.assert_allclose(st1(b, p, s), [cm.phase_time(4, 1, 50, "decode")[0],
                                              cm.phase_time(1, 64, 0, "prefill")[0]])
    assert (st2(b, p, s) > 0).all()
    r = simulate(st2, ServeConfig(rate=50, requests=50, prompt=64, output=16), kv_blocks=1000)
    assert r.requests == 50 and r.throughput_tok_s > 0


def test_parallel_section_one_device_says_which_tp_fits(tiny):
    from compiler.analysis.parallel import parallel_section
    cm, dims, cfg = tiny
    kw = dict(batch=1, prompt_len=64, context_len=64, tokens=80, kv_bytes_per_token=1024.0,
              activation_peak_bytes=0.0, reserve_bytes=0.0)
    one = parallel_section(cm, cm.hw, {"tp": 1}, families.dims(cfg), weights_bytes=2 * L70, **kw)
    assert one["devices"] == 1 and one["tp_options"]["min_tp_that_fits"] == 2   # 138 GB on 80 GB
    assert not one["memory_per_device"]["fits"]
    two = parallel_section(cm, cm.hw, {"tp": 2}, families.dims(cfg), weights_bytes=1e6, **kw)
    assert two["tp"] == 2 and two["phases"]["decode"]["comm_time_s"] > 0
    assert parallel_section(cm, cm.hw, {}, None, weights_bytes=1e6, **kw) is None
    with pytest.raises(ConfigError, match="parallel.dp"):
        parallel_section(cm, cm.hw, {"dp": 2}, families.dims(cfg), weights_bytes=1e6, **kw)


def test_qwen_moe_expert_parallel_runs_and_reports_all_to_alls(tmp_path):
    """Qwen-MoE names its experts ``num_experts`` (Mixtral: ``num_local_experts``): the model-family
    aliases (compiler/frontends/families.py) see its 60 experts, so ``parallel.ep=2`` is a valid
    plan whose decode step pays one dispatch and one combine all-to-all per MoE layer."""
    import json
    from tests.conftest import run_cli
    assert families.dims(model_cfg("qwen_moe_a2_7b")["config"]).experts == 60
    r = run_cli("model=qwen_moe_a2_7b", "parallel.ep=2", "emit.enabled=false", f"hydra.run.dir={tmp_path}")
    assert r.returncode == 0, r.stderr
    par = json.loads((tmp_path / "report.json").read_text())["parallel"]
    assert (par["ep"], par["devices"]) == (2, 2)
    assert par["all_to_alls_per_forward"] == 2 * 24
    assert par["phases"]["decode"]["comm_time_by_kind_s"]["all_to_all"] > 0
