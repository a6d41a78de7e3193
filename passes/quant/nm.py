"""N:M structured sparsity: keep exactly ``n`` of every ``m`` consecutive weights along the
reduction axis (2:4 = 50 %), numpy reference. Ties are broken by position (stable sort), so the
mask is deterministic."""
from __future__ import annotations

import numpy as np

from passes.quant.formats import QuantError


def _check(k: int, n: int, m: int):
    if not (0 < n <= m):
        raise QuantError(f"N:M sparsity needs 0 < n ≤ m, got n={n}, m={m}")
    if k % m:
        raise QuantError(f"the reduction axis has {k} elements, not a multiple of m={m}")


def nm_mask(scores: np.ndarray, n: int, m: int, *, reduce_axis: int = 0) -> np.ndarray:
    """Keep mask with the ``n`` largest ``scores`` of every group of ``m`` along ``reduce_axis``."""
    s = np.asarray(scores)
    sk = s if reduce_axis == 0 else s.T
    k, cols = sk.shape
    _check(k, n, m)
    grp = sk.reshape(k // m, m, cols)
    order = np.argsort(-grp, axis=1, kind="stable")
    keep = np.zeros_like(grp, bool)
    np.put_along_axis(keep, order[:, :n], True, axis=1)
    keep = keep.reshape(k, cols)
    return keep if reduce_axis == 0 else keep.T


def prune_magnitude(w: np.ndarray, n: int, m: int, *, reduce_axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Magnitude N:M pruning; returns (pruned weight, keep mask)."""
    w = np.asarray(w, np.float32)
    keep = nm_mask(np.abs(w), n, m, reduce_axis=reduce_axis)
    return np.where(keep, w, 0).astype(np.float32), keep


def nonzeros_per_group(w: np.ndarray, m: int, *, reduce_axis: int = 0) -> np.ndarray:
    """Count of non-zeros in every group of ``m`` along the reduction axis ([K/m, N])."""
    wk = np.asarray(w) if reduce_axis == 0 else np.asarray(w).T
    k, cols = wk.shape
    _check(k, 1, m)
    return (wk.reshape(k // m, m, cols) != 0).sum(axis=1)


def satisfies_nm(w: np.ndarray, n: int, m: int, *, reduce_axis: int = 0) -> bool:
    """True when no group of ``m`` holds more than ``n`` non-zeros (a kept weight may itself be
    zero, e.g. after quantization, so this is 'at most n')."""
    return bool((nonzeros_per_group(w, m, reduce_axis=reduce_axis) <= n).all())
