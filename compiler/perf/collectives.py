"""Collective-communication cost: the model and its literature defaults (the fit of measurements
and the YAML writer are :mod:`compiler.perf.calibration.collectives`).

Model (one collective of kind ``k`` over ``n`` devices, message of ``S`` bytes)::

    time = latency + bus_factor(k, n) * S / bus_bandwidth

with the bus factors of a ring (NCCL-tests' "bus bandwidth" convention, NVIDIA/nccl-tests
``doc/PERFORMANCE.md``)::

    all_reduce                      2 (n - 1) / n
    all_gather, reduce_scatter      (n - 1) / n
    all_to_all                      (n - 1) / n

``S`` is the size nccl-tests calls ``size``: the buffer of an all-reduce, the *whole* gathered output
of an all-gather (n x the per-rank input), the *whole* input of a reduce-scatter, the per-rank send
buffer of an all-to-all. Algorithm bandwidth is ``S / time``; bus bandwidth is ``bus_factor x S /
time`` and is what a link sustains independently of ``n`` (a ring all-reduce moves 2(n-1)/n x S
over each device's link), so one number per link describes every ``n`` to first order.

Where the numbers come from
---------------------------
* ``source: measured`` — the optional ``collectives:`` block of a hardware YAML, written by
  :func:`update_collectives_yaml` from ``tools/measure_collectives.py`` output: latency and bus
  bandwidth fitted per collective and device count (see :func:`fit_collectives`).
* otherwise ``literature`` — ``interconnect.latency_us`` (a per-collective latency floor) and
  ``interconnect.bandwidth_gbs`` (per direction, used as the bus bandwidth) of the hardware YAML.
  A YAML without ``interconnect.latency_us`` gets :func:`default_latency_s` by link family.

The YAML block (units in the key names, as everywhere in ``conf/hardware``)::

    collectives:
      source: measured
      device: NVIDIA H200
      date: "2026-12-02"
      mode: graph                 # CUDA-graph captured (the serving path); or eager
      note: tools/measure_collectives.py, NCCL 2.21.5, NCCL_NVLS_ENABLE=0
      fits:
        all_reduce:
          2: {latency_us: 7.9, bus_bandwidth_gbs: 362.4, median_error: 0.031, points: 19}
          8: {...}

Fit: per (collective, n), ``least_squares`` with a soft-L1 (robust) loss on the log of
predicted / measured time, parameters in log space (both stay positive). A log residual weighs
a 4 KiB message (latency-bound) and a 1 GiB one (bandwidth-bound) alike.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from compiler.errors import InputValueError

__all__ = ["COLLECTIVES", "bus_factor", "CollectiveFit", "Collectives", "default_latency_s",
           "collective_time", "collective_source", "literature", "collectives_to_yaml_dict"]

COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")
_US = 1e-6
_GBS = 1e9


def bus_factor(kind: str, n: int) -> float:
    """Bytes each device's link carries per byte of message (ring algorithms, nccl-tests)."""
    if kind not in COLLECTIVES:
        raise InputValueError(f"collective {kind!r} is unknown; use one of {', '.join(COLLECTIVES)}")
    n = int(n)
    if n < 1:
        raise InputValueError(f"device count must be >= 1, got {n}")
    if kind == "all_reduce":
        return 2.0 * (n - 1) / n
    return (n - 1) / n


@dataclass(frozen=True)
class CollectiveFit:
    """latency (s) + bus_factor x bytes / bus_bandwidth (bytes/s) for one (collective, n)."""

    latency_s: float
    bus_bandwidth: float
    median_error: float | None = None    # median |pred/meas - 1| over the fitted points
    points: int = 0

    def time(self, kind: str, n: int, nbytes):
        nbytes = np.asarray(nbytes, dtype=float)
        return self.latency_s + bus_factor(kind, n) * nbytes / self.bus_bandwidth


@dataclass(frozen=True)
class Collectives:
    """The ``collectives:`` block of a hardware YAML."""

    source: str                                    # "measured"
    device: str
    date: str
    mode: str                                      # graph | eager
    fits: Mapping[tuple[str, int], CollectiveFit]
    note: str = ""

    def __hash__(self) -> int:  # Hardware is hashed; fits is a dict
        return hash((self.source, self.device, self.date, self.mode, tuple(sorted(self.fits))))

    def lookup(self, kind: str, n: int) -> tuple[CollectiveFit, int] | None:
        """The fit for ``kind`` at ``n`` devices, else at the nearest measured count (bus
        bandwidth is nearly independent of n for ring algorithms); None if ``kind`` is absent."""
        ns = sorted(m for (k, m) in self.fits if k == kind)
        if not ns:
            return None
        best = min(ns, key=lambda m: (abs(math.log(m) - math.log(n)), -m))
        return self.fits[(kind, best)], best


# --------------------------------------------------------------------------- literature defaults

#: Per-collective latency floors by link family, used when the hardware YAML gives no
#: ``interconnect.latency_us``. Sources: NVIDIA/nccl issue #1259 (all_reduce_perf on HGX 8x H100,
#: NVLink SHARP, CUDA graphs: ~6 us at 2 GPUs, rising with n); NVIDIA/nccl issue #1453 (NCCL's own
#: tuner estimate for a 128-byte all-reduce on H100 nodes: 25 us); eager launches from PyTorch add
#: a few us of host overhead, hence ~10 us on NVLink; PCIe P2P rings are ~2x slower to start.
_DEFAULT_LATENCY_US = (("nvlink", 10.0), ("infinity fabric", 10.0), ("pcie", 20.0))


def default_latency_s(interconnect_name: str) -> float:
    name = (interconnect_name or "").lower()
    for key, us in _DEFAULT_LATENCY_US:
        if key in name:
            return us * _US
    return 25.0 * _US


def literature(hw) -> tuple[float, float]:
    ic = hw.interconnect
    lat = getattr(ic, "latency_s", None)
    return (lat if lat is not None else default_latency_s(ic.name)), ic.bandwidth


def collective_source(hw, kind: str = "all_reduce", n: int = 2) -> str:
    """Where :func:`collective_time` takes its numbers from for this hardware."""
    coll = getattr(hw, "collectives", None)
    if coll is not None and coll.lookup(kind, n) is not None:
        hit = coll.lookup(kind, n)
        where = "" if hit[1] == n else f" (fit at n={hit[1]})"
        return f"measured {coll.date} on {coll.device}, {coll.mode}{where}"
    ic = hw.interconnect
    lat_given = getattr(ic, "latency_s", None) is not None
    return (f"literature: {ic.name} bus bandwidth {ic.bandwidth / _GBS:g} GB/s, latency "
            f"{literature(hw)[0] / _US:g} us" + ("" if lat_given else " (default by link family)"))


def collective_time(hw, kind: str, n: int, nbytes):
    """Seconds for one collective of ``nbytes`` (nccl-tests size convention) over ``n`` devices
    of ``hw``; 0 for n == 1. Vectorized over ``nbytes``."""
    nbytes = np.asarray(nbytes, dtype=float)
    if int(n) <= 1:
        return np.zeros_like(nbytes)
    coll = getattr(hw, "collectives", None)
    hit = coll.lookup(kind, n) if coll is not None else None
    if hit is not None:
        return hit[0].time(kind, n, nbytes)
    lat, bw = literature(hw)
    if bw <= 0:
        raise InputValueError(f"hardware {hw.name!r} has no peer interconnect (bandwidth 0); it cannot "
                         f"run a {kind} over {n} devices")
    return lat + bus_factor(kind, n) * nbytes / bw


# --------------------------------------------------------------------------- YAML form

def _r(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def collectives_to_yaml_dict(coll: Collectives) -> dict:
    fits: dict[str, dict[int, dict]] = {}
    for (kind, n), f in sorted(coll.fits.items(), key=lambda kv: (COLLECTIVES.index(kv[0][0]), kv[0][1])):
        entry = {"latency_us": _r(f.latency_s / _US), "bus_bandwidth_gbs": _r(f.bus_bandwidth / _GBS)}
        if f.median_error is not None:
            entry["median_error"] = _r(f.median_error, 3)
        if f.points:
            entry["points"] = int(f.points)
        fits.setdefault(kind, {})[int(n)] = entry
    out = {"source": coll.source, "device": coll.device, "date": coll.date, "mode": coll.mode}
    if coll.note:
        out["note"] = coll.note
    out["fits"] = fits
    return out
