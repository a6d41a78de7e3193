"""The typed annotation contract (compiler/ir/annotations.py): schemas, validation, stored bytes
(weight-format arithmetic: scales, zero points, N:M metadata), and annotations surviving the default fusion pipeline."""
from __future__ import annotations

import numpy as np
import pytest
import sympy

from compiler.ir import annotations as ann
from compiler.ir.annotations import ComputeDtype, KVLayout, MoERouting, WeightFormat
from compiler.ir import Graph, IRError, TensorType
from tests.conftest import imported

INT4_G128 = WeightFormat("int4", granularity="group", group_size=128, symmetric=False, scale_dtype="float16")


def test_stored_bytes_follow_the_weight_format_arithmetic():
    n = 4096 * 4096
    # int4, fp16 scale + fp16 zero per group of 128: 4 + 32/128 = 4.25 bits per weight
    assert INT4_G128.stored_bytes(n) == n * sympy.Rational(425, 800)
    assert INT4_G128.bits_per_weight(n) == pytest.approx(4.25)
    # symmetric: no zero point → 4 + 16/128
    assert WeightFormat("int4", granularity="group", group_size=128).bits_per_weight(n) == pytest.approx(4.125)
    # 2:4 keeps half the values + 2 bits of index per kept value: fp16 0.5625×, int8 0.625× dense
    assert WeightFormat("float16", nm=(2, 4)).stored_bytes(n) == n * 2 * sympy.Rational(9, 16)
    assert WeightFormat("int8", nm=(2, 4)).stored_bytes(n) == n * sympy.Rational(5, 8)
    # per-channel int8 of a [in, out] weight: one fp16 scale per output column
    assert WeightFormat("int8", granularity="channel").stored_bytes(4096 * 11008, (4096, 11008)) == \
        4096 * 11008 + 11008 * 2
    # a float weight with no scales is just its values
    assert WeightFormat("bfloat16").stored_bytes(1000) == 2000
    # a symbolic count stays exact
    k = sympy.Symbol("k", positive=True, integer=True)
    assert sympy.simplify(INT4_G128.stored_bytes(128 * k) - 68 * k) == 0


@pytest.mark.parametrize("kwargs, msg", [
    ({"dtype": "int5"}, "not a dtype"),
    ({"dtype": "int4", "granularity": "group"}, "group_size"),
    ({"dtype": "int8", "group_size": 64}, "granularity='group'"),
    ({"dtype": "float16", "nm": (4, 2)}, "0 < n < m"),
    ({"dtype": "float16", "symmetric": False}, "zero point needs scales"),
    ({"dtype": "int8", "bits": 9}, "bits"),
])
def test_weight_format_rejects_impossible_formats(kwargs, msg):
    with pytest.raises(IRError, match=msg):
        WeightFormat(**kwargs)


def test_accessors_validate_keys_types_and_targets():
    g = Graph("t")
    x = g.add_input("x", TensorType("float32", (4, 8)))
    w = g.add_param("w", TensorType("float32", (8, 8)), np.eye(8, dtype=np.float32), source="lin.weight")
    n = g.add_op("MatMul", [x, w], layer=3)
    assert ann.get(n, "layer") == 3
    ann.set(n, "compute_dtype", ComputeDtype("int8", "cutlass"))
    ann.set(g.params[w], "weight_format", INT4_G128)
    assert ann.get(g.params[w], "weight_format").bits == 4
    with pytest.raises(IRError, match="not declared"):
        ann.set(n, "sparsity", True)               # the old untyped bool is gone
    with pytest.raises(IRError, match="not declared"):
        g.add_op("Relu", [x], q_tiles=4)           # nor can the IR carry cost-model scratch
    with pytest.raises(IRError, match="must be a ComputeDtype"):
        ann.set(n, "compute_dtype", "int8")
    with pytest.raises(IRError, match="must be a int"):
        ann.set(n, "layer", True)
    with pytest.raises(IRError, match="declared for param"):
        ann.set(n, "weight_format", INT4_G128)     # weight formats annotate parameters, not ops
    with pytest.raises(IRError, match="not one of"):
        ComputeDtype("float16")
    with pytest.raises(IRError, match="top_k"):
        MoERouting(experts=8, top_k=9)
    with pytest.raises(IRError, match="block_size"):
        KVLayout("paged")
    ann.set(n, "layer", None)
    assert ann.get(n, "layer") is None
    n.annotations["layer"] = "three"                # a direct write bypassing the accessor …
    with pytest.raises(IRError, match="layer"):
        g.verify()                                  # … is caught between passes


def test_every_key_declares_writers_readers_and_a_policy():
    rows = ann.table()
    keys = {r["key"] for r in rows}
    assert {"weight_format", "compute_dtype", "moe", "exit_point", "kv_layout", "fused_group", "rotary",
            "merged_from", "source", "layer"} <= keys
    for r in rows:
        assert r["writers"] and r["readers"] and r["policy"] in ("kept", "merged", "dropped"), r


@pytest.fixture(scope="module")
def annotated_fused():
    """llama_tiny with int8 per-channel weights on every GEMM and int8 compute, through the
    default pipeline's fusion pass (cost-gated, on its default hardware)."""
    from passes import make_pass
    base = imported("llama_tiny").copy()
    before = base.copy()
    fmt = WeightFormat("int8", granularity="channel")
    cd = ComputeDtype("int8", "cutlass_w8a8")
    for n in base:
        if n.op == "MatMul" and base.is_param(n.inputs[1]):
            ann.set(n, "compute_dtype", cd)
            ann.set(base.params[n.inputs[1]], "weight_format", fmt)
    g, plain = base, before
    res = make_pass("fuse")(g)
    make_pass("fuse")(plain)
    g.verify()
    return g, plain, res, fmt, cd


def test_annotations_survive_fusion(annotated_fused):
    from compiler.perf.cost import CostModel
    from compiler.perf.hardware import hardware_by_name
    from compiler.ir.ops import Classifier
    g, plain, res, fmt, cd = annotated_fused
    # the merges fire on annotated weights (they share one format), and the fused ops keep them
    assert res.stats["merge_qkv"] == 4 and res.stats["merge_gate_up"] == 4
    gemms = [n for n in g if n.op in ("MatMul", "MatMulEpilogue") and g.is_param(n.inputs[1])]
    assert gemms and all(ann.get(n, "compute_dtype") == cd for n in gemms)
    merged = [p for p in g.params.values() if ann.get(p, "merged_from")]
    assert len(merged) == 8                               # 4 × q|k|v and 4 × gate|up
    for n in gemms:
        assert ann.get(g.params[n.inputs[1]], "weight_format") == fmt
    assert not any("compute_dtype" in n.annotations for n in g if n.op in ("SwiGLU", "Split"))
    # the cost model reads them: weight bytes are the format's stored bytes, peaks are int8's
    hw = hardware_by_name("h100_sxm")
    cm = CostModel(g, hw)
    cls = Classifier(g)
    w_total = sum(float(cls.weight_bytes(p)) for p in g.params)
    expect = sum(float(fmt.stored_bytes(p.type.numel(), p.type.shape)) if "weight_format" in p.annotations
                 else p.type.numel() * p.type.itemsize for p in g.params.values())
    assert w_total == pytest.approx(expect)
    dense = sum(p.type.numel() * 4 for p in g.params.values())
    assert w_total < 0.3 * dense + 1e6
    r = cm.evaluate(1, 16, 0, "prefill")
    for k, it in enumerate(cm.items):
        node = g.node(it.name)
        if node in gemms:
            assert it.dtype == "int8" and it.kernel == "cutlass_w8a8" and cm._peak[k] == hw.peak("int8")
            w = node.inputs[1]
            assert r["weights"][k, 0] == pytest.approx(float(fmt.stored_bytes(g.type(w).numel(), g.type(w).shape)))


def test_fused_ops_match_the_unannotated_pipeline(annotated_fused):
    g, plain, *_ = annotated_fused
    assert g.ops_by_kind() == plain.ops_by_kind()


def test_emitter_serializes_annotations(annotated_fused, tmp_path):
    import onnx
    from compiler.backend.emit import save
    g = annotated_fused[0]
    save(g, str(tmp_path / "m.onnx"))
    m = onnx.load(str(tmp_path / "m.onnx"))
    meta = {n.name: {p.key: p.value for p in n.metadata_props} for n in m.graph.node}
    gemm = next(n for n in g if n.op == "MatMulEpilogue" or (n.op == "MatMul" and g.is_param(n.inputs[1])))
    assert meta[gemm.name]["rooftop.compute_dtype"] == "dtype=int8,kernel=cutlass_w8a8"
    inits = {t.name: {p.key: p.value for p in t.metadata_props} for t in m.graph.initializer}
    w = inits[gemm.inputs[1]]
    assert w["rooftop.weight_format"].startswith("dtype=int8,bits=8,granularity=channel")
