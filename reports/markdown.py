"""report.md — a readable summary of report.json."""
from __future__ import annotations


def _t(s: float) -> str:
    return f"{s * 1e3:.3f} ms"


def render_markdown(r) -> str:
    lat, mem = r["latency"], r["memory"]
    lines = [f"# rooftop report: {r['model']['name']} on {r['hardware']['name']}", "",
             f"- TTFT {_t(lat['ttft_s'])}, TPOT {_t(lat['tpot_s'])}, end-to-end {_t(lat['e2e_s'])}, "
             f"throughput {lat['throughput_tok_s']:.1f} tok/s",
             f"- memory: weights {mem['weights_bytes'] / 1e9:.3f} GB, KV cache {mem['kv_cache_bytes'] / 1e9:.3f} GB, "
             f"activations {mem['activation_peak_bytes'] / 1e9:.3f} GB; max batch {r['capacity']['max_batch']}", ""]
    for phase in ("prefill", "decode"):
        ph = r["phases"][phase]
        lines += [f"## {phase}", "", "| op | kind | FLOPs | bytes | FLOP/B | bound | time |", "|---|---|---|---|---|---|---|"]
        for o in sorted(ph["ops"], key=lambda o: -o["time_s"])[:20]:
            lines.append(f"| {o['name']} | {o['op']} | {o['flops']:.3g} | {o['bytes']:.3g} | "
                         f"{(o['intensity'] or 0):.3g} | {o['bound']} | {_t(o['time_s'])} |")
        lines.append("")
    return "\n".join(lines) + "\n"
