"""Hessian-based one-shot compression of a linear layer: GPTQ (quantization) and SparseGPT
(N:M pruning), one engine (Optimal Brain Surgeon column sweep), numpy float64 reference.

Both minimize the layer-output error ``‖X·W − X·Ŵ‖²`` over calibration activations ``X``
with the Hessian ``H = 2/n · XᵀX`` ([K, K], K = input features). Columns of ``Wᵀ`` (= rows of
``W[K, N]``, i.e. input features) are processed in order; each one is rounded (GPTQ) and/or
zeroed (SparseGPT) and its error is spread over the columns not yet processed through the
upper Cholesky factor of ``H⁻¹`` — lazily in blocks of ``block_size`` columns (Frantar et al.,
GPTQ 2022, Algorithm 1; SparseGPT 2023, Algorithm 1 with the N:M mask chosen per group by
``w² / [H⁻¹]ᵢᵢ²``). Damping adds ``percdamp · mean(diag H)`` to the diagonal; input features
never seen in calibration (``Hᵢᵢ = 0``) are zeroed.

Quantization groups take their scale and zero point when the sweep reaches the group's first
column, from the weights as updated so far (GPTQ's ``groupsize`` without ``static_groups``);
per-channel formats take them from the whole weight up front. Pruned weights become exact
zeros, which every rooftop format represents (zero points include 0), so pruning and
quantization compose in one sweep.
"""
from __future__ import annotations

import math

import numpy as np

from passes.quant.formats import QTensor, QuantError, QuantSpec, decode, encode, from_codes, params_from_range


class Hessian:
    """Running ``H = 2/n · Σ xᵀx`` over calibration rows (float64), plus per-channel |x| max
    (SmoothQuant / AWQ statistics) and the activation range (static activation scales)."""

    def __init__(self, k: int):
        self.k = k
        self.h = np.zeros((k, k), np.float64)
        self.n = 0
        self.absmax = np.zeros(k, np.float64)
        self.absmean_sum = np.zeros(k, np.float64)
        self.chmin = np.full(k, np.inf)
        self.chmax = np.full(k, -np.inf)
        self.rows: np.ndarray | None = None     # a sample of activation rows (AWQ), when kept
        self.samples = 0                        # calibration sequences seen

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64).reshape(-1, self.k)
        m = x.shape[0]
        if m == 0:
            return
        self.h *= self.n / (self.n + m)
        self.n += m
        x2 = math.sqrt(2 / self.n) * x
        self.h += x2.T @ x2
        ax = np.abs(x)
        self.absmax = np.maximum(self.absmax, ax.max(axis=0))
        self.absmean_sum += ax.sum(axis=0)
        self.chmin = np.minimum(self.chmin, x.min(axis=0))
        self.chmax = np.maximum(self.chmax, x.max(axis=0))

    @property
    def absmean(self) -> np.ndarray:
        return self.absmean_sum / max(self.n, 1)


def _hinv_chol(h: np.ndarray, w: np.ndarray, percdamp: float) -> np.ndarray:
    """Upper Cholesky factor of (H + λI)⁻¹; zeroes ``w``'s dead input rows in place."""
    h = h.copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[dead, :] = 0.0
    damp = percdamp * float(np.mean(np.diag(h)))
    h[np.diag_indices_from(h)] += damp
    for _ in range(8):
        try:
            lower = np.linalg.cholesky(h)
            break
        except np.linalg.LinAlgError:   # not positive definite: more damping
            h[np.diag_indices_from(h)] += damp or 1e-6
            damp = (damp or 1e-6) * 10
    else:  # pragma: no cover
        raise QuantError("the calibration Hessian is not positive definite even after damping")
    linv = np.linalg.inv(lower)
    hinv = linv.T @ linv
    return np.linalg.cholesky(hinv).T   # upper


def obs_compress(w: np.ndarray, hessian: Hessian | np.ndarray, *, spec: QuantSpec | None = None,
                 nm: tuple[int, int] | None = None, mask: np.ndarray | None = None,
                 block_size: int = 128, percdamp: float = 0.01,
                 reduce_axis: int = 0) -> tuple[np.ndarray, QTensor | None, np.ndarray | None]:
    """Compress ``w`` (K-first unless ``reduce_axis=1``) against ``hessian``.

    ``spec``: quantize (GPTQ) into this format; ``nm=(n, m)``: prune to n of every m along the
    reduction axis, choosing the mask by the OBS saliency (SparseGPT); ``mask``: a fixed keep
    mask (e.g. from magnitude pruning) honoured while quantizing. Returns the compressed fp32
    weight (dequantized when ``spec``), the :class:`QTensor` (when ``spec``) and the keep mask
    (when pruning).
    """
    if spec is None and nm is None:
        raise QuantError("obs_compress needs a quantization spec, an N:M pattern, or both")
    wk = np.array(w if reduce_axis == 0 else np.asarray(w).T, np.float64)   # [K, N]
    k, n_out = wk.shape
    h = hessian.h if isinstance(hessian, Hessian) else np.asarray(hessian, np.float64)
    if h.shape != (k, k):
        raise QuantError(f"Hessian shape {h.shape} does not match the weight's {k} input features")
    keep = None if mask is None else np.array(mask if reduce_axis == 0 else np.asarray(mask).T, bool)
    if nm is not None:
        n_keep, m = nm
        if k % m:
            raise QuantError(f"{k} input features are not a multiple of m={m}")
        if block_size % m:
            block_size = m * max(1, block_size // m)
        keep = np.ones_like(wk, bool)
    hinv = _hinv_chol(h, wk, percdamp)
    group = spec.group_size if spec is not None and spec.granularity == "group" else None
    n_groups = math.ceil(k / group) if group else 1
    scales = zps = None
    if spec is not None:
        if spec.granularity == "group":
            scales = np.zeros((n_groups, n_out), np.float32)
            zps = None if spec.symmetric else np.zeros((n_groups, n_out), np.int64)
        else:
            lo = wk.min(axis=0 if spec.granularity == "channel" else None)
            hi = wk.max(axis=0 if spec.granularity == "channel" else None)
            scales, zps = params_from_range(np.asarray(lo), np.asarray(hi), spec)
    codes = np.zeros((k, n_out), np.int64) if spec is not None and not spec.is_float else None
    fcodes = [] if spec is not None and spec.is_float else None
    out = np.zeros_like(wk)

    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        w1 = wk[i1:i2].copy()           # rows = input features of this block
        err1 = np.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if nm is not None and col % nm[1] == 0:
                m = nm[1]
                d = np.diag(hinv1)[i:i + m]
                sal = w1[i:i + m] ** 2 / (d[:, None] ** 2)
                order = np.argsort(sal, axis=0, kind="stable")      # smallest saliency first
                drop = order[: m - nm[0]]
                blk = np.ones((m, n_out), bool)
                np.put_along_axis(blk, drop, False, axis=0)
                keep[col:col + m] = blk
            wrow = w1[i]
            if spec is not None and group and col % group == 0:
                stop = min(col + group, k)
                seg = np.concatenate([w1[i:min(i2 - i1, stop - i1)], wk[i2:stop]]) if stop > i2 else w1[i:stop - i1]
                if keep is not None:
                    seg = seg * keep[col:col + seg.shape[0]] if nm is None else seg
                s, z = params_from_range(seg.min(axis=0), seg.max(axis=0), spec)
                scales[col // group] = s
                if zps is not None:
                    zps[col // group] = z
            if spec is not None:
                g = col // group if group else None
                s = scales[g] if group else scales
                z = (zps[g] if group else zps) if zps is not None else None
                q = encode(wrow, s, z, spec)
                if keep is not None:
                    kp = keep[col]
                    if spec.is_float:
                        q = np.where(kp, q.astype(np.float32), 0.0).astype(q.dtype)
                    else:
                        q = np.where(kp, q, 0 if z is None else z)
                deq = decode(q, s, z, spec).astype(np.float64)
                if codes is not None:
                    codes[col] = q
                else:
                    fcodes.append(q)
            else:
                deq = np.where(keep[col], wrow, 0.0)
            out[col] = deq
            e = (wrow - deq) / hinv1[i, i]
            w1[i:] -= np.outer(hinv1[i, i:], e)
            err1[i] = e
        wk[i2:] -= hinv[i1:i2, i2:].T @ err1

    qt = None
    if spec is not None:
        c = codes if codes is not None else np.stack(fcodes)
        if spec.granularity == "group":
            qt = from_codes(c, scales, zps, spec, reduce_axis)
        else:
            qt = from_codes(c, np.asarray(scales).reshape(-1) if spec.granularity == "channel" else np.asarray(scales).reshape(()),
                            None if zps is None else (np.asarray(zps).reshape(-1) if spec.granularity == "channel" else np.asarray(zps).reshape(())),
                            spec, reduce_axis)
    res = out.astype(np.float32)
    if reduce_axis == 1:
        res = res.T
        keep = None if keep is None else keep.T
    return res, qt, keep


def gptq(w: np.ndarray, hessian, spec: QuantSpec, **kw) -> QTensor:
    """GPTQ quantization of ``w`` into ``spec``; returns the quantized tensor."""
    return obs_compress(w, hessian, spec=spec, **kw)[1]


def sparsegpt(w: np.ndarray, hessian, n: int, m: int, **kw) -> tuple[np.ndarray, np.ndarray]:
    """SparseGPT N:M pruning; returns (pruned fp32 weight, keep mask)."""
    res, _, keep = obs_compress(w, hessian, nm=(n, m), **kw)
    return res, keep
