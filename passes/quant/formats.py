"""Quantized-tensor formats and round-to-nearest (RTN) quantization, numpy reference.

Layout convention: a linear weight is ``W[K, N]`` (ONNX ``MatMul`` operand B: ``Y = X · W``),
the reduction axis is ``axis`` (0 for MatMul weights), the other axis holds the output channels.
Dequantization follows ONNX ``DequantizeLinear`` exactly, in fp32: ``r = (q − zp) · s`` for
integer codes, ``r = float(q) · s`` for FP8 — so an onnxruntime artifact built from a
:class:`QTensor` reproduces :meth:`QTensor.dequantize` to float rounding.

Granularities:
- ``tensor``: one scale;
- ``channel``: one scale per output channel (int8 default), ONNX per-axis form;
- ``group``: one scale per ``group_size`` consecutive elements along the reduction axis of each
  output channel (int4 default, 128), ONNX blocked form (``block_size``, opset 21+).

Symmetric formats use signed codes and no zero point: int8 ``s = max|w| / 127`` (``q`` never
clips, ``|w − r| ≤ s/2``); int4 uses the full range as onnxruntime's MatMulNBits quantizer does —
``s = w_ext / −8`` for the value ``w_ext`` of largest magnitude (so ``s`` is negative when it is
positive), which maps ``w_ext`` to −8 exactly; a value of the opposite sign beyond ``7.5·|s|``
clips to 7 (``|w − r| ≤ |s|``), all others round (``≤ |s|/2``). Asymmetric formats use unsigned codes with a zero point over the
range ``[min(w, 0), max(w, 0)]`` (zero stays exactly representable, which N:M pruning needs).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import ml_dtypes
import numpy as np

from compiler.errors import ConfigError

# dtype -> (bits, qmin, qmax, numpy storage dtype of the codes)
INT_FORMATS: dict[str, tuple[int, int, int, Any]] = {
    "int8": (8, -128, 127, np.int8),
    "uint8": (8, 0, 255, np.uint8),
    "int4": (4, -8, 7, ml_dtypes.int4),
    "uint4": (4, 0, 15, ml_dtypes.uint4),
}
FP8_FORMATS: dict[str, tuple[float, Any]] = {
    "float8e4m3fn": (448.0, ml_dtypes.float8_e4m3fn),
    "float8e5m2": (57344.0, ml_dtypes.float8_e5m2),
}
GRANULARITIES = ("tensor", "channel", "group")


class QuantError(ConfigError, ValueError):
    """A weight cannot be quantized in the requested format (shape, group size)."""


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """How to quantize one weight: code dtype, granularity, group size, symmetry."""

    dtype: str = "int8"
    granularity: str = "channel"
    group_size: int = 128
    symmetric: bool = True

    def __post_init__(self):
        if self.dtype not in INT_FORMATS and self.dtype not in FP8_FORMATS:
            raise QuantError(f"unknown quantized dtype {self.dtype!r}; known: "
                             f"{sorted(INT_FORMATS) + sorted(FP8_FORMATS)}")
        if self.granularity not in GRANULARITIES:
            raise QuantError(f"granularity {self.granularity!r} is not one of {GRANULARITIES}")
        if self.granularity == "group" and self.group_size < 1:
            raise QuantError(f"group_size must be ≥ 1, got {self.group_size}")
        if self.dtype in FP8_FORMATS and not self.symmetric:
            raise QuantError("FP8 formats are symmetric (no zero point)")
        if self.dtype in INT_FORMATS:
            signed = INT_FORMATS[self.dtype][1] < 0
            if signed != self.symmetric:
                raise QuantError(f"{self.dtype} codes are {'signed' if signed else 'unsigned'}; rooftop "
                                 f"uses signed codes for symmetric and unsigned codes (with a zero point) "
                                 f"for asymmetric quantization")

    @property
    def bits(self) -> int:
        return INT_FORMATS[self.dtype][0] if self.dtype in INT_FORMATS else 8

    @property
    def is_float(self) -> bool:
        return self.dtype in FP8_FORMATS


def int_dtype(bits: int, symmetric: bool) -> str:
    """The code dtype rooftop uses for ``bits`` and symmetry (int8/int4 signed, uint8/uint4)."""
    return ("int" if symmetric else "uint") + str(bits)


@dataclasses.dataclass
class QTensor:
    """A quantized weight: codes, scales, zero points and where they apply.

    ``codes`` has the weight's shape (ml_dtypes int4/uint4/float8 arrays for sub-byte and FP8
    formats). ``scale`` (fp32) and ``zero_point`` (codes' dtype, or ``None``) have the ONNX
    ``DequantizeLinear`` shapes: scalar (tensor), ``[N]`` with ``axis`` = the channel axis
    (channel), or the weight's shape with the reduction axis divided by ``block_size`` (group).
    ``axis`` is the ONNX ``DequantizeLinear`` axis; ``reduce_axis`` the weight's reduction axis.
    """

    spec: QuantSpec
    codes: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray | None
    reduce_axis: int = 0

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.codes.shape)

    @property
    def axis(self) -> int | None:
        """ONNX DequantizeLinear ``axis``: the reduction axis for blocks, the channel axis for
        per-channel scales, None for a per-tensor scale."""
        g = self.spec.granularity
        if g == "tensor":
            return None
        return self.reduce_axis if g == "group" else 1 - self.reduce_axis

    @property
    def block_size(self) -> int | None:
        return self.spec.group_size if self.spec.granularity == "group" else None

    def expanded(self, a: np.ndarray) -> np.ndarray:
        """Broadcast a scale/zero-point array to the weight's shape."""
        g = self.spec.granularity
        if g == "tensor":
            return np.broadcast_to(a, self.shape)
        if g == "channel":
            shp = [1, 1]
            shp[1 - self.reduce_axis] = -1
            return np.broadcast_to(a.reshape(shp), self.shape)
        k = self.shape[self.reduce_axis]
        return np.repeat(a, self.spec.group_size, axis=self.reduce_axis).take(
            np.arange(k), axis=self.reduce_axis)

    def dequantize(self) -> np.ndarray:
        """ONNX DequantizeLinear semantics in fp32."""
        s = self.expanded(self.scale.astype(np.float32))
        if self.spec.is_float:
            return (self.codes.astype(np.float32) * s).astype(np.float32)
        q = self.codes.astype(np.int32)
        if self.zero_point is not None:
            q = q - self.expanded(self.zero_point.astype(np.int32))
        return (q.astype(np.float32) * s).astype(np.float32)

    def int_codes(self) -> np.ndarray:
        """Codes as int32 (integer formats) for inspection and packing."""
        return self.codes.astype(np.int32)


# ----------------------------------------------------------------------------------------------
# grouping helpers: view W as [n_groups, group_len, channels] along the reduction axis

def _to_k_first(w: np.ndarray, reduce_axis: int) -> np.ndarray:
    if w.ndim != 2:
        raise QuantError(f"only 2-D weights are quantized, got shape {w.shape}")
    return w if reduce_axis == 0 else w.T


def _group_view(wk: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """[K, N] → [G, L, N] blocks whose statistics share one scale (last block may be padded
    with zeros, which never widens a range that already includes zero)."""
    k, n = wk.shape
    if spec.granularity == "tensor":
        return wk.reshape(1, k * n, 1)
    if spec.granularity == "channel":
        return wk.reshape(1, k, n)
    g = spec.group_size
    groups = math.ceil(k / g)
    if groups * g != k:
        wk = np.concatenate([wk, np.zeros((groups * g - k, n), wk.dtype)])
    return wk.reshape(groups, g, n)


def params_from_range(lo: np.ndarray, hi: np.ndarray, spec: QuantSpec) -> tuple[np.ndarray, np.ndarray | None]:
    """Scale (fp32) and zero point (int64, or None) for value ranges ``[lo, hi]``."""
    if spec.is_float:
        fmax = FP8_FORMATS[spec.dtype][0]
        amax = np.maximum(np.abs(lo), np.abs(hi)).astype(np.float64)
        return np.where(amax > 0, amax / fmax, 1.0).astype(np.float32), None
    bits, qmin, qmax, _ = INT_FORMATS[spec.dtype]
    if spec.symmetric and bits <= 4:
        # full range: the value of largest magnitude maps to qmin (−8), so all 16 codes are used
        # (the scale is negative when that value is positive); onnxruntime's MatMulNBits quantizer
        # (MLAS) does the same. RMS error ≈ 12 % below max|w|/7 on MiniLM's weights.
        ext = np.where(np.abs(lo) >= np.abs(hi), lo, hi).astype(np.float64)
        return np.where(ext != 0, ext / qmin, 1.0).astype(np.float32), None
    if spec.symmetric:
        amax = np.maximum(np.abs(lo), np.abs(hi)).astype(np.float64)
        return np.where(amax > 0, amax / qmax, 1.0).astype(np.float32), None
    lo = np.minimum(lo, 0).astype(np.float64)
    hi = np.maximum(hi, 0).astype(np.float64)
    span = hi - lo
    scale = np.where(span > 0, span / (qmax - qmin), 1.0).astype(np.float32)
    zp = np.clip(np.rint(qmin - lo / scale.astype(np.float64)), qmin, qmax).astype(np.int64)
    return scale, zp


def encode(x: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, spec: QuantSpec) -> np.ndarray:
    """Codes of ``x`` (broadcastable scale/zp), as int64 (integer formats) or the FP8 dtype."""
    if spec.is_float:
        fmax, npdt = FP8_FORMATS[spec.dtype]
        return np.clip(x / scale, -fmax, fmax).astype(np.float32).astype(npdt)
    _, qmin, qmax, _ = INT_FORMATS[spec.dtype]
    q = np.rint(x.astype(np.float64) / scale.astype(np.float64))
    if zp is not None:
        q = q + zp
    return np.clip(q, qmin, qmax).astype(np.int64)


def decode(q: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, spec: QuantSpec) -> np.ndarray:
    """fp32 values of codes ``q`` (inverse of :func:`encode` up to rounding)."""
    if spec.is_float:
        return (q.astype(np.float32) * scale.astype(np.float32)).astype(np.float32)
    qi = q.astype(np.int64) - (zp if zp is not None else 0)
    return (qi.astype(np.float32) * scale.astype(np.float32)).astype(np.float32)


def storage(codes_i64: np.ndarray, spec: QuantSpec) -> np.ndarray:
    if spec.is_float:
        return codes_i64
    return codes_i64.astype(INT_FORMATS[spec.dtype][3])


def _onnx_param_shape(a: np.ndarray, spec: QuantSpec, reduce_axis: int) -> np.ndarray:
    """[G, 1|L, N]-shaped statistics → the ONNX DequantizeLinear scale/zero-point shape."""
    if spec.granularity == "tensor":
        return a.reshape(())
    if spec.granularity == "channel":
        return a.reshape(-1)
    a = a.reshape(a.shape[0], a.shape[-1])          # [G, N]
    return a if reduce_axis == 0 else a.T


def quantize_rtn(w: np.ndarray, spec: QuantSpec, *, reduce_axis: int = 0) -> QTensor:
    """Round-to-nearest quantization of a 2-D weight in ``spec``'s format."""
    w = np.asarray(w, np.float32)
    wk = _to_k_first(w, reduce_axis)
    groups = _group_view(wk, spec)
    scale, zp = params_from_range(groups.min(axis=1, keepdims=True), groups.max(axis=1, keepdims=True), spec)
    k, n = wk.shape
    q = encode(groups, scale, zp, spec)
    if spec.granularity == "tensor":
        q = q.reshape(k, n)
    else:
        q = q.reshape(-1, n)[:k]
    if reduce_axis == 1:
        q = q.T
    zp_arr = None if zp is None else storage(_onnx_param_shape(zp, spec, reduce_axis), spec)
    return QTensor(spec, storage(q, spec), _onnx_param_shape(scale, spec, reduce_axis).astype(np.float32),
                   zp_arr, reduce_axis)


def from_codes(codes: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, spec: QuantSpec,
               reduce_axis: int = 0) -> QTensor:
    """Wrap codes computed elsewhere (GPTQ) in ONNX-shaped :class:`QTensor` form; ``scale``/``zp``
    are ``[G, N]`` (group), ``[N]`` (channel) or scalar, for a K-first weight."""
    if reduce_axis == 1:
        codes = codes.T
        if spec.granularity == "group":
            scale = scale.T
            zp = None if zp is None else zp.T
    return QTensor(spec, storage(codes, spec), np.asarray(scale, np.float32),
                   None if zp is None else storage(np.asarray(zp), spec), reduce_axis)


# ----------------------------------------------------------------------------------------------
# activations (dynamic / static) — reference semantics of ONNX DynamicQuantizeLinear / QuantizeLinear

def dynamic_quantize_linear(x: np.ndarray) -> tuple[np.ndarray, np.float32, np.uint8]:
    """ONNX DynamicQuantizeLinear: uint8, range including zero, round half to even."""
    x = np.asarray(x, np.float32)
    lo = min(float(x.min()), 0.0)
    hi = max(float(x.max()), 0.0)
    scale = np.float32((hi - lo) / 255.0) if hi > lo else np.float32(1.0)
    zp = np.uint8(np.clip(np.rint(0 - lo / scale), 0, 255))
    q = np.clip(np.rint(x / scale) + zp, 0, 255).astype(np.uint8)
    return q, scale, zp


def fake_quant_activation(x: np.ndarray, scale: float, zp: int, dtype: str) -> np.ndarray:
    """QuantizeLinear → DequantizeLinear of an activation with a fixed (calibrated) scale."""
    spec = QuantSpec(dtype, "tensor", symmetric=dtype not in ("uint8", "uint4"))
    s = np.float32(scale)
    q = encode(np.asarray(x, np.float32), s, None if zp is None or spec.symmetric else np.int64(zp), spec)
    return decode(q, s, None if spec.symmetric else np.int64(zp), spec)
