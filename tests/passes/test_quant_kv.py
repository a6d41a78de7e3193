"""kv.dtype=int8 in the artifact: the cache crosses the model boundary as int8 codes with static
per-head/channel scales (onnxruntime GroupQueryAttention), checked against numpy and against the
float cache over a prefill and several decode steps — and the check fails when the cache is wrong."""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest

from compiler.backend import accuracy
from compiler.backend.emit import to_model
from compiler.backend.quantized import make_session
from compiler.perf.cost import CostModel
from compiler.perf.hardware import hardware_by_name
from passes import PassManager, make_pass
from tests.conftest import compose, imported

CAL = {"samples": 4, "seq_len": 64}


def _kv_int8(name, dtype="int8"):
    g = imported(name).copy()
    PassManager([make_pass({"name": "fuse"}), make_pass("dce")])(g)
    ref = g.copy()
    PassManager([make_pass({"name": "kv_layout", "dtype": dtype}),
                 make_pass({"name": "quantize_kv", "calibration": CAL})])(g)
    return ref, g


@pytest.fixture(scope="module")
def gpt2_kv():
    return _kv_int8("gpt2_tiny")


def _save(g, tmp_path, name="kv.onnx"):
    p = str(tmp_path / name)
    onnx.save(to_model(g), p)
    return p


def test_artifact_stores_an_int8_cache(gpt2_kv, tmp_path):
    ref, g = gpt2_kv
    rec = g.meta["kv_quantization"]
    assert rec["emitted"] and rec["layers"] == 4 and rec["calibration"]["samples"] == 4
    model = to_model(g)
    types = {i.name: i.type.tensor_type.elem_type for i in list(model.graph.input) + list(model.graph.output)}
    assert all(types[t] == onnx.TensorProto.INT8 for t in types if t.startswith(("past_", "present_")))
    assert [n.op_type for n in model.graph.node].count("GroupQueryAttention") == 4
    assert "Attention" not in [n.op_type for n in model.graph.node]
    # the IR keeps float types: the annotation describes the storage (the cost model reads kv_layout)
    assert g.type("past_key.0").dtype == "float32"
    kq = next(n for n in g if "kv_quant" in n.annotations).annotations["kv_quant"]
    assert kq.k_scale.shape == (g.type("past_key.0").shape[1], g.type("past_key.0").shape[3])


def test_present_codes_and_attention_match_numpy(gpt2_kv, tmp_path):
    """Layer 0's stored codes are round(K / scale) of the float model's K exactly, and the attention
    output of a decode step equals numpy attention over the dequantized cache."""
    ref, g = gpt2_kv
    art, flt = make_session(_save(g, tmp_path)), make_session(to_model(ref))
    n0 = next(n for n in g.topo_order() if "kv_quant" in n.annotations)
    kq = n0.annotations["kv_quant"]
    ids = (np.arange(2 * 9).reshape(2, 9) * 31 + 5) % accuracy.vocab_of(g)
    feeds = lambda sess: {**accuracy.feeds_for(sess.get_inputs(), ids[0]),    # noqa: E731
                          "input_ids": ids, "position_ids": np.broadcast_to(np.arange(9), (2, 9)).copy(),
                          **{i.name: np.zeros((2, *[d if isinstance(d, int) else 0 for d in i.shape[1:]]),
                                              np.int8 if "int8" in i.type else np.float32)
                             for i in sess.get_inputs() if i.name.startswith("past_")}}
    a = dict(zip([o.name for o in art.get_outputs()], art.run(None, feeds(art))))
    r = dict(zip([o.name for o in flt.get_outputs()], flt.run(None, feeds(flt))))
    for t, s in ((n0.outputs[1], kq.k_scale), (n0.outputs[2], kq.v_scale)):
        codes = np.clip(np.rint(r[t] / s[None, :, None, :]), -128, 127)
        np.testing.assert_array_equal(a[t].astype(np.float64), codes)
    assert np.abs(a["logits"] - r["logits"]).max() > 0        # lossy, measured


def test_kv_check_passes_and_fails_when_the_cache_is_wrong(gpt2_kv, tmp_path):
    ref, g = gpt2_kv
    good = accuracy.kv_cache_check(g, _save(g, tmp_path))
    assert good["checked"] and good["ok"], good
    assert good["codes_mismatched"] == 0 and 0 < good["mean_kl_nats"] < 1e-3
    bad = g.copy()
    for n in bad:
        if "kv_quant" in n.annotations:     # scales 10x too small: most of the cache saturates
            kq = n.annotations["kv_quant"]
            n.annotations["kv_quant"] = dataclasses.replace(kq, k_scale=kq.k_scale / 10, v_scale=kq.v_scale / 10)
    chk = accuracy.kv_cache_check(bad, _save(bad, tmp_path, "bad.onnx"))
    assert chk["checked"] and not chk["ok"], chk
    assert chk["max_rel_logit_diff"] > accuracy.KV_TOLERANCE["max_rel_logit_diff"]
    assert chk["mean_kl_nats"] > 10 * good["mean_kl_nats"]


def test_grouped_query_attention_with_rotary_llama(tmp_path):
    """Llama (8 query heads sharing 2 KV heads, rotary positions) through prefill + decode steps."""
    ref, g = _kv_int8("llama_tiny")
    assert g.meta["kv_quantization"]["emitted"]
    chk = accuracy.kv_cache_check(g, _save(g, tmp_path))
    assert chk["ok"] and chk["codes_mismatched"] == 0, chk


def test_fp8_and_unsupported_attention_stay_float_with_the_reason():
    ref, g = _kv_int8("gpt2_tiny", "fp8")
    rec = g.meta["kv_quantization"]
    assert not rec["emitted"] and "CUDA" in rec["reason"]
    assert not any("kv_quant" in n.annotations for n in g)
    h = imported("gpt2_tiny").copy()
    PassManager([make_pass({"name": "fuse"}), make_pass("dce"), make_pass({"name": "kv_layout", "dtype": "int8"})])(h)
    for n in h:
        if n.op == "Attention":
            n.attrs["is_causal"] = 0
    make_pass({"name": "quantize_kv", "calibration": CAL})(h)
    assert not h.meta["kv_quantization"]["emitted"] and "not causal" in h.meta["kv_quantization"]["reason"]


def test_cost_charges_the_int8_cache(gpt2_kv):
    """The cost model prices the stored format (a quarter of the fp32 KV bytes at decode)."""
    ref, g = gpt2_kv
    hw = hardware_by_name("cpu_2vcpu")
    kv_ref = CostModel(ref, hw).totals(8, 1, 512, "decode")["kv"]
    kv_q = CostModel(g, hw).totals(8, 1, 512, "decode")["kv"]
    assert abs(kv_q / kv_ref - 0.25) < 1e-6


def test_driver_kv_int8_end_to_end(tmp_path):
    """``kv.dtype=int8`` alone: the compression stage quantizes the cache, the report states the
    check and the accuracy of the artifact against the float model."""
    from compiler.driver.pipeline import run
    rep = run(compose(["model=gpt2_tiny", "hardware=cpu_2vcpu", "kv.dtype=int8", "report.html=false",
                       "quant.calibration.samples=2", "accuracy.samples=3", "workload.prompt_len=64"]),
              str(tmp_path / "out"))
    kv = rep["compression"]["kv_cache"]
    assert kv["emitted"] and kv["check"]["ok"]
    assert rep["accuracy"]["measured"] and rep["accuracy"]["kl_nats"]["mean"] < 1e-3
    m = onnx.load(str(tmp_path / "out" / "model.onnx"))
    assert next(i for i in m.graph.input if i.name == "past_key.0").type.tensor_type.elem_type == onnx.TensorProto.INT8
    md = (tmp_path / "out" / "report.md").read_text()
    assert "**KV cache**: int8 in the artifact" in md


def test_weight_check_with_an_int8_cache_reads_the_file(gpt2_kv, tmp_path):
    """W4A16 weights beside an int8 cache: the weight check runs both sides with the float cache
    (a rounding flip of one cached code is the cache's noise, checked by kv_cache_check), after
    holding the file to that emission — a changed packed weight in the file fails it."""
    from onnx import numpy_helper
    _, g = gpt2_kv
    g = g.copy()
    make_pass({"name": "quantize", "scheme": "w4a16", "ort_accuracy_level": 0})(g)
    path = _save(g, tmp_path, "w4kv8.onnx")
    chk = accuracy.quantization_check(g, path)
    assert chk["checked"] and chk["ok"] and "float KV cache" in chk["reference"], chk
    assert chk["max_abs_diff"] <= chk["bound"]
    m = onnx.load(path)
    t = next(t for t in m.graph.initializer if t.name.endswith(".weight.q"))     # uint4 codes
    a = numpy_helper.to_array(t)
    b = a.astype(np.int32)
    b.flat[0] = (b.flat[0] + 1) % 16      # one 4-bit code changed
    t.CopyFrom(numpy_helper.from_array(b.astype(a.dtype), t.name))
    bad = str(tmp_path / "bad.onnx")
    onnx.save(m, bad)
    chk = accuracy.quantization_check(g, bad)
    assert chk["checked"] and not chk["ok"] and "differs" in chk["reference"], chk


def test_code_check_allows_only_the_rounding_neighbour_at_a_boundary():
    """A value a few ulps from a .5 boundary may take either code; any other difference is wrong."""
    scale = np.array([0.1])
    x = np.array([0.25 + 1e-9, 1.0, -3.0, 12.7])        # 2.5000…1 → 3 (or 2 within the tolerance)
    exact = np.clip(np.rint(x / scale), -128, 127)
    assert accuracy.code_mismatches(x, scale, exact) == (0, 0)
    flipped = exact.copy()
    flipped[0] = 2                                       # the other neighbour of a boundary value
    assert accuracy.code_mismatches(x, scale, flipped) == (0, 1)
    off = exact.copy()
    off[1] = 11                                          # 1.0 / 0.1 = 10 is far from a boundary
    assert accuracy.code_mismatches(x, scale, off) == (1, 0)
    assert accuracy.code_mismatches(x, scale, flipped, ulps=0.0) == (1, 0)    # no tolerance: wrong


def test_driver_w4a16_with_an_int8_cache(tmp_path):
    """``quant=w4a16 quant.exclude=[] kv.dtype=int8`` (the GPT-2 acceptance artifact, tiny): both
    checks run and pass — the weights against fp32 with the float cache on both sides, the cache
    against the float cache — and the artifact has int4 weights, the shared table and an int8 cache."""
    from compiler.driver.pipeline import run
    rep = run(compose(["model=gpt2_tiny", "hardware=cpu_2vcpu", "quant=w4a16", "quant.exclude=[]", "kv.dtype=int8",
                       "report.html=false", "quant.calibration.samples=2", "accuracy.samples=2",
                       "workload.prompt_len=64"]), str(tmp_path / "out"))
    chk, kv = rep["compression"]["artifact_check"], rep["compression"]["kv_cache"]
    assert chk["checked"] and chk["ok"] and "float KV cache" in chk["reference"], chk
    assert kv["emitted"] and kv["check"]["ok"] and kv["check"]["codes_mismatched"] == 0
    ops = [n.op_type for n in onnx.load(str(tmp_path / "out" / "model.onnx")).graph.node]
    assert "GatherBlockQuantized" in ops and ops.count("GroupQueryAttention") == 4 and "MatMulNBits" in ops
