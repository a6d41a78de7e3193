"""Report blocks for lossy compression (report.json ``compression``, ``weight_formats``,
``accuracy``): the scheme, the kernel each prediction assumes and where its measured curve wins
against the dense GEMM for this workload, stored bytes per parameter group, the measured accuracy,
and the 2:4 decisions."""
from __future__ import annotations

from collections.abc import Mapping

from compiler.perf.kernel_families import interp_log_m
from reports.format import fmt_bytes, fmt_time


def workload_rows(r: Mapping) -> dict[str, int]:
    """Activation rows M of a weight GEMM in each phase at the configured workload."""
    wl = r.get("workload") or {}
    b, s = int(wl.get("batch") or 1), int(wl.get("prompt_len") or 1)
    out = {"prefill": b * s}
    if "decode" in (r.get("phases") or {}):
        out["decode"] = b
    return out


def ratio_at(points, m: float) -> float:
    """The cost model's reading of a measured curve (compiler.perf.kernel_families.interp_log_m)."""
    return float(interp_log_m(points, m))


def _format(f: Mapping) -> str:
    if "bits" not in f:
        return f["dtype"] + (f", {f['nm'][0]}:{f['nm'][1]}" if f.get("nm") else "")
    g = f"groups of {f['group_size']}" if f.get("granularity") == "group" else f"per {f.get('granularity')}"
    z = "symmetric" if f.get("symmetric") else "zero point"
    return f"{f['dtype']}, {g}, {z}" + (f", {f['nm'][0]}:{f['nm'][1]}" if f.get("nm") else "")


def auto_lines(a: Mapping) -> list[tuple[str, str]]:
    """quant=auto's summary lines: objective, budget, what was chosen and what it is predicted to gain."""
    fm = ", ".join(f"{k} ×{v}" for k, v in a["formats_chosen"].items())
    t0, t1 = a["predicted_time_keep_s"], a["predicted_time_s"]
    b0, b1 = a["weight_bytes_keep"], a["predicted_weight_bytes"]
    out = [("quantization", f"auto: a format per layer minimizing the predicted {'request time' if a['objective'] == 'time' else 'stored weight bytes'} "
                            f"with a {a['metric_name']} drop ≤ {a['max_accuracy_drop']:g} ({a['budget_source']}); "
                            f"candidates {', '.join(a['formats'])} or keep"),
           ("chosen", f"{a['chosen']}: {fm}; predicted request time {fmt_time(t1)} vs {fmt_time(t0)} unquantized "
                      f"({t1 / t0:.3g}×), weights {fmt_bytes(b1)} vs {fmt_bytes(b0)} ({b1 / b0:.3g}×); {a['metric_name']} "
                      f"drop {a['measured_drop']:.3g} measured on the simulated formats "
                      f"({len(a['candidates'])} candidates measured, {sum(1 for c in a['candidates'] if c['pareto'])} "
                      f"on the Pareto front)")]
    if a.get("artifact_drop") is not None:
        out.append(("emitted artifact", f"{a['metric_name']} drop {a['artifact_drop']:.3g} measured on the artifact "
                                        f"(onnxruntime, the accuracy stage) — "
                                        + ("within" if a["artifact_within_budget"] else "OVER")
                                        + f" the budget {a['max_accuracy_drop']:g}"))
    if a.get("kept"):
        out.append(("not searched", ", ".join(f"{k} ({v})" for k, v in sorted(a["kept"].items()))))
    return out


def blocks(r: Mapping) -> list[tuple]:
    c = r.get("compression")
    if not c:
        return []
    out: list[tuple] = [("h2", "Compression")]
    q, sp = c.get("quantization"), c.get("sparsity")
    kv = []
    auto = (q or {}).get("auto")
    if q and auto:
        kv += auto_lines(auto)
    elif q:
        act = f"; activations {q['activations']}" if q.get("activations") else ""
        kv.append(("quantization", f"{q['scheme']}: {q['weight_dtype']} weights, "
                                   + (f"groups of {q['group_size']}" if q.get("group_size") else "per channel")
                                   + (", symmetric" if q.get("symmetric") else ", zero point")
                                   + f", {q['method']}{act}"))
    if q and q.get("excluded"):
        kv.append(("kept in original precision", ", ".join(f"{k} ({v})" for k, v in sorted(q["excluded"].items()))))
    if q and q.get("onnxruntime"):
        kv.append(("on onnxruntime CPU", q["onnxruntime"]))
    for e in (q or {}).get("embeddings") or []:
        head = (f"; shared by the tied head {', '.join(e['tied_heads'])} ({e['head_kernel']})" if e.get("tied_heads")
                else "")
        kv.append((f"embedding table {e['table']}", f"{e['weight_dtype']} in blocks of {e['block_size']} along each row "
                                                    f"({e['format']}), dequantized after the gather{head}"))
    kvc = c.get("kv_cache")
    if kvc:
        if kvc.get("emitted"):
            chk = kvc.get("check") or {}
            text = (f"{kvc['stored_dtype']} in the artifact, {kvc['granularity']} scales calibrated on "
                    f"{kvc['calibration']['samples']} paragraphs ({kvc['calibration']['scale']}); {kvc['kernel']}")
            if chk.get("checked"):
                tol = chk["tolerance"]
                text += (f"; against the float cache over a prefill of {chk['prefill']} and {chk['decode_steps']} decode "
                         f"steps: KL {chk['mean_kl_nats']:.3g} nats (tolerance {tol['mean_kl_nats']:g}), logits within "
                         f"{chk['max_rel_logit_diff']:.3g} of their largest value (tolerance {tol['max_rel_logit_diff']:g}), "
                         f"first layer's codes exact")
        else:
            text = f"{kvc['dtype']} costed, not in the artifact: {kvc.get('reason', '')}"
        kv.append(("KV cache", text))
    if sp:
        refused = [d for d in sp.get("decisions", []) if not d.get("pruned")]
        kv.append(("sparsity", f"{sp['n']}:{sp['m']} {sp['method']}: {sp['pruned']} layers pruned, {sp['refused']} refused"
                               + (f" (cost-aware; predicted payoff {fmt_time(sp['predicted_payoff_s'])} per request)"
                                  if sp.get("cost_aware") else "")))
        if refused:
            why = refused[0]["reason"].removeprefix("refused: ")
            kv.append((f"why refused ({refused[0]['weight']})", why + (f"; {len(refused) - 1} more layers refused"
                                                                        if len(refused) > 1 else "")))
    rows = workload_rows(r)
    for k in c.get("kernels", []):
        text = k["source"]
        cv = k.get("ratio_vs_dense")
        if cv:
            text += "; at this workload " + ", ".join(
                f"{ph} (M = {m}) {ratio_at(cv['points'], m):.3g}× the dense GEMM" for ph, m in rows.items())
        kv.append((f"kernel: {k['kernel']}", text))
    if c.get("cost_only"):
        kv.append(("cost only", c.get("note") or "meta weights: formats priced, no artifact or accuracy"))
    out.append(("kv", kv))
    if any(k.get("ratio_vs_dense") for k in c.get("kernels", [])):
        out.append(("plot", "compression", "Each quantized/sparse GEMM kernel the prediction assumes: its measured time "
                                           "relative to the dense GEMM of the same shape over the rows M it processes "
                                           "(below 1: the kernel wins); the workload's prefill and decode rows are marked."))
    if auto:
        out.append(("plot", "quant_auto", f"quant=auto: {auto['metric_name']} drop measured end to end against the "
                                          f"predicted request time of every candidate the search tried (the knapsack "
                                          f"at several budgets, each uniform format); the Pareto front joined, the "
                                          f"budget dashed, the chosen one starred."))
        out.append(("table", ["layer", "weight", "block", "format", "predicted gain", "stored", "drop alone"],
                    [[("" if x["layer"] is None else str(x["layer"])), x["weight"], x["block"], x["format"],
                      fmt_time(x["predicted_gain_s"]),
                      f"{fmt_bytes(x['stored_bytes']['keep'])} → {fmt_bytes(x['stored_bytes']['chosen'])}",
                      ("0" if x["format"] == "keep" else f"{x['drop'][x['format']]:.3g}")]
                     for x in auto["layers"]], "rllllrr"))
    wf = [g for g in r.get("weight_formats") or [] if g.get("stored_bytes") != g.get("dense_bytes")
          or "bits" in g.get("format", {})]
    if wf:
        out.append(("table", ["parameter group", "format", "count", "dense", "stored", "bits/value"],
                    [[g["group"], _format(g["format"]), str(g["count"]), fmt_bytes(g["dense_bytes"]),
                      fmt_bytes(g["stored_bytes"]), f"{g['bits_per_value']:.3g}"] for g in wf], "llrrrr"))
    a = r.get("accuracy")
    if a is not None:
        if a.get("measured"):
            d = a.get("distribution") or {}
            extra = ""
            if a.get("kl_nats"):
                extra += f"; KL {a['kl_nats']['mean']:.3g} nats"
            if a.get("perplexity"):
                extra += f"; perplexity {a['perplexity']['value']:.4g} vs {a['perplexity']['reference']:.4g}"
            out.append(("p", f"Accuracy ({a.get('runtime', 'onnxruntime')}): {a['metric']} {a['value']:.4g} against "
                             f"{a['reference']:.4g} for the uncompressed model (drop {a['drop']:.3g}) over {a['samples']} "
                             f"samples / {a['tokens']} tokens of {a.get('text', 'the evaluation text')}; per sample min "
                             f"{d.get('min', float('nan')):.4g}, median {d.get('median', float('nan')):.4g}{extra}."))
        else:
            out.append(("p", f"Accuracy not measured: {a.get('reason', 'no artifact')}."))
    return out
