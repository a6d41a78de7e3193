"""The figures of report.html, drawn with matplotlib's Agg canvas.

Four figures, each a pure function of the report dict:

- ``roofline``: per phase, log-log attainable FLOP/s versus arithmetic intensity with the
  hardware roof (peak of the phase's dominant dtype and the bandwidth slope, ridge point marked;
  roofs of other dtypes the phase computes in, dashed) and every op as a point — ops of identical
  cost (the same op in every layer) are one point, coloured by op class, area by time share;
- ``time_by_class``: per phase, time by op class, split into compute- and memory-bound ops;
- ``memory``: weights, KV cache, activation peak and runtime reserve against the capacity;
- ``throughput_vs_batch``: decode TPOT and throughput versus batch, max batch marked.

Determinism: no pyplot (no global figure state), the built-in ``default`` style (a user's
matplotlibrc cannot change the picture), fixed size and DPI, and ``metadata={"Software": None}``
so the PNG carries no version string: the same report gives the same PNG bytes with the same
matplotlib and FreeType.
"""
from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import Any

import matplotlib
import matplotlib.style
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator

from reports import serving_round2
from reports.compression import ratio_at, workload_rows
from reports.format import (PHASES, is_encoder, phases_of, bound_split, class_breakdown, dominant_dtype, fmt_bw, fmt_bytes, fmt_intensity,
                              fmt_pct, fmt_rate, fmt_time, op_groups, peak_of, ridge_point)

DPI = 100
PLOTS = ("roofline", "time_by_class", "memory", "throughput_vs_batch")
CLASS_COLORS = {"gemm": "#1f77b4", "attention": "#d62728", "elementwise": "#2ca02c", "reduction": "#9467bd",
                "copy": "#ff7f0e"}
_EXTRA_COLORS = ("#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
         "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.grid": True, "grid.alpha": 0.3,
         "grid.linewidth": 0.6, "svg.hashsalt": "rooftop", "path.simplify": True}


def _styled(fn):
    """Build the figure under the fixed style, so text and lines made at build time get it too."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with matplotlib.style.context(["default", STYLE]):
            return fn(*args, **kwargs)
    return wrapper


def class_color(cls: str, classes: list[str] | None = None) -> str:
    if cls in CLASS_COLORS:
        return CLASS_COLORS[cls]
    extra = sorted(c for c in (classes or [cls]) if c not in CLASS_COLORS)
    return _EXTRA_COLORS[extra.index(cls) % len(_EXTRA_COLORS)] if cls in extra else _EXTRA_COLORS[0]


def _classes(r: Mapping) -> list[str]:
    """Every op class in the report: the known ones in a fixed order, then the rest by name."""
    seen = {o["class"] for ph in phases_of(r) for o in r["phases"][ph]["ops"]}
    return [c for c in CLASS_COLORS if c in seen] + sorted(seen - set(CLASS_COLORS))


def _figure(w: float, h: float, *, left: float = 0.7, right: float = 0.2, top: float = 0.35, bottom: float = 0.6,
            wspace: float = 0.12) -> Figure:
    """A figure with fixed margins (in inches): constrained layout costs a second full layout
    pass, which is most of the rendering time."""
    fig = Figure(figsize=(w, h), dpi=DPI)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=left / w, right=1 - right / w, top=1 - top / h, bottom=bottom / h, wspace=wspace)
    return fig


def to_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    with matplotlib.style.context(["default", STYLE]):
        fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# roofline


def roofline_points(r: Mapping, phase: str) -> list[dict[str, Any]]:
    """The points of a phase's roofline, largest (by time share) first.

    Ops of identical cost are one group (:func:`reports.markdown.op_groups`); groups of the same
    class and dtype that would land on the same spot (intensity and attainable FLOP/s within
    ~2 %) are merged into one point, so a point's area is the time of everything drawn there.
    Only ops with FLOPs are points (a FLOP/s axis has no place for pure data movement). Each
    point has ``intensity``, ``attainable_flops``, ``share``, ``count`` (ops), ``class``,
    ``dtype``, ``ops`` (op kinds), ``label`` and ``groups``."""
    merged: dict[tuple, dict[str, Any]] = {}
    for g in op_groups(r, phase):
        if not (g["flops"] and g["intensity"] and g["attainable_flops"] and g["attainable_flops"] > 0):
            continue
        key = (g["class"], g["dtype"], round(math.log10(g["intensity"]), 2), round(math.log10(g["attainable_flops"]), 2))
        m = merged.get(key)
        if m is None:
            merged[key] = m = {"class": g["class"], "dtype": g["dtype"], "intensity": g["intensity"],
                               "attainable_flops": g["attainable_flops"], "share": 0.0, "count": 0,
                               "total_time_s": 0.0, "ops": [], "groups": [], "first": g["names"][0]}
        m["groups"].append(g)
        m["share"] += g["share"]
        m["count"] += g["count"]
        m["total_time_s"] += g["total_time_s"]
        if g["op"] not in m["ops"]:
            m["ops"].append(g["op"])
    pts = list(merged.values())
    for m in pts:
        m["label"] = "/".join(m["ops"]) + (f" ×{m['count']}" if m["count"] > 1 else "")
    return sorted(pts, key=lambda m: (-m["share"], m["first"]))


def _area(share: float) -> float:
    return 10.0 + 700.0 * share


def _rate_formatter():
    return FuncFormatter(lambda y, _pos: fmt_rate(y).replace(" FLOP/s", "") if y > 0 else "")


@_styled
def fig_roofline(r: Mapping) -> Figure:
    import numpy as np
    hw = r["hardware"]
    bw = float(hw["memory_bandwidth"])
    fig = _figure(12, 5.8, left=1.05, bottom=1.05, wspace=0.1)
    phs = phases_of(r)
    axes = fig.subplots(1, len(phs), sharex=True, sharey=True, squeeze=False)[0]
    pts = {ph: roofline_points(r, ph) for ph in phs}
    classes = [c for c in _classes(r) if any(p["class"] == c for ph in phs for p in pts[ph])]
    dts = {ph: dominant_dtype(r, ph) for ph in phs}
    # one pair of limits for both panels so prefill and decode read against each other
    xs = [g["intensity"] for ph in phs for g in pts[ph]]
    ys = [g["attainable_flops"] for ph in phs for g in pts[ph]]
    ridges = [ridge_point(r, dts[ph]) or 1.0 for ph in phs]
    peaks = [peak_of(r, dts[ph]) or bw for ph in phs]
    xmin = 10 ** math.floor(math.log10(min(xs + [min(ridges) / 300]) / 2))
    xmax = 10 ** math.ceil(math.log10(max(xs + [max(ridges) * 30]) * 2))
    ymax = 10 ** math.ceil(math.log10(max(peaks) * 6))
    ymin = 10 ** math.floor(math.log10(min(ys + [xmin * bw]) / 3))
    xgrid = np.logspace(math.log10(xmin), math.log10(xmax), 256)
    roof_handles: dict[str, Line2D] = {}

    for ax, ph in zip(axes, phs):
        phd = r["phases"][ph]
        dt, pk = dts[ph], peak_of(r, dts[ph]) or 0.0
        rp = ridge_point(r, dt)
        ax.set_xscale("log")
        ax.set_yscale("log")
        # roofs of the other dtypes the phase computes in (fp32 norms in an fp16 model, ...)
        for od in sorted({g["dtype"] for g in pts[ph] if g["dtype"] and g["dtype"] != dt}):
            opk = peak_of(r, od)
            if not opk or opk == pk:
                continue
            ln, = ax.plot(xgrid, np.minimum(opk, xgrid * bw), color="0.45", lw=1.0, ls="--", zorder=2)
            roof_handles.setdefault(od, Line2D([], [], color="0.45", lw=1.0, ls="--",
                                               label=f"{od} roof: {fmt_rate(opk)}"))
        ax.plot(xgrid, np.minimum(pk, xgrid * bw), color="black", lw=2.0, zorder=3)
        roof_handles.setdefault(dt, Line2D([], [], color="black", lw=2.0,
                                           label=f"{dt} roof: {fmt_rate(pk)} peak, {fmt_bw(bw)}, ridge "
                                                 f"{fmt_intensity(rp)} FLOP/B"))
        if rp:
            ax.axvline(rp, color="black", lw=0.8, ls=":", zorder=2)
            ax.plot([rp], [pk], marker="o", ms=6, mfc="white", mec="black", zorder=4)
            ax.text(rp * 1.08, math.sqrt(pk * ymin) , f"ridge {fmt_intensity(rp)} FLOP/B", rotation=90,
                    ha="left", va="center", fontsize=8, color="0.2")
            ax.text(rp / 1.25, ymax / 2.5, "← memory-bound", ha="right", va="center", fontsize=8, color="0.3")
            ax.text(rp * 1.25, ymax / 2.5, "compute-bound →", ha="left", va="center", fontsize=8, color="0.3")
        if pts[ph]:
            ax.scatter([g["intensity"] for g in pts[ph]], [g["attainable_flops"] for g in pts[ph]],
                       s=[_area(g["share"]) for g in pts[ph]],
                       c=[class_color(g["class"], classes) for g in pts[ph]],
                       edgecolors="black", linewidths=0.4, alpha=0.85, zorder=5, gid=f"roofline-points-{ph}")
        ax.set_xlim(xmin, xmax)
        ax.set_ylim(ymin, ymax)
        key = _number_points(ax, pts[ph])
        zero = [o for o in phd["ops"] if not o["flops"]]
        if zero:
            t0 = sum(o["time_s"] for o in zero)
            key.append(f"not shown: {len(zero)} ops with no FLOPs, {fmt_pct(t0 / phd['time_s'] if phd['time_s'] else 0.0)} of time")
        if key:
            ax.text(0.985, 0.02, "\n".join(key), transform=ax.transAxes, ha="right", va="bottom", fontsize=7.5,
                    multialignment="left",
                    family="DejaVu Sans Mono", zorder=7,
                    bbox=dict(boxstyle="round,pad=0.35", facecolor="white", edgecolor="0.7", alpha=0.9))
        p = phd.get("point") or {}
        ax.set_title(f"{ph} (B={p.get('B')}, S={p.get('S')}, P={p.get('P')}): {fmt_time(phd['time_s'])}, "
                     f"{phd['bound']}-bound overall")
        ax.set_xlabel("arithmetic intensity (FLOP/byte)")
        ax.yaxis.set_major_locator(LogLocator(base=10, numticks=30))
        ax.xaxis.set_major_locator(LogLocator(base=10, numticks=30))
        ax.yaxis.set_minor_locator(NullLocator())  # decade grid only: minor log ticks cost ~0.3 s here
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _p: f"{x:g}"))
    axes[0].set_ylabel("attainable FLOP/s")
    axes[0].yaxis.set_major_formatter(_rate_formatter())
    handles = [roof_handles[d] for d in sorted(roof_handles, key=lambda d: (d not in dts.values(), d))]
    handles += [Line2D([], [], ls="", marker="o", ms=7, mfc=class_color(c, classes), mec="black", mew=0.4, label=c)
                for c in classes]
    handles.append(Line2D([], [], ls="", label="area ∝ share of phase time; ×n: n identical ops"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), frameon=False)
    return fig


_CANDIDATES = ((1, 1), (1, -1), (-1, 1), (-1, -1), (1.4, 0), (-1.4, 0), (0, 1.4), (0, -1.4))


def _number_points(ax, pts: list[dict], k: int = 6, min_share: float = 0.01) -> list[str]:
    """Number the k biggest points (by time share) with a short leader line, at the first spot
    around the point that no other number takes; returns the key lines. Needs the axis limits."""
    top = [g for g in pts if g["share"] >= min_share][:k]
    to_px = ax.transData.transform
    px_per_pt = ax.figure.dpi / 72.0
    taken: list[tuple[float, float]] = []  # number centres, pixels
    centres = [tuple(to_px((g["intensity"], g["attainable_flops"]))) for g in pts]
    key = []
    for i, g in enumerate(top, 1):
        cx, cy = to_px((g["intensity"], g["attainable_flops"]))
        dist = math.sqrt(_area(g["share"]) / math.pi) + 9  # points from the centre
        choice = None
        for dx, dy in _CANDIDATES:
            n = math.hypot(dx, dy)
            ox, oy = dx / n * dist, dy / n * dist
            x, y = cx + ox * px_per_pt, cy + oy * px_per_pt
            free = all(abs(x - tx) > 12 or abs(y - ty) > 13 for tx, ty in taken)
            clear = all(abs(x - px) > 6 or abs(y - py) > 6 for px, py in centres)
            if free and clear:
                choice = (ox, oy, x, y)
                break
            if free and choice is None:
                choice = (ox, oy, x, y, "fallback")
        if choice is None:
            n = math.hypot(*_CANDIDATES[0])
            ox, oy = _CANDIDATES[0][0] / n * dist, _CANDIDATES[0][1] / n * dist
            choice = (ox, oy, cx + ox * px_per_pt, cy + oy * px_per_pt)
        taken.append(choice[2:4])
        ax.annotate(str(i), (g["intensity"], g["attainable_flops"]), xytext=choice[:2], textcoords="offset points",
                    fontsize=8, fontweight="bold", ha="center", va="center", zorder=6,
                    arrowprops=dict(arrowstyle="-", lw=0.6, color="0.25", shrinkA=4, shrinkB=2))
        key.append(f"{i}  {g['label']} {g['dtype']}, {fmt_intensity(g['intensity'])} FLOP/B: {fmt_pct(g['share'])}")
    return key


# ----------------------------------------------------------------------------------------------
# time by op class


def _time_unit(t: float) -> tuple[float, str]:
    if t >= 1:
        return 1.0, "s"
    if t >= 1e-3:
        return 1e3, "ms"
    return 1e6, "µs"


@_styled
def fig_time_by_class(r: Mapping) -> Figure:
    classes = _classes(r)
    fig = _figure(12, 1.4 + 0.42 * max(len(classes), 3), left=0.95, right=0.15, bottom=0.8, wspace=0.3)
    phs = phases_of(r)
    axes = fig.subplots(1, len(phs), squeeze=False)[0]
    for ax, ph in zip(axes, phs):
        phd = r["phases"][ph]
        rows = {c["class"]: c for c in class_breakdown(r, ph)}
        scale, unit = _time_unit(phd["time_s"] or 0.0)
        ys = list(range(len(classes)))[::-1]
        top = 0.0
        for y, c in zip(ys, classes):
            row = rows.get(c, {"compute_s": 0.0, "memory_s": 0.0, "latency_s": 0.0, "time_s": 0.0, "share": 0.0})
            col = class_color(c, classes)
            ax.barh(y, row["compute_s"] * scale, color=col, edgecolor="black", lw=0.4, height=0.65)
            ax.barh(y, row["memory_s"] * scale, left=row["compute_s"] * scale, color=col, alpha=0.45,
                    hatch="///", edgecolor="black", lw=0.4, height=0.65)
            ax.barh(y, row["latency_s"] * scale, left=(row["compute_s"] + row["memory_s"]) * scale, color=col,
                    alpha=0.2, hatch="..", edgecolor="black", lw=0.4, height=0.65)
            end = row["time_s"] * scale
            top = max(top, end)
            ax.text(end, y, f"  {fmt_time(row['time_s'])} ({fmt_pct(row['share'])})", va="center", ha="left",
                    fontsize=8)
        ax.set_yticks(ys, classes)
        ax.set_xlim(0, top * 1.35 if top else 1)
        ax.grid(axis="y", visible=False)
        ax.set_xlabel(f"time ({unit})")
        bs = bound_split(r, ph)
        ax.set_title(f"{ph}: {fmt_time(phd['time_s'])} ({fmt_pct(bs.get('compute'))} of it in compute-bound ops)")
    handles = [Patch(facecolor="0.55", edgecolor="black", lw=0.4, label="compute-bound ops"),
               Patch(facecolor="0.55", alpha=0.45, hatch="///", edgecolor="black", lw=0.4, label="memory-bound ops"),
               Patch(facecolor="0.55", alpha=0.2, hatch="..", edgecolor="black", lw=0.4,
                     label="latency-bound ops (launch/ramp-up dominate)")]
    fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False)
    return fig


# ----------------------------------------------------------------------------------------------
# per layer

BLOCK_COLORS = {"attention": "#d62728", "mlp": "#1f77b4", "moe": "#17becf", "norm": "#9467bd",
                "other": "#7f7f7f", "embedding": "#8c564b", "head": "#e377c2"}


@_styled
def fig_layers(r: Mapping) -> Figure:
    """Per phase, one stacked bar per decoder layer (time by block); windowed layers' attention
    hatched, latent attention dotted; MoE FFNs in their own colour."""
    phs = [p for p in phases_of(r) if r["phases"][p].get("layers")]
    n = max((len(r["phases"][p]["layers"]) for p in phs), default=1)
    fig = _figure(max(8.0, min(16.0, 3.0 + 0.16 * n)), 2.2 + 2.3 * max(len(phs), 1), left=0.8, right=0.2,
                  bottom=0.9)
    fig.subplots_adjust(hspace=0.55)
    axes = fig.subplots(max(len(phs), 1), 1, squeeze=False)[:, 0]
    order = ("attention", "norm", "mlp", "moe", "other")
    for ax, ph in zip(axes, phs):
        rows = r["phases"][ph]["layers"]
        scale, unit = _time_unit(max((x["time_s"] for x in rows), default=0.0))
        xs = [x["layer"] for x in rows]
        bottom = [0.0] * len(rows)
        for b in order:
            vals = [x.get("time_by_block_s", {}).get(b, 0.0) * scale for x in rows]
            if not any(vals):
                continue
            hatches = [("///" if x.get("attention") == "window" else ".." if x.get("attention") == "latent" else "")
                       if b == "attention" else "" for x in rows]
            bars = ax.bar(xs, vals, bottom=bottom, color=BLOCK_COLORS[b], edgecolor="black", lw=0.3, width=0.8)
            for patch, h in zip(bars, hatches):
                if h:
                    patch.set_hatch(h)
            bottom = [bo + v for bo, v in zip(bottom, vals)]
        ax.set_xlim(min(xs, default=0) - 0.7, max(xs, default=0) + 0.7)
        ax.set_ylabel(f"time per layer ({unit})")
        ax.set_title(f"{ph}: {len(rows)} layers, {fmt_time(sum(x['time_s'] for x in rows))} in the layers of "
                     f"{fmt_time(r['phases'][ph]['time_s'])}")
        ax.grid(axis="x", visible=False)
    if len(axes):
        axes[-1].set_xlabel("decoder layer")
    present = {b for ph in phs for x in r["phases"][ph]["layers"] for b, t in (x.get("time_by_block_s") or {}).items() if t}
    handles = [Patch(facecolor=BLOCK_COLORS[b], edgecolor="black", lw=0.3, label=b) for b in order if b in present]
    kinds = {x.get("attention") for ph in phs for x in r["phases"][ph]["layers"]}
    if "window" in kinds:
        handles.append(Patch(facecolor=BLOCK_COLORS["attention"], hatch="///", edgecolor="black", lw=0.3,
                             label="attention, windowed layer"))
    if "latent" in kinds:
        handles.append(Patch(facecolor=BLOCK_COLORS["attention"], hatch="..", edgecolor="black", lw=0.3,
                             label="latent attention (MLA)"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False)
    return fig


# ----------------------------------------------------------------------------------------------
# memory


MEM_PARTS = (("weights_bytes", "weights", "#1f77b4"), ("kv_cache_bytes", "KV cache", "#ff7f0e"),
             ("activation_peak_bytes", "activation peak", "#2ca02c"),
             ("runtime_reserve_bytes", "runtime reserve", "#7f7f7f"))


@_styled
def fig_memory(r: Mapping) -> Figure:
    mem, cap, wl = r["memory"], r["capacity"], r["workload"]
    capb = float(mem.get("capacity_bytes") or r["hardware"]["memory_bytes"])
    parts = [(label, float(mem.get(k) or 0.0), col) for k, label, col in MEM_PARTS]
    total = sum(v for _, v, _ in parts)
    fig = _figure(12, 2.5, left=0.75, bottom=0.85)
    ax = fig.subplots()
    left = 0.0
    xmax = max(total, capb) * 1.08
    handles = []
    for label, v, col in parts:
        ax.barh(0, v / 1e9, left=left / 1e9, color=col, edgecolor="black", lw=0.4, height=0.6)
        if v / xmax >= 0.07:
            ax.text((left + v / 2) / 1e9, 0, f"{label}\n{fmt_bytes(v)}", ha="center", va="center", fontsize=8,
                    color="white" if col in ("#1f77b4", "#7f7f7f") else "black")
        handles.append(Patch(facecolor=col, edgecolor="black", lw=0.4, label=f"{label} {fmt_bytes(v)}"))
        left += v
    if total < capb:
        ax.barh(0, (capb - total) / 1e9, left=total / 1e9, color="white", edgecolor="0.6", lw=0.4, height=0.6,
                hatch="..")
        ax.text((total + capb) / 2e9, 0, f"free {fmt_bytes(capb - total)}", ha="center", va="center", fontsize=8,
                color="0.2", bbox=dict(boxstyle="round,pad=0.25", facecolor="white", edgecolor="none"))
        handles.append(Patch(facecolor="white", edgecolor="0.6", hatch="..", lw=0.4, label="free"))
    over = total > capb
    ax.axvline(capb / 1e9, color="#d62728" if over else "black", lw=1.6)
    ax.text(capb / 1e9, 0.42, f" capacity {fmt_bytes(capb)}", ha="left" if not over else "right", va="bottom",
            fontsize=8, color="#d62728" if over else "black")
    ax.set_xlim(0, xmax / 1e9)
    ax.set_ylim(-0.55, 0.7)
    ax.set_yticks([0], [f"batch {wl.get('batch')}"])
    ax.grid(axis="y", visible=False)
    ax.set_xlabel("GB (10⁹ bytes)")
    mb = cap.get("max_batch")
    if over:
        status = f"exceeds capacity by {fmt_bytes(total - capb)}; max batch {mb}"
    else:
        status = (f"{fmt_pct(total / capb)} of capacity; max batch {'≥ ' if cap.get('limited_by') == 'search range' else ''}"
                  f"{mb} ({fmt_bytes(mem.get('kv_bytes_per_token'))}/token KV × {mem.get('kv_tokens_per_sequence')} "
                  f"tokens per sequence)")
    ax.set_title(f"memory at batch {wl.get('batch')}: {fmt_bytes(total)} — {status}")
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    return fig


# ----------------------------------------------------------------------------------------------
# TPOT and throughput versus batch


@_styled
def fig_throughput_vs_batch(r: Mapping) -> Figure:
    sweep = sorted(r.get("throughput_vs_batch") or [], key=lambda s: s["batch"])
    cap, wl = r["capacity"], r["workload"]
    fig = _figure(12, 4.0, left=0.75, bottom=0.6, wspace=0.22)
    axes = fig.subplots(1, 2, sharex=True)
    if not sweep:
        for ax in axes:
            ax.text(0.5, 0.5, "no throughput_vs_batch in the report", ha="center", va="center", transform=ax.transAxes)
        return fig
    bs = [s["batch"] for s in sweep]
    fits = [s for s in sweep if s["fits"]]
    nofit = [s for s in sweep if not s["fits"]]
    slo = cap.get("slo") or {}
    enc = is_encoder(r)
    series = ((("batch_latency_s", 1e3, "latency per batch (ms)", "#1f77b4"),
               ("throughput_seq_s", 1.0, "throughput (inputs/s)" if (r.get("latency") or {}).get("unit") == "inputs"
                else "throughput (sequences/s)", "#2ca02c")) if enc else
              (("tpot_s", 1e3, "TPOT (ms per decode step)", "#1f77b4"),
               ("throughput_tok_s", 1.0, "decode throughput (tokens/s)", "#2ca02c")))
    lat_key, thr_key = series[0][0], series[1][0]
    for ax, (key, scale, ylabel, col) in zip(axes, series):
        ax.plot(bs, [s[key] * scale for s in sweep], color=col, lw=1.2, zorder=3)
        if fits:
            ax.plot([s["batch"] for s in fits], [s[key] * scale for s in fits], ls="", marker="o", ms=5, color=col,
                    zorder=4, label="fits in memory")
        if nofit:
            ax.plot([s["batch"] for s in nofit], [s[key] * scale for s in nofit], ls="", marker="o", ms=5,
                    mfc="white", mec="#d62728", zorder=4, label="does not fit")
        ax.set_xscale("log", base=2)
        pow2 = [b for b in bs if b & (b - 1) == 0] or bs
        ax.xaxis.set_major_locator(FixedLocator(pow2))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _p: f"{x:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.tick_params(axis="x", labelrotation=0)
        ax.set_xlabel("batch (sequences)")
        ax.set_ylabel(ylabel)
        if key == thr_key:
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=30))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _p: f"{y:,.0f}" if y >= 1 else f"{y:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
        else:
            ax.set_ylim(0, max(s[key] * scale for s in sweep) * 1.15)
        mb = cap.get("max_batch") or 0
        lim = cap.get("limited_by")
        if mb > 0:
            ax.axvline(mb, color="#d62728", lw=1.4, zorder=2,
                       label=f"max batch {'≥ ' if lim == 'search range' else ''}{mb} ({lim})")
        if "max_batch_slo" in cap and cap["max_batch_slo"]:
            ax.axvline(cap["max_batch_slo"], color="#ff7f0e", lw=1.4, ls="--", zorder=2,
                       label=f"max batch under SLO {cap['max_batch_slo']}")
        ax.axvline(wl.get("batch") or 1, color="0.3", lw=1.0, ls=":", zorder=2,
                   label=f"configured batch {wl.get('batch')}")
        if key == "tpot_s" and slo.get("tpot_ms") is not None:
            ax.axhline(float(slo["tpot_ms"]), color="#ff7f0e", lw=1.0, ls="-.", label=f"TPOT SLO {float(slo['tpot_ms']):g} ms")
        if mb == 0 and key == lat_key:
            ax.text(0.5, 0.45, "does not fit in memory even at batch 1", transform=ax.transAxes, ha="center",
                    va="center", color="#d62728", fontsize=10,
                    bbox=dict(boxstyle="round,pad=0.3", facecolor="white", edgecolor="#d62728"))
        ax.legend(loc="upper left" if key == lat_key else "lower right", frameon=True, framealpha=0.9)
    ctx = wl.get("context_len") if wl.get("context_len") is not None else wl.get("prompt_len")
    if enc:
        axes[0].set_title(f"latency per batch vs batch ({wl.get('prompt_len')} tokens per sequence)")
        axes[1].set_title("throughput vs batch (batch / latency)")
    else:
        axes[0].set_title(f"decode step time vs batch (context {ctx})")
        axes[1].set_title("decode throughput vs batch (batch / TPOT)")
    return fig


@_styled
def fig_speculative(r: Mapping) -> Figure:
    """TPOT and speed-up of speculative decoding versus γ (report.json speculative.gamma_sweep)."""
    s = r.get("speculative") or {}
    rows = s.get("gamma_sweep") or []
    fig = _figure(12, 3.6, left=0.75, bottom=0.6, wspace=0.22)
    axes = fig.subplots(1, 2, sharex=True)
    gs = [x["gamma"] for x in rows]
    axes[0].plot(gs, [x["tpot_s"] * 1e3 for x in rows], marker="o", ms=4, color="#1f77b4", label="speculative TPOT")
    if s:
        axes[0].axhline(s["target_tpot_s"] * 1e3, color="0.3", ls=":", label="target alone")
    axes[0].set_ylabel("TPOT (ms per token)")
    axes[1].plot(gs, [x["speedup"] for x in rows], marker="o", ms=4, color="#2ca02c")
    axes[1].axhline(1.0, color="0.3", ls=":")
    axes[1].set_ylabel("speed-up")
    if s:
        for ax, key, scale in ((axes[0], "tpot_s", 1e3), (axes[1], "speedup", 1.0)):
            best = next(x for x in rows if x["gamma"] == s["best_gamma"])
            ax.plot([best["gamma"]], [best[key] * scale], marker="*", ms=14, color="#d62728", ls="",
                    label=f"best γ = {best['gamma']}")
            ax.legend(loc="best", frameon=True, framealpha=0.9)
    for ax in axes:
        ax.set_xlabel("γ (draft tokens per step)")
    axes[0].set_title(f"TPOT vs γ (α = {s.get('acceptance', float('nan')):.3g}, draft {s.get('draft', {}).get('name')})")
    axes[1].set_title("speed-up over the target alone")
    return fig


@_styled
def fig_compression(r: Mapping) -> Figure:
    """Measured time of each quantized / sparse GEMM kernel relative to the dense GEMM over M
    (report.json ``compression.kernels[].ratio_vs_dense``), the workload's rows marked."""
    ks = [k for k in (r.get("compression") or {}).get("kernels", []) if k.get("ratio_vs_dense")]
    fig = _figure(12, 3.8, left=0.75, bottom=0.6, right=0.25)
    ax = fig.subplots(1, 1)
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b"]
    for i, k in enumerate(ks):
        pts = k["ratio_vs_dense"]["points"]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3.5, color=colors[i % len(colors)],
                label=k["kernel"])
    dense = ", ".join(sorted({k["ratio_vs_dense"]["dense"] for k in ks}))
    ax.axhline(1.0, color="0.3", ls=":", label=f"dense GEMM ({dense})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    marks = []
    for ph, m in workload_rows(r).items():
        ax.axvline(m, color="#d62728" if ph == "decode" else "#7f7f7f", ls="--", lw=1)
        for i, k in enumerate(ks):
            y = ratio_at(k["ratio_vs_dense"]["points"], m)
            ax.plot([m], [y], marker="D", ms=6, color=colors[i % len(colors)], ls="")
            marks.append((ph, m, y, i))
    lo, hi = (math.log(v) for v in ax.get_ylim())
    for ph, m, y, i in marks:      # labels below the points in the upper half, above them in the lower half
        up = math.log(y) < (lo + hi) / 2
        ax.annotate(f"{ph} M={m}: {y:.2g}×", (m, y), textcoords="offset points", fontsize=8,
                    xytext=(6, (6 + 12 * i) if up else -(14 + 12 * i)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
    ax.yaxis.set_minor_formatter(FuncFormatter(
        lambda v, _: f"{v:g}×" if v > 0 and round(v / 10 ** math.floor(math.log10(v)), 3) in (2.0, 5.0) else ""))
    ax.set_xlabel("rows M of the GEMM (tokens in the step)")
    ax.set_ylabel("time / dense GEMM")
    ax.set_title(f"quantized GEMM kernels against dense on {r.get('hardware', {}).get('name', '?')} (below 1: the kernel wins)")
    ax.legend(loc="best", frameon=True, framealpha=0.9, fontsize=8)
    return fig


@_styled
def fig_quant_auto(r: Mapping) -> Figure:
    """quant=auto's candidates: measured accuracy drop against predicted request time, the
    Pareto front joined, the budget line dashed, the chosen candidate starred (report.json
    ``compression.quantization.auto.candidates``)."""
    a = ((r.get("compression") or {}).get("quantization") or {}).get("auto") or {}
    cs = a.get("candidates") or []
    fig = _figure(12, 4.6, left=0.8, bottom=0.65, right=0.25)
    ax = fig.subplots(1, 1)
    if not cs:
        ax.text(0.5, 0.5, "no quant=auto search in the report", ha="center", va="center", transform=ax.transAxes)
        return fig
    t0 = a.get("predicted_time_keep_s") or 1.0
    unit, scale = ("ms", 1e3) if max(c["predicted_time_s"] for c in cs) < 1 else ("s", 1.0)
    xs = lambda c: c["predicted_time_s"] * scale  # noqa: E731
    for i, c in enumerate(sorted(cs, key=lambda c: (c["predicted_time_s"], c["measured_drop"]))):
        uni = c["name"].startswith("uniform")
        ax.plot([xs(c)], [c["measured_drop"]], ls="", marker="s" if uni else "o", ms=7,
                color="#7f7f7f" if not c["feasible"] else ("#1f77b4" if not uni else "#2ca02c"), zorder=3,
                markeredgecolor="#d62728" if c["pareto"] else "none", markeredgewidth=1.6)
        ax.annotate(c["name"].replace("search @ ", "").replace(" budget", ""), (xs(c), c["measured_drop"]),
                    textcoords="offset points", xytext=(7, 4 - 11 * (i % 3)), fontsize=8)
    front = sorted((c for c in cs if c["pareto"]), key=lambda c: (c["predicted_time_s"], c["measured_drop"]))
    ax.plot([xs(c) for c in front], [c["measured_drop"] for c in front], color="#d62728", lw=1.2, zorder=2,
            label="Pareto front (predicted time, stored bytes, measured drop): red-edged")
    ch = next((c for c in cs if c.get("chosen")), None)
    if ch:
        ax.plot([xs(ch)], [ch["measured_drop"]], marker="*", ms=18, color="#d62728", ls="", zorder=4,
                label=f"chosen: {ch['name']}")
    ax.axhline(a["max_accuracy_drop"], color="0.3", ls="--", lw=1, label=f"budget {a['max_accuracy_drop']:g}")
    ax.axvline(t0 * scale, color="0.5", ls=":", lw=1, label=f"unquantized {t0 * scale:.4g} {unit}")
    ax.plot([], [], ls="", marker="o", color="#1f77b4", label="knapsack at a budget multiple")
    ax.plot([], [], ls="", marker="s", color="#2ca02c", label="one format everywhere")
    ax.plot([], [], ls="", marker="o", color="#7f7f7f", label="over the budget")
    ax.set_xlabel(f"predicted request time ({unit}, {r.get('hardware', {}).get('name', '?')})")
    ax.set_ylabel(f"{a.get('metric_name', 'accuracy')} drop (measured)")
    ax.set_title("quant=auto: candidates the search measured")
    ax.legend(loc="best", frameon=True, framealpha=0.9, fontsize=8)
    return fig


@_styled
def fig_serving(r: Mapping) -> Figure:
    """The serving figure: continuous vs static batching over the Poisson arrival rate. Left:
    generated tokens/s against the offered rate (continuous, static), the largest rate meeting
    the SLOs marked. Right: TTFT and TPOT p99 against the rate (log scale) with the SLO lines —
    a pure function of ``report["serve"]`` (the rate sweep of compiler/analysis/serving.py)."""
    s = r.get("serve") or {}
    sweep = sorted(s.get("sweep") or [], key=lambda x: x["rate"])
    fig = _figure(12, 5.0, left=0.75, bottom=1.75, wspace=0.25)
    ax1, ax2 = fig.subplots(1, 2, sharex=True)
    if not sweep:
        for ax in (ax1, ax2):
            ax.text(0.5, 0.5, "no serving simulation in the report (serve.enabled=false)",
                    ha="center", va="center", transform=ax.transAxes)
        return fig
    rates = [x["rate"] for x in sweep]
    chunked = ", chunked prefill" if s.get("policy") == "continuous_chunked" else ""
    ax1.plot(rates, [x["throughput_tok_s"] for x in sweep], marker="o", ms=4, color="#1f77b4",
             label=f"continuous batching ({s.get('layout', '')} KV{chunked})")
    if all("static_throughput_tok_s" in x for x in sweep):
        ax1.plot(rates, [x["static_throughput_tok_s"] for x in sweep], marker="s", ms=4, color="#7f7f7f",
                 label=f"static (batch ≤ {(s.get('static') or {}).get('max_batch_static', '?')})")
    best = s.get("max_rate_meeting_slo")
    target = (s.get("slo") or {}).get("target")
    own = float(s.get("rate", rates[0]))
    ticks = sorted(set(rates) | ({own} if all(abs(own / x - 1) > 0.1 for x in rates) else set()))
    for ax in (ax1, ax2):
        if best:
            ax.axvline(best, color="#ff7f0e", lw=1.3, ls="--",
                       label=f"max rate meeting SLOs {best:.3g}/s"
                             + (f" (≥ {100 * target:.0f} % of requests)" if target else ""))
        ax.axvline(s.get("rate", rates[0]), color="0.3", lw=1.0, ls=":", label=f"serve.rate {s.get('rate'):g}/s")
        ax.set_xscale("log")
        ax.set_xticks(ticks)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _p: f"{x:.3g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _p: ""))
        ax.tick_params(axis="x", labelrotation=45)
        ax.set_xlabel("arrival rate (requests/s, Poisson)")
    ax1.set_ylabel("generated tokens/s")
    ax1.set_ylim(0, max(max(x["throughput_tok_s"] for x in sweep),
                        max((x.get("static_throughput_tok_s") or 0) for x in sweep)) * 1.15)
    ax1.set_title("throughput vs load")
    ax1.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=2, frameon=False)
    ax2.plot(rates, [x["ttft_p99_s"] * 1e3 for x in sweep], marker="o", ms=4, color="#d62728", label="TTFT p99")
    ax2.plot(rates, [x["tpot_p99_s"] * 1e3 for x in sweep], marker="o", ms=4, color="#2ca02c", label="TPOT p99")
    slo = s.get("slo") or {}
    if slo.get("ttft_s"):
        ax2.axhline(slo["ttft_s"] * 1e3, color="#d62728", lw=1.0, ls="-.", label="TTFT SLO")
    if slo.get("tpot_s"):
        ax2.axhline(slo["tpot_s"] * 1e3, color="#2ca02c", lw=1.0, ls="-.", label="TPOT SLO")
    ax2.set_yscale("log")
    ax2.set_ylabel("ms")
    ax2.set_title("latency p99 vs load")
    ax2.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=2, frameon=False)
    return fig


FIGURES = {"roofline": fig_roofline, "time_by_class": fig_time_by_class, "memory": fig_memory, "layers": fig_layers,
           "throughput_vs_batch": fig_throughput_vs_batch, "speculative": fig_speculative,
           "serving": fig_serving, "compression": fig_compression, "quant_auto": fig_quant_auto,
           **serving_round2.FIGURES}


def render(r: Mapping, name: str) -> bytes:
    """One figure as PNG bytes."""
    return to_png(FIGURES[name](r))


def render_all(r: Mapping) -> dict[str, bytes]:
    """All figures as PNG bytes, in :data:`PLOTS` order."""
    names = PLOTS + (("layers",) if any((r.get("phases") or {}).get(p, {}).get("layers") for p in PHASES) else ()) \
        + (("speculative",) if r.get("speculative") else ()) + (("serving",) if r.get("serve") else ()) \
        + (("compression",) if any(k.get("ratio_vs_dense") for k in (r.get("compression") or {}).get("kernels", [])) else ()) \
        + (("quant_auto",) if ((r.get("compression") or {}).get("quantization") or {}).get("auto") else ()) \
        + serving_round2.figure_names(r)
    return {name: render(r, name) for name in names}


def main(argv: list[str] | None = None) -> None:
    """``python -m reports.plots report.json OUT_DIR``: write the figures as PNG files."""
    import json
    import os
    import sys
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        sys.exit("usage: python -m reports.plots report.json OUT_DIR")
    with open(args[0], encoding="utf-8") as f:
        rep = json.load(f)
    os.makedirs(args[1], exist_ok=True)
    for name, png in render_all(rep).items():
        with open(os.path.join(args[1], f"{name}.png"), "wb") as f:
            f.write(png)


if __name__ == "__main__":
    main()
