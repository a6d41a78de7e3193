"""Cost rules of the modern constructs, against hand arithmetic: sliding-window attention (the band a
windowed kernel computes, the last W keys a decode step reads; every pair on a masked dense kernel),
multi-head latent attention (the expanded form at prefill, the absorbed form at decode, a forced
form), grouped expert GEMMs (distinct experts' weights), checkpoint weight formats (MXFP4 / NVFP4 /
block FP8 stored bytes; FP4 math only where the hardware has it), and the per-construct predictions
against the H100 measurements (tools/compare_modern_kernels.py)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from compiler.ir import B, P, S, Graph, TensorType
from compiler.ir.annotations import AttentionSpec, KVLayout
from compiler.ir.ops import Classifier, op_cost, op_kernels, window_scores
from compiler.perf.cost import CostModel
from compiler.perf.hardware import hardware_by_name
from compiler.frontends.models import import_torch
from tests.conftest import model_cfg, prepare

ROOT = Path(__file__).resolve().parents[2]
H, HKV, D = 32, 8, 128


def attention_graph(window=None, dtype="bfloat16"):
    g = Graph("a")
    q = g.add_input("q", TensorType(dtype, (B, H, S, D)))
    k = g.add_input("k", TensorType(dtype, (B, HKV, S, D)))
    v = g.add_input("v", TensorType(dtype, (B, HKV, S, D)))
    pk = g.add_input("past_key.0", TensorType(dtype, (B, HKV, P, D)))
    pv = g.add_input("past_value.0", TensorType(dtype, (B, HKV, P, D)))
    ann = {"attention": AttentionSpec(mask="window", window=window)} if window else {}
    n = g.add_op("Attention", [q, k, v, "", pk, pv], ["y", "present_key.0", "present_value.0"], {"is_causal": 1},
                 kv_layout=KVLayout("contiguous"), **ann)
    g.meta["kv_tensors"] = [pk, pv, "present_key.0", "present_value.0"]
    g.set_outputs(n.outputs)
    return g, n


def _num(e, **pt):
    import sympy
    return float(sympy.sympify(e).subs({B: pt["b"], S: pt["s"], P: pt["p"]}))


def test_window_band_closed_form_equals_the_sum():
    for s, past, w in [(1, 5000, 4096), (4096, 0, 1024), (300, 900, 1024), (17, 3, 8), (8, 0, 16)]:
        brute = sum(min(past + t, w) for t in range(1, s + 1))
        assert _num(window_scores(S, P, w), b=1, s=s, p=past) == brute


def test_windowed_attention_flops_and_kv_reads():
    """Decode reads the last W keys of each KV head (not the context); prefill computes the band;
    on a CPU (onnxruntime: a masked dense kernel) every query-key pair is computed and read."""
    w = 1024
    g, n = attention_graph(window=w)
    full, nf = attention_graph()
    gpu, cpu = Classifier(g, hardware_by_name("h100_sxm")), Classifier(g, hardware_by_name("cpu"))
    e = 2
    f_dec, b_dec = op_cost(g, n, gpu)
    kv_read = _num(b_dec.kv, b=4, s=1, p=32767) - 4 * HKV * 1 * 2 * D * e     # minus the new token's write
    assert kv_read == 4 * HKV * w * 2 * D * e
    f_full, b_full = op_cost(full, nf, Classifier(full, hardware_by_name("h100_sxm")))
    assert _num(b_full.kv, b=4, s=1, p=32767) - 4 * HKV * 2 * D * e == 4 * HKV * 32768 * 2 * D * e
    per_pair = 2 * D + 2 * D + 5
    assert _num(f_dec, b=4, s=1, p=32767) == 4 * H * w * per_pair
    f_pre, _ = op_cost(g, n, gpu)
    assert _num(f_pre, b=1, s=8192, p=0) == H * (w * (w + 1) / 2 + (8192 - w) * w) * per_pair
    f_dense, b_dense = op_cost(g, n, cpu)
    assert _num(f_dense, b=1, s=8192, p=0) == H * 8192 * 8192 * per_pair
    assert gpu.window_kernel == "windowed" and cpu.window_kernel == "masked_dense"


def test_windowed_decode_time_is_flat_beyond_the_window():
    cm = CostModel(attention_graph(window=512)[0], hardware_by_name("h100_sxm"))
    t = cm.phase_time(8, 1, np.array([4096.0, 16384.0, 65536.0]), "decode")
    assert np.allclose(t, t[0])
    full = CostModel(attention_graph()[0], hardware_by_name("h100_sxm")).phase_time(8, 1, 65536, "decode")[0]
    assert full > 10 * t[-1]


@pytest.fixture(scope="module")
def v3_layer():
    cfg = model_cfg("deepseek_v3")
    g = import_torch(dict(cfg, config=dict(cfg["config"], num_hidden_layers=1), stack_layers=False))
    prepare(g)
    return g


def test_mla_forms_per_phase_by_hand(v3_layer):
    """DeepSeek-V3 (H 128, nope 128, rope 64, v 128, latent 512): prefill runs the expanded form
    (kv_b up-projection of the whole latent + SDPA over 192-dim keys), decode the absorbed form
    (W_UK on the query, attention over the 576-wide latent, W_UV on the output)."""
    g = v3_layer
    n = next(x for x in g if x.op == "LatentAttention")
    ks = {k.label: k for k in op_kernels(g, n, Classifier(g, hardware_by_name("h200")))}
    assert ks["expand"].phases == ks["attention"].phases == ("prefill",)
    assert ks["absorb_q"].phases == ks["attention_latent"].phases == ks["absorb_out"].phases == ("decode",)
    h, dn, dr, dv, r = 128, 128, 64, 128, 512
    b, s, p = 1, 2048, 0
    pairs = h * (s * (s + 1) / 2)
    assert _num(ks["expand"].flops, b=b, s=s, p=p) == 2 * s * r * h * (dn + dv)
    assert _num(ks["attention"].flops, b=b, s=s, p=p) == pairs * (2 * (dn + dr) + 2 * dv + 5)
    b, s, p = 16, 1, 8191
    pairs = b * h * (p + 1)
    assert _num(ks["absorb_q"].flops, b=b, s=s, p=p) == 2 * b * h * dn * r
    assert _num(ks["attention_latent"].flops, b=b, s=s, p=p) == pairs * (2 * (r + dr) + 2 * r + 5)
    # the absorbed core reads the latent cache once (all heads share it) and writes the new token's
    assert _num(ks["attention_latent"].bytes.kv, b=b, s=s, p=p) == b * (p + 1) * (r + dr) * 2
    # the weights of kv_b_proj are read once per step, split between W_UK and W_UV
    w = sum(_num(ks[x].bytes.weights, b=b, s=s, p=p) for x in ("absorb_q", "absorb_out"))
    assert w == h * (dn + dv) * r * 2
    # KV cache inputs hold the latent: kv_lora_rank + rope per token and layer
    assert g.type("past_key.0").shape[1:] == (1, P, r) and g.type("past_value.0").shape[1:] == (1, P, dr)


def test_mla_form_can_be_forced(v3_layer):
    import copy
    import dataclasses
    g = copy.deepcopy(v3_layer)
    n = next(x for x in g if x.op == "LatentAttention")
    n.annotations["attention"] = dataclasses.replace(n.annotations["attention"], form="expanded")
    labels = {k.label: k.phases for k in op_kernels(g, n)}
    assert labels == {"expand": ("prefill", "decode"), "attention": ("prefill", "decode")}
    hw = hardware_by_name("h200")
    forced, default = CostModel(g, hw), CostModel(v3_layer, hw)
    # at long context the expanded decode up-projects the whole latent every step: far slower
    assert forced.phase_time(32, 1, 8191, "decode")[0] > 3 * default.phase_time(32, 1, 8191, "decode")[0]
    assert forced.phase_time(1, 2048, 0, "prefill")[0] == pytest.approx(default.phase_time(1, 2048, 0, "prefill")[0])


def test_grouped_expert_gemm_reads_the_distinct_experts():
    from compiler.perf.moe import distinct_experts
    g = import_torch(model_cfg("qwen3_moe_tiny"))
    prepare(g)
    cm = CostModel(g, hardware_by_name("h200"))
    grouped = np.array([it.op == "MoEMatMul" for it in cm.items])
    E, k, Hd, I = 16, 4, 64, 32
    for b in (1, 3, 64):
        _, w, _, _ = cm.raw(b, 1, 16, "decode")
        assert w[grouped, 0].sum() == pytest.approx(2 * distinct_experts(E, k, b) * 3 * Hd * I * 4)


def test_checkpoint_weight_formats():
    """MXFP4 4.25 bits per weight (E2M1 + an E8M0 scale per 32), NVFP4 4.5 (+ an E4M3 scale per 16),
    block FP8 8 + 32/16384; gpt-oss's experts in MXFP4: FP4 math on a B200, bf16 math on an H100."""
    from compiler.ir.annotations import WeightFormat
    from passes.weight_formats import FORMATS, apply_weight_formats
    bits = {name: WeightFormat(**spec).bits_per_weight(1 << 20) for name, (spec, _) in FORMATS.items()
            if name != "bf16"}
    assert bits == {"mxfp4": 4.25, "nvfp4": 4.5, "fp8_block128": 8 + 32 / 16384}
    for hw, math in (("b200", "fp4"), ("h100_sxm", "fp32")):
        g = import_torch(model_cfg("gpt_oss_tiny"))
        prepare(g)
        before = CostModel(g, hardware_by_name(hw)).totals(1, 1, 64, "decode")["weights"]
        stats = apply_weight_formats(g, {"experts": "mxfp4"}, hardware_by_name(hw))
        assert stats == {"mxfp4": 4}                                     # 2 projections x 2 layers
        grouped = [n for n in g if n.op == "MoEMatMul"]
        assert {n.annotations["compute_dtype"].dtype for n in grouped} == {math}   # (tiny model: fp32 activations)
        for n in grouped:
            p = g.params[n.inputs[1]]
            assert Classifier(g).weight_bytes(p.name) == pytest.approx(int(np.prod(p.type.shape)) * 4.25 / 8)
        after = CostModel(g, hardware_by_name(hw)).totals(1, 1, 64, "decode")["weights"]
        assert after < before


def test_weight_format_config_errors():
    from compiler.errors import ConfigError
    from passes.weight_formats import apply_weight_formats
    g = Graph("x")
    with pytest.raises(ConfigError, match="parameter group"):
        apply_weight_formats(g, {"expert": "mxfp4"})
    with pytest.raises(ConfigError, match="weight format"):
        apply_weight_formats(g, {"experts": "fp3"})


def _compare_tool():
    spec = importlib.util.spec_from_file_location("compare_modern_kernels", ROOT / "tools" / "compare_modern_kernels.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_modern_constructs_against_the_h100_measurements():
    """Every construct and phase: median |predicted / measured − 1| ≤ 15 %, worst ≤ 40 %
    (the points of compiler/perf/calibration/data/h100_modern_kernels.json; the bands the Hopper
    YAMLs state in kernel_families)."""
    tool = _compare_tool()
    summ = tool.summary(tool.predictions())
    assert set(summ) == {"mla", "window", "moe", "qk_norm_layer"}
    for construct, phases in summ.items():
        assert set(phases) == {"prefill", "decode"}, construct
        for phase, v in phases.items():
            assert v["median"] <= 0.15 and v["worst"] <= 0.40, (construct, phase, v)
    fams = hardware_by_name("h100_sxm").kernel_families
    for kind in tool.KINDS:
        assert kind in fams and "worst" in fams[kind].source and fams[kind].median_err <= 0.15
    assert "transferred from h100_sxm" in hardware_by_name("h200").kernel_families["mla_absorbed_core"].source
