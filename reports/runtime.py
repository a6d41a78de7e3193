"""Report blocks for the runtime profile (report.json ``runtime``): the engine the prediction
describes, the kernels it runs where they differ from the hardware's calibrated classes, its host
overheads, and the engine beside the roofline bound ("this engine reaches N % of the bound here,
the gap is …"). Pure functions of report.json."""
from __future__ import annotations

from collections.abc import Mapping

from reports.format import fmt_pct, fmt_time

_PART_WORDS = {"gemm": "GEMM kernels below peak", "attention": "attention kernels below peak",
               "moe_experts": "MoE expert GEMMs", "vector": "vector kernels (norms, activations, copies)",
               "host": "host time (scheduling, sampling)"}


def _band(k: Mapping) -> str:
    b = k.get("error_band") or {}
    if b.get("median") is None:
        return "—"
    return f"±{100 * b['median']:.0f} %" + (f" (p90 ±{100 * b['p90']:.0f} %)" if b.get("p90") is not None else "")


def gap_sentence(rt: Mapping, phase: str) -> str | None:
    roof = rt.get("roofline") or {}
    ph = roof.get(phase)
    if not ph or not ph.get("fraction_of_bound"):
        return None
    gap = {k: v for k, v in ph["gap_s"].items() if v > 0}
    total = sum(gap.values())
    if total <= 0:
        return (f"In {phase} ({fmt_time(ph['time_s'])} per step) this engine is at the roofline bound "
                f"({fmt_time(ph['bound_s'])}).")
    parts = sorted(gap.items(), key=lambda kv: (-kv[1], kv[0]))
    words = "; ".join(f"{_PART_WORDS.get(k, k)} {fmt_time(v)} ({fmt_pct(v / total, 0)})" for k, v in parts)
    return (f"In {phase} this engine reaches {fmt_pct(ph['fraction_of_bound'], 0)} of the roofline bound here: "
            f"{fmt_time(ph['time_s'])} per step against {fmt_time(ph['bound_s'])} at datasheet peak FLOP/s and "
            f"bandwidth. The gap of {fmt_time(total)} is {words}.")


def blocks(r: Mapping) -> list[tuple]:
    rt = r.get("runtime")
    if not rt:
        return []
    out: list[tuple] = [("h2", "Runtime")]
    out.append(("p", f"The figures describe `runtime={rt['name']}`: {rt.get('engine', '')}"
                     + (f" — {rt['description']}" if rt.get("description") else "") + "."))
    for phase in ("decode", "prefill"):
        s = gap_sentence(rt, phase)
        if s:
            out.append(("p", s))
    rows = []
    for fam, k in sorted((rt.get("kernels") or {}).items()):
        rows.append([f"`{fam}`", k["kernel"], k["model"], k["source"], _band(k)])
    if rows:
        out.append(("table", ["op family", "kernel", "priced by", "source", "error band"], rows, "lllll"))
    host = rt.get("host_overheads_s") or {}
    hrows = [[k.replace("_us", ""), fmt_time(v["value"]), v["source"], _band(v)] for k, v in sorted(host.items())
             if v.get("value")]
    if hrows:
        out.append(("table", ["host time", "value", "source", "error band"], hrows, "lrll"))
    sd = rt.get("serve_defaults") or {}
    if sd:
        out.append(("p", f"Scheduler defaults (serve.* left null): max {sd['max_num_seqs']} sequences and "
                         f"{sd['max_batched_tokens']} batched tokens per step, admission `{sd['admission']}`, "
                         f"{fmt_pct(sd['gpu_utilization'], 0)} of device memory"
                         + (f" ({sd['source']})" if sd.get("source") else "") + "."))
    return out
