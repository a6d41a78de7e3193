"""The hardware library: validated device descriptions for the roofline cost model.

Each device lives in ``conf/hardware/<name>.yaml`` (a Hydra config group: ``hardware=h100_sxm``
composes it into ``cfg.hardware``). :func:`load_hardware` validates such a mapping and returns a
frozen :class:`Hardware` whose numbers are all in SI base units.

Units: YAML keys say their unit, the Python object is SI
-------------------------------------------------------
The YAML is written in the units of datasheets so a reviewer can check it against the source;
every key carries its unit as a suffix and the loader converts. One convention, no exceptions:

* **rates are decimal** (what vendors mean by T, G, M for FLOP/s and bytes/s);
* **sizes of memories are binary** (DRAM capacity and caches: a datasheet's "80GB" of HBM is
  80 GiB of physical memory, its "50MB L2" is 50 MiB);
* **fit parameters are decimal.**

==============================================  =================================  =============
YAML key (in ``conf/hardware/<name>.yaml``)      :class:`Hardware` attribute        factor
==============================================  =================================  =============
``peak_tflops.<dtype>``  (DENSE)                 ``peak_flops[dtype]`` FLOP/s       1e12
``sparse_peak_tflops.<dtype>`` (2:4 sparse)      ``sparse_peak_flops[dtype]``       1e12
``memory_gib``                                   ``memory_bytes`` bytes             2**30
``memory_bandwidth_gbs``                         ``memory_bandwidth`` bytes/s       1e9
``onchip.l2_mib`` (last-level on-chip cache)     ``onchip.l2_bytes``                2**20
``onchip.smem_per_sm_kib``                       ``onchip.smem_per_sm_bytes``       2**10
``onchip.sm_count`` (SMs / CUs / CPU cores)      ``onchip.sm_count``                1 (integer)
``interconnect.bandwidth_gbs`` (per direction)   ``interconnect.bandwidth`` B/s     1e9
``interconnect.num_devices_per_node``            same                               1 (integer)
``interconnect.latency_us`` (optional)           ``interconnect.latency_s``         1e-6
``collectives`` (optional, measured)             ``collectives`` (see below)        —
``efficiency.launch_overhead_us``                ``efficiency.launch_overhead_s``   1e-6
``efficiency.classes.<cls>.compute``             ``.compute`` (fraction)            1
``efficiency.classes.<cls>.memory``              ``.memory`` (fraction)             1
``efficiency.classes.<cls>.flops_half_gflop``    ``.flops_half`` FLOP               1e9
``efficiency.classes.<cls>.bytes_half_mb``       ``.bytes_half`` bytes              1e6
==============================================  =================================  =============

``interconnect.latency_us`` is the literature per-collective latency floor; the optional
``collectives:`` block holds measured NCCL fits (latency, bus bandwidth per collective and device
count), the cost model of :mod:`compiler.perf.collectives`, written by
:mod:`compiler.perf.calibration.collectives`.

Other keys: ``name`` (must equal the file stem), ``vendor``, ``kind`` (gpu | cpu | soc),
``description`` (optional free text), ``interconnect.name``, ``efficiency.source``.

Optional ``price``: ``usd_per_gpu_hour`` (a list price for one device, US dollars per hour) and
``source`` (where the price was read, with the date): the cost axis of ``search=sizing``
(compiler/driver/sizing.py). Prices change: override with ``hardware.price.usd_per_gpu_hour=``
or ``sizing.prices``. :class:`Hardware` carries ``price_usd_per_hour`` (None: no price).

Optional provenance keys (written by ``python -m compiler.perf.calibration.transfer`` through
:mod:`compiler.perf.hardware_yaml`):

* ``architecture``: the chip family (``hopper``, ``ampere``, ...): devices of one architecture
  share one calibration (:mod:`compiler.perf.calibration.transfer`).
* ``calibration``: where the efficiency block came from, read by reports —
  ``source`` (``calibrated``: measured on this device; ``transferred``: measured on another device
  of the same architecture and scaled by the datasheet ratios; ``literature``: not measured on
  this architecture), ``from`` (the measured devices), ``method`` (one sentence), ``date`` and
  ``error_band`` (``median`` and ``p90``: the fraction a prediction may be off, with ``basis``
  saying which experiment gave it).
* ``kernel_families``: per quantized/sparse GEMM kernel family (``w4a16``, ``fp8_rowwise``, ...)
  the kernel it was measured with and its efficiency parameters against ``peak(peak_dtype,
  sparse)`` (same model and units as ``efficiency.classes``), with ``n`` samples and the fit's
  ``median_err``.
``sparse_peak_tflops`` may be omitted or empty. ``interconnect.bandwidth_gbs`` may be 0 only when
``num_devices_per_node`` is 1 (a device without peer links: the CPU socket, the phone SoC). Every number may be written as a YAML number or a
string holding one (``"989.4"``, ``"1.5e3"``). Any other key is an error (typos must not pass).

Peaks are per dtype *class*: ``fp32`` is the non-tensor vector FMA rate (CUDA cores, AVX-512),
``tf32``/``fp16``/``bf16``/``fp8``/``int8``/``int4`` are the matrix-unit (tensor core, AMX, matrix
core) rates. An absent dtype means "no native math for it" and :meth:`Hardware.peak` falls back.

Fallback rule of :meth:`Hardware.peak`
--------------------------------------
A dtype without a native peak computes in the next wider type that holds each of its values
exactly, first one the chip supports::

    int4 -> int8 -> fp16 -> bf16 -> fp32        fp8  -> fp16 -> bf16 -> fp32
    fp16 -> fp32      bf16 -> fp32              tf32 -> fp32        fp4 -> fp8 -> fp16 -> bf16 -> fp32

(``fp16 -> bf16`` and ``bf16 -> fp16`` are not steps: each loses what the other keeps, mantissa
or range.) ``fp32`` is required in every file, so the chain always ends. With ``sparse=True`` the
2:4 sparse peak of that compute dtype is returned where the chip has one, else its dense peak
(sparsity without sparse math units saves bytes, not FLOPs). Example: H100 has no int4 tensor
math, so ``peak("int4") == peak("int8")`` there; A100 has it, so there it is 2x int8.

Efficiency
----------
``efficiency`` holds the fractions of peak an op class reaches (``OP_CLASSES``) and a small-size
roll-off: attainable compute for work ``F`` FLOPs is ``compute * peak * F / (F + flops_half)``,
attainable bandwidth for ``B`` bytes is ``memory * bandwidth * B / (B + bytes_half)``; each kernel
also pays ``launch_overhead_s``. ``flops_half`` is sized for the fp16 reference peak: for an op of
another dtype a cost model scales it by ``peak(dtype) / peak("fp16")``, so the ramp-up *time* is
the chip's whatever the dtype. ``compute`` fractions are meant relative to ``peak(dtype)`` of
the op's dtype; for the vector classes (elementwise, reduction, copy) a cost model may prefer
``peak("fp32")``. Shipped files carry ``source: "uncalibrated default"``; calibration writes
measured values back with :func:`compiler.perf.hardware_yaml.update_efficiency_yaml` (which keeps the file's comments) or
:func:`compiler.perf.hardware_yaml.write_hardware_yaml` (whole file, no comments).
"""

from __future__ import annotations

import contextvars
import io
import math
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, NoReturn, Optional

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf

from compiler.errors import ConfigError
from compiler.ir.tensors import HW_DTYPES, hw_dtype
from compiler.perf import structured
from compiler.perf.collectives import COLLECTIVES, CollectiveFit, Collectives
from compiler import resources

__all__ = [
    "CALIBRATION_SOURCES",
    "Calibration",
    "KernelFamilyEfficiency",
    "DTYPES",
    "OP_CLASSES",
    "KINDS",
    "DTYPE_FALLBACK",
    "HardwareError",
    "ClassEfficiency",
    "Efficiency",
    "OnChip",
    "Interconnect",
    "Hardware",
    "normalize_dtype",
    "load_hardware",
    "load_hardware_file",
    "available_hardware",
    "hardware_dir",
    "hardware_by_name",
]

DTYPES = HW_DTYPES
OP_CLASSES = ("gemm", "attention_prefill", "attention_decode", "elementwise", "reduction", "copy")
KINDS = ("gpu", "cpu", "soc")

#: For each dtype, the wider dtypes it may compute in, in order of preference (see module doc).
DTYPE_FALLBACK: Mapping[str, tuple[str, ...]] = {
    "fp32": (),
    "tf32": ("fp32",),
    "fp16": ("fp32",),
    "bf16": ("fp32",),
    "fp8": ("fp16", "bf16", "fp32"),
    "int8": ("fp16", "bf16", "fp32"),
    "int4": ("int8", "fp16", "bf16", "fp32"),
    "fp4": ("fp8", "fp16", "bf16", "fp32"),
}

# Pairs (wider, narrower): a chip's native narrower-type peak cannot be below the wider one's.
# Catches sparse/dense mixups and misplaced values; omit a dtype that has no fast native path.
_PEAK_ORDER = (("fp32", "tf32"), ("fp32", "fp16"), ("fp32", "bf16"), ("tf32", "fp16"),
               ("tf32", "bf16"), ("fp16", "fp8"), ("bf16", "fp8"), ("int8", "int4"), ("fp8", "fp4"))

CALIBRATION_SOURCES = ("calibrated", "transferred", "literature")

_TFLOPS = 1e12
_GIB = float(2**30)
_MIB = float(2**20)
_KIB = float(2**10)
_GBS = 1e9
_US = 1e-6
_GFLOP = 1e9
_MB = 1e6

# Where the object being validated came from (a file path), for messages; set by the loaders.

_WHERE: contextvars.ContextVar[str | None] = contextvars.ContextVar("rooftop_hw_where", default=None)


class HardwareError(ConfigError, ValueError):
    """A hardware description is wrong; the message names the file, the field and the fix.
    A :class:`compiler.errors.ConfigError`, so the command exits with code 2."""


def _fail(field_path: str, problem: str, fix: str, where: str | None = None) -> NoReturn:
    where = where or _WHERE.get() or "hardware config"
    what = f"field '{field_path}'" if field_path else "the top level"
    raise HardwareError(f"{where}: {what} {problem}. {fix}")


class _FrozenMap(Mapping):
    """A read-only, hashable mapping (so Hardware can be frozen, compared and hashed)."""

    __slots__ = ("_d",)

    def __init__(self, data: Mapping | None = None):
        self._d = dict(data or {})

    def __getitem__(self, key):
        return self._d[key]

    def __iter__(self) -> Iterator:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __hash__(self) -> int:
        return hash(frozenset(self._d.items()))

    def __eq__(self, other) -> bool:
        if isinstance(other, Mapping):
            return dict(self._d) == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"{dict(self._d)!r}"


def normalize_dtype(dtype: str) -> str:
    """Map a dtype spelling (``"float16"``, ``"torch.bfloat16"``, ``"fp8_e4m3"``...) to a class in
    :data:`DTYPES`; raise :class:`HardwareError` for anything else."""
    if not isinstance(dtype, str):
        raise HardwareError(f"dtype {dtype!r} is not a string; use one of {', '.join(DTYPES)}.")
    d = hw_dtype(dtype)
    if d is not None:
        return d
    raise HardwareError(
        f"dtype {dtype!r} is unknown to the hardware schema; use one of {', '.join(DTYPES)} "
        f"(or a common alias such as float16, bfloat16, float8_e4m3fn).")


# --------------------------------------------------------------------------- dataclasses

@dataclass(frozen=True)
class ClassEfficiency:
    """Achievable fractions for one op class (see the module doc for the roll-off model)."""

    compute: float      # fraction of dense peak reached on large work, 0 < x <= 1
    memory: float       # fraction of memory bandwidth reached on large transfers, 0 < x <= 1
    flops_half: float   # FLOPs at which half of `compute` is reached (>= 0)
    bytes_half: float   # bytes at which half of `memory` is reached (>= 0)

    def attainable_compute(self, peak: float, flops: float) -> float:
        """FLOP/s reached by a kernel of ``flops`` FLOPs on a chip of dense ``peak`` FLOP/s."""
        if flops <= 0:
            return self.compute * peak
        return self.compute * peak * flops / (flops + self.flops_half)

    def attainable_bandwidth(self, bandwidth: float, nbytes: float) -> float:
        """Bytes/s reached by a kernel moving ``nbytes`` on memory of ``bandwidth`` bytes/s."""
        if nbytes <= 0:
            return self.memory * bandwidth
        return self.memory * bandwidth * nbytes / (nbytes + self.bytes_half)


@dataclass(frozen=True)
class Efficiency:
    source: str                                  # "uncalibrated default" or the calibration run
    launch_overhead_s: float                     # per kernel launch, seconds
    classes: Mapping[str, ClassEfficiency]       # one entry per OP_CLASSES

    def __post_init__(self):
        object.__setattr__(self, "classes", _FrozenMap(self.classes))
        _check_efficiency(self)

    def for_class(self, op_class: str) -> ClassEfficiency:
        try:
            return self.classes[op_class]
        except KeyError:
            raise HardwareError(
                f"op class {op_class!r} is unknown; use one of {', '.join(OP_CLASSES)}.") from None


@dataclass(frozen=True)
class Calibration:
    """Provenance of a device's efficiency block (what a report says about its numbers)."""

    source: str                      # one of CALIBRATION_SOURCES
    from_devices: tuple[str, ...]    # devices whose measurements the numbers come from
    method: str                      # one sentence: how the numbers were obtained
    error_median: float              # typical |relative error| of a prediction (fraction)
    error_p90: float                 # 90th percentile |relative error| (fraction)
    error_basis: str                 # which experiment gave the band
    date: str = ""
    note: str = ""

    def __post_init__(self):
        object.__setattr__(self, "from_devices", tuple(self.from_devices))

    def summary(self) -> str:
        """One line for reports: ``transferred from h100_sxm+h200 (±6 % median, ±15 % p90)``."""
        frm = "+".join(self.from_devices) if self.from_devices else "none"
        word = {"calibrated": "calibrated on", "transferred": "transferred from",
                "literature": "literature values; roll-off and launch from"}[self.source]
        return (f"{word} {frm} (±{self.error_median:.0%} median, ±{self.error_p90:.0%} p90 error; "
                f"{self.error_basis})")


@dataclass(frozen=True)
class KernelFamilyEfficiency:
    """Measured efficiency of one quantized/sparse GEMM kernel family (same model as a class)."""

    kernel: str          # the kernel it was measured with, e.g. "aten._weight_int4pack_mm"
    peak_dtype: str      # the dtype whose peak the compute fraction refers to
    sparse: bool         # against the 2:4 sparse peak of peak_dtype
    compute: float
    memory: float
    flops_half: float
    bytes_half: float
    n: int = 0
    median_err: float = 0.0
    source: str = ""

    def params(self) -> ClassEfficiency:
        return ClassEfficiency(self.compute, self.memory, self.flops_half, self.bytes_half)


@dataclass(frozen=True)
class OnChip:
    l2_bytes: float            # last-level on-chip cache (L2; Infinity Cache on MI300X; L3 on CPU)
    smem_per_sm_bytes: float   # shared memory / LDS per SM or CU (CPU: private L2 per core)
    sm_count: int              # SMs (NVIDIA), CUs (AMD), cores (CPU), shader processors (SoC)


@dataclass(frozen=True)
class Interconnect:
    name: str                  # "NVLink 4", "PCIe 4.0 x16", "none (single device)"...
    bandwidth: float           # bytes/s per direction per device (0 only when 1 device per node)
    num_devices_per_node: int
    latency_s: float | None = None   # per-collective latency floor, seconds (None: by link family)


@dataclass(frozen=True)
class Hardware:
    name: str
    vendor: str
    kind: str                                    # "gpu" | "cpu" | "soc"
    peak_flops: Mapping[str, float]              # DENSE FLOP/s per dtype; absent = not native
    sparse_peak_flops: Mapping[str, float]       # 2:4-sparse FLOP/s per dtype; may be empty
    memory_bytes: float                          # device memory capacity, bytes
    memory_bandwidth: float                      # device memory bandwidth, bytes/s
    onchip: OnChip
    interconnect: Interconnect
    efficiency: Efficiency
    description: str = ""
    architecture: str = ""
    calibration: Calibration | None = None
    kernel_families: Mapping[str, KernelFamilyEfficiency] = field(default_factory=dict)
    collectives: Collectives | None = None   # measured NCCL fits (compiler.perf.collectives)
    price_usd_per_hour: float | None = None  # list price of one device (price.usd_per_gpu_hour)
    price_source: str = ""

    def __post_init__(self):
        object.__setattr__(self, "peak_flops", _FrozenMap(self.peak_flops))
        object.__setattr__(self, "sparse_peak_flops", _FrozenMap(self.sparse_peak_flops or {}))
        object.__setattr__(self, "kernel_families", _FrozenMap(self.kernel_families or {}))
        _check_hardware(self)

    def kernel_family(self, family: str) -> KernelFamilyEfficiency | None:
        """The measured efficiency of a quantized/sparse kernel family, or None if unmeasured."""
        return self.kernel_families.get(family)

    # -- queries -------------------------------------------------------------------------
    def compute_dtype(self, dtype: str) -> str:
        """The dtype whose math units run ``dtype`` on this chip (itself when native)."""
        d = normalize_dtype(dtype)
        for cand in (d,) + tuple(DTYPE_FALLBACK[d]):
            if cand in self.peak_flops:
                return cand
        # Unreachable for a validated Hardware (fp32 is required).
        raise HardwareError(f"hardware {self.name!r} has no peak for {d} nor any fallback.")

    def supports(self, dtype: str, sparse: bool = False) -> bool:
        """True when ``dtype`` has native math (and native 2:4 sparse math if ``sparse``)."""
        d = normalize_dtype(dtype)
        return d in (self.sparse_peak_flops if sparse else self.peak_flops)

    def peak(self, dtype: str, sparse: bool = False) -> float:
        """Peak FLOP/s (or OP/s) for ``dtype``, following the module's fallback rule."""
        c = self.compute_dtype(dtype)
        if sparse and c in self.sparse_peak_flops:
            return self.sparse_peak_flops[c]
        return self.peak_flops[c]

    def ridge_point(self, dtype: str = "fp16", sparse: bool = False) -> float:
        """Arithmetic intensity (FLOP/byte) where the roofline turns: peak / bandwidth."""
        return self.peak(dtype, sparse) / self.memory_bandwidth

    def attainable_flops(self, dtype: str, intensity: float, sparse: bool = False) -> float:
        """Plain roofline: min(peak, intensity x bandwidth), no efficiency applied."""
        return min(self.peak(dtype, sparse), intensity * self.memory_bandwidth)


# --------------------------------------------------------------------------- range checks

def _check_fraction(value: float, path: str) -> None:
    if not (0.0 < value <= 1.0):
        _fail(path, f"is {value!r}, but a fraction of peak must be in (0, 1]",
              "Write e.g. 0.8 for 80 % of peak (not 80, and not 0 or a negative number).")


def _check_efficiency(eff: Efficiency) -> None:
    if not isinstance(eff.source, str) or not eff.source.strip():
        _fail("efficiency.source", "is empty",
              'Write where the numbers come from, e.g. source: "uncalibrated default".')
    lo = eff.launch_overhead_s
    if not math.isfinite(lo) or lo < 0:
        _fail("efficiency.launch_overhead_us", f"is {lo / _US!r} us, but must be >= 0",
              "Write the per-kernel launch overhead in microseconds, e.g. 4.0 for a GPU.")
    if 0 < lo < 1e-9:
        _fail("efficiency.launch_overhead_us", f"is {lo / _US!r} us, which is below a nanosecond",
              "The key is in microseconds: write 4.0 for 4 us, not 4e-6 (that is seconds).")
    if lo > 1.0:
        _fail("efficiency.launch_overhead_us", f"is {lo / _US!r} us, which is over a second",
              "The key is in microseconds: write 4.0 for 4 us.")
    unknown = [k for k in eff.classes if k not in OP_CLASSES]
    if unknown:
        _fail(f"efficiency.classes.{unknown[0]}", "is not a known op class",
              f"Use only these op classes: {', '.join(OP_CLASSES)} (check the spelling).")
    missing = [k for k in OP_CLASSES if k not in eff.classes]
    if missing:
        _fail(f"efficiency.classes.{missing[0]}", "is missing",
              f"Give all op classes ({', '.join(OP_CLASSES)}), each with compute, memory, "
              "flops_half_gflop and bytes_half_mb.")
    for cls, ce in eff.classes.items():
        base = f"efficiency.classes.{cls}"
        if not isinstance(ce, ClassEfficiency):
            _fail(base, f"is a {type(ce).__name__}, not a ClassEfficiency",
                  "Build it with ClassEfficiency(compute=, memory=, flops_half=, bytes_half=).")
        _check_fraction(ce.compute, f"{base}.compute")
        _check_fraction(ce.memory, f"{base}.memory")
        if not math.isfinite(ce.flops_half) or ce.flops_half < 0:
            _fail(f"{base}.flops_half_gflop", f"is {ce.flops_half / _GFLOP!r}, but must be >= 0",
                  "Write the GFLOP at which half of the compute fraction is reached (0 = none).")
        if not math.isfinite(ce.bytes_half) or ce.bytes_half < 0:
            _fail(f"{base}.bytes_half_mb", f"is {ce.bytes_half / _MB!r}, but must be >= 0",
                  "Write the MB (1e6 bytes) at which half of the memory fraction is reached.")


def _check_positive(value: float, path: str, unit: str, example: str, upper: float,
                    factor: float) -> None:
    shown = value / factor
    if not math.isfinite(value) or value <= 0:
        _fail(path, f"is {shown!r}, but must be a positive number of {unit}",
              f"Write the datasheet value in {unit}, e.g. {example}.")
    if shown > upper:
        _fail(path, f"is {shown!r} {unit}, which is implausibly large",
              f"The key is in {unit} (the unit is converted for you): write e.g. {example}, "
              "not the value in base units.")


def _check_hardware(hw: Hardware) -> None:
    if not isinstance(hw.name, str) or not re.fullmatch(r"[A-Za-z0-9_\-]+", hw.name or ""):
        _fail("name", f"is {hw.name!r}",
              "Use the file stem of conf/hardware/<name>.yaml: letters, digits, '_' or '-'.")
    if not isinstance(hw.vendor, str) or not hw.vendor.strip():
        _fail("vendor", "is empty", "Write the vendor, e.g. vendor: NVIDIA.")
    if hw.kind not in KINDS:
        _fail("kind", f"is {hw.kind!r}", f"Use one of {', '.join(KINDS)}.")
    if not isinstance(hw.description, str):
        _fail("description", "is not a string", "Write free text or leave the key out.")
    for key, table in (("peak_tflops", hw.peak_flops), ("sparse_peak_tflops", hw.sparse_peak_flops)):
        for d, v in table.items():
            if d not in DTYPES:
                _fail(f"{key}.{d}", "is not a known dtype",
                      f"Use only {', '.join(DTYPES)} (dtype classes, e.g. fp8 for E4M3/E5M2); "
                      "leave a dtype out if the chip has no native math for it.")
            _check_positive(v, f"{key}.{d}", "TFLOP/s", "989.4 for 989.4 TFLOP/s", 1e5, _TFLOPS)
    if "fp32" not in hw.peak_flops:
        _fail("peak_tflops.fp32", "is missing",
              "Every device needs its dense fp32 (vector FMA) peak: other dtypes fall back to it.")
    for d, sp in hw.sparse_peak_flops.items():
        dense = hw.peak_flops.get(d)
        if dense is None:
            _fail(f"sparse_peak_tflops.{d}", "has no dense counterpart in peak_tflops",
                  f"Add peak_tflops.{d} (the dense number) or drop the sparse entry.")
        if sp < dense:
            _fail(f"sparse_peak_tflops.{d}",
                  f"is {sp / _TFLOPS!r} TFLOP/s, below the dense peak {dense / _TFLOPS!r}",
                  "2:4 sparse peaks are >= dense (datasheets mark them with '*'); the values "
                  "look swapped between peak_tflops and sparse_peak_tflops.")
        if sp > 2.02 * dense:  # 1 % slack for vendor rounding (1979 vs 2 x 989.4)
            _fail(f"sparse_peak_tflops.{d}",
                  f"is {sp / _TFLOPS!r} TFLOP/s, over 2x the dense peak {dense / _TFLOPS!r}",
                  "2:4 sparsity gives at most 2x; peak_tflops must hold the DENSE number "
                  "(half the starred datasheet figure).")
    for wide, narrow in _PEAK_ORDER:
        if wide in hw.peak_flops and narrow in hw.peak_flops:
            if hw.peak_flops[narrow] < hw.peak_flops[wide] * (1 - 1e-9):
                _fail(f"peak_tflops.{narrow}",
                      f"is {hw.peak_flops[narrow] / _TFLOPS!r} TFLOP/s, below "
                      f"peak_tflops.{wide} = {hw.peak_flops[wide] / _TFLOPS!r}",
                      f"A native {narrow} path is never slower than {wide}: check for a "
                      f"sparse/dense mixup, or leave {narrow} out so it falls back to {wide}.")
    _check_positive(hw.memory_bytes, "memory_gib", "GiB", "80 for an 80GB H100", 1e5, _GIB)
    _check_positive(hw.memory_bandwidth, "memory_bandwidth_gbs", "GB/s",
                    "3352 for 3.35 TB/s", 1e6, _GBS)
    oc = hw.onchip
    if not isinstance(oc, OnChip):
        _fail("onchip", "is not an OnChip", "Give l2_mib, smem_per_sm_kib and sm_count.")
    _check_positive(oc.l2_bytes, "onchip.l2_mib", "MiB", "50 for a 50 MB L2", 1e5, _MIB)
    if not math.isfinite(oc.smem_per_sm_bytes) or oc.smem_per_sm_bytes < 0:
        _fail("onchip.smem_per_sm_kib", f"is {oc.smem_per_sm_bytes / _KIB!r}, must be >= 0",
              "Write the shared memory per SM in KiB, e.g. 228 for H100.")
    if oc.smem_per_sm_bytes / _KIB > 1e5:
        _fail("onchip.smem_per_sm_kib", f"is {oc.smem_per_sm_bytes / _KIB!r} KiB, implausibly large",
              "The key is in KiB: write 228 for 228 KB, not bytes.")
    if isinstance(oc.sm_count, bool) or not isinstance(oc.sm_count, int) or oc.sm_count < 1:
        _fail("onchip.sm_count", f"is {oc.sm_count!r}", "Write a positive integer, e.g. 132.")
    ic = hw.interconnect
    if not isinstance(ic, Interconnect):
        _fail("interconnect", "is not an Interconnect",
              "Give name, bandwidth_gbs and num_devices_per_node.")
    if not isinstance(ic.name, str) or not ic.name.strip():
        _fail("interconnect.name", "is empty", 'Name the link, e.g. "NVLink 4".')
    n = ic.num_devices_per_node
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        _fail("interconnect.num_devices_per_node", f"is {n!r}",
              "Write a positive integer (1 for a device without peers).")
    if n == 1 and ic.bandwidth == 0:
        pass  # a lone device may have no peer link at all
    else:
        _check_positive(ic.bandwidth, "interconnect.bandwidth_gbs", "GB/s",
                        "450 for NVLink 4 (900 GB/s total = 450 per direction)", 1e5, _GBS)
    if not isinstance(hw.efficiency, Efficiency):
        _fail("efficiency", "is not an Efficiency", "Give source, launch_overhead_us, classes.")
    if not isinstance(hw.architecture, str):
        _fail("architecture", "is not a string", "Write the chip family, e.g. hopper.")
    cal = hw.calibration
    if cal is not None:
        if cal.source not in CALIBRATION_SOURCES:
            _fail("calibration.source", f"is {cal.source!r}", f"Use one of {', '.join(CALIBRATION_SOURCES)}.")
        for k, v in (("median", cal.error_median), ("p90", cal.error_p90)):
            if not math.isfinite(v) or v < 0 or v > 10:
                _fail(f"calibration.error_band.{k}", f"is {v!r}",
                      "Write the error as a fraction (0.06 for 6 %), between 0 and 10.")
        if cal.error_p90 < cal.error_median:
            _fail("calibration.error_band.p90", f"is {cal.error_p90!r}, below the median {cal.error_median!r}",
                  "The 90th percentile error is never below the median error.")
        if cal.source != "literature" and not cal.from_devices:
            _fail("calibration.from", "is empty", "Name the device(s) whose measurements were used.")
    for fam, ke in hw.kernel_families.items():
        base = f"kernel_families.{fam}"
        _check_fraction(ke.compute, f"{base}.compute")
        _check_fraction(ke.memory, f"{base}.memory")
        if ke.flops_half < 0 or ke.bytes_half < 0:
            _fail(f"{base}", "has a negative roll-off size", "flops_half_gflop and bytes_half_mb are >= 0.")
        if ke.peak_dtype not in DTYPES:
            _fail(f"{base}.peak_dtype", f"is {ke.peak_dtype!r}", f"Use one of {', '.join(DTYPES)}.")


# --------------------------------------------------------------------------- the YAML schema
# Structured configs (OmegaConf): types, unknown keys and required keys of a hardware YAML are
# checked by OmegaConf against these dataclasses — by Hydra when ``hardware=<name>`` is composed
# (``compiler.driver.config.RooftopConfig.hardware``), and by :func:`load_hardware` for any other
# mapping. The values stay in the YAML units; :func:`load_hardware` converts to SI and runs the
# range checks above.


@dataclass
class ClassEfficiencyYaml:
    compute: float = MISSING
    memory: float = MISSING
    flops_half_gflop: float = MISSING
    bytes_half_mb: float = MISSING


@dataclass
class EfficiencyYaml:
    source: str = MISSING
    launch_overhead_us: float = MISSING
    classes: Dict[str, ClassEfficiencyYaml] = MISSING


@dataclass
class OnChipYaml:
    l2_mib: float = MISSING
    smem_per_sm_kib: float = MISSING
    sm_count: int = MISSING


@dataclass
class InterconnectYaml:
    name: str = MISSING
    bandwidth_gbs: float = MISSING
    num_devices_per_node: int = MISSING
    latency_us: Optional[float] = None   # per-collective latency floor (compiler.perf.collectives)


@dataclass
class ErrorBandYaml:
    median: float = MISSING
    p90: float = MISSING
    basis: str = MISSING


@dataclass
class CalibrationYaml:
    """``calibration:`` (the YAML key ``from`` is ``from_devices`` here: ``from`` is a Python keyword)."""
    source: str = MISSING
    from_devices: Any = MISSING          # a device name or a list of them
    method: str = MISSING
    error_band: ErrorBandYaml = MISSING
    date: Optional[str] = None
    note: Optional[str] = None


@dataclass
class KernelFamilyYaml:
    kernel: str = MISSING
    peak_dtype: str = MISSING
    compute: float = MISSING
    memory: float = MISSING
    flops_half_gflop: float = MISSING
    bytes_half_mb: float = MISSING
    sparse: bool = False
    n: int = 0
    median_err: float = 0.0
    source: Optional[str] = None


@dataclass
class CollectiveFitYaml:
    latency_us: float = MISSING
    bus_bandwidth_gbs: float = MISSING
    median_error: Optional[float] = None
    points: int = 0


@dataclass
class CollectivesYaml:
    source: str = MISSING
    device: str = MISSING
    date: str = MISSING
    mode: str = MISSING
    fits: Dict[str, Any] = MISSING     # collective -> {device count: CollectiveFitYaml}
    note: Optional[str] = None


@dataclass
class PriceYaml:
    """``price:`` a sourced list price of one device (search=sizing's cost axis)."""
    usd_per_gpu_hour: float = MISSING
    source: Optional[str] = None        # where the price was read (required in conf/hardware files; a test checks)


@dataclass
class HardwareYaml:
    """A ``conf/hardware/<name>.yaml`` (see the module doc for units and meaning)."""
    name: str = MISSING
    vendor: str = MISSING
    kind: str = MISSING
    peak_tflops: Dict[str, float] = MISSING
    memory_gib: float = MISSING
    memory_bandwidth_gbs: float = MISSING
    onchip: OnChipYaml = MISSING
    interconnect: InterconnectYaml = MISSING
    efficiency: EfficiencyYaml = MISSING
    description: Optional[str] = None
    sparse_peak_tflops: Optional[Dict[str, float]] = None
    architecture: Optional[str] = None
    calibration: Optional[Dict[str, Any]] = None      # CalibrationYaml (checked by load_hardware)
    kernel_families: Optional[Dict[str, KernelFamilyYaml]] = None
    collectives: Optional[CollectivesYaml] = None
    price: Optional[PriceYaml] = None


def _checked(schema, data: Any, prefix: str = ""):
    """``data`` validated against ``schema`` by OmegaConf, as a plain dict; a problem becomes a
    :class:`HardwareError` naming the field and the fix."""
    try:
        return OmegaConf.to_container(structured.check(schema, data), resolve=True)
    except structured.ProblemError as e:
        p = e.problem
        path = prefix + p.path.replace("from_devices", "from")
        if p.kind == "unknown":
            valid = tuple(k.replace("from_devices", "from") for k in p.valid)
            near = structured.nearest(p.key, valid)
            _fail(path, "is not a known field",
                  f"Allowed keys here: {', '.join(valid)}." + (f" Did you mean '{near[0]}'?" if near else ""))
        if p.kind == "missing":
            _fail(path, "is missing", f"Add it (keys here: {', '.join(structured.fields_of(schema))}).")
        if p.kind == "type":
            _fail(path, f"is {p.value!r}, which is not {p.expected or 'of the right type'}",
                  "Write a plain number in the unit of the key's suffix, e.g. 989.4 or \"1.5e3\"."
                  if "number" in p.expected else f"Write {p.expected}.")
        _fail(path, f"is invalid ({p.raw})", "Fix the value.")


def _mapping_of(cfg: Any) -> Any:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def _dtype_peaks(table: Mapping | None) -> dict[str, float]:
    return {str(k): float(v) * _TFLOPS for k, v in (table or {}).items()}


def _calibration(value: Mapping | None) -> Calibration | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        _fail("calibration", f"is a {type(value).__name__}, not a mapping",
              "Write source, from, method, error_band (and optionally date, note).")
    data = {("from_devices" if k == "from" else k): v for k, v in value.items()}
    if "from_devices" in value:
        _fail("calibration.from_devices", "is not a known field", "Write the key as 'from'.")
    c = _checked(CalibrationYaml, data, "calibration.")
    frm = c["from_devices"]
    if isinstance(frm, str):
        frm = [frm]
    if not isinstance(frm, (list, tuple)) or not all(isinstance(x, str) for x in frm):
        _fail("calibration.from", f"is {frm!r}", "Write a device name or a list of them, e.g. [h100_sxm, h200].")
    band = c["error_band"]
    return Calibration(source=c["source"], from_devices=tuple(frm), method=c["method"],
                       error_median=band["median"], error_p90=band["p90"], error_basis=band["basis"],
                       date=str(c.get("date") or ""), note=str(c.get("note") or ""))


def _collectives(c: Mapping | None) -> Collectives | None:
    if c is None:
        return None
    if c["source"] != "measured":
        _fail("collectives.source", f"is {c['source']!r}",
              "The collectives block holds measurements only: write source: measured (literature "
              "figures go to interconnect.latency_us and interconnect.bandwidth_gbs).")
    if c["mode"] not in ("graph", "eager"):
        _fail("collectives.mode", f"is {c['mode']!r}", "Write graph or eager.")
    if not c["fits"]:
        _fail("collectives.fits", "is empty",
              f"Write one entry per collective ({', '.join(COLLECTIVES)}) mapping device counts "
              "to {latency_us, bus_bandwidth_gbs}.")
    fits = {}
    for kind, per_n in c["fits"].items():
        if kind not in COLLECTIVES:
            _fail(f"collectives.fits.{kind}", "is not a known collective", f"Use {', '.join(COLLECTIVES)}.")
        if not isinstance(per_n, Mapping):
            _fail(f"collectives.fits.{kind}", "is not a mapping",
                  "Map device counts (2, 4, 8) to {latency_us, bus_bandwidth_gbs}.")
        for n, fv in per_n.items():
            base = f"collectives.fits.{kind}.{n}"
            if isinstance(n, bool) or not str(n).strip().isdigit() or int(n) < 2:
                _fail(base, "is not a device count >= 2", "Key each fit by its device count.")
            f = _checked(CollectiveFitYaml, fv, f"{base}.")
            if not (0 < f["latency_us"] < 1e5):
                _fail(f"{base}.latency_us", f"is {f['latency_us']!r}", "Write microseconds, e.g. 8.5.")
            if not (0 < f["bus_bandwidth_gbs"] < 1e5):
                _fail(f"{base}.bus_bandwidth_gbs", f"is {f['bus_bandwidth_gbs']!r}", "Write GB/s, e.g. 360.")
            fits[(kind, int(n))] = CollectiveFit(latency_s=f["latency_us"] * _US, bus_bandwidth=f["bus_bandwidth_gbs"] * _GBS,
                                                 median_error=f["median_error"], points=int(f["points"] or 0))
    return Collectives(source="measured", device=c["device"], date=str(c["date"]), mode=c["mode"], fits=fits,
                       note=str(c.get("note") or ""))


def load_hardware(cfg: Mapping | Any, source: str | os.PathLike | None = None) -> Hardware:
    """Validate a hardware mapping (a dict, or Hydra's ``cfg.hardware`` DictConfig) written in
    the YAML convention of this module and return a :class:`Hardware` in SI units.

    ``source`` (a file path or label) prefixes error messages; by default the mapping's ``name``.
    Raises :class:`HardwareError` with a one-paragraph message naming the field and the fix.
    """
    data = _mapping_of(cfg)
    label = str(source) if source is not None else None
    if label is None and isinstance(data, Mapping) and isinstance(data.get("name"), str):
        label = f"hardware '{data['name']}'"
    token = _WHERE.set(label or "hardware config")
    try:
        if not isinstance(data, Mapping):
            _fail("", f"is a {type(data).__name__}, not a mapping", "Write the hardware description as a YAML mapping.")
        top = _checked(HardwareYaml, data)
        oc, ic, eff = top["onchip"], top["interconnect"], top["efficiency"]
        for k in ("name", "vendor"):
            if not str(top[k]).strip():
                _fail(k, f"is {top[k]!r}, not a non-empty string", "Write text (quote it if needed).")
        lat = ic.get("latency_us")
        if lat is not None and not (0 < lat < 1e5):
            _fail("interconnect.latency_us", f"is {lat!r}",
                  "Write the per-collective latency floor in microseconds, e.g. 10 for NVLink.")
        price = top.get("price") or {}
        if price and not (0 < price["usd_per_gpu_hour"] < 1e4):
            _fail("price.usd_per_gpu_hour", f"is {price['usd_per_gpu_hour']!r}",
                  "Write the list price of one device in US dollars per hour, e.g. 2.99.")
        families = {}
        for fam, f in (top.get("kernel_families") or {}).items():
            families[str(fam)] = KernelFamilyEfficiency(
                kernel=f["kernel"], peak_dtype=normalize_dtype(f["peak_dtype"]), sparse=f["sparse"],
                compute=f["compute"], memory=f["memory"], flops_half=f["flops_half_gflop"] * _GFLOP,
                bytes_half=f["bytes_half_mb"] * _MB, n=int(f["n"]), median_err=f["median_err"],
                source=str(f.get("source") or ""))
        return Hardware(
            name=top["name"], vendor=top["vendor"], kind=top["kind"],
            peak_flops=_dtype_peaks(top["peak_tflops"]),
            sparse_peak_flops=_dtype_peaks(top.get("sparse_peak_tflops")),
            memory_bytes=top["memory_gib"] * _GIB,
            memory_bandwidth=top["memory_bandwidth_gbs"] * _GBS,
            onchip=OnChip(l2_bytes=oc["l2_mib"] * _MIB, smem_per_sm_bytes=oc["smem_per_sm_kib"] * _KIB,
                          sm_count=oc["sm_count"]),
            interconnect=Interconnect(name=ic["name"], bandwidth=ic["bandwidth_gbs"] * _GBS,
                                      num_devices_per_node=ic["num_devices_per_node"],
                                      latency_s=None if lat is None else lat * _US),
            efficiency=Efficiency(
                source=eff["source"], launch_overhead_s=eff["launch_overhead_us"] * _US,
                classes={cls: ClassEfficiency(compute=c["compute"], memory=c["memory"],
                                              flops_half=c["flops_half_gflop"] * _GFLOP,
                                              bytes_half=c["bytes_half_mb"] * _MB)
                         for cls, c in eff["classes"].items()}),
            description=str(top.get("description") or ""),
            architecture=str(top.get("architecture") or ""),
            calibration=_calibration(top.get("calibration")),
            kernel_families=families,
            collectives=_collectives(top.get("collectives")),
            price_usd_per_hour=float(price["usd_per_gpu_hour"]) if price else None,
            price_source=str(price.get("source") or "given without a source (hardware.price.source)") if price else "",
        )
    finally:
        _WHERE.reset(token)


def _parse_yaml_text(text: str) -> Any:
    """Parse YAML as Hydra would (OmegaConf's YAML dialect, interpolations resolved); files
    without ``${`` skip building a DictConfig, which is ~10x slower."""
    from omegaconf import OmegaConf
    if "${" not in text:
        try:
            from omegaconf._utils import get_yaml_loader  # the loader OmegaConf.load uses
        except ImportError:  # pragma: no cover - private helper moved
            get_yaml_loader = None
        if get_yaml_loader is not None:
            return yaml.load(text, Loader=get_yaml_loader())
    return OmegaConf.to_container(OmegaConf.create(text), resolve=True)


def _read_yaml(path: Path) -> Any:
    try:
        return _parse_yaml_text(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HardwareError(f"{path}: file not found. Check the path, or pick one of: "
                            f"{', '.join(available_hardware()) or '(none found)'}.") from None
    except Exception as exc:  # yaml syntax errors, interpolation errors
        msg = " ".join(str(exc).split())
        raise HardwareError(f"{path}: cannot be read as YAML ({msg}). Fix the syntax at the "
                            "position given (indentation, a missing ':' or quote).") from None


def load_hardware_file(path: str | os.PathLike) -> Hardware:
    """Load and validate one YAML file; its ``name`` must equal the file stem."""
    path = Path(path)
    hw = load_hardware(_read_yaml(path), source=path)
    if hw.name != path.stem:
        _fail("name", f"is {hw.name!r} but the file is {path.name}",
              f"Set name: {path.stem} (Hydra selects the file by its stem, reports print name).",
              where=str(path))
    return hw


# --------------------------------------------------------------------------- library lookup

def hardware_dir() -> Path:
    """The conf/hardware directory: ``<compiler>/conf/hardware`` (installed wheel) if it exists,
    else ``<compiler>/../conf/hardware`` (source checkout)."""
    for cand in (resources.PACKAGE_DIR / "conf" / "hardware", resources.REPO_ROOT / "conf" / "hardware"):
        if cand.is_dir():
            return cand
    return resources.REPO_ROOT / "conf" / "hardware"


def available_hardware() -> list[str]:
    """Names (file stems) of the hardware YAML files, sorted."""
    d = hardware_dir()
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.glob("*.yaml") if p.is_file())


def hardware_by_name(name: str) -> Hardware:
    """Load ``conf/hardware/<name>.yaml``; an unknown name lists the valid ones."""
    names = available_hardware()
    if not isinstance(name, str) or name not in names:
        raise HardwareError(
            f"hardware {name!r} is not in the hardware library ({hardware_dir()}). Valid names: "
            f"{', '.join(names) or '(none found)'}. Pick one (e.g. hardware=h100_sxm) or add "
            f"conf/hardware/{name}.yaml.")
    return load_hardware_file(hardware_dir() / f"{name}.yaml")
