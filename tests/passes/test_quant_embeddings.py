"""Quantized embedding tables and tied LM heads: blocks along each row, one packed table read by
onnxruntime's GatherBlockQuantized (dequantize after the gather) and — for GPT-2's tied head — by
MatMulNBits, checked against numpy and against the same quantization computed in fp32."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from compiler.analysis.compression import weight_formats
from compiler.backend import accuracy
from compiler.backend.emit import to_model
from compiler.backend.quantized import make_session, pack_table
from passes import PassManager, make_pass
from passes.quant import QuantSpec, quantize_rtn
from passes.quant.passes import embedding_tables
from tests.conftest import imported

TABLE = "model.lm_head.weight"     # GPT-2's wte: the Gather reads it, the tied head reads Transpose(wte)


@pytest.fixture(scope="module")
def gpt2_fused():
    g = imported("gpt2_tiny").copy()
    PassManager([make_pass({"name": "fuse"}), make_pass("dce")])(g)
    return g


def _quantized(g, **params):
    h = g.copy()
    res = make_pass({"name": "quantize", **params})(h)
    h.verify()
    return h, res


def _save(model, tmp_path, name="art.onnx"):
    p = str(tmp_path / name)
    onnx.save(model, p)
    return p


def test_tables_found_with_their_tied_head(gpt2_fused):
    tabs = {t.param: t for t in embedding_tables(gpt2_fused, [])}
    assert set(tabs) == {TABLE, "model.transformer.wpe.weight"}
    assert [h.op for h in tabs[TABLE].heads] == ["MatMul"] and not tabs["model.transformer.wpe.weight"].heads
    assert all(not t.reason for t in tabs.values())
    default = {t.param: t.reason for t in embedding_tables(gpt2_fused)}
    assert set(default.values()) == {"embeddings"}
    kept = {t.param: t.reason for t in embedding_tables(gpt2_fused, ["lm_head"])}
    assert "tied to the LM head" in kept[TABLE] and kept["model.transformer.wpe.weight"] == ""


@pytest.mark.parametrize("scheme,bits", [("w4a16", 4), ("w8a16", 8)])
def test_tied_head_shares_the_quantized_table(gpt2_fused, tmp_path, scheme, bits):
    g, res = _quantized(gpt2_fused, scheme=scheme, exclude=[], ort_accuracy_level=0)
    assert res.stats["embedding_tables"] == 2 and res.stats["tied_heads_shared"] == 1
    # no own copy of the head: the table is the only [V, K] weight
    assert not [p for p in g.params if p.startswith(TABLE + ".T")]
    qd = g.params[TABLE].annotations["quant_data"]
    assert (qd.axis, qd.block_size) == (1, 128)
    model = to_model(g)
    contrib = [n for n in model.graph.node if n.domain == "com.microsoft"]
    gbq = [n for n in contrib if n.op_type == "GatherBlockQuantized"]
    head = [n for n in contrib if n.op_type == "MatMulNBits"]
    assert len(gbq) == 2 and len(head) == 1
    tied_gather = next(n for n in gbq if n.input[0] == f"{TABLE}.qpacked")
    assert head[0].input[1] == tied_gather.input[0]          # one initializer, two readers
    inits = {i.name: i for i in model.graph.initializer}
    assert TABLE not in inits and f"{TABLE}.qpacked" in inits
    v, k = g.params[TABLE].type.shape
    assert list(inits[f"{TABLE}.qpacked"].dims) == [v, k // 128, 128 * bits // 8]
    # the artifact equals the same weights dequantized in fp32 (MatMulNBits at accuracy level 0)
    chk = accuracy.quantization_check(g, _save(model, tmp_path))
    assert chk["checked"] and chk["ok"], chk
    # stored bytes of the table: values + one fp16 scale (+ zero point) per block of 128
    row = next(r for r in weight_formats(g) if r["group"] == TABLE)
    zp = 16 if scheme == "w4a16" else 0
    assert row["stored_bytes"] == v * k * bits // 8 + (v * k // 128) * (16 + zp) // 8
    assert row["format"]["dtype"] == ("uint4" if scheme == "w4a16" else "int8")


def test_gathered_rows_equal_numpy_dequantization(gpt2_fused, tmp_path):
    """The embedding output of the artifact is exactly the numpy-dequantized rows (int4 with zero
    points, and symmetric int4 whose codes are stored offset by 8)."""
    for sym in (False, True):
        g, _ = _quantized(gpt2_fused, scheme="w4a16", exclude=[], symmetric=sym)
        gather = next(n for n in g if n.op == "Gather" and n.inputs[0] == TABLE)
        model = to_model(g)
        model.graph.output.append(onnx.helper.make_tensor_value_info(gather.outputs[0], onnx.TensorProto.FLOAT, None))
        sess = make_session(model)
        ids = np.array([[0, 5, 1023, 77]], np.int64)
        feeds = accuracy.feeds_for(sess.get_inputs(), ids[0])
        rows = sess.run([gather.outputs[0]], feeds)[0]
        w = np.asarray(gpt2_fused.params[TABLE].data, np.float32)
        spec = QuantSpec("int4" if sym else "uint4", "group", 128, sym)
        ref = quantize_rtn(w, spec, reduce_axis=1).dequantize()[ids]
        np.testing.assert_array_equal(rows, ref)


def test_pack_table_layout_by_hand():
    from compiler.ir.annotations import QuantizedData
    import ml_dtypes
    codes = np.array([[1, 2, 3, 4] * 4, [15, 0, 7, 8] * 4], np.uint8).astype(ml_dtypes.uint4)   # V=2, K=16
    qd = QuantizedData(codes, np.array([[0.5], [2.0]], np.float32), np.array([[3], [9]], np.uint8).astype(ml_dtypes.uint4),
                       1, 16)
    t = pack_table(qd)
    assert t["packed"].shape == (2, 1, 8) and t["bits"] == 4
    assert t["packed"][0, 0, 0] == 1 | (2 << 4) and t["packed"][1, 0, 1] == 7 | (8 << 4)
    assert t["zp_nbits"].tolist() == [[3], [9]]
    signed = QuantizedData(np.array([[-8, 7] * 8], np.int8).astype(ml_dtypes.int4), np.ones((1, 1), np.float32),
                           None, 1, 16)
    assert pack_table(signed)["packed"][0, 0, 0] == 0 | (15 << 4)      # offset by 8 (the default zero point)


def test_w8a8_ties_the_head_to_an_int8_weight_only_kernel(gpt2_fused):
    """W8A8 has no weight-only head kernel of its own: a head sharing the int8 table runs
    MatMulNBits 8-bit (its compute dtype is the activations' float type)."""
    from compiler.perf.hardware import hardware_by_name
    from passes import PassContext
    ctx = PassContext(hardware=hardware_by_name("cpu_2vcpu"))
    g = gpt2_fused.copy()
    make_pass({"name": "quantize", "scheme": "w8a8", "exclude": []}, ctx)(g)
    head = next(n for n in g if n.op == "MatMul" and g.producer_of(n.inputs[1]) is not None
                and g.producer_of(n.inputs[1]).op == "Transpose")
    cd = head.annotations["compute_dtype"]
    assert cd.dtype == "fp32" and cd.kernel.startswith("onnxruntime MatMulNBits 8-bit")
    assert "activation_quant" not in head.annotations


def test_table_that_cannot_be_blocked_is_kept_with_the_reason(gpt2_fused):
    g, res = _quantized(gpt2_fused, scheme="w4a16", exclude=[], group_size=48)
    kept = g.meta["quantization"]["embeddings_kept"]
    assert set(kept) == {TABLE, "model.transformer.wpe.weight"} and "power of two" in kept[TABLE]
    assert "quant_data" not in g.params[TABLE].annotations


def test_cost_only_tables_shrink_memory(llama2_7b):
    """Meta weights: the table's format is annotated (the memory figure shrinks), nothing else."""
    from compiler.ir.ops import Classifier
    g = llama2_7b.copy()
    emb = embedding_tables(g, [])[0].param
    before = Classifier(g).weight_bytes(emb)
    make_pass({"name": "quantize", "scheme": "w4a16", "exclude": ["lm_head"]})(g)
    after = Classifier(g).weight_bytes(emb)
    assert g.params[emb].annotations["weight_format"].axis == 1
    assert abs(after / before - 4.25 / 16) < 0.01
