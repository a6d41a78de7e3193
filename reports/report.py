"""Build ``report.json`` (the contract in DESIGN.md) and write the report files.

Everything in the JSON is a function of the config: no timestamps, wall times or absolute paths,
so the same config gives the same bytes.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import sympy

from compiler.ir import B, P, Graph

SCHEMA_VERSION = "1.0"
GB = 1e9


def kv_bytes_per_token(g: Graph) -> float:
    """KV-cache bytes one token of one sequence adds (all layers, K and V, kv_heads — not q heads)."""
    total = 0
    for t in g.inputs:
        if t in set(g.meta.get("kv_tensors", ())):
            ty = g.type(t)
            nbytes = ty.numel() * sympy.Rational(ty.itemsize).limit_denominator(2)
            total += sympy.diff(nbytes, P).subs(B, 1)
    return float(total)


def weights_bytes(g: Graph) -> float:
    from compiler.ops import Classifier
    cls = Classifier(g)
    return float(sum(cls.weight_bytes(p) for p in g.params))


def param_count(g: Graph) -> int:
    return int(sum(int(p.type.numel()) for p in g.params.values() if not p.annotations.get("const")))


def _phase(cm, sched, b: int, s: int, p: int, phase: str) -> dict[str, Any]:
    ops = cm.op_table(b, s, p, phase)
    by_class: dict[str, float] = {}
    bound_time = {"compute": 0.0, "memory": 0.0, "latency": 0.0}
    for o in ops:
        by_class[o["class"]] = by_class.get(o["class"], 0.0) + o["time_s"]
        bound_time[o["bound"]] += o["time_s"]
    flops = sum(o["flops"] for o in ops)
    byts = sum(o["bytes"] for o in ops)
    split = {k: sum(o["bytes_split"][k] for o in ops) for k in ("weights", "activations", "kv")}
    return {
        "point": {"B": b, "S": s, "P": p},
        "time_s": sum(o["time_s"] for o in ops),
        "flops": flops, "bytes": byts, "bytes_split": split,
        "intensity": flops / byts if byts else None,
        "bound": max(bound_time, key=bound_time.get),
        "time_by_class_s": dict(sorted(by_class.items())),
        "activation_peak_bytes": float(sched.activation_peak(b, s, p)[0]),
        "ops": ops,
    }


def build_report(cfg: Mapping, wl: Mapping, hw, g: Graph, cm, sched, records, emit_info) -> dict[str, Any]:
    b, prompt, gen, ctx = wl["batch"], wl["prompt_len"], wl["gen_len"], wl["context_len"]
    prefill = _phase(cm, sched, b, prompt, 0, "prefill")
    decode = _phase(cm, sched, b, 1, ctx, "decode")

    # whole request: TTFT, then gen_len - 1 decode steps over a growing cache
    ttft = prefill["time_s"]
    steps = np.arange(1, gen) if gen > 1 else np.zeros(0)
    step_times = cm.phase_time(b, 1, prompt + steps - 1, "decode") if len(steps) else np.zeros(0)
    e2e = float(ttft + step_times.sum())
    tpot = decode["time_s"]
    throughput = (b * gen / e2e) if gen > 0 else (b * prompt / ttft)

    # memory and capacity
    w_bytes = weights_bytes(g)
    kv_tok = kv_bytes_per_token(g)
    tokens = max(ctx, prompt + gen)
    mem_cfg = dict(cfg.get("memory") or {})
    reserve = float(mem_cfg.get("runtime_reserve_gb", 0.5)) * GB
    act_peak = float(sched.activation_peak(b, prompt, 0)[0])
    kv_total = kv_tok * b * tokens
    capacity = _capacity(cfg, cm, sched, hw, w_bytes, kv_tok, tokens, prompt, ctx, reserve)
    sweep = _throughput_sweep(cm, hw, ctx, capacity["max_batch"], w_bytes, kv_tok, tokens, reserve, sched, prompt)

    report = {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "rooftop", "version": "0.1.0"},
        "model": {
            "name": str(cfg["model"].get("name")), "source": str(cfg["model"].get("source")),
            "dtype": str(cfg["model"].get("dtype", "")), "weights": str(cfg["model"].get("weights", "")),
            "task": g.meta.get("task"), "parameters": param_count(g), "ops": len(g),
            "op_counts": g.ops_by_kind(), "inputs": list(g.inputs), "outputs": list(g.outputs),
            "layers": sum(1 for t in g.inputs if t.startswith("past_key.")),
            "import": g.meta.get("import_stats", {}),
        },
        "hardware": {
            "name": hw.name, "description": hw.description, "vendor": hw.vendor, "kind": hw.kind,
            "peak_flops": dict(hw.peak_flops), "sparse_peak_flops": dict(hw.sparse_peak_flops),
            "memory_bytes": hw.memory_bytes, "memory_bandwidth": hw.memory_bandwidth,
            "ridge_point_fp16": hw.ridge_point("fp16"), "efficiency_source": hw.efficiency.source,
        },
        "workload": dict(wl),
        "pipeline": {"name": str(cfg["pipeline"].get("name", "")),
                     "passes": [r.name for r in records]},
        "passes": [{"name": r.name, "changed": r.changed, "stats": r.stats,
                    "cost_before": r.cost_before, "cost_after": r.cost_after} for r in records],
        "phases": {"prefill": prefill, "decode": decode},
        "memory": {
            "weights_bytes": w_bytes, "kv_cache_bytes": kv_total, "kv_bytes_per_token": kv_tok,
            "kv_tokens_per_sequence": tokens, "activation_peak_bytes": act_peak,
            "runtime_reserve_bytes": reserve, "total_bytes": w_bytes + kv_total + act_peak + reserve,
            "capacity_bytes": hw.memory_bytes,
        },
        "capacity": capacity,
        "latency": {"ttft_s": ttft, "tpot_s": tpot, "e2e_s": e2e, "throughput_tok_s": throughput,
                    "decode_throughput_tok_s": b / tpot},
        "throughput_vs_batch": sweep,
        "emit": {k: v for k, v in emit_info.items() if k != "path"} | ({"file": emit_info["path"]} if "path" in emit_info else {}),
    }
    _dynamic_sections(report, cfg, wl, hw, g, cm, sched,
                      {"tpot_s": tpot, "weights_bytes": w_bytes, "kv_bytes_per_token": kv_tok,
                       "tokens": tokens, "reserve": reserve})
    return _clean(report)


def _dynamic_sections(report, cfg, wl, hw, g, cm, sched, base) -> None:
    """Speculative decoding (phases.verify + ``speculative``) and chunked prefill
    (phases.prefill_chunked): compiler/speculative.py."""
    from compiler import speculative as spec
    if g.meta.get("task") != "causal_lm":
        return
    b, ctx = wl["batch"], wl["context_len"]
    chunk = (cfg.get("workload") or {}).get("prefill_chunk")
    if chunk:
        chunk = int(chunk)
        res = _phase(cm, sched, b, min(chunk, wl["prompt_len"]), 0, spec.attention_class(chunk))
        res.update(spec.chunked_prefill(cm, b, wl["prompt_len"], chunk))
        report["phases"]["prefill_chunked"] = res
        report["latency"]["ttft_chunked_s"] = res["time_s"]
    from compiler import moe
    msec = moe.analyze(g, wl, cfg)
    if msec is not None:
        report["moe"] = msec
    from compiler import early_exit
    esec = early_exit.analyze(cfg, wl, hw, g, cm)
    if esec is not None:
        report["early_exit"] = esec
    sec = spec.analyze(cfg, wl, hw, g, cm, sched, base)
    if sec is not None:
        report["phases"]["verify"] = _phase(cm, sched, b, sec["gamma"] + 1, ctx, spec.attention_class(sec["gamma"] + 1))
        report["speculative"] = sec


def _capacity(cfg, cm, sched, hw, w_bytes, kv_tok, tokens, prompt, ctx, reserve) -> dict[str, Any]:
    batches = np.arange(1, 4097)
    act = sched.activation_peak(batches, prompt, 0)
    need = w_bytes + batches * kv_tok * tokens + act + reserve
    fits = need <= hw.memory_bytes
    max_batch = int(batches[fits].max()) if fits.any() else 0
    beside = int((hw.memory_bytes - w_bytes) // (kv_tok * tokens)) if kv_tok and tokens else None
    out: dict[str, Any] = {"max_batch": max_batch, "tokens_per_sequence": tokens,
                           # sequences whose KV cache fits beside the weights alone (no activations,
                           # no reserve): the first-order figure usually quoted
                           "max_batch_weights_kv_only": beside,
                           "limited_by": "memory" if max_batch < batches[-1] else "search range"}
    slo = dict(cfg.get("slo") or {})
    if slo.get("ttft_ms") is not None or slo.get("tpot_ms") is not None:
        ok = fits.copy()
        cand = batches[: max(max_batch, 1)]
        if slo.get("ttft_ms") is not None:
            ok[: len(cand)] &= cm.phase_time(cand, prompt, 0, "prefill") * 1e3 <= float(slo["ttft_ms"])
        if slo.get("tpot_ms") is not None:
            ok[: len(cand)] &= cm.phase_time(cand, 1, ctx, "decode") * 1e3 <= float(slo["tpot_ms"])
        ok[len(cand):] = False
        out["max_batch_slo"] = int(batches[ok].max()) if ok.any() else 0
        out["slo"] = {k: slo.get(k) for k in ("ttft_ms", "tpot_ms")}
    return out


def _throughput_sweep(cm, hw, ctx, max_batch, w_bytes, kv_tok, tokens, reserve, sched, prompt) -> list[dict]:
    top = max(64, 2 * max(max_batch, 1))
    batches = np.unique(np.concatenate([2 ** np.arange(0, int(np.log2(min(top, 4096))) + 1),
                                        [max(max_batch, 1)]])).astype(int)
    tpot = cm.phase_time(batches, 1, ctx, "decode")
    need = w_bytes + batches * kv_tok * tokens + sched.activation_peak(batches, prompt, 0) + reserve
    return [{"batch": int(bb), "tpot_s": float(t), "throughput_tok_s": float(bb / t), "fits": bool(n <= hw.memory_bytes)}
            for bb, t, n in zip(batches, tpot, need)]


def _clean(x):
    """JSON-safe: numpy scalars to Python, sympy numbers to float, NaN to None."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        f = float(x)
        return f if np.isfinite(f) else None
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, sympy.Basic):
        return float(x) if x.is_number else str(x)
    return x


def write_reports(report: Mapping, out_dir: str, *, html: bool = True) -> list[str]:
    from reports.markdown import render_markdown
    files = []
    _write(os.path.join(out_dir, "report.json"), json.dumps(report, indent=1) + "\n")
    files.append("report.json")
    _write(os.path.join(out_dir, "report.md"), render_markdown(report))
    files.append("report.md")
    if html:
        from reports.html import render_html
        _write(os.path.join(out_dir, "report.html"), render_html(report))
        files.append("report.html")
    return files


def _write(path: str, text: str):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
