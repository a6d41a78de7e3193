"""Report blocks for the per-layer breakdown (report.json ``phases.<phase>.blocks`` and
``phases.<phase>.layers``): time, FLOPs and bytes per block kind, and a table of the decoder layers —
consecutive layers of the same kind (window, attention, FFN) with the same time are one row, so
local and global layers, dense and MoE layers, read as the model's pattern."""
from __future__ import annotations

from collections.abc import Mapping

from reports.format import fmt_bytes, fmt_flops, fmt_pct, fmt_time, phases_of

#: block kinds in table order (compiler.ir.annotations.BLOCKS)
BLOCK_ORDER = ("embedding", "attention", "mlp", "moe", "norm", "head", "other")


def _kind(row: Mapping) -> str:
    att = row.get("attention") or "—"
    if att == "window" and row.get("window"):
        att = f"window {row['window']}"
    return f"{att}, {row.get('ffn', 'dense')}"


def layer_groups(layers: list[Mapping]) -> list[dict]:
    """Runs of consecutive layers with the same kind and (to 0.1 %) the same time."""
    groups: list[dict] = []
    for row in layers:
        key = (_kind(row), round(row["time_s"], 12))
        last = groups[-1] if groups else None
        if last is not None and last["kind"] == key[0] and abs(last["time_s"] - row["time_s"]) <= 1e-3 * max(row["time_s"], 1e-30) \
                and last["last"] == row["layer"] - 1:
            last["last"] = row["layer"]
            last["count"] += 1
            continue
        groups.append({"first": row["layer"], "last": row["layer"], "count": 1, "kind": key[0],
                       "time_s": row["time_s"], "flops": row["flops"], "bytes": row["bytes"],
                       "time_by_block_s": dict(row.get("time_by_block_s") or {})})
    return groups


def blocks(r: Mapping) -> list[tuple]:
    phases = [p for p in phases_of(r) if (r["phases"][p].get("blocks") or r["phases"][p].get("layers"))]
    if not phases:
        return []
    out: list[tuple] = [("h2", "Per layer"),
                        ("p", "Where the time goes by block kind, and layer by layer: consecutive layers of the same "
                              "kind (attention window, latent attention, dense or MoE FFN) with the same time are one "
                              "row. Times are one layer's; the row's total is count × time.")]
    out.append(("plot", "layers", "Time per decoder layer and block, per phase: local (windowed) and global layers, "
                                  "dense and MoE layers, side by side."))
    for phase in phases:
        ph = r["phases"][phase]
        tot = ph["time_s"] or 0.0
        bl = ph.get("blocks") or {}
        rows = [[b, str(bl[b]["ops"]), fmt_time(bl[b]["time_s"]), fmt_pct(bl[b]["time_s"] / tot if tot else 0.0),
                 fmt_flops(bl[b]["flops"]), fmt_bytes(bl[b]["bytes"])] for b in BLOCK_ORDER if bl.get(b, {}).get("ops")]
        out.append(("h3", f"{phase.capitalize()}: time by block"))
        out.append(("table", ["block", "ops", "time", "share", "FLOPs", "bytes"], rows, "lrrrrr"))
        groups = layer_groups(ph.get("layers") or [])
        if groups:
            out.append(("h3", f"{phase.capitalize()}: layers"))
            trows = []
            for g in groups:
                tb = g["time_by_block_s"]
                layers = str(g["first"]) if g["count"] == 1 else f"{g['first']}–{g['last']}"
                trows.append([layers, g["kind"], fmt_time(g["time_s"]), fmt_time(tb.get("attention", 0.0)),
                              fmt_time(tb.get("mlp", 0.0) + tb.get("moe", 0.0)), fmt_time(tb.get("norm", 0.0)),
                              fmt_time(g["time_s"] * g["count"]), fmt_pct(g["time_s"] * g["count"] / tot if tot else 0.0),
                              fmt_flops(g["flops"]), fmt_bytes(g["bytes"])])
            out.append(("table", ["layers", "attention, FFN", "time/layer", "attention", "FFN", "norms", "total",
                                  "share", "FLOPs/layer", "bytes/layer"], trows, "llrrrrrrrr"))
    return out
