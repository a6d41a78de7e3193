"""The measurements of docs/measurements/serving_round2.md: DistServe's and Splitwise's qualitative
findings, prefix caching and a sizing search, reproduced with rooftop's cost model and simulators
(meta weights, no GPU). Each row is one in-process pipeline run (the model is imported once).

    python tools/serving_round2_experiments.py > /tmp/serving_round2.md
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compiler.driver.pipeline import run                      # noqa: E402
from compiler.frontends import models                         # noqa: E402
from tests.conftest import compose                            # noqa: E402

_orig, _cache = models.import_torch, {}


def _cached(mcfg, *a, **kw):
    key = repr(sorted((k, repr(v)) for k, v in dict(mcfg).items()))
    if key not in _cache:
        _cache[key] = _orig(mcfg, *a, **kw)
    return _cache[key].copy()


models.import_torch = _cached
BASE = ["model=llama2_13b", "model.attn_implementation=eager", "model.weights=meta", "pipeline=cache",
        "pipeline.record_cost=false", "report.html=false", "progress=false", "emit.enabled=false", "kv=paged",
        "memory.gpu_utilization=0.9", "serve.requests=500", "'serve.prompt_len={kind: uniform, low: 256, high: 1024}'",
        "'serve.output_len={kind: uniform, low: 16, high: 128}'"]
BASE = [b.strip("'") for b in BASE]


def go(*over):
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        r = run(compose(BASE + list(over)), d, show_progress=False)
        return r, time.perf_counter() - t


def disagg(hw, ttft, tpot, n_p, n_d, *extra):
    r, t = go(f"hardware={hw}", "serve.rate=4", f"slo.ttft_ms={ttft}", f"slo.tpot_ms={tpot}",
              "serve.disaggregated.enabled=true", f"serve.disaggregated.prefill_instances={n_p}",
              f"serve.disaggregated.decode_instances={n_d}", *extra)
    return r["serve"]["disaggregated"], t


print("## DistServe-style: Llama-2-13B on A100-80GB, prompts U[256, 1024], outputs U[16, 128], 500 requests\n")
print("| SLO (TTFT / TPOT) | link | split | disaggregated req/s/GPU | co-located req/s/GPU | ratio |")
print("|---|---|---|---|---|---|")
for ttft, tpot, n_p, n_d, extra, link in ((200, 30, 2, 1, (), "NVLink 3"), (400, 40, 2, 1, (), "NVLink 3"),
                                         (2000, 200, 2, 1, (), "NVLink 3"), (2000, 200, 1, 1, (), "NVLink 3"),
                                         (200, 30, 1, 1, (), "NVLink 3"),
                                         (200, 30, 2, 1, ("serve.disaggregated.link_bandwidth_gbs=25",), "25 GB/s"),
                                         (200, 30, 2, 1, ("serve.disaggregated.link_bandwidth_gbs=0.5",), "0.5 GB/s")):
    d, t = disagg("a100_80g", ttft, tpot, n_p, n_d, *extra)
    g = d["goodput"]
    print(f"| {ttft} ms / {tpot} ms | {link} | {n_p}P{n_d}D vs {d['colocated']['replicas']} replicas | "
          f"{g['disaggregated_per_gpu_req_s']:.3g} | {g['colocated_per_gpu_req_s']:.3g} | {g['ratio']:.3g} |")
    sys.stdout.flush()

print("\n## Splitwise-style: different hardware per pool, 1 prefill + 2 decode instances, SLO 400 / 40 ms\n")
print("| prefill | decode | goodput req/s | $/h (list) | req/s per $/h |")
print("|---|---|---|---|---|")
price = {"h100_sxm": 2.99, "a100_80g": 1.79}
for p, dd in (("h100_sxm", "h100_sxm"), ("a100_80g", "a100_80g"), ("h100_sxm", "a100_80g"), ("a100_80g", "h100_sxm")):
    d, t = disagg("h100_sxm", 400, 40, 1, 2, f"serve.disaggregated.prefill_hardware={p}",
                  f"serve.disaggregated.decode_hardware={dd}", "serve.disaggregated.link_bandwidth_gbs=25")
    g = d["goodput"]["disaggregated_req_s"]
    cost = price[p] + 2 * price[dd]
    print(f"| {p} | {dd} | {g:.3g} | {cost:.2f} | {g / cost:.3g} |")
    sys.stdout.flush()

print("\n## Prefix caching: Llama-2-13B on A100-80GB, prompts 1024 tokens, a shared 512-token system prompt\n")
print("| share | hit rate | prefill FLOPs saved | mean prefill (isolated) | TTFT p50 with / without | sequences in KV with / without |")
print("|---|---|---|---|---|---|")
for share in (0.0, 0.5, 1.0):
    r, t = go("hardware=a100_80g", "serve.rate=3", "serve.prompt_len=1024", "serve.output_len=64",
              "serve.prefix.enabled=true", f"serve.prefix.share={share}", "serve.prefix.prefix_len=512")
    p = r["serve"]["prefix"]
    print(f"| {share} | {p['hit_rate']:.3f} | {p['prefill_flops_saved_fraction']:.3f} | "
          f"{p['prefill_time_mean_s'] * 1e3:.1f} ms (without {p['prefill_time_mean_without_cache_s'] * 1e3:.1f}) | "
          f"{p['with_cache']['ttft_p50_s'] * 1e3:.1f} / {p['without_cache']['ttft_p50_s'] * 1e3:.1f} ms | "
          f"{p['sequences_at_mean']:.0f} / {p['sequences_at_mean_without_cache']:.0f} |")
    sys.stdout.flush()

print("\n## Sizing: Llama-2-13B at 20 requests/s, SLO 200 / 30 ms, H100 SXM and A100-80GB, up to 8 GPUs\n")
t0 = time.perf_counter()
r, t = go("search=sizing", "hardware=h100_sxm", "serve.rate=20", "slo.ttft_ms=200", "slo.tpot_ms=30",
          "sizing.hardware=[h100_sxm,a100_80g]", "kv=paged")
s = r["sizing"]
print(f"{s['candidates']} candidates, {s['simulated']} simulated, {s['pruned']} pruned; whole run {t:.1f} s "
      f"(import, passes, analysis and the search)\n")
print("| front | GPUs | $/h | goodput req/s | attainment |")
print("|---|---|---|---|---|")
for x in s["front"]:
    print(f"| {x['label']} | {x['devices']} | {x['cost_per_hour']:.2f} | {x['goodput_req_s']:.3g} | {x['slo_attainment']:.3f} |")
print(f"\nchosen: {s['best']['label']}; launch: `{s['best']['launch']['commands'][1]}`")
