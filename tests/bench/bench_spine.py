"""Benchmark of the spine (prints figures; not a test).

(a) the default run, (b) llama2_7b meta import + passes + report, (c) llama2_70b meta — wall time
and peak RSS of each as a separate `rooftop` process (median of --repeat runs); and (d) the cost
of evaluating 1000 workload points for llama2_70b once the cost model is compiled.
Targets on a 2-core machine: (a) ≤ 20 s, (b) ≤ 10 s and ≤ 1.5 GB, (c) ≤ 25 s and ≤ 3 GB, (d) ≤ 1 s.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_case(args: list[str]) -> tuple[float, float]:
    """Wall time and peak RSS (MB) of one `rooftop` process, measured by a fresh wrapper process so
    each case's RSS is its own (RUSAGE_CHILDREN is a running maximum over all children)."""
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, "-m", "compiler", *args, f"hydra.run.dir={d}", "progress=false"]
        wrapper = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
                   f"r = subprocess.run({cmd!r}, capture_output=True, text=True); "
                   "w = time.perf_counter() - t; "
                   "print(r.returncode, w, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
                   "sys.stderr.write(r.stderr)")
        r = subprocess.run([sys.executable, "-c", wrapper], cwd=ROOT, capture_output=True, text=True,
                           env=dict(os.environ, HF_HUB_OFFLINE="1"))
        code, wall, rss = r.stdout.split()
        if code != "0":
            raise SystemExit(r.stderr)
        return float(wall), float(rss) / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args()
    cases = [("(a) default llama_tiny", [], 20, None),
             ("(b) llama2_7b meta", ["model=llama2_7b"], 10, 1500),
             ("(c) llama2_70b meta", ["model=llama2_70b"], 25, 3000)]
    print(f"{'case':28s} {'wall s (median)':>16s} {'target':>8s} {'peak RSS MB':>12s} {'target':>8s}")
    for name, args, t_target, m_target in cases:
        walls, rss = [], 0.0
        for _ in range(a.repeat):
            w, r = run_case(args)
            walls.append(w)
            rss = max(rss, r)
        print(f"{name:28s} {statistics.median(walls):16.2f} {t_target:8d} {rss:12.0f} {str(m_target or '-'):>8s}")

    from omegaconf import OmegaConf
    import numpy as np
    from compiler.perf.cost import CostModel
    from compiler.perf.hardware import hardware_by_name
    from compiler.frontends.models import import_torch
    from compiler.backend.evaluate import OnnxEvaluator
    from passes import PassContext, run_passes
    g = import_torch(OmegaConf.to_container(OmegaConf.load(ROOT / "conf/model/llama2_70b.yaml")))
    run_passes(g, OmegaConf.to_container(OmegaConf.load(ROOT / "conf/pipeline/cache.yaml"))["passes"],
               PassContext(evaluator=OnnxEvaluator()))
    t0 = time.perf_counter()
    cm = CostModel(g, hardware_by_name("h100_sxm"))
    compile_s = time.perf_counter() - t0
    b = np.repeat(2 ** np.arange(10), 100)
    p = np.tile(np.arange(100) * 80, 10)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        cm.phase_time(b, 1, p, "decode")
        times.append(time.perf_counter() - t0)
    print(f"(d) llama2_70b: compile cost model {compile_s:.2f} s; 1000 decode points "
          f"{statistics.median(times) * 1e3:.1f} ms (median of 5; target ≤ 1000 ms)")


if __name__ == "__main__":
    main()
