"""Kernel families of quantized and sparse GEMMs: measured time relative to the dense GEMM.

A quantized GEMM's speed is a property of the kernel that runs it, not of its bit-width.
Two measured sources, each a ratio ``time(family) / time(dense GEMM)`` per M
(median over shapes at each M; interpolated in log M, clamped at the measured ends):

- GPUs: ``tools/measure_kernels.py`` timed PyTorch's own kernels on an NVIDIA H200 inside CUDA
  graphs over M = 1 … 16384 and the Llama-7B/8B/70B linear shapes
  (``compiler/perf/calibration/data/h200_kernels.json``) against the dense bf16 ``F.linear`` — e.g.
  int4 ``aten._weight_int4pack_mm`` 0.62× at M = 1 but 22× at M ≥ 512, 2:4 cuSPARSELt 1.7× at
  M ≤ 32 and 0.65× at M ≥ 2048.
- CPUs: ``tools/measure_kernels_ort.py`` timed the onnxruntime CPU kernels rooftop's artifacts
  run (``MatMulNBits`` 4- and 8-bit, ``DynamicQuantizeMatMul``, ``MatMulIntegerToFloat``, the
  per-token ``MatMulInteger`` form, the FP8 simulation) with weights streaming from memory, against the fp32 ``MatMul``
  (``compiler/perf/calibration/data/cpu_ort_kernels.json``).

The quantize / sparsify passes name the kernel on each GEMM (``compute_dtype.kernel``): the
PyTorch kernel on a GPU, the onnxruntime kernel on ``kind: cpu`` hardware. The cost model
(compiler/perf/cost.py) prices such a GEMM as the dense GEMM of its shape in the source's dense dtype
(16-bit on GPUs, fp32 on CPUs) times the family's ratio at the op's M. A measured device other
than the target is named in :func:`source`.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np

from compiler.resources import CALIBRATION_DATA

DATA_DIR = CALIBRATION_DATA


@dataclasses.dataclass(frozen=True)
class Source:
    file: str            # under compiler/perf/calibration/data/
    dense: str           # the dense family every ratio is taken against
    dense_dtype: str     # the dense GEMM's math dtype (hardware peak key)
    dense_bytes: float   # bytes per weight element of the dense GEMM
    how: str             # how it was measured


SOURCES: dict[str, Source] = {
    "h200": Source("h200_kernels.json", "dense_bf16", "fp16", 2.0, "in CUDA graphs"),
    "cpu_ort": Source("cpu_ort_kernels.json", "dense_fp32", "fp32", 4.0,
                      "with weights streaming from memory"),
    # the engine kernels of tools/measure_modern_kernels.py (tools/MODERN_KERNELS_NOTES.md)
    "h100_modern": Source("h100_modern_kernels.json", "dense_bf16", "bf16", 2.0, "in CUDA graphs"),
}
DENSE_FAMILY = SOURCES["h200"].dense      # kept for callers of the GPU source

#: a pruned weight on onnxruntime CPU: the same dense MatMul (ONNX has no N:M operator)
ORT_DENSE_NM = "onnxruntime dense MatMul (no N:M kernel)"

#: engine kernels measured on the H100 (labels of the runtime profiles' ``measured`` kernels)
INT8_COMPILED = "torch.compile int8 weight-only linear (gpt-fast WeightOnlyInt8Linear)"
INT4_TINYGEMM = "aten._weight_int4pack_mm (tinygemm int4, group 128)"
FP8_TENSORWISE = "torch._scaled_mm fp8 e4m3, per-tensor static scales"
FP8_ROWWISE_DYNAMIC = "Triton per-token fp8 quant + torch._scaled_mm rowwise"

# kernel label (compute_dtype.kernel, what the report names) -> (source, measured family)
KERNELS: dict[str, tuple[str, str]] = {
    "aten._weight_int4pack_mm": ("h200", "w4a16"),
    "dequantize + F.linear": ("h200", "w8a16_dequant_gemm"),
    "torch._weight_int8pack_mm": ("h200", "w8a16_int8pack"),
    "torch._int_mm + dynamic int8 activation quantization": ("h200", "w8a8_pipeline"),
    "torch._scaled_mm + dynamic fp8 activation quantization": ("h200", "fp8_pipeline"),
    "cuSPARSELt 2:4 (torch.sparse.to_sparse_semi_structured)": ("h200", "sparse24_cusparselt"),
    # onnxruntime CPU: what rooftop's hardware=cpu artifacts run after onnxruntime's rewrites
    "onnxruntime MatMulNBits 4-bit (accuracy level 4: int8 activations)": ("cpu_ort", "w4a16_nbits"),
    "onnxruntime MatMulNBits 4-bit (accuracy level 0: fp32 activations)": ("cpu_ort", "w4a16_nbits_acc0"),
    "onnxruntime MatMulNBits 8-bit (accuracy level 4: int8 activations)": ("cpu_ort", "w8a16_nbits"),
    "onnxruntime MatMulNBits 8-bit (accuracy level 0: fp32 activations)": ("cpu_ort", "w8a16_nbits_acc0"),
    "onnxruntime DynamicQuantizeMatMul (int8)": ("cpu_ort", "w8a8_dynamic"),
    "onnxruntime MatMulIntegerToFloat (static uint8 QDQ)": ("cpu_ort", "w8a8_static"),
    "onnxruntime MatMulInteger + per-token rescale": ("cpu_ort", "w8a8_per_token"),
    "onnxruntime DequantizeLinear fp8 + fp32 MatMul (accuracy simulation)": ("cpu_ort", "fp8_sim"),
    ORT_DENSE_NM: ("cpu_ort", "dense_fp32"),
    # what engines run (runtime profiles, compiler/perf/runtime.py), measured on an H100
    INT8_COMPILED: ("h100_modern", "int8_wo_compiled"),
    INT4_TINYGEMM: ("h100_modern", "int4_tinygemm"),
    FP8_TENSORWISE: ("h100_modern", "fp8_tensorwise_gemm"),
    FP8_ROWWISE_DYNAMIC: ("h100_modern", "fp8_rowwise_pipeline"),
}
_CURVES: dict[tuple[str, str], dict] = {}
_LOADED: set[str] = set()


def _load(src: str) -> dict[tuple[str, str], dict]:
    if src in _LOADED:
        return _CURVES
    _LOADED.add(src)
    s = SOURCES[src]
    path = DATA_DIR / s.file
    if not path.is_file():
        return _CURVES
    data = json.loads(path.read_text())
    samples = [x for x in data.get("samples", []) if "N" in x.get("shape", {})]
    base = {(x["shape"]["M"], x["shape"]["K"], x["shape"]["N"]): x["time_s"] for x in samples
            if x.get("family") == s.dense}
    # per (family, shape): ratio at each measured M
    by: dict[str, dict[tuple[int, int], dict[int, float]]] = {}
    for x in samples:
        k = (x["shape"]["M"], x["shape"]["K"], x["shape"]["N"])
        if k in base:
            by.setdefault(x["family"], {}).setdefault(k[1:], {})[k[0]] = x["time_s"] / base[k]
    dev = data.get("device", {})
    dev = dev.get("name", "NVIDIA H200") if isinstance(dev, dict) else "NVIDIA H200"
    for fam, shapes in by.items():
        # the median over shapes at each M of the union grid; a shape measured on a coarser M grid
        # contributes its own curve interpolated in log M, inside its measured range only — so the
        # set of shapes behind the median does not jump from one M to the next
        grid = np.array(sorted({m for ms in shapes.values() for m in ms}), float)
        ratio = []
        for m in grid:
            vals = [np.interp(np.log(m), np.log(sorted(ms)), [ms[v] for v in sorted(ms)])
                    for ms in shapes.values() if min(ms) <= m <= max(ms)]
            ratio.append(float(np.median(vals)))
        _CURVES[(src, fam)] = {"m": grid, "ratio": np.array(ratio),
                               "device": dev, "date": data.get("date", ""), "runtime": data.get("runtime", ""),
                               "file": s.file}
    return _CURVES


def _curve(kernel: str) -> dict | None:
    hit = KERNELS.get(kernel)
    return None if hit is None else _load(hit[0]).get(hit)


def family(kernel: str) -> str | None:
    return KERNELS[kernel][1] if _curve(kernel) is not None else None


def dense_reference(kernel: str) -> Source:
    """The dense GEMM ``kernel``'s ratio is measured against (its dtype and bytes per weight)."""
    return SOURCES[KERNELS[kernel][0]]


def interp_log_m(points, m):
    """A measured ``[[M, ratio], ...]`` curve at ``m`` rows: linear in log M, clamped at the
    measured ends (how every kernel ratio is read: cost model, 2:4 gate, report)."""
    pts = np.asarray(points, float)
    return np.interp(np.log(np.maximum(np.asarray(m, float), 1.0)), np.log(pts[:, 0]), pts[:, 1])


def ratio(kernel: str, m) -> np.ndarray:
    """Measured time of ``kernel`` relative to its source's dense GEMM at ``m`` rows."""
    c = _curve(kernel)
    return interp_log_m(np.column_stack([c["m"], c["ratio"]]), m)


def curve(kernel: str) -> dict | None:
    """``{"dense": <dense family>, "points": [[M, ratio], ...]}`` — the measured curve the cost
    model interpolates (report.json ``compression.kernels[].ratio_vs_dense``), or None."""
    c = _curve(kernel)
    if c is None:
        return None
    return {"dense": SOURCES[KERNELS[kernel][0]].dense,
            "points": [[int(m), round(float(r), 4)] for m, r in zip(c["m"], c["ratio"])]}


def source(kernel: str, hardware_name: str) -> str:
    c = _curve(kernel)
    if c is None:
        return "no measured kernel family: roofline with the hardware's GEMM efficiency"
    src, fam = KERNELS[kernel]
    s = SOURCES[src]
    rt = f" ({c['runtime']})" if c.get("runtime") else ""
    return (f"measured {fam} vs {s.dense} on {c['device']}{rt} {s.how} {c['date']} "
            f"(compiler/perf/calibration/data/{s.file}); ratio applied to {hardware_name}")
