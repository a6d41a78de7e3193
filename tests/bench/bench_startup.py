#!/usr/bin/env python3
"""A whole command as a user runs it, against the floor it cannot beat: ``rooftop model=llama2_7b``
(process start to exit: compose + validate, meta import through torch.export, passes, cost model,
analysis, report.json/md/html) beside a bare script that builds the same Hugging Face model on the
meta device and runs ``torch.export`` on it (also a whole process). Alternating runs in one
process, medians and their ratio printed (machines here are noisy: compare the ratio).

    .venv/bin/python tests/bench/bench_startup.py --repeat 5
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

BARE = r"""
import torch, transformers, yaml
from transformers import AutoConfig, AutoModelForCausalLM
cfg = yaml.safe_load(open("conf/model/llama2_7b.yaml"))["config"]
conf = AutoConfig.for_model(**cfg)
with torch.device("meta"):
    model = AutoModelForCausalLM.from_config(conf, torch_dtype=torch.float16, attn_implementation="sdpa")
model.eval()
ids = torch.zeros(2, 8, dtype=torch.long, device="meta")
b, s = torch.export.Dim("B", min=1, max=1024), torch.export.Dim("S", min=2, max=4096)
torch.export.export(model, (), kwargs={"input_ids": ids, "use_cache": False},
                    dynamic_shapes={"input_ids": {0: b, 1: s}, "use_cache": None}, strict=False)
"""


def _run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed ({r.returncode}): {r.stderr[-2000:]}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        rooftop = [py, "-m", "compiler", "model=llama2_7b", "hardware=h100_sxm", f"hydra.run.dir={tmp}/out"]
        bare = [py, "-c", BARE]
        times = {"rooftop model=llama2_7b": [], "bare: meta build + torch.export": []}
        for _ in range(a.repeat):
            times["bare: meta build + torch.export"].append(_run(bare))
            times["rooftop model=llama2_7b"].append(_run(rooftop))
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k:36s} median {med[k]:6.2f} s   runs {', '.join(f'{x:.2f}' for x in v)}")
    r, b = med["rooftop model=llama2_7b"], med["bare: meta build + torch.export"]
    print(f"ratio rooftop / bare = {r / b:.2f}  (target ≤ 1.00; load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
