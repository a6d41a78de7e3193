"""Collective-communication measurements: their fit and the ``collectives:`` YAML block (the cost
model itself and its literature defaults are :mod:`compiler.perf.collectives`).

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
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

_US = 1e-6
_GBS = 1e9

from compiler.errors import InputValueError, RooftopError
from compiler.perf.collectives import COLLECTIVES, CollectiveFit, Collectives, bus_factor, collectives_to_yaml_dict
from compiler.perf.hardware_yaml import update_yaml_blocks

__all__ = ["fit_one", "fit_collectives", "collectives_to_yaml_dict", "update_collectives_yaml",
           "load_measurements"]

# --------------------------------------------------------------------------- fitting

def fit_one(kind: str, n: int, nbytes, times) -> CollectiveFit:
    """Robust fit of latency + bus_factor x bytes / bus_bandwidth to measured (bytes, seconds)."""
    from scipy.optimize import least_squares
    s = np.asarray(nbytes, dtype=float)
    t = np.asarray(times, dtype=float)
    ok = np.isfinite(s) & np.isfinite(t) & (s > 0) & (t > 0)
    s, t = s[ok], t[ok]
    if len(s) < 2:
        raise InputValueError(f"{kind} n={n}: need at least 2 positive measurements, got {len(s)}")
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
            raise InputValueError(f"{where}: file not found; run tools/measure_collectives.py first "
                             "(see its docstring for the command)") from None
        except json.JSONDecodeError as e:
            raise InputValueError(f"{where}: not JSON ({e}); pass the file written by "
                             "tools/measure_collectives.py") from None
    rows = data.get("collectives")
    if not isinstance(rows, list) or not rows:
        raise InputValueError(f"{where}: no 'collectives' list of measurements; pass the file written "
                         "by tools/measure_collectives.py")
    for i, r in enumerate(rows):
        for k in ("op", "world_size", "mode", "bytes", "time_s"):
            if k not in r:
                raise InputValueError(f"{where}: collectives[{i}] lacks {k!r}")
        if r["op"] not in COLLECTIVES:
            raise InputValueError(f"{where}: collectives[{i}].op {r['op']!r} is not one of "
                             f"{', '.join(COLLECTIVES)}")
    return data


def fit_collectives(data, mode: str = "graph", min_bytes: float = 0.0) -> Collectives:
    """Fit every (collective, n) present in a measurement file for ``mode`` (graph | eager)."""
    data = load_measurements(data)
    rows = [r for r in data["collectives"] if r["mode"] == mode and float(r["bytes"]) >= min_bytes]
    if not rows:
        modes = sorted({r["mode"] for r in data["collectives"]})
        raise InputValueError(f"no measurements in mode {mode!r}; the file has {', '.join(modes)}")
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

def update_collectives_yaml(path, coll: Collectives):
    """Replace (or append) only the top-level ``collectives:`` block of a hardware YAML, keeping
    every other line and comment; validated by the hardware loader before the atomic replace."""
    return update_yaml_blocks(path, {"collectives": collectives_to_yaml_dict(coll)},
                              note=f"written by compiler.perf.calibration.collectives ({coll.device}, {coll.date})")


def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m compiler.perf.calibration.collectives",
        description="Fit latency + bus bandwidth per collective and device count from "
                    "tools/measure_collectives.py output and write them into a hardware YAML.")
    ap.add_argument("measurements", help="JSON written by tools/measure_collectives.py")
    ap.add_argument("--yaml", required=True, help="hardware YAML to update (collectives: block)")
    ap.add_argument("--mode", default="graph", choices=("graph", "eager"))
    args = ap.parse_args(list(argv) if argv is not None else None)
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
