"""Collective-communication cost: the model, its literature defaults, and the fit of measurements.

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

import argparse
import json
import math
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "COLLECTIVES", "bus_factor", "CollectiveFit", "Collectives", "default_latency_s",
    "collective_time", "collective_source", "fit_one", "fit_collectives", "parse_collectives",
    "collectives_to_yaml_dict", "update_collectives_yaml", "load_measurements",
]

COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")
_US = 1e-6
_GBS = 1e9


def bus_factor(kind: str, n: int) -> float:
    """Bytes each device's link carries per byte of message (ring algorithms, nccl-tests)."""
    if kind not in COLLECTIVES:
        raise ValueError(f"collective {kind!r} is unknown; use one of {', '.join(COLLECTIVES)}")
    n = int(n)
    if n < 1:
        raise ValueError(f"device count must be >= 1, got {n}")
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


def _literature(hw) -> tuple[float, float]:
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
            f"{_literature(hw)[0] / _US:g} us" + ("" if lat_given else " (default by link family)"))


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
    lat, bw = _literature(hw)
    if bw <= 0:
        raise ValueError(f"hardware {hw.name!r} has no peer interconnect (bandwidth 0); it cannot "
                         f"run a {kind} over {n} devices")
    return lat + bus_factor(kind, n) * nbytes / bw


# --------------------------------------------------------------------------- fitting

def fit_one(kind: str, n: int, nbytes, times) -> CollectiveFit:
    """Robust fit of latency + bus_factor x bytes / bus_bandwidth to measured (bytes, seconds)."""
    from scipy.optimize import least_squares
    s = np.asarray(nbytes, dtype=float)
    t = np.asarray(times, dtype=float)
    ok = np.isfinite(s) & np.isfinite(t) & (s > 0) & (t > 0)
    s, t = s[ok], t[ok]
    if len(s) < 2:
        raise ValueError(f"{kind} n={n}: need at least 2 positive measurements, got {len(s)}")
    f = bus_factor(kind, n)
    lat0 = float(t.min())
    bw0 = float(np.max(f * s / t))

    def resid(u):
        lat, bw = np.exp(u)
        return np.log((lat + f * s / bw) / t)

    res = least_squares(resid, x0=np.log([lat0 * 0.8, bw0]), loss="soft_l1", f_scale=0.05,
                        x_scale="jac", max_nfev=2000)
    lat, bw = (float(v) for v in np.exp(res.x))
    pred = lat + f * s / bw
    return CollectiveFit(latency_s=lat, bus_bandwidth=bw,
                         median_error=float(np.median(np.abs(pred / t - 1.0))), points=int(len(s)))


def load_measurements(path_or_data) -> dict:
    """A ``tools/measure_collectives.py`` JSON (path or parsed dict), checked for shape."""
    if isinstance(path_or_data, Mapping):
        data = dict(path_or_data)
        where = "collectives measurements"
    else:
        where = str(path_or_data)
        try:
            data = json.loads(Path(path_or_data).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"{where}: file not found; run tools/measure_collectives.py first "
                             "(see its docstring for the command)") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not JSON ({e}); pass the file written by "
                             "tools/measure_collectives.py") from None
    rows = data.get("collectives")
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{where}: no 'collectives' list of measurements; pass the file written "
                         "by tools/measure_collectives.py")
    for i, r in enumerate(rows):
        for k in ("op", "world_size", "mode", "bytes", "time_s"):
            if k not in r:
                raise ValueError(f"{where}: collectives[{i}] lacks {k!r}")
        if r["op"] not in COLLECTIVES:
            raise ValueError(f"{where}: collectives[{i}].op {r['op']!r} is not one of "
                             f"{', '.join(COLLECTIVES)}")
    return data


def fit_collectives(data, mode: str = "graph", min_bytes: float = 0.0) -> Collectives:
    """Fit every (collective, n) present in a measurement file for ``mode`` (graph | eager)."""
    data = load_measurements(data)
    rows = [r for r in data["collectives"] if r["mode"] == mode and float(r["bytes"]) >= min_bytes]
    if not rows:
        modes = sorted({r["mode"] for r in data["collectives"]})
        raise ValueError(f"no measurements in mode {mode!r}; the file has {', '.join(modes)}")
    groups: dict[tuple[str, int], list] = {}
    for r in rows:
        groups.setdefault((r["op"], int(r["world_size"])), []).append(r)
    fits = {}
    for (kind, n), rs in sorted(groups.items()):
        fits[(kind, n)] = fit_one(kind, n, [r["bytes"] for r in rs], [r["time_s"] for r in rs])
    meta = data.get("meta", {})
    note = "tools/measure_collectives.py"
    for key in ("backend", "nccl_version", "torch_version"):
        if meta.get(key):
            note += f", {key} {meta[key]}"
    env = meta.get("env") or {}
    if env:
        note += ", " + ", ".join(f"{k}={v}" for k, v in sorted(env.items()))
    return Collectives(source="measured", device=str(meta.get("device", "unknown device")),
                       date=str(meta.get("date", "unknown date")), mode=mode, fits=fits,
                       note=note)


# --------------------------------------------------------------------------- YAML block

def _fail(field_path: str, problem: str, fix: str):
    from compiler.perf.hardware import _fail as hw_fail
    hw_fail(field_path, problem, fix)


def parse_collectives(value: Any) -> Collectives | None:
    """Validate the ``collectives:`` block of a hardware YAML (called by the hardware loader)."""
    if value is None:
        return None
    from compiler.perf.hardware import _mapping, _num, _str
    c = _mapping(value, "collectives", ("source", "device", "date", "mode", "fits"), ("note",))
    if c["source"] != "measured":
        _fail("collectives.source", f"is {c['source']!r}",
              "The collectives block holds measurements only: write source: measured (literature "
              "figures go to interconnect.latency_us and interconnect.bandwidth_gbs).")
    if c["mode"] not in ("graph", "eager"):
        _fail("collectives.mode", f"is {c['mode']!r}", "Write graph or eager.")
    fits_raw = c["fits"]
    if not isinstance(fits_raw, Mapping) or not fits_raw:
        _fail("collectives.fits", "is empty or not a mapping",
              f"Write one entry per collective ({', '.join(COLLECTIVES)}) mapping device counts "
              "to {latency_us, bus_bandwidth_gbs}.")
    fits = {}
    for kind, per_n in fits_raw.items():
        if kind not in COLLECTIVES:
            _fail(f"collectives.fits.{kind}", "is not a known collective",
                  f"Use {', '.join(COLLECTIVES)}.")
        if not isinstance(per_n, Mapping):
            _fail(f"collectives.fits.{kind}", "is not a mapping",
                  "Map device counts (2, 4, 8) to {latency_us, bus_bandwidth_gbs}.")
        for n, fv in per_n.items():
            base = f"collectives.fits.{kind}.{n}"
            try:
                ni = int(n)
            except (TypeError, ValueError):
                ni = 0
            if ni < 2 or str(ni) != str(n).strip():
                _fail(base, "is not a device count >= 2", "Key each fit by its device count.")
            f = _mapping(fv, base, ("latency_us", "bus_bandwidth_gbs"), ("median_error", "points"))
            lat = _num(f["latency_us"], f"{base}.latency_us")
            bw = _num(f["bus_bandwidth_gbs"], f"{base}.bus_bandwidth_gbs")
            if not (0 < lat < 1e5):
                _fail(f"{base}.latency_us", f"is {lat!r}", "Write microseconds, e.g. 8.5.")
            if not (0 < bw < 1e5):
                _fail(f"{base}.bus_bandwidth_gbs", f"is {bw!r}", "Write GB/s, e.g. 360.")
            med = f.get("median_error")
            fits[(kind, ni)] = CollectiveFit(
                latency_s=lat * _US, bus_bandwidth=bw * _GBS,
                median_error=None if med is None else _num(med, f"{base}.median_error"),
                points=int(f.get("points", 0) or 0))
    return Collectives(source="measured", device=_str(c["device"], "collectives.device"),
                       date=str(c["date"]), mode=c["mode"], fits=fits, note=str(c.get("note", "")))


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


_TOP_KEY = re.compile(r"^[A-Za-z_][\w\-]*\s*:")


def update_collectives_yaml(path, coll: Collectives):
    """Replace (or append) only the top-level ``collectives:`` block of a hardware YAML, keeping
    every other line and comment; validated by the hardware loader before the atomic replace."""
    import yaml
    from compiler.perf.hardware import HardwareError, _atomic_write, _parse_yaml_text, load_hardware
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    block = yaml.safe_dump({"collectives": collectives_to_yaml_dict(coll)}, sort_keys=False,
                           default_flow_style=None, width=100)
    note = f"# collectives: written by compiler.perf.calibration.collectives ({coll.device}, {coll.date})\n"
    start = next((i for i, ln in enumerate(lines) if re.match(r"^collectives\s*:", ln)), None)
    if start is None:
        sep = "" if not lines or lines[-1].endswith("\n") else "\n"
        new_text = text + sep + note + block
    else:
        end = next((j for j in range(start + 1, len(lines)) if _TOP_KEY.match(lines[j])), len(lines))
        s = start - 1 if start > 0 and lines[start - 1].startswith("# collectives: written") else start
        new_text = "".join(lines[:s]) + note + block + "".join(lines[end:])
    hw = load_hardware(_parse_yaml_text(new_text), source=path)
    if hw.name != path.stem:
        raise HardwareError(f"{path}: name is {hw.name!r} but the file is {path.name}.")
    _atomic_write(path, new_text)
    return hw


def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m compiler.perf.calibration.collectives",
        description="Fit latency + bus bandwidth per collective and device count from "
                    "tools/measure_collectives.py output and write them into a hardware YAML.")
    ap.add_argument("measurements", help="JSON written by tools/measure_collectives.py")
    ap.add_argument("--yaml", required=True, help="hardware YAML to update (collectives: block)")
    ap.add_argument("--mode", default="graph", choices=("graph", "eager"))
    args = ap.parse_args(list(argv) if argv is not None else None)
    from compiler.errors import RooftopError
    try:
        coll = fit_collectives(args.measurements, mode=args.mode)
        update_collectives_yaml(args.yaml, coll)
    except (ValueError, RooftopError) as e:
        print(f"rooftop collectives: error: {e}", file=sys.stderr)
        return 2
    for (kind, n), f in sorted(coll.fits.items()):
        print(f"{kind:15s} n={n}: latency {f.latency_s / _US:8.2f} us, bus bandwidth "
              f"{f.bus_bandwidth / _GBS:8.1f} GB/s, median error {100 * (f.median_error or 0):.1f} %")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
