"""Report blocks and figures for disaggregated serving (``serve.disaggregated``), prefix caching
(``serve.prefix``) and the sizing search (``sizing``) — pure functions of report.json.

Figures (drawn into report.html by reports/plots.py, same determinism rules):

- ``disaggregated``: SLO attainment against the offered rate per GPU for the disaggregated and the
  co-located pool of the same GPU count (goodput per GPU marked), and TTFT / TPOT p50 and p99
  against the rate for both;
- ``sizing``: the simulated candidates' cost per hour against goodput at the target rate, the
  Pareto front joined and the chosen configuration marked.
"""
from __future__ import annotations

from collections.abc import Mapping

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from reports.format import fmt_time

DPI = 100
COLORS = {"disaggregated": "#d62728", "colocated": "#1f77b4"}


def _fig(w: float, h: float, *, left=0.75, right=0.2, top=0.35, bottom=1.6, wspace=0.28) -> Figure:
    fig = Figure(figsize=(w, h), dpi=DPI)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=left / w, right=1 - right / w, top=1 - top / h, bottom=bottom / h, wspace=wspace)
    return fig


def _ms(s) -> str:
    return "—" if s is None else fmt_time(s)


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f} %"


def fig_disaggregated(r: Mapping) -> Figure:
    d = ((r.get("serve") or {}).get("disaggregated")) or {}
    sweep = sorted(d.get("sweep") or [], key=lambda x: x["rate"])
    fig = _fig(13, 5.0)
    ax1, ax2, ax3 = fig.subplots(1, 3)
    if not sweep:
        ax1.text(0.5, 0.5, "no disaggregated simulation in the report", ha="center", va="center",
                 transform=ax1.transAxes)
        return fig
    x = [p["rate_per_gpu"] for p in sweep]
    good = d.get("goodput") or {}
    co = d.get("colocated") or {}
    names = {"disaggregated": f"disaggregated {d['prefill']['instances']}P{d['decode']['instances']}D "
                              f"({d['prefill']['hardware']} tp{d['prefill']['tp']} / {d['decode']['hardware']} "
                              f"tp{d['decode']['tp']})",
             "colocated": f"co-located {co.get('replicas')} x {co.get('hardware')} tp{co.get('tp')}"}
    for mode in ("colocated", "disaggregated"):
        ax1.plot(x, [100 * (p[mode]["slo_attainment"] or 0) for p in sweep], marker="o", ms=4,
                 color=COLORS[mode], label=names[mode])
        g = good.get(f"{mode}_per_gpu_req_s")
        if g:
            ax1.axvline(g, color=COLORS[mode], lw=1.0, ls="--")
    tgt = (d.get("slo") or {}).get("target")
    if tgt:
        ax1.axhline(100 * tgt, color="0.4", lw=1.0, ls=":", label=f"target {100 * tgt:.0f} % (goodput: dashed)")
    ax1.set_ylim(0, 105)
    ax1.set_xlabel("requests/s per GPU")
    ax1.set_ylabel("SLO attainment (%)")
    ax1.set_title("goodput vs rate")
    ax1.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    slo = d.get("slo") or {}
    for ax, key, name in ((ax2, "ttft", "TTFT"), (ax3, "tpot", "TPOT")):
        for mode in ("colocated", "disaggregated"):
            ax.plot(x, [p[mode][f"{key}_p50_s"] * 1e3 for p in sweep], marker="o", ms=3, color=COLORS[mode],
                    ls="-", label=f"{mode} p50")
            ax.plot(x, [p[mode][f"{key}_p99_s"] * 1e3 for p in sweep], marker="s", ms=3, color=COLORS[mode],
                    ls="--", label=f"{mode} p99")
        if slo.get(f"{key}_s"):
            ax.axhline(slo[f"{key}_s"] * 1e3, color="0.3", lw=1.0, ls="-.", label=f"{name} SLO")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _p: f"{v:g}" if f"{v:g}"[0] in "2458" else ""))
        ax.set_xlabel("requests/s per GPU")
        ax.set_ylabel("ms")
        ax.set_title(f"{name} percentiles vs rate")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    return fig


def fig_sizing(r: Mapping) -> Figure:
    s = r.get("sizing") or {}
    fig = _fig(8, 5.2, bottom=0.7)
    ax = fig.subplots(1, 1)
    front = s.get("front") or []
    if not front:
        ax.text(0.5, 0.5, "no sizing result", ha="center", va="center", transform=ax.transAxes)
        return fig
    for mode, marker in (("colocated", "o"), ("disaggregated", "^")):
        pts = [p for p in front if p["mode"] == mode]
        if pts:
            ax.scatter([p["cost_per_hour"] for p in pts], [p["goodput_req_s"] for p in pts], marker=marker, s=30,
                       color=COLORS[mode], label=f"front: {mode}", zorder=3)
    ax.plot([p["cost_per_hour"] for p in front], [p["goodput_req_s"] for p in front], color="0.5", lw=1.0, zorder=2)
    best = s.get("best")
    if best:
        ax.scatter([best["cost_per_hour"]], [best["goodput_req_s"]], s=160, facecolors="none", edgecolors="k",
                   lw=1.5, zorder=4, label=f"chosen: {best['label']} (${best['cost_per_hour']:.2f}/h)")
    ax.axhline(s["rate"] * (s.get("slo") or {}).get("target", 1.0), color="#2ca02c", lw=1.0, ls="--",
               label=f"target: {s['rate']:g} req/s x attainment {(s.get('slo') or {}).get('target', 1.0):g}")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"${v:.3g}"))
    ax.set_xlabel("cost (US dollars per hour, list prices)")
    ax.set_ylabel("goodput at the target rate (requests/s meeting both SLOs)")
    ax.set_title(f"sizing: Pareto front of {s.get('simulated')} simulated of {s.get('candidates')} candidates")
    ax.legend(loc="lower right", frameon=True)
    return fig


FIGURES = {"disaggregated": fig_disaggregated, "sizing": fig_sizing}


def figure_names(r: Mapping) -> tuple[str, ...]:
    return ((("disaggregated",) if ((r.get("serve") or {}).get("disaggregated")) else ())
            + (("sizing",) if r.get("sizing") else ()))


# --------------------------------------------------------------------------- Markdown / HTML blocks

def serve_blocks(s: Mapping) -> list[tuple]:
    out: list[tuple] = []
    p = s.get("prefix")
    if p:
        w, wo = p.get("with_cache") or {}, p.get("without_cache") or {}
        what = (f"{p['turns']}-turn conversations (each turn re-sends the history)" if p["model"] == "multi_turn"
                else f"{_pct(p['share'])} of requests share one of {p['prefixes']} prefixes of {p['prefix_len']} tokens")
        out += [("h3", "Prefix caching"),
                ("p", f"{what}; whole {p['block_size']}-token blocks reused. Hit rate {_pct(p['hit_rate'])} of prompt "
                      f"tokens ({_pct(p['requests_hit'])} of requests hit); prefill FLOPs saved "
                      f"{_pct(p['prefill_flops_saved_fraction'])}; pinned shared blocks {p['pinned_blocks']}."),
                ("table", ["", "TTFT p50", "TTFT p99", "tokens/s", "SLO attainment", "mean prefill",
                           "blocks / request", "sequences in the KV budget"],
                 [["with the cache", _ms(w.get("ttft_p50_s")), _ms(w.get("ttft_p99_s")),
                   f"{w.get('throughput_tok_s', 0):.4g}", _pct(w.get("slo_attainment")), _ms(p["prefill_time_mean_s"]),
                   f"{p['blocks_per_request_mean']:.3g}", f"{p['sequences_at_mean']:.3g}"],
                  ["without", _ms(wo.get("ttft_p50_s")), _ms(wo.get("ttft_p99_s")),
                   f"{wo.get('throughput_tok_s', 0):.4g}", _pct(wo.get("slo_attainment")),
                   _ms(p["prefill_time_mean_without_cache_s"]), f"{p['blocks_per_request_mean_without_cache']:.3g}",
                   f"{p['sequences_at_mean_without_cache']:.3g}"]], "lrrrrrrr")]
    d = s.get("disaggregated")
    if d:
        pf, dc, co, ln = d["prefill"], d["decode"], d["colocated"], d["link"]
        g = d.get("goodput") or {}
        rows = []
        for name, row, devs in (("disaggregated", d["at_rate"], d["devices"]), ("co-located", co["at_rate"], co["devices"])):
            rows.append([name, str(devs), _pct(row["slo_attainment"]), _ms(row["ttft_p50_s"]), _ms(row["ttft_p99_s"]),
                         _ms(row["tpot_p50_s"]), _ms(row["tpot_p99_s"]), f"{row['throughput_tok_s']:.4g}"])
        out += [("h3", "Disaggregated prefill / decode"),
                ("p", f"Prefill pool {pf['instances']} x {pf['hardware']} (tp {pf['tp']}, pp {pf['pp']}), decode pool "
                      f"{dc['instances']} x {dc['hardware']} (tp {dc['tp']}, pp {dc['pp']}, {dc['kv_blocks_per_instance']} "
                      f"KV blocks each); KV over {ln['name']} at {ln['bandwidth_gbs']:g} GB/s x {ln['lanes']} lane(s), "
                      f"{ln['latency_us']:g} µs, {'overlapped with the prefill (layer by layer)' if ln['overlapped'] else 'after the prefill'}"
                      f": {d['transfer']['bytes_mean'] / 1e6:.4g} MB per request, {_ms(d['transfer']['time_mean_s'])} "
                      f"mean visible. Beside it {co['replicas']} co-located replica(s) of tp {co['tp']} x pp {co['pp']} "
                      f"at {d['rate']:g} requests/s."),
                ("table", ["pool", "GPUs", "SLO attainment", "TTFT p50", "TTFT p99", "TPOT p50", "TPOT p99", "tokens/s"],
                 rows, "lrrrrrrr")]
        if g:
            out.append(("p", f"Goodput (largest rate meeting the SLOs, sustained) per GPU: disaggregated "
                             f"{g['disaggregated_per_gpu_req_s']:.4g}, co-located {g['colocated_per_gpu_req_s']:.4g} "
                             f"requests/s" + (f" (x{g['ratio']:.3g})." if g.get("ratio") else ".")))
        out.append(("plot", "disaggregated", "SLO attainment against the rate per GPU (goodput dashed), and TTFT / TPOT "
                                             "p50 and p99 against it, disaggregated beside co-located."))
    return out


def sizing_blocks(s: Mapping) -> list[tuple]:
    out: list[tuple] = [("h2", "Sizing (search=sizing)"),
                        ("p", f"Cheapest deployment serving {s['rate']:g} requests/s within the SLOs (TTFT "
                              f"{_ms((s.get('slo') or {}).get('ttft_s'))}, TPOT {_ms((s.get('slo') or {}).get('tpot_s'))}, "
                              f"attainment ≥ {_pct((s.get('slo') or {}).get('target'))}): {s['candidates']} candidates, "
                              f"{s['simulated']} simulated, {s['pruned']} pruned by the prefill-pool bound. Prices (USD "
                              f"per GPU-hour): " + ", ".join(f"{k} {v:g}" for k, v in s["prices_usd_per_gpu_hour"].items())
                              + ".")]
    b = s.get("best")
    if b:
        out.append(("p", f"Chosen: {b['label']} — {b['devices']} GPU(s), ${b['cost_per_hour']:.2f}/h, attainment "
                         f"{_pct(b['slo_attainment'])}, TTFT p99 {_ms(b['ttft_p99_s'])}, TPOT p99 {_ms(b['tpot_p99_s'])}."))
        out.append(("table", ["launch (" + b["launch"]["runtime"] + ")"], [[c] for c in b["launch"]["commands"]], "l"))
    else:
        out.append(("p", s.get("note") or "No candidate meets the SLOs."))
    out.append(("table", ["Pareto front", "GPUs", "$/h", "goodput req/s", "attainment"],
                [[p["label"], str(p["devices"]), f"{p['cost_per_hour']:.2f}", f"{p['goodput_req_s']:.4g}",
                  _pct(p["slo_attainment"])] for p in s.get("front") or []], "lrrrr"))
    out.append(("plot", "sizing", "Cost per hour against goodput at the target rate: the Pareto front of the simulated "
                                  "candidates, the chosen configuration circled."))
    return out
