"""The modern models' reports: KV-cache bytes exactly as hand arithmetic from config.json (latent
attention, local/global and sliding windows, GQA-MoE), the acceptance runs
(``model=deepseek_v3 hardware=h200 parallel.tp=8``, ``model=gpt_oss_120b hardware=h100_sxm``) with
memory, capacity, the per-layer breakdown and serving, multi-token prediction as a draft, and
stacking by layer kind."""
from __future__ import annotations

import numpy as np
import pytest

from compiler.frontends.models import import_torch
from compiler.perf.cost import CostModel
from compiler.perf.hardware import hardware_by_name
from compiler.perf.memory import kv_bytes_per_token, kv_sequence_bytes
from tests.conftest import compose, model_cfg, prepare

BF16 = 2


def _kv_hand(layers_windows, kv_heads, head_dim, tokens):
    """2 (K, V) x kv_heads x head_dim x 2 bytes per token and layer, min(tokens, W) tokens held."""
    return sum(2 * kv_heads * head_dim * BF16 * (min(tokens, w) if w else tokens) for w in layers_windows)


@pytest.mark.parametrize("name, tokens, hand", [
    # Gemma-3-27B: 16 KV heads x 128, 52 local layers (window 1024) + 10 global
    ("gemma3_27b", 8192, lambda t: _kv_hand([1024 if (i + 1) % 6 else None for i in range(62)], 16, 128, t)),
    # Mistral-7B-v0.1: 32 layers, 8 KV heads x 128, all windowed to 4096
    ("mistral_7b", 8192, lambda t: _kv_hand([4096] * 32, 8, 128, t)),
    # Qwen3-30B-A3B (GQA-MoE): 48 layers, 4 KV heads x 128
    ("qwen3_30b_a3b", 8192, lambda t: _kv_hand([None] * 48, 4, 128, t)),
])
def test_kv_bytes_exact(name, tokens, hand):
    g = import_torch(model_cfg(name))
    prepare(g)
    assert kv_sequence_bytes(g, tokens) == hand(tokens)
    assert kv_bytes_per_token(g, tokens) * tokens == pytest.approx(hand(tokens), rel=1e-12)
    # short sequences fit inside every window: every layer holds all its tokens
    assert kv_sequence_bytes(g, 100) == hand(100)


@pytest.fixture(scope="module")
def dsv3_report(tmp_path_factory):
    from compiler.driver.pipeline import run
    out = tmp_path_factory.mktemp("dsv3")
    return run(compose(["model=deepseek_v3", "hardware=h200", "parallel.tp=8", "serve.rate=2", "serve.requests=64",
                        "speculative.draft_model=mtp", "report.html=false"]), str(out), show_progress=False), out


@pytest.fixture(scope="module")
def oss_report(tmp_path_factory):
    from compiler.driver.pipeline import run
    out = tmp_path_factory.mktemp("oss120")
    return run(compose(["model=gpt_oss_120b", "hardware=h100_sxm", "serve.rate=2", "serve.requests=64"]), str(out),
               show_progress=False), out


def _complete(r, out):
    for k in ("memory", "capacity", "latency", "serve", "throughput_vs_batch"):
        assert r.get(k), k
    for phase in ("prefill", "decode"):
        ph = r["phases"][phase]
        assert all(o["block"] in ("embedding", "attention", "mlp", "moe", "norm", "head", "other") for o in ph["ops"])
        assert all(o["layer"] is None or 0 <= o["layer"] < r["model"]["layers"] for o in ph["ops"])
        blocks = ph["blocks"]
        for key, total in (("time_s", ph["time_s"]), ("flops", ph["flops"]), ("bytes", ph["bytes"])):
            assert sum(b[key] for b in blocks.values()) == pytest.approx(total, rel=1e-9)
        assert [row["layer"] for row in ph["layers"]] == list(range(r["model"]["layers"]))
    md = (out / "report.md").read_text()
    assert "## Per layer" in md and "attention, FFN" in md


def test_deepseek_v3_on_8_h200s(dsv3_report):
    r, out = dsv3_report
    _complete(r, out)
    # the latent cache: (512 + 64) values x 2 bytes x 61 layers per token, replicated on each TP rank
    assert r["memory"]["kv_bytes_per_token"] == 61 * (512 + 64) * BF16 == 70272
    assert r["parallel"]["memory_per_device"]["kv_bytes_per_token"] == 70272
    assert {row["cache"] for row in r["memory"]["kv_layers"]} == {"latent"}
    # FP8 block-scaled checkpoint: ~671B parameters at ~1 byte; fits 8 x 141 GB, not one
    assert 0.66e12 < r["memory"]["weights_bytes"] < 0.70e12
    assert r["capacity"]["fits"] and not r["memory"]["fits_one_device"]
    dec = r["phases"]["decode"]
    assert {row["ffn"] for row in dec["layers"][:3]} == {"dense"} and {row["ffn"] for row in dec["layers"][3:]} == {"moe"}
    assert {row["attention"] for row in dec["layers"]} == {"latent"}
    # the absorbed form at decode, the expanded at prefill (the recorded decision, per op row)
    assert any(o["name"].endswith(":attention_latent") for o in dec["ops"])
    assert not any(o["name"].endswith(":expand") for o in dec["ops"])
    assert any(o["name"].endswith(":expand") for o in r["phases"]["prefill"]["ops"])
    m = r["moe"]
    assert (m["experts"], m["top_k"], m["shared_experts"], m["layers"]) == (256, 8, 1, 58)
    assert m["dispatch"]["decode"]["loop_s"] > m["dispatch"]["decode"]["grouped_s"]
    s = r["speculative"]
    assert s["draft"]["name"] == "mtp" and s["acceptance"] == 0.85 and s["acceptance_source"]["source"] == "published"
    assert s["draft"]["kv_bytes_per_token"] == (512 + 64) * BF16
    # γ = 4 at α = 0.85: 3.18 tokens per step; the MTP layer and the verify step cost something
    assert s["expected_tokens_per_step"] == pytest.approx((1 - 0.85 ** 5) / 0.15)
    assert 1.2 < s["speedup"] < s["expected_tokens_per_step"]


def test_gpt_oss_120b_on_one_h100(oss_report):
    r, out = oss_report
    _complete(r, out)
    # 18 local layers hold ≤ 128 tokens, 18 global layers the whole sequence; 8 KV heads x 64
    L = r["memory"]["kv_tokens_per_sequence"]
    per_layer = 2 * 8 * 64 * BF16
    assert r["memory"]["kv_cache_bytes"] == pytest.approx(r["workload"]["batch"] * per_layer * (18 * min(L, 128) + 18 * L))
    assert r["memory"]["kv_bytes_per_token_unbounded"] == 36 * per_layer
    # MXFP4 experts: the published checkpoint is ~65 GB and fits one 80 GB H100
    assert 60e9 < r["memory"]["weights_bytes"] < 70e9 and r["memory"]["fits_one_device"]
    wf = r["model"]["import"]["weight_formats"]
    assert wf["formats"] == {"experts": "mxfp4"} and "dequantized" in wf["math"]
    dec = r["phases"]["decode"]
    att = [row["attention"] for row in dec["layers"]]
    assert att == ["window", "full"] * 18
    # a decode step at this context: the windowed layers' attention reads less KV than the global ones
    blocks = [row["time_by_block_s"]["attention"] for row in dec["layers"]]
    assert np.mean(blocks[0::2]) <= np.mean(blocks[1::2])


def test_mtp_needs_a_model_with_an_mtp_module():
    from compiler.driver.draft import validate
    from compiler.errors import ConfigError
    with pytest.raises(ConfigError, match="multi-token-prediction module"):
        validate(compose(["model=qwen3_8b", "speculative.draft_model=mtp"]))


@pytest.mark.parametrize("name, layers", [("gemma3_tiny", 8), ("deepseek_v3_tiny", 5), ("gpt_oss_tiny", 5)])
def test_stacking_by_layer_kind_equals_a_full_export(name, layers):
    base = model_cfg(name, weights="meta", dtype="bfloat16")
    conf = dict(base["config"], num_hidden_layers=layers)
    if "layer_types" in conf:   # the model's pattern, over the longer stack
        pattern = conf["layer_types"]
        conf["layer_types"] = [pattern[i % len(pattern)] for i in range(layers)]
    base["config"] = conf
    full = import_torch(dict(base, stack_layers=False))
    stacked = import_torch(dict(base))
    prepare(full)
    prepare(stacked)
    assert stacked.meta["layer_stacking"]["stacked_from"] < layers
    stacked.verify()
    assert stacked.ops_by_kind() == full.ops_by_kind()
    assert sorted(stacked.params) == sorted(full.params)
    hw = hardware_by_name("h100_sxm")
    cf, cs = CostModel(full, hw), CostModel(stacked, hw)
    for b, s, p, phase in [(4, 300, 0, "prefill"), (16, 1, 2000, "decode")]:
        tf, ts = cf.totals(b, s, p, phase), cs.totals(b, s, p, phase)
        for k in ("time", "flops", "bytes", "kv", "weights"):
            assert ts[k] == pytest.approx(tf[k], rel=1e-9), (phase, k)
    specs = [(n.annotations["layer"], getattr(n.annotations.get("attention"), "window", None))
             for n in stacked.topo_order() if n.op in ("Attention", "LatentAttention")]
    full_specs = [(n.annotations["layer"], getattr(n.annotations.get("attention"), "window", None))
                  for n in full.topo_order() if n.op in ("Attention", "LatentAttention")]
    assert specs == full_specs


def test_expert_parallel_fine_grained_moe_with_shared_experts_and_dense_layers():
    """DeepSeek-V3's shape (tiny): ``parallel.ep=2`` splits the routed experts' stacked weights
    (grouped GEMMs) over the devices and leaves the shared expert, the dense first layer and
    attention whole; the all-to-alls (dispatch + combine) are only in the MoE layers, each of the
    routed tokens' hidden states (tokens x top_k x hidden)."""
    from compiler.analysis.parallel import ParallelPlan, analyze_parallel, shard_table
    from compiler.frontends import families
    from compiler.perf.collectives import collective_time
    from tests.conftest import imported
    cfg = model_cfg("deepseek_v3_tiny")["config"]
    g = imported("deepseek_v3_tiny")
    dims = families.dims(cfg)
    cm = CostModel(g, hardware_by_name("h100_sxm"))
    t1, t2 = shard_table(cm, dims, ParallelPlan()), shard_table(cm, dims, ParallelPlan(ep=2))
    E, H, inter, L = cfg["n_routed_experts"], cfg["hidden_size"], cfg["moe_intermediate_size"], cfg["num_hidden_layers"]
    moe_layers = L - cfg["first_k_dense_replace"]
    routed = 4 * moe_layers * E * 3 * H * inter                 # fp32 gate, up, down of every routed expert
    assert t1.weight_bytes_total - t2.weight_bytes_device == pytest.approx(routed / 2)
    names = [name for kind, name, _ in t2.comms if kind == "all_to_all"]
    assert len(names) == 2 * moe_layers
    r = analyze_parallel(cm, cm.hw, ParallelPlan(ep=2), dims, batch=4, prompt_len=32, context_len=32,
                         tokens=40, kv_bytes_per_token=1.0, activation_peak_bytes=0, reserve_bytes=0)
    tok = 4 * 1 * cfg["num_experts_per_tok"] * H * 4           # decode: 4 tokens x top-2 x hidden x fp32
    assert r["phases"]["decode"]["comm_time_s"] == pytest.approx(
        2 * moe_layers * float(collective_time(cm.hw, "all_to_all", 2, tok)))
