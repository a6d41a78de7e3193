"""The serving figure of report.html: continuous vs static batching over the Poisson arrival rate.

Left: generated tokens/s against the offered rate (continuous batching, static batching), the
largest rate meeting the SLOs marked. Right: TTFT and TPOT p99 against the rate (log scale) with
the SLO lines. A pure function of ``report["serve"]`` (the rate sweep of compiler/analysis/serving.py);
deterministic like the other figures (reports/plots.py).
"""
from __future__ import annotations

from collections.abc import Mapping

import matplotlib.style
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter


def fig_serving(r: Mapping) -> Figure:
    from reports.plots import STYLE, _figure
    with matplotlib.style.context(["default", STYLE]):
        return _draw(r, _figure)


def _draw(r: Mapping, _figure) -> Figure:
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
