"""Compile speed, side by side in one process (prints figures; not a test).

For llama2_7b and llama2_70b (meta weights): rooftop's whole cost pipeline — import (torch.export
of two layers, stacked), the default recipe's passes (import passes, folding, cost-gated fusion,
with cost before/after each), schedule, cost model, report.json/md/html — with ONNX emission off,
versus a bare ``torch.export.export`` of the same Hugging Face model (all layers, meta device,
dynamic batch and sequence, the export rooftop itself would otherwise need). Runs alternate
(rooftop, export, rooftop, …) after one warm-up of each, so both see the same machine load;
medians and their ratio are printed. Targets: llama2_7b ≤ 1.0×, llama2_70b ≤ 1.2×.

    python tests/bench/bench_compile.py [--repeat 3] [--models llama2_7b,llama2_70b] [--profile]

``--profile`` prints the top of a cProfile of one rooftop run per model (cumulative time).
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TARGETS = {"llama2_7b": 1.0, "llama2_70b": 1.2}


def _cfg(model: str):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from compiler.driver.app import config_dir
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        cfg = compose("config", overrides=[f"model={model}", "emit.enabled=false", "progress=false"])
    return OmegaConf.to_container(cfg, resolve=True)


def rooftop_once(model: str) -> float:
    from compiler.driver.pipeline import run
    cfg = _cfg(model)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        run(cfg, d, show_progress=False)
        return time.perf_counter() - t0


def export_once(model: str) -> float:
    """A bare torch.export of the HF model (all layers) on the meta device."""
    import torch

    from compiler.frontends.models import _vocab, build_torch_model, example_inputs
    from compiler.frontends.torch_export import export_module
    cfg = _cfg(model)["model"]
    t0 = time.perf_counter()
    module, task = build_torch_model(cfg)
    ex = example_inputs(task, _vocab(module), device="meta")
    export_module(module, ex, {k: [0, 1] for k in ex})
    dt = time.perf_counter() - t0
    del module
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return dt


def profile(model: str, top: int = 30) -> str:
    pr = cProfile.Profile()
    pr.enable()
    rooftop_once(model)
    pr.disable()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("cumulative").print_stats(top)
    return s.getvalue()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--models", default="llama2_7b,llama2_70b")
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    import logging
    logging.getLogger("rooftop").setLevel(logging.ERROR)
    rows = []
    for model in a.models.split(","):
        rooftop_once(model)   # warm-up: imports, sympy caches, transformers' lazy modules
        export_once(model)
        r, e = [], []
        for _ in range(a.repeat):
            r.append(rooftop_once(model))
            e.append(export_once(model))
        rows.append((model, statistics.median(r), statistics.median(e), r, e))
        if a.profile:
            print(profile(model))
    print(f"{'model':12s} {'rooftop s':>10s} {'torch.export s':>15s} {'ratio':>7s} {'target':>7s}  runs")
    for model, mr, me, r, e in rows:
        print(f"{model:12s} {mr:10.2f} {me:15.2f} {mr / me:7.2f} {TARGETS.get(model, 0):7.2f}  "
              f"rooftop {[round(x, 2) for x in r]} export {[round(x, 2) for x in e]}")


if __name__ == "__main__":
    main()
