"""Kernel families of quantized and sparse GEMMs: measured time relative to the dense GEMM.

A quantized GEMM's speed is a property of the kernel that runs it, not of its bit-width
(DOMAIN.md). ``tools/measure_kernels.py`` timed PyTorch's own kernels on an NVIDIA H200 inside
CUDA graphs over M = 1 … 16384 rows and the Llama-7B/8B/70B linear shapes
(``compiler/calibration/data/h200_kernels.json``). For each family this module keeps the median
over shapes, at each M, of ``time(family) / time(dense bf16 F.linear)`` — e.g. int4
``aten._weight_int4pack_mm`` runs 0.62× the dense time at M = 1 but 22× at M ≥ 512, the 2:4
cuSPARSELt GEMM 1.7× at M ≤ 32 and 0.65× at M ≥ 2048.

The cost model (compiler/cost.py) predicts a GEMM whose ``compute_dtype.kernel`` is a measured
family as the dense 16-bit GEMM of the same shape (its roofline with the hardware's calibrated
GEMM efficiency) times the family's ratio at the op's M (interpolated in log M, clamped at the
measured ends). On hardware other than the H200 the H200 ratios are applied and the report says
so (:func:`source`).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "calibration" / "data" / "h200_kernels.json"
DENSE_FAMILY = "dense_bf16"

# kernel label (compute_dtype.kernel, what the report names) -> measured family
KERNELS: dict[str, str] = {
    "aten._weight_int4pack_mm": "w4a16",
    "dequantize + F.linear": "w8a16_dequant_gemm",
    "torch._weight_int8pack_mm": "w8a16_int8pack",
    "torch._int_mm + dynamic int8 activation quantization": "w8a8_pipeline",
    "torch._scaled_mm + dynamic fp8 activation quantization": "fp8_pipeline",
    "cuSPARSELt 2:4 (torch.sparse.to_sparse_semi_structured)": "sparse24_cusparselt",
}
_CURVES: dict[str, dict] = {}


def _load() -> dict[str, dict]:
    if _CURVES or not DATA.is_file():
        return _CURVES
    data = json.loads(DATA.read_text())
    samples = [x for x in data.get("samples", []) if "N" in x.get("shape", {})]
    base = {(x["shape"]["M"], x["shape"]["K"], x["shape"]["N"]): x["time_s"] for x in samples
            if x.get("family") == DENSE_FAMILY}
    by: dict[str, dict[int, list[float]]] = {}
    for x in samples:
        k = (x["shape"]["M"], x["shape"]["K"], x["shape"]["N"])
        if k in base and x.get("family") != DENSE_FAMILY:
            by.setdefault(x["family"], {}).setdefault(k[0], []).append(x["time_s"] / base[k])
    dev = data.get("device", {}).get("name", "NVIDIA H200") if isinstance(data.get("device"), dict) else "NVIDIA H200"
    for fam, ms in by.items():
        m = np.array(sorted(ms), float)
        _CURVES[fam] = {"m": m, "ratio": np.array([np.median(ms[int(v)]) for v in m]),
                        "device": dev, "date": data.get("date", "")}
    return _CURVES


def family(kernel: str) -> str | None:
    fam = KERNELS.get(kernel)
    return fam if fam is not None and fam in _load() else None


def ratio(kernel: str, m) -> np.ndarray:
    """Measured time of ``kernel`` relative to the dense bf16 GEMM at ``m`` rows."""
    c = _load()[KERNELS[kernel]]
    return np.interp(np.log(np.maximum(np.asarray(m, float), 1.0)), np.log(c["m"]), c["ratio"])


def source(kernel: str, hardware_name: str) -> str:
    fam = family(kernel)
    if fam is None:
        return "no measured kernel family: roofline with the hardware's GEMM efficiency"
    c = _load()[fam]
    on = "" if "h200" in hardware_name.lower() else f"; H200 ratio applied to {hardware_name}"
    return (f"measured {fam} vs {DENSE_FAMILY} on {c['device']} in CUDA graphs "
            f"(compiler/calibration/data/h200_kernels.json){on}")
