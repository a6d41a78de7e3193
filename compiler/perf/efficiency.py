"""Per-op-class efficiency model of the roofline cost model, and its fitter.

Stands alone: numpy only (no other project imports, no scipy needed), so that
tools and tests can use it without the rest of the compiler.

Model (one kernel of op class c, F FLOPs, Bt bytes moved to/from device memory,
dense peak P FLOP/s in the op's dtype, memory bandwidth W bytes/s)::

    att_compute = P * e.compute * F  / (F  + e.flops_half)
    att_memory  = W * e.memory  * Bt / (Bt + e.bytes_half)
    time = max(F / att_compute, Bt / att_memory) + launch_s
         = max((F + flops_half) / (P * compute), (Bt + bytes_half) / (W * memory)) + launch_s

``compute`` and ``memory`` are the asymptotic fractions of the datasheet peaks that
large kernels reach; ``flops_half`` / ``bytes_half`` are the sizes at which a kernel
reaches half of that (they absorb ramp-up, tail effects and fixed per-kernel latency
beyond the launch overhead); ``launch_s`` is the per-kernel launch gap, shared by all
classes.

Fitting minimises a robust (soft-L1) loss of log(pred / measured), so that the
reported metric, the median absolute relative error, is what the fit aims at.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Iterable, Mapping, Optional, Tuple

import numpy as np

from compiler.errors import InputValueError

CLASSES: Tuple[str, ...] = (
    "gemm",
    "attention_prefill",
    "attention_decode",
    "elementwise",
    "reduction",
    "copy",
)

#: Values used for a side (compute or memory) that no measured sample of a class
#: exercises: the fit cannot tell them, so a physically motivated default is put
#: there, as long as it leaves every measured prediction unchanged.
#: Elementwise/reduction FLOPs run on CUDA cores, not tensor cores: on an H100 SXM
#: the fp32 vector rate (66.9 TFLOP/s) is 0.068 of the fp16 dense tensor peak.
DEFAULT_PRIORS: Dict[str, "ClassParams"] = {}


@dataclass(frozen=True)
class ClassParams:
    compute: float
    memory: float
    flops_half: float
    bytes_half: float

    def __post_init__(self) -> None:
        if not (0.0 < self.compute <= 1.0):
            raise InputValueError(f"compute efficiency must be in (0, 1], got {self.compute}")
        if not (0.0 < self.memory <= 1.0):
            raise InputValueError(f"memory efficiency must be in (0, 1], got {self.memory}")
        if self.flops_half < 0.0 or self.bytes_half < 0.0:
            raise InputValueError("flops_half and bytes_half must be >= 0")

    def to_dict(self) -> Dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, float]) -> "ClassParams":
        return cls(
            compute=float(d["compute"]),
            memory=float(d["memory"]),
            flops_half=float(d.get("flops_half", 0.0)),
            bytes_half=float(d.get("bytes_half", 0.0)),
        )


DEFAULT_PRIORS.update(
    {
        "gemm": ClassParams(0.75, 0.85, 0.0, 0.0),
        "attention_prefill": ClassParams(0.5, 0.85, 0.0, 0.0),
        "attention_decode": ClassParams(0.3, 0.85, 0.0, 0.0),
        "elementwise": ClassParams(0.0676, 0.9, 0.0, 0.0),
        "reduction": ClassParams(0.0676, 0.9, 0.0, 0.0),
        "copy": ClassParams(1.0, 0.9, 0.0, 0.0),
    }
)


# --------------------------------------------------------------------------- model


def _is_scalar(*xs) -> bool:
    return all(np.ndim(x) == 0 for x in xs)


def kernel_time(p: ClassParams, flops, bytes_, peak_flops, bandwidth: float, launch_s: float, *,
                fixed=1.0, ramp_peak=None):
    """The model in one place (module doc): ``max((F + F½·k) / (P·e_c), (B + B½·k) / (W·e_m)) +
    launch·k`` with ``k = fixed`` (the share of a kernel's fixed costs an op pays: 1, or a routed
    expert's touched probability) and ``F½`` scaled by ``P / ramp_peak`` (the roll-off is sized
    for the fp16 reference peak, so the ramp-up *time* is the chip's whatever the dtype; None: no
    scaling). Arrays broadcast."""
    f = np.asarray(flops, dtype=float)
    b = np.asarray(bytes_, dtype=float)
    fh = p.flops_half * fixed * (1.0 if ramp_peak is None else peak_flops / ramp_peak)
    t_c = (f + fh) / (peak_flops * p.compute)
    t_m = (b + p.bytes_half * fixed) / (bandwidth * p.memory)
    return np.maximum(t_c, t_m) + launch_s * fixed


def op_time(p: ClassParams, flops, bytes_, peak_flops: float, bandwidth: float, launch_s: float):
    """Predicted time (s) of one kernel; floats in, float out; arrays broadcast."""
    t = kernel_time(p, flops, bytes_, peak_flops, bandwidth, launch_s)
    return float(t) if _is_scalar(flops, bytes_) else t


def roofline_time(flops, bytes_, peak_flops: float, bandwidth: float):
    """Pure, uncalibrated roofline time max(F/P, B/W) (no efficiencies, no launch)."""
    f = np.asarray(flops, dtype=float)
    b = np.asarray(bytes_, dtype=float)
    t = np.maximum(f / peak_flops, b / bandwidth)
    return float(t) if _is_scalar(flops, bytes_) else t


def bound_side(p: ClassParams, flops, bytes_, peak_flops: float, bandwidth: float):
    """Boolean array: True where the compute term of the model binds."""
    f = np.asarray(flops, dtype=float)
    b = np.asarray(bytes_, dtype=float)
    return (f + p.flops_half) / (peak_flops * p.compute) >= (b + p.bytes_half) / (bandwidth * p.memory)


# --------------------------------------------------------------------------- samples


def _arrays(samples) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flops, bytes, time) arrays from a list of sample dicts or a 3-tuple of arrays."""
    if isinstance(samples, tuple) and len(samples) == 3:
        f, b, t = (np.asarray(x, dtype=float) for x in samples)
        return f, b, t
    rows = list(samples)
    f = np.array([float(s["flops"]) for s in rows])
    b = np.array([float(s["bytes"]) for s in rows])
    t = np.array([float(s["time_s"]) for s in rows])
    return f, b, t


Select = Optional[Mapping[str, Iterable[str]]]


def class_samples(measurements: Mapping, cls: str, select: Select = None) -> list:
    """Samples of one class that are meant for fitting: drops ``exclude_from_fit`` ones and,
    if ``select`` names sample names for ``cls``, keeps only those."""
    names = None if not select or cls not in select else set(select[cls])
    return [
        s
        for s in measurements.get("samples", [])
        if s.get("class") == cls
        and not s.get("exclude_from_fit", False)
        and float(s["time_s"]) > 0
        and (names is None or s.get("name") in names)
    ]


# --------------------------------------------------------------------------- fitting

_SOFT_L1_SCALE = 0.03  # residuals (in log units) above ~3 % are penalised ~linearly


def _loss(r: np.ndarray) -> np.ndarray:
    """Soft-L1 of log residuals, averaged over the last axis."""
    z = r / _SOFT_L1_SCALE
    return np.mean(2.0 * (np.sqrt(1.0 + z * z) - 1.0), axis=-1)


def _nelder_mead(fun, x0: np.ndarray, step: np.ndarray, max_iter: int = 2000, tol: float = 1e-10):
    """Plain Nelder–Mead (deterministic, numpy only). Hand-written on purpose: the shipped Hopper
    calibration (conf/hardware/*.yaml, ``python -m compiler.perf.calibration.transfer --write``)
    is this routine's exact output, and scipy's Nelder–Mead stops elsewhere in the flat valleys
    of the roll-off sizes (attention_prefill bytes_half 1.87 vs 1.59 MB on the joint Hopper fit):
    switching is a recalibration of every Hopper file, not a refactor."""
    n = len(x0)
    simplex = [np.array(x0, dtype=float)]
    for i in range(n):
        x = np.array(x0, dtype=float)
        x[i] += step[i]
        simplex.append(x)
    simplex = np.array(simplex)
    fvals = np.array([fun(x) for x in simplex])
    for _ in range(max_iter):
        order = np.argsort(fvals, kind="stable")
        simplex, fvals = simplex[order], fvals[order]
        if abs(fvals[-1] - fvals[0]) <= tol * (abs(fvals[0]) + 1e-30) and np.max(
            np.abs(simplex[1:] - simplex[0])
        ) < 1e-7:
            break
        centroid = simplex[:-1].mean(axis=0)
        xr = centroid + (centroid - simplex[-1])
        fr = fun(xr)
        if fr < fvals[0]:
            xe = centroid + 2.0 * (centroid - simplex[-1])
            fe = fun(xe)
            if fe < fr:
                simplex[-1], fvals[-1] = xe, fe
            else:
                simplex[-1], fvals[-1] = xr, fr
        elif fr < fvals[-2]:
            simplex[-1], fvals[-1] = xr, fr
        else:
            if fr < fvals[-1]:
                xc = centroid + 0.5 * (xr - centroid)
            else:
                xc = centroid + 0.5 * (simplex[-1] - centroid)
            fc = fun(xc)
            if fc < min(fr, fvals[-1]):
                simplex[-1], fvals[-1] = xc, fc
            else:
                for i in range(1, n + 1):
                    simplex[i] = simplex[0] + 0.5 * (simplex[i] - simplex[0])
                    fvals[i] = fun(simplex[i])
    i = int(np.argmin(fvals))
    return simplex[i], float(fvals[i])


def _eff(u):
    """Map an unbounded parameter to an efficiency in (0, 1]."""
    return np.exp(np.minimum(u, 0.0))


#: Classes whose FLOP counts are nominal (vector work, tiny intensity): their compute side is
#: not fitted but fixed to DEFAULT_PRIORS, so that the fit cannot use a compute "floor" as a
#: second line of a piecewise fit of what is all memory traffic.
MEMORY_ONLY_CLASSES: Tuple[str, ...] = ("elementwise", "reduction", "copy")


def fit_class(
    samples,
    peak_flops: float,
    bandwidth: float,
    launch_s: float,
    prior: Optional[ClassParams] = None,
    fit_compute: bool = True,
) -> ClassParams:
    """Fit (compute, memory, flops_half, bytes_half) of one class to measured samples.

    Minimises mean soft-L1(log(pred / measured)) over log-parameters with a coarse
    vectorised grid search followed by Nelder–Mead from the best grid points.  With
    ``fit_compute=False`` the compute side is fixed to ``prior`` (memory-only classes).
    A side (compute or memory) that binds for no sample is not identifiable: it is set to
    ``prior`` with a zero half size if that leaves every prediction unchanged, else to the
    fitted efficiency with a zero half size (again only if predictions are unchanged).
    """
    prior = prior or ClassParams(0.7, 0.85, 0.0, 0.0)
    f, b, t = _arrays(samples)
    if len(t) == 0:
        raise InputValueError("fit_class needs at least one sample")
    if np.any(t <= 0) or np.any(f < 0) or np.any(b < 0):
        raise InputValueError("times must be > 0 and flops, bytes >= 0")
    logt = np.log(t)
    P, W, L = float(peak_flops), float(bandwidth), float(launch_s)
    fs = float(np.median(f[f > 0])) if np.any(f > 0) else 1.0
    bs = float(np.median(b[b > 0])) if np.any(b > 0) else 1.0

    free = np.array([fit_compute, True, fit_compute, True])
    fixed = np.array([np.log(prior.compute), 0.0, np.log(max(prior.flops_half, 1e-300) / fs), 0.0])

    def full(x):
        x = np.asarray(x, dtype=float)
        out = np.broadcast_to(fixed, x.shape[:-1] + (4,)).copy()
        out[..., free] = x
        return out

    def unpack(x):
        x = full(x)
        fh = fs * np.exp(x[..., 2]) if fit_compute else np.full(x.shape[:-1], prior.flops_half)
        return _eff(x[..., 0]), _eff(x[..., 1]), fh, bs * np.exp(x[..., 3])

    def predict(x):
        c, m, fh, bh = unpack(x)
        c, m, fh, bh = (np.asarray(v)[..., None] for v in (c, m, fh, bh))
        return np.maximum((f + fh) / (P * c), (b + bh) / (W * m)) + L

    def objective(x):
        return float(_loss(np.log(predict(x)) - logt))

    # coarse grid over the free parameters (vectorised over grid points)
    axes = [
        np.log(np.array([0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 0.9])),
        np.log(np.array([0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 0.85, 1.0])),
        np.log(np.array([1e-4, 1e-3, 1e-2, 0.05, 0.2, 1.0, 5.0, 30.0])),
        np.log(np.array([1e-4, 1e-3, 1e-2, 0.05, 0.2, 1.0, 5.0, 30.0])),
    ]
    axes = [a for a, fr in zip(axes, free) if fr]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(axes))
    gl = _loss(np.log(predict(grid)) - logt)
    starts = grid[np.argsort(gl, kind="stable")[:6]]
    steps = np.array([0.3, 0.3, 1.0, 1.0])[free]
    best_x, best_f = None, np.inf
    for x0 in starts:
        x, fx = _nelder_mead(objective, x0, step=steps)
        x, fx = _nelder_mead(objective, x, step=steps / 3.0)  # restart
        if fx < best_f - 1e-15:
            best_x, best_f = x, fx
    c, m, fh, bh = (float(v) for v in unpack(best_x))
    params = ClassParams(compute=c, memory=m, flops_half=fh, bytes_half=bh)
    return _settle_unidentified(params, f, b, P, W, L, prior)


def _settle_unidentified(p: ClassParams, f, b, P, W, L, prior: ClassParams) -> ClassParams:
    base = op_time(p, f, b, P, W, L)
    comp = bound_side(p, f, b, P, W)

    def same(q: ClassParams) -> bool:
        return bool(np.allclose(op_time(q, f, b, P, W, L), base, rtol=1e-12, atol=0.0))

    if not np.any(comp):  # compute side never binds
        for cand in (
            ClassParams(prior.compute, p.memory, 0.0, p.bytes_half),
            ClassParams(p.compute, p.memory, 0.0, p.bytes_half),
        ):
            if same(cand):
                p = cand
                break
    if np.all(comp):  # memory side never binds
        for cand in (
            ClassParams(p.compute, prior.memory, p.flops_half, 0.0),
            ClassParams(p.compute, p.memory, p.flops_half, 0.0),
        ):
            if same(cand):
                p = cand
                break
    return p


def estimate_launch(measurements: Mapping) -> float:
    """Per-kernel launch gap: median of the 'launch' samples (an almost empty kernel
    replayed in a CUDA graph), else 90 % of the fastest kernel measured."""
    launch = [float(s["time_s"]) for s in measurements.get("samples", []) if s.get("class") == "launch"]
    if launch:
        return float(np.median(launch))
    times = [float(s["time_s"]) for s in measurements.get("samples", []) if float(s["time_s"]) > 0]
    if not times:
        raise InputValueError("the measurements hold no samples")
    return 0.9 * min(times)


def datasheet_of(measurements: Mapping) -> Tuple[float, float]:
    ds = measurements.get("datasheet") or {}
    if "peak_flops" not in ds or "bandwidth" not in ds:
        raise InputValueError("measurements carry no datasheet peak_flops/bandwidth: pass them explicitly")
    return float(ds["peak_flops"]), float(ds["bandwidth"])


def fit_all(
    measurements: Mapping,
    peak_flops: Optional[float] = None,
    bandwidth: Optional[float] = None,
    launch_s: Optional[float] = None,
    classes: Iterable[str] = CLASSES,
    select: Select = None,
    priors: Optional[Mapping[str, ClassParams]] = None,
) -> Tuple[float, Dict[str, ClassParams]]:
    """Fit the launch overhead and every class present in ``measurements``.

    ``peak_flops``/``bandwidth`` default to the measurement file's ``datasheet`` entry
    (datasheet numbers, not measured ones: the efficiencies absorb the gap).  ``select``
    maps a class to the sample names that stand for it (see :func:`class_samples`);
    ``priors`` overrides :data:`DEFAULT_PRIORS` per class (values for unidentified sides)."""
    if peak_flops is None or bandwidth is None:
        P, W = datasheet_of(measurements)
        peak_flops = P if peak_flops is None else peak_flops
        bandwidth = W if bandwidth is None else bandwidth
    L = estimate_launch(measurements) if launch_s is None else float(launch_s)
    out: Dict[str, ClassParams] = {}
    for cls in classes:
        s = class_samples(measurements, cls, select)
        if s:
            prior = (priors or {}).get(cls, DEFAULT_PRIORS.get(cls))
            out[cls] = fit_class(s, peak_flops, bandwidth, L, prior=prior,
                                 fit_compute=cls not in MEMORY_ONLY_CLASSES)
    return L, out


# --------------------------------------------------------------------------- errors


def _median_abs_rel(pred: np.ndarray, meas: np.ndarray) -> float:
    return float(np.median(np.abs(pred / meas - 1.0)))


def errors(
    measurements: Mapping,
    params: Mapping[str, ClassParams],
    launch_s: float,
    peak: float,
    bw: float,
    select: Select = None,
) -> Dict[str, float]:
    """Median |pred/measured - 1| per class of the calibrated model."""
    out = {}
    for cls, p in params.items():
        f, b, t = _arrays(class_samples(measurements, cls, select))
        if len(t):
            out[cls] = _median_abs_rel(op_time(p, f, b, peak, bw, launch_s), t)
    return out


def roofline_errors(measurements: Mapping, peak: float, bw: float, classes: Iterable[str] = CLASSES,
                    select: Select = None) -> Dict[str, float]:
    """Median |pred/measured - 1| per class of the pure, uncalibrated roofline."""
    out = {}
    for cls in classes:
        f, b, t = _arrays(class_samples(measurements, cls, select))
        if len(t):
            out[cls] = _median_abs_rel(roofline_time(f, b, peak, bw), t)
    return out


def error_table(measurements: Mapping, params, launch_s, peak, bw, select: Select = None) -> Dict[str, Dict[str, float]]:
    """{class: {n, calibrated, calibrated_p90, calibrated_max, roofline}} for reports."""
    cal = errors(measurements, params, launch_s, peak, bw, select)
    roof = roofline_errors(measurements, peak, bw, classes=list(params), select=select)
    out = {}
    for cls in params:
        f, b, t = _arrays(class_samples(measurements, cls, select))
        rel = np.abs(op_time(params[cls], f, b, peak, bw, launch_s) / t - 1.0)
        out[cls] = {
            "n": int(len(t)),
            "calibrated": cal[cls],
            "calibrated_p90": float(np.percentile(rel, 90)),
            "calibrated_max": float(np.max(rel)),
            "roofline": roof[cls],
        }
    return out


def name_breakdown(measurements: Mapping, params: Mapping[str, ClassParams], launch_s, peak, bw,
                   select: Select = None) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Per class and sample name (every sample, fitted or not): n, whether it is in the fit,
    median |rel err| of the calibrated model and median signed log error (bias)."""
    fitted = {id(s) for cls in params for s in class_samples(measurements, cls, select)}
    groups: Dict[Tuple[str, str], list] = {}
    for s in measurements.get("samples", []):
        if s.get("class") in params:
            groups.setdefault((s["class"], s.get("name", "?")), []).append(s)
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    for (cls, name), ss in sorted(groups.items()):
        f, b, t = _arrays(ss)
        pred = op_time(params[cls], f, b, peak, bw, launch_s)
        out.setdefault(cls, {})[name] = {
            "n": int(len(t)),
            "in_fit": all(id(s) in fitted for s in ss),
            "median_abs_rel_err": _median_abs_rel(pred, t),
            "median_pred_over_meas": float(np.exp(np.median(np.log(pred / t)))),
        }
    return out
