"""Report blocks for data-dependent execution: speculative decoding (with the γ sweep), MoE routing
and early exit (report.json sections ``speculative``, ``moe``, ``early_exit``)."""
from __future__ import annotations

from collections.abc import Mapping


def _ms(s) -> str:
    return "—" if s is None else f"{s * 1e3:.4g} ms"


def _gb(b) -> str:
    return "—" if b is None else f"{b / 1e9:.4g} GB"


def blocks(r: Mapping) -> list[tuple]:
    out: list[tuple] = []
    s, m, e = r.get("speculative"), r.get("moe"), r.get("early_exit")
    chunk = (r.get("phases") or {}).get("prefill_chunked")
    if not (s or m or e or chunk):
        return out
    out.append(("h2", "Dynamic execution"))
    if chunk:
        out.append(("p", f"Chunked prefill: {chunk['chunks']} chunks of {chunk['chunk']} tokens (each a step with "
                         f"S = chunk, P = offset) take {_ms(chunk['time_s'])} against "
                         f"{_ms(r['latency']['ttft_s'])} in one step."))
    if s:
        d = s["draft"]
        out.append(("h3", "Speculative decoding"))
        out.append(("kv", [
            ("draft", f"{d['name']}" + (f" (first {d['layers']} layers + head, shared weights)" if d["name"] == "self" else
                                        f" ({_gb(d.get('weights_bytes'))} weights)")),
            ("γ, acceptance α", f"{s['gamma']}, {s['acceptance']:.3g} ({s['acceptance_source']['source']})"),
            ("expected tokens per step", f"{s['expected_tokens_per_step']:.3f} = (1 − α^(γ+1)) / (1 − α)"),
            ("step", f"{s['gamma']} draft steps {_ms(s['draft_s'])} + verify of {s['gamma'] + 1} tokens "
                     f"{_ms(s['verify_s'])} ({s['verify_over_decode']:.3g}× one target decode step)"),
            ("TPOT", f"{_ms(s['tpot_s'])} vs {_ms(s['target_tpot_s'])} without a draft: speed-up {s['speedup']:.3g}×"),
            ("best γ for this α", f"{s['best_gamma']} (speed-up {s['best_speedup']:.3g}×)"),
            ("max batch with the draft resident", str(s["capacity"]["max_batch"])),
        ]))
        out.append(("plot", "speculative", "Speculative decoding versus γ at the given acceptance rate: "
                                           "TPOT and speed-up; the optimum is marked."))
        out.append(("table", ["γ", "tokens/step", "draft", "verify", "TPOT", "speed-up"],
                    [[str(x["gamma"]), f"{x['expected_tokens_per_step']:.3f}", _ms(x["draft_s"]), _ms(x["verify_s"]),
                      _ms(x["tpot_s"]), f"{x['speedup']:.3g}×"] for x in s["gamma_sweep"]], "rrrrrr"))
    if m:
        out.append(("h3", "Mixture of experts"))
        out.append(("kv", [
            ("experts", f"{m['experts']} routed, top-{m['top_k']}, {m['shared_experts']} shared, {m['layers']} MoE layers"),
            ("routing", m["routing"]["distribution"] + (f" (skew {m['routing']['skew']})" if m["routing"]["distribution"] == "zipf" else "")),
            ("distinct experts per layer", ", ".join(f"{ph} {v:.3g} ({m['tokens_per_step'][ph]} tokens)"
                                                     for ph, v in m["distinct_experts"].items())),
            ("expert weights", f"{_gb(m['expert_weights_bytes'])} resident; read per step: "
                               + ", ".join(f"{ph} {_gb(v)}" for ph, v in m["expert_weights_read_bytes"].items())),
        ]))
    if e:
        out.append(("h3", "Early exit"))
        out.append(("kv", [
            ("exits", ", ".join(f"after layer {x['layer']} (p = {x['probability']:.3g})" for x in e["exits"])
             + f" of {e['layers']} layers ({e['probability_source']})"),
            ("expected depth", f"{e['expected_depth']:.3g} layers per token; expected max over the batch of "
                               f"{e['batch']}: {e['expected_max_depth']:.3g}"),
            ("TPOT", f"{_ms(e['tpot_s'])} vs {_ms(e['full_tpot_s'])} full depth: speed-up {e['speedup']:.3g}× "
                     f"(single stream {e['single_stream_speedup']:.3g}×)"),
            ("skipped layers' K/V", f"{e['kv_policy']}: " + (f"K/V GEMMs on the exit state {_ms(e['kv_fill_s'])} per step"
                                                           if e["kv_policy"] == "propagate" else
                                                           f"{_ms(e['deferred_recompute_s'])} of layers rerun later per step "
                                                           f"(throughput speed-up {e['throughput_speedup']:.3g}×)")),
            ("agreement with the full model", "not measured (probabilities given)" if e.get("agreement") is None
             else f"{e['agreement']:.3g} on {e['calibration']['tokens']} evaluation tokens"),
        ]))
    return out
