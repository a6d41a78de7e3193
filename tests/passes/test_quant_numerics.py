"""Reference numerics of passes/quant: hand-made tiny cases and invariants."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from passes.quant import (Hessian, QuantError, QuantSpec, gptq, nm_mask, nonzeros_per_group, obs_compress,
                          prune_magnitude, quantize_rtn, satisfies_nm, smoothquant_scales, sparsegpt)
from passes.quant.formats import dynamic_quantize_linear
from passes.quant.smooth import awq_scales

RNG = np.random.default_rng(1234)


def test_int8_symmetric_per_channel_by_hand():
    w = np.array([[1.0, -0.5], [-2.0, 0.25], [0.5, 0.125]], np.float32)   # K=3, N=2
    qt = quantize_rtn(w, QuantSpec("int8", "channel"))
    np.testing.assert_allclose(qt.scale, [2.0 / 127, 0.5 / 127], rtol=1e-7)
    assert qt.zero_point is None and qt.axis == 1 and qt.block_size is None
    np.testing.assert_array_equal(qt.int_codes(), [[64, -127], [-127, 64], [32, 32]])   # 63.5→64 (half-even)
    np.testing.assert_array_equal(qt.dequantize(), qt.int_codes().astype(np.float32) * qt.scale)


def test_int4_symmetric_full_range_by_hand():
    # one column, two groups of 2: the value of largest magnitude maps to −8 (scale negative if it is positive)
    w = np.array([[1.0], [-4.0], [2.0], [-0.5]], np.float32)
    qt = quantize_rtn(w, QuantSpec("int4", "group", group_size=2))
    np.testing.assert_allclose(qt.scale[:, 0], [0.5, -0.25], rtol=1e-7)
    np.testing.assert_array_equal(qt.int_codes()[:, 0], [2, -8, -8, 2])
    np.testing.assert_allclose(qt.dequantize()[:, 0], [1.0, -4.0, 2.0, -0.5], atol=1e-7)
    # the opposite extreme clips at +7: 4·0.5 would be code −8 → use a group where it is positive
    qt = quantize_rtn(np.array([[-1.0], [1.0]], np.float32), QuantSpec("int4", "group", group_size=2))
    np.testing.assert_array_equal(qt.int_codes()[:, 0], [-8, 7])       # 1.0 / −(−1/8)... = 8 → 7


def test_uint4_asymmetric_group_by_hand():
    # one column, two groups of 2 along K
    w = np.array([[0.0], [3.0], [-1.0], [0.5]], np.float32)
    qt = quantize_rtn(w, QuantSpec("uint4", "group", group_size=2, symmetric=False))
    assert qt.codes.dtype == ml_dtypes.uint4 and qt.scale.shape == (2, 1) and qt.axis == 0 and qt.block_size == 2
    np.testing.assert_allclose(qt.scale[:, 0], [3.0 / 15, 1.5 / 15], rtol=1e-6)
    np.testing.assert_array_equal(qt.zero_point.astype(int)[:, 0], [0, 10])     # −min/s = 1/(0.1) = 10
    np.testing.assert_array_equal(qt.int_codes()[:, 0], [0, 15, 0, 15])
    np.testing.assert_allclose(qt.dequantize()[:, 0], [0.0, 3.0, -1.0, 0.5], atol=1e-6)


@pytest.mark.parametrize("spec", [QuantSpec("int8", "channel"), QuantSpec("int4", "group", 128),
                                  QuantSpec("int4", "group", 48), QuantSpec("int8", "tensor"),
                                  QuantSpec("uint8", "channel", symmetric=False),
                                  QuantSpec("uint4", "group", 64, symmetric=False)])
@pytest.mark.parametrize("reduce_axis", [0, 1])
def test_rtn_error_bound_and_layout(spec, reduce_axis):
    w = RNG.standard_normal((256, 40)).astype(np.float32)
    w = w if reduce_axis == 0 else w.T
    qt = quantize_rtn(w, spec, reduce_axis=reduce_axis)
    err = np.abs(qt.dequantize() - w)
    s = np.abs(qt.expanded(qt.scale))
    lo, hi = (-(2 ** (spec.bits - 1)), 2 ** (spec.bits - 1) - 1) if spec.symmetric else (0, 2 ** spec.bits - 1)
    c = qt.int_codes()
    assert c.min() >= lo and c.max() <= hi
    # symmetric int8: |err| ≤ s/2; asymmetric: the zero point's rounding may clip the range edge by
    # ≤ s/2; full-range int4: only a code clipped at +7 may be off by up to s
    clipped = (c == hi) if spec.symmetric and spec.bits == 4 else np.zeros(c.shape, bool)
    bound = s * np.where(clipped | (not spec.symmetric), 1.0, 0.5) * (1 + 1e-5)
    assert (err <= bound).all()
    if spec.symmetric and spec.bits == 4:    # the largest-magnitude value of each group is exact at −8
        assert (c == lo).any(axis=0).all() if reduce_axis == 0 else (c == lo).any(axis=1).all()
    if spec.granularity == "group":   # ONNX blocked form: scale has ceil(K/g) entries along the reduction axis
        assert qt.scale.shape[reduce_axis] == -(-256 // spec.group_size)


def test_fp8_e4m3_scaled_to_448_and_relative_error():
    w = (RNG.standard_normal((64, 32)) * np.logspace(-2, 1, 32)).astype(np.float32)
    qt = quantize_rtn(w, QuantSpec("float8e4m3fn", "channel"))
    assert qt.codes.dtype == ml_dtypes.float8_e4m3fn
    np.testing.assert_allclose(np.abs(qt.codes.astype(np.float32)).max(axis=0), 448.0)
    d = qt.dequantize()
    # E4M3 has 3 mantissa bits: relative rounding error ≤ 2^-4 for normals
    normal = np.abs(w) >= qt.expanded(qt.scale) * 2.0 ** -6
    assert (np.abs(d - w)[normal] <= np.abs(w)[normal] * 2.0 ** -4 + 1e-12).all()


def test_all_zero_weight_is_exact():
    for spec in (QuantSpec("int8", "channel"), QuantSpec("uint4", "group", 4, symmetric=False),
                 QuantSpec("float8e4m3fn", "tensor")):
        qt = quantize_rtn(np.zeros((8, 3), np.float32), spec)
        assert np.array_equal(qt.dequantize(), np.zeros((8, 3), np.float32))


def test_bad_specs_are_refused():
    with pytest.raises(QuantError):
        QuantSpec("int4", "group", 128, symmetric=False)     # asymmetric uses unsigned codes
    with pytest.raises(QuantError):
        QuantSpec("int3")
    with pytest.raises(QuantError):
        quantize_rtn(np.zeros((2, 3, 4), np.float32), QuantSpec())


def test_dynamic_quantize_linear_matches_onnx_reference():
    from onnx.reference import ReferenceEvaluator
    from onnx import helper
    x = RNG.standard_normal((5, 7)).astype(np.float32) * 3
    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, [5, 7])],
                          [helper.make_tensor_value_info(n, t, None) for n, t in (("q", 2), ("s", 1), ("z", 2))])
    q, s, z = ReferenceEvaluator(helper.make_model(g)).run(None, {"x": x})
    q2, s2, z2 = dynamic_quantize_linear(x)
    assert np.array_equal(q, q2) and np.float32(s) == s2 and np.uint8(z) == z2


# ---- N:M -------------------------------------------------------------------------------------

def test_nm_mask_by_hand():
    w = np.array([[0.1, 4.0], [-3.0, 1.0], [2.0, -0.5], [0.0, 2.0]], np.float32)   # one group of 4 per column
    pw, keep = prune_magnitude(w, 2, 4)
    np.testing.assert_array_equal(keep[:, 0], [False, True, True, False])
    np.testing.assert_array_equal(keep[:, 1], [True, False, False, True])
    np.testing.assert_array_equal(pw[:, 0], [0, -3.0, 2.0, 0])


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8), (1, 2)])
@pytest.mark.parametrize("reduce_axis", [0, 1])
def test_every_group_has_exactly_n_nonzeros(n, m, reduce_axis):
    w = RNG.standard_normal((64, 24)).astype(np.float32)
    w = w if reduce_axis == 0 else w.T
    pw, keep = prune_magnitude(w, n, m, reduce_axis=reduce_axis)
    assert (nonzeros_per_group(pw, m, reduce_axis=reduce_axis) == n).all()
    assert (nonzeros_per_group(keep, m, reduce_axis=reduce_axis) == n).all()
    # kept values are the largest |w| of their group
    wk, kk = (w, keep) if reduce_axis == 0 else (w.T, keep.T)
    g = np.abs(wk).reshape(-1, m, wk.shape[1])
    kg = kk.reshape(-1, m, wk.shape[1])
    assert (np.where(kg, g, np.inf).min(axis=1) >= np.where(kg, -np.inf, g).max(axis=1)).all()


def test_nm_refuses_bad_shapes():
    with pytest.raises(QuantError):
        nm_mask(np.ones((6, 2)), 2, 4)
    with pytest.raises(QuantError):
        nm_mask(np.ones((8, 2)), 5, 4)


# ---- Hessian-based methods -----------------------------------------------------------------

@pytest.fixture(scope="module")
def correlated():
    """Correlated calibration activations with a few outlier channels, and a weight."""
    rng = np.random.default_rng(7)
    k, n = 128, 64
    mix = rng.standard_normal((k, k)) * 0.3
    x = rng.standard_normal((1024, k)) @ mix + 0.1 * rng.standard_normal((1024, k))
    x[:, :4] *= 8
    w = rng.standard_normal((k, n)).astype(np.float32)
    h = Hessian(k)
    h.add(x[:512])
    h.add(x[512:])     # accumulating in chunks == all at once
    return x.astype(np.float32), w, h


def test_hessian_accumulates_like_one_batch(correlated):
    x, _, h = correlated
    np.testing.assert_allclose(h.h, 2 / len(x) * x.astype(np.float64).T @ x, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(h.absmax, np.abs(x).max(axis=0), rtol=1e-6)


@pytest.mark.parametrize("spec", [QuantSpec("int4", "group", 32), QuantSpec("uint4", "group", 32, symmetric=False),
                                  QuantSpec("int8", "channel"), QuantSpec("float8e4m3fn", "channel")])
def test_gptq_beats_rtn_on_layer_output(correlated, spec):
    x, w, h = correlated
    g = gptq(w, h, spec, block_size=32)
    r = quantize_rtn(w, spec)
    ref = x @ w
    e_g = np.square(x @ g.dequantize() - ref).mean()
    e_r = np.square(x @ r.dequantize() - ref).mean()
    assert e_g < 0.6 * e_r, (e_g, e_r)
    # GPTQ's output is a valid tensor of the format: codes in range, scales non-zero (int4: full range, signed)
    assert (g.scale != 0).all() and g.codes.shape == w.shape


def test_gptq_identity_hessian_equals_rtn_per_channel():
    """With H ∝ I there is nothing to compensate: GPTQ reduces to round-to-nearest."""
    w = RNG.standard_normal((32, 8)).astype(np.float32)
    spec = QuantSpec("int8", "channel")
    g = gptq(w, np.eye(32) * 2.0, spec, percdamp=0.0)
    r = quantize_rtn(w, spec)
    np.testing.assert_array_equal(g.int_codes(), r.int_codes())
    np.testing.assert_allclose(g.scale, r.scale)


def test_sparsegpt_beats_magnitude_and_keeps_pattern(correlated):
    x, w, h = correlated
    pm, _ = prune_magnitude(w, 2, 4)
    ps, keep = sparsegpt(w, h, 2, 4, block_size=32)
    assert (nonzeros_per_group(keep, 4) == 2).all() and satisfies_nm(ps, 2, 4)
    assert np.array_equal(ps != 0, keep)
    ref = x @ w
    assert np.square(x @ ps - ref).mean() < 0.7 * np.square(x @ pm - ref).mean()


def test_joint_prune_and_quantize(correlated):
    x, w, h = correlated
    res, qt, keep = obs_compress(w, h, spec=QuantSpec("int8", "channel"), nm=(2, 4), block_size=32)
    assert satisfies_nm(qt.dequantize(), 2, 4)
    np.testing.assert_array_equal(res, qt.dequantize())
    # a fixed magnitude mask is honoured while quantizing
    pm, km = prune_magnitude(w, 2, 4)
    _, q2, _ = obs_compress(pm, h, spec=QuantSpec("uint4", "group", 32, symmetric=False), mask=km, block_size=32)
    assert (q2.dequantize()[~km] == 0).all()


def test_smoothquant_scales_formula_and_equivalence():
    x = RNG.standard_normal((64, 16)).astype(np.float32)
    x[:, 3] *= 50
    w1, w2 = RNG.standard_normal((16, 8)).astype(np.float32), RNG.standard_normal((16, 4)).astype(np.float32)
    s = smoothquant_scales(np.abs(x).max(axis=0), [w1, w2], alpha=0.5)
    wmax = np.maximum(np.abs(w1).max(axis=1), np.abs(w2).max(axis=1))
    np.testing.assert_allclose(s, np.sqrt(np.abs(x).max(axis=0)) / np.sqrt(wmax), rtol=1e-5)
    np.testing.assert_allclose((x / s) @ (w1 * s[:, None]), x @ w1, rtol=1e-4, atol=1e-4)
    # the outlier channel's activation range shrinks relative to the others
    xs = x / s
    assert np.abs(xs).max(axis=0).max() / np.abs(xs).max(axis=0).min() < \
        np.abs(x).max(axis=0).max() / np.abs(x).max(axis=0).min()


def test_awq_search_not_worse_than_rtn(correlated):
    x, w, _ = correlated
    spec = QuantSpec("int4", "group", 32)
    s, alpha = awq_scales(x, [w], spec, grid=10)
    ref = x @ w
    e_awq = np.square((x / s) @ quantize_rtn(w * s[:, None], spec).dequantize() - ref).mean()
    e_rtn = np.square(x @ quantize_rtn(w, spec).dequantize() - ref).mean()
    assert e_awq <= e_rtn * (1 + 1e-9) and 0 <= alpha <= 1
