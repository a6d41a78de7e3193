"""report.md — a readable summary of report.json, and the content model the HTML page shares.

:func:`document` turns a report dict into a list of blocks (headings, paragraphs, key/value
lists, tables, plot slots); :func:`render_markdown` writes them as Markdown and
:mod:`reports.html` as HTML, so both files carry the same numbers in the same words.
Everything here is a pure function of the report: no timestamps, no paths, stable ordering
(ties broken by name), so the same report gives the same bytes.

Units are human and decimal (ms/µs, GB/MB, TFLOP/s): 1 GB = 1e9 bytes, as in report.json.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from reports.compression import blocks as compression_blocks
from reports.dynamic import blocks as dynamic_blocks
from reports.format import (PHASES, TOP_GROUPS, bound_split, class_breakdown, dominant_dtype, fmt_bw,  # noqa: F401
                            fmt_bytes, fmt_count, fmt_flops, fmt_intensity, fmt_pct, fmt_rate, fmt_time,
                            fmt_tok_s, gib_note, is_encoder, op_groups, peak_of, phases_of, ridge_point, roof, sig)
from reports.layers import blocks as layer_blocks
from reports.planning import blocks as planning_blocks
from reports.runtime import blocks as runtime_blocks

def _names(names: Sequence[str]) -> str:
    if len(names) == 1:
        return names[0]
    if len(names) == 2:
        return f"{names[0]}, {names[1]}"
    return f"{names[0]} … {names[-1]}"


def _point(ph: Mapping) -> str:
    p = ph.get("point") or {}
    return ", ".join(f"{k}={p[k]}" for k in ("B", "S", "P") if k in p)


# ----------------------------------------------------------------------------------------------
# the document: a list of blocks
#   ("h1"|"h2"|"h3", text)   ("p", text)   ("kv", [(label, value), ...])
#   ("table", headers, rows, aligns)   aligns: "l"/"r" per column
#   ("plot", key, caption)   a figure slot (reports.plots); Markdown leaves it out
# Text may hold `code` spans; nothing else is markup.


def document(r: Mapping) -> list[tuple]:
    m, hw = r["model"], r["hardware"]
    blocks: list[tuple] = [("h1", f"rooftop report: {m['name']} on {hw['name']}")]
    params = m.get("parameters")
    blocks.append(("p", f"Model `{m['name']}` ({m.get('source', '')}, {m.get('dtype', '')}"
                        + (f", {params / 1e9:.3g} B parameters" if params and params >= 1e8 else
                           f", {fmt_count(params)} parameters" if params else "")
                        + f", {fmt_count(m.get('ops', 0))} ops"
                        + (f", {m['layers']} layers" if m.get("layers") else "")
                        + f") through pipeline `{r.get('pipeline', {}).get('name', '')}` "
                        + f"({len(r.get('passes', []))} passes) on {hw.get('description') or hw['name']}."))

    blocks += [("h2", "Summary"), ("kv", _summary(r))]
    blocks.append(("plot", "memory", "Memory at the configured batch: weights, KV cache, activation peak and "
                                     "runtime reserve against the device capacity."))
    blocks.append(("plot", "throughput_vs_batch",
                   "Latency per batch and throughput (sequences/s) versus batch; the memory limit (max batch) "
                   "is marked." if is_encoder(r) else
                   "Decode step time (TPOT) and decode throughput versus batch "
                   "at the configured context; the memory limit (max batch) is marked."))

    # roofline
    blocks.append(("h2", "Roofline"))
    blocks.append(("p", _how_to_read(r)))
    blocks.append(("plot", "roofline", "Roofline per phase, both on the same axes: each point is one op, or the "
                                       "ops of one class that land on the same spot (the same op in every layer; "
                                       "×n in the key) — colour = op class, area = share of the phase's time; the "
                                       "numbered points are listed in the box. Ops with no FLOPs (pure data "
                                       "movement) cannot sit on a FLOP/s axis and are left out; their time is in "
                                       "the tables."))
    blocks.append(("plot", "time_by_class", "Time by op class per phase, split into compute-bound and memory-bound ops."))
    blocks += layer_blocks(r)     # per block kind and per decoder layer

    blocks += runtime_blocks(r)   # the engine (runtime=) beside the roofline bound
    blocks += dynamic_blocks(r)   # speculative decoding, MoE, early exit, chunked prefill
    blocks += planning_blocks(r)  # capacity planning (kv=), parallel plan, serving simulation
    blocks += compression_blocks(r)   # quant= / sparsity=: kernels, stored bytes, accuracy
    for phase in phases_of(r):
        blocks += _phase_blocks(r, phase)
    blocks += _pass_blocks(r)
    return blocks


def _summary(r: Mapping) -> list[tuple[str, str]]:
    hw, wl, lat, mem, cap = r["hardware"], r["workload"], r["latency"], r["memory"], r["capacity"]
    b, prompt, gen = wl.get("batch"), wl.get("prompt_len"), wl.get("gen_len")
    ctx = wl.get("context_len") if wl.get("context_len") is not None else prompt
    if is_encoder(r) and lat.get("unit") == "inputs":     # an MLP / CNN: no token sequence
        kv = [("Workload", f"batch {b} inputs (the model reads no token sequence: one forward pass per batch)"),
              ("Latency", f"{fmt_time(lat['batch_latency_s'])} per batch of {b} inputs"),
              ("Throughput", f"{sig(lat['throughput_inputs_s'])} inputs/s")]
    elif is_encoder(r):
        kv = [("Workload", f"batch {b} sequences of {prompt} tokens (an encoder: one forward pass per batch)"),
              ("Latency", f"{fmt_time(lat['batch_latency_s'])} per batch of {b} × {prompt} tokens"),
              ("Throughput", f"{sig(lat['throughput_seq_s'])} sequences/s "
                             f"({fmt_tok_s(lat['throughput_tok_s'])} of input processed)")]
    else:
        kv = [("Workload", f"batch {b}, prompt {prompt} tokens, generate {gen} tokens; decode costed at context {ctx}"),
              ("TTFT", f"{fmt_time(lat['ttft_s'])} (prefill of {b} × {prompt} tokens)"),
              ("TPOT", f"{fmt_time(lat['tpot_s'])} (one decode step, batch {b}, context {ctx}"
                       + ("; no KV cache: the step recomputes the whole sequence)" if lat.get("decode") == "recompute"
                          else ")")),
              ("End-to-end", f"{fmt_time(lat['e2e_s'])} (TTFT + {max((gen or 0) - 1, 0)} decode steps over a growing cache)"),
              ("Throughput", f"{fmt_tok_s(lat['throughput_tok_s'])} over the whole request (generated tokens)"
                             + (f"; decode only {fmt_tok_s(lat['decode_throughput_tok_s'])}"
                                if lat.get("decode_throughput_tok_s") is not None else ""))]
        if lat.get("basis"):
            one = lat.get("single_device") or {}
            kv.append(("Parallel plan", f"the latency figures are the {lat['basis']}; one device: TTFT "
                                        f"{fmt_time(one.get('ttft_s'))}, TPOT {fmt_time(one.get('tpot_s'))}"))
    for phase in phases_of(r):
        ph = r["phases"][phase]
        dt = dominant_dtype(r, phase)
        rp = ridge_point(r, dt)
        bs = bound_split(r, phase)
        kv.append((f"{phase.capitalize()} bound",
                   f"{ph['bound']}-bound overall: intensity {fmt_intensity(ph.get('intensity'))} FLOP/B vs "
                   f"ridge {fmt_intensity(rp)} FLOP/B ({dt}); time in compute-bound ops "
                   f"{fmt_pct(bs.get('compute'))}, memory-bound {fmt_pct(bs.get('memory'))}, latency-bound "
                   f"(launch and ramp-up dominate) {fmt_pct(bs.get('latency'))}"))
    total, capb = mem.get("total_bytes"), mem.get("capacity_bytes")
    ntok = mem.get("kv_tokens_reserved_per_sequence") or mem.get("kv_tokens_per_sequence")
    cache = (f"+ KV cache {fmt_bytes(mem['kv_cache_bytes'])} ({fmt_bytes(mem['kv_bytes_per_token'])}/token × {ntok} "
             f"tokens × {b} sequences) " if mem.get("kv_bytes_per_token") or not is_encoder(r) else "")
    kv.append(("Memory", f"weights {fmt_bytes(mem['weights_bytes'])} {cache}"
                         f"+ activation peak {fmt_bytes(mem['activation_peak_bytes'])} "
                         f"+ runtime reserve {fmt_bytes(mem.get('runtime_reserve_bytes'))} = {fmt_bytes(total)} "
                         f"of {fmt_bytes(capb)}{gib_note(capb or 0)}"
                         + (f" ({fmt_pct(total / capb)})" if total and capb else "")
                         + (" — does not fit" if total and capb and total > capb else "")))
    if cap.get("note"):
        kv.append(("Fit", cap["note"]))
    kv.append(("Capacity", _capacity_text(cap, "inputs" if lat.get("unit") == "inputs" else None)))
    kv.append(("Hardware", _hardware_text(r)))
    kv.append(("Efficiency", f"{hw.get('efficiency_source') or 'not stated'} (per-class compute/memory "
                             f"efficiencies and launch overhead applied to every op)"))
    kv.append(("ONNX", _emit_text(r.get("emit") or {})))
    return kv


def _capacity_text(cap: Mapping, unit: str | None = None) -> str:
    mb, lim = cap.get("max_batch"), cap.get("limited_by")
    tok = cap.get("tokens_per_sequence")
    what = "inputs" if unit == "inputs" else f"sequences of {tok} tokens"
    if mb == 0:
        s = ("does not fit even at batch 1" + ("" if unit == "inputs" else f" ({tok} tokens per sequence)"))
    else:
        s = f"max batch {'≥ ' if lim == 'search range' else ''}{mb} {what} (limited by {lim})"
    if cap.get("max_batch_weights_kv_only") is not None:
        s += f" — {fmt_count(cap['max_batch_weights_kv_only'])} counting only weights + KV cache"
    if "max_batch_slo" in cap:
        slo = cap.get("slo") or {}
        cond = " and ".join(f"{k.split('_')[0].upper()} ≤ {float(v):g} ms" for k, v in sorted(slo.items()) if v is not None)
        s += f"; under the SLO ({cond}): max batch {cap['max_batch_slo']}"
    return s


def _hardware_text(r: Mapping) -> str:
    hw = r["hardware"]
    pk = hw.get("peak_flops") or {}
    dts = []
    for phase in phases_of(r):
        d = dominant_dtype(r, phase)
        if d not in dts:
            dts.append(d)
    peaks = ", ".join(f"{d} {fmt_rate(pk[d])}" for d in dts if d in pk)
    return (f"{hw.get('description') or hw['name']}: {peaks} dense peak; "
            f"{fmt_bw(hw['memory_bandwidth'])}; {fmt_bytes(hw['memory_bytes'])}{gib_note(hw['memory_bytes'])}; "
            f"ridge point {fmt_intensity(ridge_point(r, dts[0]))} FLOP/B ({dts[0]})")


def _emit_text(e: Mapping) -> str:
    if not e.get("emitted"):
        return f"not emitted — {e.get('reason') or 'no reason given'}"
    parts = [f"emitted `{e.get('file', 'model.onnx')}`"]
    if e.get("opset") is not None:
        parts.append(f"opset {e['opset']}")
    if e.get("nodes") is not None:
        parts.append(f"{fmt_count(e['nodes'])} nodes")
    if e.get("external_data"):
        parts.append("weights in external data")
    s = ", ".join(parts)
    v = e.get("verified")
    if isinstance(v, Mapping):
        s += f"; verified in {v.get('runtime', 'onnxruntime')} against {v.get('reference', 'the source model')}"
        detail = _verification_text(e.get("verification") or {})
        if detail:
            s += f" ({detail})"
    elif v is False or v is None:
        s += "; not verified in onnxruntime"
    return s


def _verification_text(ver: Mapping) -> str:
    """What the verification ran: the steps and their shapes, and the largest error against its
    tolerance (compiler/backend/verify.py's ``verification`` record)."""
    steps = [st for st in ver.get("inputs") or [] if isinstance(st, Mapping)]
    parts = []
    if steps:
        shapes = steps[0].get("shapes") or {}
        first = next(iter(shapes.items()), None)
        decodes = sum(1 for st in steps if str(st.get("step", "")).startswith("decode"))
        if first and decodes and len(first[1]) >= 2:
            parts.append(f"prefill of {first[1][0]} × {first[1][1]} tokens, then {decodes} decode step"
                         f"{'s' if decodes > 1 else ''} on the growing cache")
        elif first:
            parts.append(", ".join(f"{k} {list(v)}" for k, v in shapes.items()))
    outs = [o for o in (ver.get("outputs") or {}).values() if isinstance(o, Mapping) and "max_abs_err" in o]
    if outs:
        worst = max(outs, key=lambda o: o["max_abs_err"] / o["tolerance"] if o.get("tolerance") else 0.0)
        parts.append(f"largest |error| {worst['max_abs_err']:.2g} within a tolerance of {worst.get('tolerance', 0):.2g}")
    return "; ".join(parts)


def _how_to_read(r: Mapping) -> str:
    dt = dominant_dtype(r, "prefill")
    rp = ridge_point(r, dt)
    return ("How to read the roofline: x is an op's arithmetic intensity (FLOPs per byte moved to and "
            "from device memory), y the FLOP/s it attains in the cost model. The roof is "
            f"min(peak, intensity × bandwidth); left of the ridge point ({fmt_intensity(rp)} FLOP/B for {dt} "
            f"on {r['hardware']['name']}) an op can at best be memory-bound, right of it compute-bound. "
            "The gap below the roof (the “of roof” column) is what the efficiencies, kernel ramp-up and "
            "launch overhead cost; big points far below the roof are where time goes to waste.")


def _phase_blocks(r: Mapping, phase: str) -> list[tuple]:
    ph = r["phases"][phase]
    split = ph.get("bytes_split") or {}
    blocks: list[tuple] = [("h2", f"{phase.capitalize()} ({_point(ph)}): {fmt_time(ph['time_s'])}")]
    blocks.append(("p", f"{fmt_flops(ph['flops'])}, {fmt_bytes(ph['bytes'])} moved (weights "
                        f"{fmt_bytes(split.get('weights'))}, activations {fmt_bytes(split.get('activations'))}, "
                        f"KV {fmt_bytes(split.get('kv'))}), intensity {fmt_intensity(ph.get('intensity'))} FLOP/B, "
                        f"{ph['bound']}-bound overall; activation peak {fmt_bytes(ph.get('activation_peak_bytes'))}; "
                        f"{fmt_count(len(ph['ops']))} costed ops."))

    blocks.append(("h3", "Time by op class"))
    rows = [[c["class"], fmt_count(c["ops"]), fmt_time(c["time_s"]), fmt_pct(c["share"]),
             fmt_time(c["compute_s"]), fmt_time(c["memory_s"]), fmt_time(c["latency_s"]),
             fmt_flops(c["flops"]), fmt_bytes(c["bytes"])]
            for c in class_breakdown(r, phase)]
    rows.append(["total", fmt_count(len(ph["ops"])), fmt_time(ph["time_s"]), fmt_pct(1.0 if ph["time_s"] else 0.0),
                 fmt_time(sum(o["time_s"] for o in ph["ops"] if o["bound"] == "compute")),
                 fmt_time(sum(o["time_s"] for o in ph["ops"] if o["bound"] == "memory")),
                 fmt_time(sum(o["time_s"] for o in ph["ops"] if o["bound"] == "latency")),
                 fmt_flops(ph["flops"]), fmt_bytes(ph["bytes"])])
    blocks.append(("table", ["class", "ops", "time", "share", "in compute-bound ops", "in memory-bound ops",
                             "in latency-bound ops", "FLOPs", "bytes"], rows, "lrrrrrrrr"))

    groups = op_groups(r, phase)
    top = groups[:TOP_GROUPS]
    blocks.append(("h3", "Top ops by time"))
    blocks.append(("p", "Ops with identical cost (the same op in every layer) are one row; FLOPs, bytes, "
                        "attainable FLOP/s and time/op are for one op, total and share for the whole row."))
    rows = []
    for i, g in enumerate(top, 1):
        rows.append([str(i), g["op"], fmt_count(g["count"]), f"`{_names(g['names'])}`", g["dtype"] or "",
                     fmt_flops(g["flops"]), fmt_bytes(g["bytes"]), fmt_intensity(g["intensity"]),
                     fmt_rate(g["attainable_flops"]) if g["flops"] else "—",
                     fmt_pct(g["of_roof"]) if g["of_roof"] is not None else "—",
                     g["bound"], fmt_time(g["time_s"]), fmt_time(g["total_time_s"]), fmt_pct(g["share"])])
    blocks.append(("table", ["#", "op", "count", "names", "dtype", "FLOPs", "bytes", "FLOP/B",
                             "attainable", "of roof", "bound", "time/op", "total", "share"], rows,
                   "rlrllrrrrrlrrr"))
    rest = groups[TOP_GROUPS:]
    if rest:
        t = sum(g["total_time_s"] for g in rest)
        blocks.append(("p", f"The other {len(rest)} groups ({fmt_count(sum(g['count'] for g in rest))} ops) "
                            f"take {fmt_time(t)} ({fmt_pct(t / ph['time_s'] if ph['time_s'] else 0.0)})."))
    return blocks


def _delta(before: float | None, after: float | None, fmt) -> str:
    if before is None or after is None:
        return "—"
    if before == after:
        return f"{fmt(after)} (=)"
    rel = f" ({(after - before) / before * 100:+.1f}%)" if before else ""
    return f"{fmt(before)} → {fmt(after)}{rel}"


def _stats_text(stats: Mapping | None) -> str:
    if not stats:
        return "—"
    return ", ".join(f"{k}={_stat_val(v)}" for k, v in stats.items())


def _stat_val(v) -> str:
    if isinstance(v, float):
        return sig(v, 4)
    if isinstance(v, Mapping):
        return "{" + _stats_text(v) + "}"
    return str(v)


def _pass_blocks(r: Mapping) -> list[tuple]:
    passes = r.get("passes") or []
    blocks: list[tuple] = [("h2", "Passes")]
    if not passes:
        blocks.append(("p", "No passes ran (pipeline `none`)."))
        return blocks
    blocks.append(("p", "Predicted cost at the configured workload before and after each pass, in pipeline "
                        "order (`=`: unchanged)."))
    rows = []
    for i, p in enumerate(passes, 1):
        cb, ca = p.get("cost_before") or {}, p.get("cost_after") or {}
        for j, phase in enumerate(phases_of(r)):
            b, a = cb.get(phase) or {}, ca.get(phase) or {}
            rows.append([str(i) if j == 0 else "", p["name"] if j == 0 else "",
                         ("yes" if p.get("changed") else "no") if j == 0 else "",
                         _stats_text(p.get("stats")) if j == 0 else "", phase,
                         _delta(b.get("time_s"), a.get("time_s"), fmt_time),
                         _delta(b.get("flops"), a.get("flops"), fmt_flops),
                         _delta(b.get("bytes"), a.get("bytes"), fmt_bytes)])
    first, last = passes[0].get("cost_before") or {}, passes[-1].get("cost_after") or {}
    for j, phase in enumerate(phases_of(r)):
        b, a = first.get(phase) or {}, last.get(phase) or {}
        rows.append(["", "whole pipeline" if j == 0 else "", "", "", phase,
                     _delta(b.get("time_s"), a.get("time_s"), fmt_time),
                     _delta(b.get("flops"), a.get("flops"), fmt_flops),
                     _delta(b.get("bytes"), a.get("bytes"), fmt_bytes)])
    blocks.append(("table", ["#", "pass", "changed", "stats", "phase", "time", "FLOPs", "bytes"], rows, "rlllllll"))
    return blocks


# ----------------------------------------------------------------------------------------------
# Markdown


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]], aligns: str) -> list[str]:
    out = ["| " + " | ".join(_md_cell(h) for h in headers) + " |",
           "|" + "|".join("---:" if a == "r" else "---" for a in aligns) + "|"]
    out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return out


def render_markdown(r: Mapping) -> str:
    lines: list[str] = []
    for blk in document(r):
        kind = blk[0]
        if kind in ("h1", "h2", "h3"):
            lines += ["#" * int(kind[1]) + " " + blk[1], ""]
        elif kind == "p":
            lines += [blk[1], ""]
        elif kind == "kv":
            lines += [f"- **{k}**: {v}" for k, v in blk[1]] + [""]
        elif kind == "table":
            lines += _md_table(blk[1], blk[2], blk[3]) + [""]
        elif kind == "plot":
            continue  # figures are in report.html
    while lines and lines[-1] == "":
        lines.pop()
    lines += ["", "Plots (roofline, time by class, memory, throughput vs batch) are in report.html."]
    return "\n".join(lines) + "\n"


__all__ = ["render_markdown", "document", "op_groups", "class_breakdown", "bound_split", "dominant_dtype",
           "ridge_point", "roof", "fmt_time", "fmt_bytes", "fmt_flops", "fmt_rate", "fmt_intensity", "fmt_pct",
           "fmt_tok_s"]
