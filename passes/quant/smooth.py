"""Input-channel scaling that moves quantization difficulty between activations and weights.

Both rewrite ``X · W`` as ``(X / s) · (diag(s) · W)`` for a per-input-channel vector ``s``:

- SmoothQuant (Xiao et al. 2023) for W8A8: ``s_j = max|X_j|^α / max|W_j|^(1−α)`` with migration
  strength ``α`` (``quant.smooth_alpha``, 0.5 default; 0.75–0.85 for activation-outlier-heavy
  models). Several linear layers reading the same activation share one ``s`` (max over all of
  their weights).
- AWQ (Lin et al. 2024) for weight-only 4-bit: ``s = mean|X|^α`` (normalized), ``α`` searched on
  a grid to minimize the layer-output error of the RTN-quantized scaled weight on calibration
  activations.
"""
from __future__ import annotations

import numpy as np

from compiler.errors import InputValueError

from passes.quant.formats import QuantSpec, quantize_rtn


def smoothquant_scales(act_absmax: np.ndarray, weights: list[np.ndarray], alpha: float = 0.5,
                       *, floor: float = 1e-5) -> np.ndarray:
    """Per-input-channel smoothing factors ``s`` for the weights (each ``[K, N_i]``) that read an
    activation whose per-channel max |x| is ``act_absmax`` ([K])."""
    if not 0.0 <= alpha <= 1.0:
        raise InputValueError(f"quant.smooth_alpha={alpha!r} must be in [0, 1] (SmoothQuant's migration strength; 0.5 "
                          f"is usual)")
    w_absmax = np.max(np.stack([np.abs(w).max(axis=1) for w in weights]), axis=0)
    a = np.maximum(np.asarray(act_absmax, np.float64), floor)
    wmax = np.maximum(w_absmax.astype(np.float64), floor)
    s = a ** alpha / wmax ** (1.0 - alpha)
    return np.clip(s, floor, None).astype(np.float32)


def awq_scales(x: np.ndarray, weights: list[np.ndarray], spec: QuantSpec,
               grid: int = 20) -> tuple[np.ndarray, float]:
    """AWQ search: ``s = mean|X|^α`` normalized to geometric mean 1, α ∈ {0, 1/grid, …, 1}
    minimizing ``Σ ‖X·W − (X/s)·Q(s·W)‖²`` over the weights reading ``x`` ([rows, K]).
    Returns (s, α)."""
    x = np.asarray(x, np.float32).reshape(-1, weights[0].shape[0])
    mean_abs = np.abs(x).astype(np.float64).mean(axis=0)
    refs = [x @ w for w in weights]
    best = (np.inf, np.ones(x.shape[1], np.float32), 0.0)
    for i in range(grid + 1):
        alpha = i / grid
        s = np.maximum(mean_abs, 1e-8) ** alpha
        s = s / np.exp(np.mean(np.log(s)))
        s = s.astype(np.float32)
        xs = x / s
        err = 0.0
        for w, r in zip(weights, refs):
            wq = quantize_rtn(w * s[:, None], spec).dequantize()
            err += float(np.square(xs @ wq - r).sum())
        if err < best[0]:
            best = (err, s, alpha)
    return best[1], best[2]
