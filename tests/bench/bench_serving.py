"""Benchmark of the serving simulation (prints figures; not a test).

Llama-2-7B (meta weights, default pipeline) on an A100-80GB: the cost model's step-time table is
built once, then 10 000 requests (prompts uniform 64-2048, outputs uniform 16-512 tokens) are
simulated with continuous batching (plain and chunked prefill) and static batching, at a load that
keeps the KV budget full (preemptions happen). Target on a 2-core machine: each simulation of
10 000 requests in a few seconds (<= 5 s), the step-time table < 1 s.

    PYTHONPATH=. python tests/bench/bench_serving.py [--requests 10000] [--rate 20]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from compiler.backend.evaluate import OnnxEvaluator  # noqa: E402
from passes.base import install_default_evaluator  # noqa: E402

install_default_evaluator(OnnxEvaluator())   # passes run outside the driver evaluate through ONNX


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=6.0)
    ap.add_argument("--model", default="llama2_7b")
    ap.add_argument("--hardware", default="a100_80g")
    a = ap.parse_args()

    import yaml
    from compiler.analysis.capacity import plan_capacity
    from compiler.perf.cost import CostModel
    from compiler.perf.hardware import hardware_by_name
    from compiler.frontends.models import import_torch
    from compiler.perf.schedule import schedule
    from compiler.analysis.serving import ServeConfig, StepTable, cost_model_step_time, sample_requests, simulate, simulate_static
    from passes import PassContext, PassManager, make_pass
    from compiler.perf.memory import kv_bytes_per_token, weights_bytes

    t0 = time.perf_counter()
    hw = hardware_by_name(a.hardware)
    mcfg = yaml.safe_load((ROOT / "conf" / "model" / f"{a.model}.yaml").read_text())
    g = import_torch(mcfg)
    pl = yaml.safe_load((ROOT / "conf" / "pipeline" / "default.yaml").read_text())
    PassManager([make_pass(p, PassContext(hardware=hw, points=((1, 128, 0, "prefill"),))) for p in pl["passes"]])(g)
    cm = CostModel(g, hw)
    sched = schedule(g)
    print(f"import + passes + cost model: {time.perf_counter() - t0:.2f} s")

    cfg = ServeConfig(rate=a.rate, requests=a.requests, seed=0,
                      prompt={"kind": "uniform", "low": 64, "high": 2048},
                      output={"kind": "uniform", "low": 16, "high": 512},
                      slo_ttft_s=2.0, slo_tpot_s=0.05)
    _, prompt, out = sample_requests(cfg)
    plan = plan_capacity(memory_bytes=hw.memory_bytes, weights_bytes=weights_bytes(g),
                         kv_bytes_per_token=kv_bytes_per_token(g), sequence_tokens=prompt + out,
                         max_model_len=4096, activation_peak_bytes=float(sched.activation_peak(1, 2048, 0)[0]),
                         reserve_bytes=0.5e9)
    print(f"KV blocks {plan.kv_blocks} (paged max sequences {plan.paged_max_sequences}, "
          f"contiguous at 4096 tokens {plan.contiguous_max_sequences})")
    st = cost_model_step_time(cm)
    t0 = time.perf_counter()
    table = StepTable(st, cfg.max_num_seqs, int((prompt + out).max()), int((prompt + out).max()))
    print(f"step-time table ({table.bgrid.size * table.ctx.size + table.prefill.size} cost-model points): "
          f"{time.perf_counter() - t0:.2f} s")
    print(f"{'policy':22s} {'sim s':>7s} {'tok/s':>9s} {'TTFT p50':>9s} {'TTFT p99':>9s} "
          f"{'TPOT p50':>9s} {'TPOT p99':>9s} {'SLO att.':>8s} {'preempt':>8s} {'steps':>8s}")
    runs = [("continuous", lambda: simulate(st, cfg, kv_blocks=plan.kv_blocks, table=table)),
            ("continuous (chunked)", lambda: simulate(st, ServeConfig(**{**cfg.__dict__, "chunked_prefill": True}),
                                                      kv_blocks=plan.kv_blocks)),
            ("static", lambda: simulate_static(st, cfg, max_batch=plan.contiguous_max_sequences, table=table))]
    for name, fn in runs:
        t0 = time.perf_counter()
        r = fn()
        dt = time.perf_counter() - t0
        print(f"{name:22s} {dt:7.2f} {r.throughput_tok_s:9.0f} {r.ttft_p50_s:9.3f} {r.ttft_p99_s:9.3f} "
              f"{r.tpot_p50_s * 1e3:8.1f}m {r.tpot_p99_s * 1e3:8.1f}m {r.slo_attainment:8.3f} "
              f"{r.preemptions:8d} {r.steps:8d}")


if __name__ == "__main__":
    main()
