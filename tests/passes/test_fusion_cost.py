"""Fusion is costed honestly: the report shows what the fused ops move, by the formulas.

Llama-2-7B (meta weights, eager attention, fp16) on an A100-80GB: the unfused attention of one
layer at prefill (B = 1, S = N, P = 0, H = 32 heads, d = 128, 2 bytes per element) moves, op by op
in the IR,

    Transpose K                      read + write K           4·H·N·d
    MatMul Q·Kᵀ                      Q, Kᵀ read; scores       4·H·N·d + 2·H·N²
    Mul by the scale                 scores in and out        4·H·N²  (+ 2: the scalar)
    Add the causal mask              scores in/out + mask     4·H·N² + 2·N²
    Cast to fp32 (softmax in fp32)   2 B in, 4 B out          6·H·N²
    Softmax (fp32)                                           8·H·N²
    Cast back to fp16                                        6·H·N²
    MatMul P·V                       P, V read; O written     2·H·N² + 4·H·N·d
                                                             ─────────────────────────
                                                             32·H·N² + 12·H·N·d + 2·N² + 2

(The textbook ≈ 8N² + 8Nd per head is the same chain with the scale, mask and casts already folded
into one softmax pass.) The fused Attention (FlashAttention-style, with the lifted KV cache) reads
Q, writes O, appends the new K/V to the cache, and streams K/V from memory once per query tile whose
K/V working set fits half the 40 MiB L2 (rows = 20 MiB / (H·d·2) = 2560):

    4·H·N·d (Q, O) + 4·H·N·d·tiles (K, V reads) + 4·H·N·d (K, V cache writes) + N (padding mask),
    tiles = ⌈N / 2560⌉

(the padding mask is lift_kv_cache's ``attention_mask`` operand, bool [B, 1, 1, P+S], read once)

so at N = 2048 (1 tile) bytes fall ≈ 43.7×, at N = 8192 (4 tiles) ≈ 86×.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from tests.conftest import compose, model_cfg, prepare

H, D, HKV, LAYERS = 32, 128, 32, 32
L2 = 40 * 2**20


def unfused_bytes(n: int) -> float:
    return 32 * H * n * n + 12 * H * n * D + 2 * n * n + 2


def fused_bytes(n: int) -> float:
    tiles = math.ceil(n / ((L2 // 2) // (H * D * 2)))
    return 4 * H * n * D + 4 * HKV * n * D * tiles + 4 * HKV * n * D + n


@pytest.fixture(scope="module")
def llama2_7b_eager():
    """(fused import with its KV cache — the real import path; the unfused eager graph)."""
    from compiler.frontends.models import _vocab, build_torch_model, example_inputs, import_torch
    from compiler.frontends.torch_export import export_module, import_exported
    from compiler.ir import B, S
    from passes.cleanup import remove_noops
    cfg = model_cfg("llama2_7b", attn_implementation="eager")
    fused = import_torch(cfg)
    stats = prepare(fused)
    module, task = build_torch_model(cfg)
    ex = example_inputs(task, _vocab(module), device="meta")
    ep = export_module(module, ex, {k: [0, 1] for k in ex})
    unfused = import_exported(ep, name="llama2_7b", dims={k: [B, S] for k in ex}, causal=True,
                              output_names=["logits"])
    unfused.meta["dim_sources"] = {"B": ("input_ids", 0), "S": ("input_ids", 1)}
    remove_noops(unfused)
    return fused, unfused, stats


def attention_groups(g):
    """The op groups the attention rule would fuse (matched, checked, not rewritten)."""
    from passes.fusion.attention import attention_pattern, check_attention
    from passes.fusion.pattern import Matcher
    from passes.fusion.rule import Match, leaking_value
    pat, groups = attention_pattern(), []
    for n in g.topo_order():
        if n.op != "MatMul":
            continue
        for bind in Matcher(g).match(pat, n.outputs[0]):
            m = Match(g, n, n.outputs[0], bind)
            if check_attention(m) and not leaking_value(g, m, ()):
                groups.append([x.name for x in m.nodes])
                break
    return groups


@pytest.mark.parametrize("n", [2048, 8192])
def test_report_shows_flash_attention_bytes(n, llama2_7b_eager, tmp_path, monkeypatch):
    import compiler.driver.pipeline as pipeline
    from compiler.perf.cost import CostModel
    from compiler.perf.hardware import hardware_by_name
    fused, unfused, stats = llama2_7b_eager
    assert stats["fuse_eager_attention"]["attention.causal"] == LAYERS

    # before: the IR's per-op bytes of every unfused attention group
    groups = attention_groups(unfused)
    assert len(groups) == LAYERS
    ops = {r["name"]: r for r in CostModel(unfused, hardware_by_name("a100_80g")).op_table(1, n, 0, "prefill")}
    kinds = sorted(unfused.node(x).op for x in groups[0])
    assert kinds == ["Add", "Cast", "Cast", "MatMul", "MatMul", "Mul", "Softmax", "Transpose"]
    before = [sum(ops[x]["bytes"] for x in grp if x in ops) for grp in groups]
    assert before == pytest.approx([unfused_bytes(n)] * LAYERS, rel=1e-12)

    # after: the report of the eager import on a100_80g
    monkeypatch.setattr(pipeline, "import_model", lambda cfg, prog=None: fused.copy())
    cfg = compose(["model=llama2_7b", "model.attn_implementation=eager", "hardware=a100_80g", "pipeline=none",
                   f"workload.prompt_len={n}", "workload.gen_len=2", "emit.enabled=false", "progress=false",
                   "report.html=false", "workload.allow_beyond_max_positions=true"])  # 8192 > 4096
    pipeline.run(cfg, str(tmp_path))
    report = json.loads((tmp_path / "report.json").read_text())
    att = [o for o in report["phases"]["prefill"]["ops"] if o["op"] == "Attention"]
    assert len(att) == LAYERS
    after = [o["bytes"] for o in att]
    assert after == pytest.approx([fused_bytes(n)] * LAYERS, rel=1e-12)

    factor = unfused_bytes(n) / fused_bytes(n)
    assert sum(before) / sum(after) == pytest.approx(factor, rel=1e-12)
    assert factor == pytest.approx({2048: 43.75, 8192: 86.0}[n], rel=2e-3)


def test_fuse_pipeline_reports_counts_and_cost(tmp_path):
    """``pipeline=fuse``: per-rule counts and cost before/after land in report.json passes[];
    the emitted model runs in onnxruntime with the fused ops as rooftop-domain functions."""
    import onnx

    from compiler.driver.pipeline import run
    cfg = compose(["model=gpt2_tiny", "pipeline=fuse", "hardware=a100_80g", "workload.prompt_len=256",
                   "progress=false", "report.html=false"])
    report = run(cfg, str(tmp_path))
    rec = next(p for p in report["passes"] if p["name"] == "fuse")
    assert rec["changed"] and rec["stats"]["residual_norm"] == 9 and rec["stats"]["gelu"] == 4
    assert rec["stats"]["matmul_epilogue.gelu_tanh"] == 4 and rec["stats"]["matmul_epilogue.bias"] == 12
    for phase in ("prefill", "decode"):
        assert rec["cost_after"][phase]["bytes"] < rec["cost_before"][phase]["bytes"]
        assert rec["cost_after"][phase]["time_s"] < rec["cost_before"][phase]["time_s"]
    m = onnx.load(str(tmp_path / "model.onnx"))
    assert {f.name for f in m.functions} == {"ResidualLayerNormBias", "MatMulBias", "MatMulBiasGeluTanh"}
    assert {o.domain for o in m.opset_import} == {"", "rooftop"}
    assert report["emit"]["verified"]["outputs"]["logits"][0] == 2
