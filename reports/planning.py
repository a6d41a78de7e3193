"""Report blocks for serving memory and scale: capacity planning of the KV cache
(``capacity.kv``), the parallel plan (``parallel``) and the serving simulation (``serve``), with the
serving figure slot (reports/plots.py fig_serving). Pure functions of report.json."""
from __future__ import annotations

from collections.abc import Mapping

from reports.format import fmt_time


def _ms(s) -> str:
    return "—" if s is None else fmt_time(s)


def _gb(b) -> str:
    return "—" if b is None else f"{b / 1e9:.4g} GB"


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f} %"


def blocks(r: Mapping) -> list[tuple]:
    cap = r.get("capacity") or {}
    kv, par, serve = cap.get("kv"), r.get("parallel"), r.get("serve")
    if not (kv or par or serve):
        return []
    out: list[tuple] = [("h2", "Serving memory and scale")]
    if cap.get("note"):
        out.append(("p", f"Memory: the model {cap['note']}"))
    if kv:
        out += _capacity_blocks(r, kv)
    if par:
        out += _parallel_blocks(r, par)
    if serve:
        out += _serve_blocks(serve)
    return out


def _capacity_blocks(r: Mapping, kv: Mapping) -> list[tuple]:
    c, p = kv["contiguous"], kv["paged"]
    seq = kv.get("sequence_tokens") or {}
    where = "per device (parallel plan)" if kv.get("per_device") else "on one device"
    util = kv.get("gpu_utilization", 1.0)
    rows = [
        ("KV budget", f"{_gb(kv['kv_budget_bytes'])} {where} = memory {_gb(r['hardware']['memory_bytes'])} × "
                      f"gpu_utilization {util:g} − weights − activation peak − runtime reserve"
                      + (" (negative: the model does not fit)" if kv["kv_budget_bytes"] < 0 else "")),
        ("KV per token", f"{kv['kv_bytes_per_token'] / 2 ** 10:.4g} KiB in {kv.get('kv_dtype', '?')} "
                         f"(2 × layers × KV heads × head dim × bytes/element)"),
        ("kv_blocks", f"{kv['kv_blocks']} blocks of {kv['tokens_per_block']} tokens "
                      f"({kv['kv_blocks'] * kv['tokens_per_block']} tokens)"),
        ("requests", f"{seq.get('mean', 0):.4g} tokens on average (prompt + generated), longest {seq.get('max')}; "
                     f"kv.max_model_len {kv['max_model_len']}"),
    ]
    table = [
        ["contiguous (reserve max_model_len)", str(c["max_sequences"]),
         f"{c['reservation_waste_tokens']:.4g} tokens ({_pct(c['reservation_waste_fraction'])}) reserved, unused", "—"],
        ["paged (blocks on demand)", str(p["max_sequences"]) +
         (f" (≥ {p['max_sequences_guaranteed']} at the longest)" if p.get("max_sequences_guaranteed") != p["max_sequences"] else ""),
         f"{p['fragmentation_tokens']:.3g} tokens ({_pct(p['fragmentation_fraction'])}) in last blocks",
         f"{p['vs_contiguous']:.3g}×" if p.get("vs_contiguous") else "—"],
    ]
    return [("h3", f"Capacity planning (kv={kv['kv_layout']})"), ("kv", rows),
            ("table", ["layout", "max concurrent sequences", "waste per sequence", "vs contiguous"], table, "lrrr")]


def _parallel_blocks(r: Mapping, par: Mapping) -> list[tuple]:
    out: list[tuple] = [("h3", f"Parallelism (tp={par['tp']}, pp={par['pp']}, ep={par['ep']}: "
                                f"{par['devices']} device{'s' if par['devices'] > 1 else ''})")]
    mem = par["memory_per_device"]
    opts = (par.get("tp_options") or {}).get("options") or []
    best = (par.get("tp_options") or {}).get("min_tp_that_fits")
    out.append(("p", f"Memory per device: weights {_gb(mem['weights_bytes'])} + KV cache {_gb(mem.get('kv_cache_bytes'))} "
                     f"+ activations {_gb(mem.get('activation_peak_bytes'))} + reserve {_gb(mem.get('runtime_reserve_bytes'))} "
                     f"= {_gb(mem['total_bytes'])} of {_gb(mem.get('usable_bytes'))} usable — "
                     + ("fits." if mem["fits"] else "does not fit.")
                     + (f" Smallest tensor-parallel degree that fits: tp={best}"
                        + (f" (with pp={par['pp']})." if par.get("pp", 1) > 1 else ".") if best else
                        " No tensor-parallel degree within the node fits.")))
    if opts:
        out.append(("table", ["tp", "weights per device", "total per device", "fits"],
                    [[str(o["tp"]), _gb(o.get("weights_bytes")), _gb(o["total_bytes"]), "yes" if o["fits"] else "no"]
                     for o in opts], "rrrl"))
    phases = par.get("phases") or {}
    if phases:
        rows = []
        for name, ph in phases.items():
            link = sum((ph.get("link_bytes_per_device") or {}).values())
            rows.append([name, _ms(ph["time_s"]), _ms(ph.get("single_device_time_s")),
                         f"{ph['speedup']:.3g}×" if ph.get("speedup") else "—",
                         _ms(ph["compute_time_s"]), _ms(ph["memory_time_s"]), _ms(ph["comm_time_s"]),
                         f"{link / 1e6:.4g} MB", f"{ph.get('bubble_fraction', 0):.2g}"])
        out.append(("table", ["phase", "time (plan)", "one device", "speed-up", "compute / device",
                              "memory / device", "communication", "link bytes / device", "bubble"], rows, "lrrrrrrrr"))
        out.append(("p", f"{par.get('allreduces_per_forward', 0)} all-reduces per forward (two per layer: attention "
                         f"output and MLP down, row-parallel; plus a vocabulary-parallel embedding), each "
                         f"latency + 2(n − 1)/n × bytes / bus bandwidth; {par.get('all_to_alls_per_forward', 0)} "
                         f"all-to-alls (MoE experts). Collective figures: {par.get('collectives_source', '?')}. "
                         f"The report's TTFT/TPOT are this plan's; the per-op tables below are the whole model on one device."))
    return out


def _serve_blocks(s: Mapping) -> list[tuple]:
    slo = s.get("slo") or {}
    cond = ", ".join(f"{k.split('_')[0].upper()} ≤ {_ms(v)}" for k, v in (("ttft_s", slo.get("ttft_s")),
                                                                         ("tpot_s", slo.get("tpot_s"))) if v)
    pl, ol = s.get("prompt_len") or {}, s.get("output_len") or {}

    def dist(d):
        return (f"{d.get('mean'):g}" if d.get("kind") == "fixed" else
                f"{d.get('kind')} mean {d.get('mean'):g} [{d.get('low')}, {d.get('high')}]")
    rows = [["continuous" + (" (chunked prefill)" if s.get("policy") == "continuous_chunked" else ""), f"{s['throughput_tok_s']:.4g}", _ms(s["ttft_p50_s"]),
             _ms(s["ttft_p99_s"]), _ms(s["tpot_p50_s"]), _ms(s["tpot_p99_s"]), _pct(s.get("slo_attainment")),
             f"{s.get('mean_batch', 0):.3g}", str(s.get("preemptions", 0))]]
    st = s.get("static")
    if st:
        rows.append([f"static (batch ≤ {st.get('max_batch_static')})", f"{st['throughput_tok_s']:.4g}",
                     _ms(st["ttft_p50_s"]), _ms(st["ttft_p99_s"]), _ms(st["tpot_p50_s"]), _ms(st["tpot_p99_s"]),
                     _pct(st.get("slo_attainment")), f"{st.get('mean_batch', 0):.3g}", "—"])
    out: list[tuple] = [
        ("h3", "Serving simulation"),
        ("p", f"{s['requests']} requests, Poisson arrivals at {s['rate']:g}/s, prompt {dist(pl)} tokens, output "
              f"{dist(ol)} tokens; {s.get('layout')} KV cache of {s.get('kv_blocks')} blocks × {s.get('block_size')} "
              f"tokens. An iteration-level scheduler (admit while blocks remain, prefill stalls decodes"
              f"{'' if s.get('policy') != 'continuous_chunked' else ', chunked prefill'}, preempt when blocks run "
              f"out) driven by the cost model's step times" + (f"; SLOs {cond}, target {_pct(slo.get('target'))}" if cond else "")
              + "."),
        ("table", ["policy", "tokens/s", "TTFT p50", "TTFT p99", "TPOT p50", "TPOT p99", "SLO attainment",
                   "mean batch", "preemptions"], rows, "lrrrrrrrr"),
    ]
    if s.get("max_rate_meeting_slo") is not None:
        out.append(("p", f"Largest arrival rate meeting the SLOs: {s['max_rate_meeting_slo']:.4g} requests/s."))
    out.append(("plot", "serving", "Generated tokens/s (continuous vs static batching) and TTFT/TPOT p99 versus the "
                                   "Poisson arrival rate; the SLO lines and the largest rate meeting them are marked."))
    return out
