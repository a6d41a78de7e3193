"""Formatting helpers and queries over a report dict that report.md, report.html and the plots
share: human units (decimal: 1 GB = 1e9 bytes, as in report.json), the phases a report has, op
groups and class breakdowns, the roof at an intensity. Pure functions of the report."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

PHASES = ("prefill", "decode")


def phases_of(r: Mapping) -> tuple[str, ...]:
    """The phases the report has: prefill and decode for a generative model, prefill (one forward
    pass) for an encoder."""
    return tuple(p for p in PHASES if p in (r.get("phases") or {}))


def is_encoder(r: Mapping) -> bool:
    return (r.get("latency") or {}).get("kind") == "encoder"
TOP_GROUPS = 12

# ----------------------------------------------------------------------------------------------
# number formatting


def sig(v: float, digits: int = 4) -> str:
    """``v`` with ``digits`` significant digits, no exponent for |v| < 10**digits."""
    if v == 0:
        return "0"
    s = f"{v:.{digits}g}"
    if "e" in s:  # only when |v| >= 10**digits: print it whole
        s = f"{v:.0f}"
    return s


def _pick(v: float, units: Sequence[tuple[str, float]]) -> str:
    """``v`` in the largest unit (``units`` from largest to smallest) in which it reads >= 1
    after rounding to 4 significant digits (so 999999.99 B is "1 MB", not "1000 kB")."""
    for name, f in units[:-1]:
        s = sig(v / f)
        if abs(float(s)) >= 1:
            return f"{s} {name}"
    name, f = units[-1]
    return f"{sig(v / f)} {name}"


_TIME_UNITS = (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9))


def fmt_time(s: float | None) -> str:
    if s is None:
        return "—"
    if s == 0:
        return "0"
    return _pick(s, _TIME_UNITS)


def _scaled(v: float | None, unit: str) -> str:
    if v is None:
        return "—"
    if v == 0:
        return f"0 {unit}"
    return _pick(v, tuple((p + unit, f) for p, f in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3), ("", 1.0))))


def fmt_bytes(b: float | None) -> str:
    return _scaled(b, "B")


def fmt_flops(f: float | None) -> str:
    return _scaled(f, "FLOP")


def fmt_rate(f: float | None) -> str:
    """FLOP/s in the unit a roofline is read in (TFLOP/s, GFLOP/s, ...)."""
    return _scaled(f, "FLOP/s")


def fmt_bw(b: float | None) -> str:
    return _scaled(b, "B/s")


def fmt_intensity(i: float | None) -> str:
    if i is None:
        return "—"
    return f"{i:.0f}" if i >= 100 else sig(i, 3)


def fmt_pct(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "—"
    if 0 < abs(x) < 0.5 * 10 ** -(digits + 2):
        return f"<{10 ** -digits:.{digits}f}%"
    return f"{x * 100:.{digits}f}%"


def fmt_tok_s(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:,.0f} tok/s" if v >= 1000 else f"{sig(v, 4)} tok/s"


def fmt_count(n: int) -> str:
    return f"{n:,}"


def gib_note(b: float) -> str:
    gib = b / 2**30
    return f" ({gib:.0f} GiB)" if abs(gib - round(gib)) < 1e-9 and gib >= 1 else ""


# ----------------------------------------------------------------------------------------------
# derived views of the report (shared by html.py and plots.py)


def dominant_dtype(r: Mapping, phase: str) -> str:
    """The dtype that does most of a phase's FLOPs (its roof is the one that matters)."""
    by: dict[str, float] = {}
    for o in r["phases"][phase]["ops"]:
        by[o.get("dtype") or "fp16"] = by.get(o.get("dtype") or "fp16", 0.0) + (o["flops"] or 0.0)
    peaks = r["hardware"]["peak_flops"]
    cands = [d for d in sorted(by) if d in peaks] or sorted(by) or ["fp16"]
    return max(cands, key=lambda d: (by.get(d, 0.0), d == "fp16"))


def peak_of(r: Mapping, dtype: str) -> float | None:
    peaks = r["hardware"]["peak_flops"]
    return peaks.get(dtype) or peaks.get("fp16")


def ridge_point(r: Mapping, dtype: str) -> float | None:
    pk, bw = peak_of(r, dtype), r["hardware"]["memory_bandwidth"]
    return pk / bw if pk and bw else None


def roof(r: Mapping, dtype: str, intensity: float | None) -> float | None:
    """min(peak(dtype), intensity × bandwidth)."""
    pk = peak_of(r, dtype)
    if intensity is None or pk is None:
        return None
    return min(pk, intensity * r["hardware"]["memory_bandwidth"])


def op_groups(r: Mapping, phase: str) -> list[dict[str, Any]]:
    """Ops of a phase grouped by identical cost (op kind, class, dtype, FLOPs, bytes, bound):
    the same op repeated in every layer becomes one row/point with a count. Sorted by total
    time (descending), ties by first op name. Per-op numbers are for one op of the group."""
    ph = r["phases"][phase]
    total = ph["time_s"] or 0.0
    groups: dict[tuple, dict[str, Any]] = {}
    for o in ph["ops"]:
        key = (o["op"], o["class"], o.get("dtype"), o["flops"], o["bytes"], o["bound"], o["time_s"])
        g = groups.get(key)
        if g is None:
            groups[key] = g = {"op": o["op"], "class": o["class"], "dtype": o.get("dtype"),
                               "flops": o["flops"], "bytes": o["bytes"], "intensity": o["intensity"],
                               "attainable_flops": o["attainable_flops"], "bound": o["bound"],
                               "time_s": o["time_s"], "names": [], "count": 0, "total_time_s": 0.0}
        g["names"].append(o["name"])
        g["count"] += 1
        g["total_time_s"] += o["time_s"]
    out = list(groups.values())
    for g in out:
        g["share"] = g["total_time_s"] / total if total else 0.0
        rf = roof(r, g["dtype"], g["intensity"]) if g["flops"] else None
        g["roof_flops"] = rf
        g["of_roof"] = (g["attainable_flops"] / rf) if rf else None
        g["label"] = g["op"] + (f" ×{g['count']}" if g["count"] > 1 else "")
    out.sort(key=lambda g: (-g["total_time_s"], g["names"][0]))
    return out


def class_breakdown(r: Mapping, phase: str) -> list[dict[str, Any]]:
    """Per op class: op count, time (split by bound), FLOPs, bytes; classes sorted by time."""
    ph = r["phases"][phase]
    total = ph["time_s"] or 0.0
    rows: dict[str, dict[str, Any]] = {}
    for o in ph["ops"]:
        c = rows.setdefault(o["class"], {"class": o["class"], "ops": 0, "time_s": 0.0, "compute_s": 0.0,
                                         "memory_s": 0.0, "latency_s": 0.0, "flops": 0.0, "bytes": 0.0})
        c["ops"] += 1
        c["time_s"] += o["time_s"]
        c[f"{o['bound']}_s"] += o["time_s"]
        c["flops"] += o["flops"] or 0.0
        c["bytes"] += o["bytes"] or 0.0
    out = sorted(rows.values(), key=lambda c: (-c["time_s"], c["class"]))
    for c in out:
        c["share"] = c["time_s"] / total if total else 0.0
    return out


def bound_split(r: Mapping, phase: str) -> dict[str, float]:
    """Fraction of a phase's time spent in compute-bound and in memory-bound ops."""
    ph = r["phases"][phase]
    t = {"compute": 0.0, "memory": 0.0, "latency": 0.0}
    for o in ph["ops"]:
        t[o["bound"]] = t.get(o["bound"], 0.0) + o["time_s"]
    total = sum(t.values())
    return {k: (v / total if total else 0.0) for k, v in t.items()}


