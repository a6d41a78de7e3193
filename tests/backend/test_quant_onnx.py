"""ONNX emission forms of quantized linears (compiler/backend/quantized.py), standalone in onnxruntime
CPU: the rewrite onnxruntime applies (inspected in the optimized model), the recorded accuracy
level, and numerics against the numpy reference of the same quantization (≤ 1e-5)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper

from compiler.backend.quantized import (ACCURACY_LEVEL_KEY, ORT_SESSION_KEY, dequantize_weight, make_session,
                                 matmul_dynamic_int8, matmul_dynamic_int8_per_token, nm_metadata, nm_patterns,
                                 qdq_activation, qdq_activation_dynamic_fp8, session_config, set_metadata, tensor)
from passes.quant import QuantSpec, dynamic_quantize_linear, prune_magnitude, quantize_rtn
from passes.quant.formats import fake_quant_activation

K, N, ROWS = 256, 96, 6
RNG = np.random.default_rng(5)
W = (RNG.standard_normal((K, N)) * 0.05).astype(np.float32)
X = RNG.standard_normal((2, ROWS // 2, K)).astype(np.float32)
TOL = 1e-5


def _model(nodes, inits, meta=None):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, ["B", "S", K])],
                          [helper.make_tensor_value_info("y", 1, ["B", "S", N])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 23)], ir_version=10)
    if meta:
        set_metadata(m, meta)
    onnx.checker.check_model(m, full_check=True)
    return m


def _run(m, tmp_path, extra=None):
    opt = str(tmp_path / "opt.onnx")
    y = make_session(m, optimized_path=opt, extra=extra).run(None, {"x": X})[0]
    return y, onnx.load(opt)


def _matmul_nbits(opt):
    return [n for n in opt.graph.node if n.op_type == "MatMulNBits"]


def _acc_level(node):
    return next(a.i for a in node.attribute if a.name == "accuracy_level")


@pytest.mark.parametrize("spec", [QuantSpec("int4", "group", 128), QuantSpec("uint4", "group", 64, symmetric=False),
                                  QuantSpec("int8", "group", 128), QuantSpec("int8", "channel")])
def test_weight_only_blocked_qdq_becomes_matmulnbits(spec, tmp_path):
    qt = quantize_rtn(W, spec)
    inits, nodes = dequantize_weight("w", qt.codes, qt.scale, qt.zero_point, qt.axis, qt.block_size)
    meta = {ORT_SESSION_KEY: json.dumps({ACCURACY_LEVEL_KEY: "0"})}
    m = _model(nodes + [helper.make_node("MatMul", ["x", "w"], ["y"])], inits, meta)
    assert session_config(m) == {ACCURACY_LEVEL_KEY: "0"}
    y, opt = _run(m, tmp_path)
    fused = _matmul_nbits(opt)
    assert len(fused) == 1 and not [n for n in opt.graph.node if n.op_type in ("DequantizeLinear", "MatMul")]
    assert _acc_level(fused[0]) == 0
    assert np.abs(y - X @ qt.dequantize()).max() <= TOL
    # the user's accuracy level 4 (int8 activations): onnxruntime sets it on the kernel, and the
    # result is only approximately the reference (activations rounded to int8 blocks)
    set_metadata(m, {ORT_SESSION_KEY: json.dumps({ACCURACY_LEVEL_KEY: "4"})})
    y4, opt4 = _run(m, tmp_path)
    assert _acc_level(_matmul_nbits(opt4)[0]) == 4
    ref = X @ qt.dequantize()
    assert TOL < np.abs(y4 - ref).max() < 0.05 * np.abs(ref).max()


def test_dynamic_w8a8_fuses_to_dynamic_quantize_matmul(tmp_path):
    qt = quantize_rtn(W, QuantSpec("int8", "channel"))
    m = _model(matmul_dynamic_int8("x", "w.q", "w.scale", None, "y", "l0"),
               [tensor(qt.codes, "w.q"), tensor(qt.scale, "w.scale")])
    y, opt = _run(m, tmp_path)
    assert [n.op_type for n in opt.graph.node] == ["DynamicQuantizeMatMul"]
    xq, xs, xz = dynamic_quantize_linear(X)
    ref = ((xq.astype(np.int32) - int(xz)) @ qt.int_codes()).astype(np.float32) * (xs * qt.scale)
    assert np.abs(y - ref).max() <= TOL * max(1.0, np.abs(ref).max())


def test_dynamic_per_token_w8a8(tmp_path):
    qt = quantize_rtn(W, QuantSpec("int8", "channel"))
    ai, an = matmul_dynamic_int8_per_token("x", "w.q", "w.scale", "y", "l0")
    m = _model(an, ai + [tensor(qt.codes, "w.q"), tensor(qt.scale, "w.scale")])
    y, opt = _run(m, tmp_path)
    xs = np.maximum(np.abs(X).max(-1, keepdims=True) / np.float32(127), np.float32(1e-30))
    xq = np.clip(np.rint(X / xs), -127, 127).astype(np.int32)
    ref = (xq @ qt.int_codes()).astype(np.float32) * xs * qt.scale
    assert np.abs(y - ref).max() <= TOL * max(1.0, np.abs(ref).max())
    assert "MatMulInteger" in [n.op_type for n in opt.graph.node]


@pytest.mark.parametrize("adtype", ["uint8", "int8"])
def test_static_w8a8_qdq_fuses_to_integer_matmul(adtype, tmp_path):
    qt = quantize_rtn(W, QuantSpec("int8", "channel"))
    lo, hi = min(float(X.min()), 0.0), max(float(X.max()), 0.0)
    scale, zp = ((hi - lo) / 255, int(np.rint(-lo / ((hi - lo) / 255)))) if adtype == "uint8" else \
        (max(-lo, hi) / 127, 0)
    ai, an = qdq_activation("x", "xd", scale, zp, adtype, "a0")
    wi, wn = dequantize_weight("w", qt.codes, qt.scale, None, qt.axis, None)
    m = _model(an + wn + [helper.make_node("MatMul", ["xd", "w"], ["y"])], ai + wi)
    y, opt = _run(m, tmp_path)
    ops = [n.op_type for n in opt.graph.node]
    assert "MatMul" not in ops and "MatMulIntegerToFloat" in ops
    ref = fake_quant_activation(X, scale, zp, adtype) @ qt.dequantize()
    assert np.abs(y - ref).max() <= TOL * max(1.0, np.abs(ref).max())


def test_fp8_weights_and_activations_simulated(tmp_path):
    qt = quantize_rtn(W, QuantSpec("float8e4m3fn", "channel"))
    wi, wn = dequantize_weight("w", qt.codes, qt.scale, None, qt.axis, None)
    ai, an = qdq_activation_dynamic_fp8("x", "xd", "a0")
    m = _model(an + wn + [helper.make_node("MatMul", ["xd", "w"], ["y"])], ai + wi)
    y, _ = _run(m, tmp_path)
    s = np.float32(np.abs(X).max() / np.float32(448))
    ref = fake_quant_activation(X, s, None, "float8e4m3fn") @ qt.dequantize()
    assert np.abs(y - ref).max() <= TOL * max(1.0, np.abs(ref).max())
    # and it is a real (lossy) simulation, not the fp32 result
    assert np.abs(y - X @ W).max() > 1e-3


def test_nm_pattern_recorded_per_initializer(tmp_path):
    pw, _ = prune_magnitude(W, 2, 4)
    m = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [tensor(pw, "w")],
               nm_metadata({"w": {"n": 2, "m": 4, "axis": 0, "method": "magnitude"}}))
    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    back = onnx.load(path)
    pats = nm_patterns(back)
    assert pats == {"w": {"n": 2, "m": 4, "axis": 0, "method": "magnitude"}}
    init = onnx.numpy_helper.to_array(next(i for i in back.graph.initializer if i.name == "w"))
    assert ((init.reshape(K // 4, 4, N) != 0).sum(axis=1) == 2).all()
    y, _ = _run(back, tmp_path)
    assert np.abs(y - X @ pw).max() <= TOL
