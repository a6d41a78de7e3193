#!/usr/bin/env python3
"""The transfer experiment with end-to-end errors: own fits, the joint Hopper fit, the transfer
H100 -> H200 and H200 -> H100, literature fractions, scored on every measured device's kernels
and on its Llama-2-7B-shaped prefill/decode timings (CUDA graphs); ``--write`` also writes the
library (as ``python -m compiler.perf.calibration.transfer --write``, with the e2e numbers in the bands).

    PYTHONPATH=. python tools/transfer_report.py [--write] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from compiler.backend.evaluate import OnnxEvaluator  # noqa: E402
from passes.base import install_default_evaluator  # noqa: E402

install_default_evaluator(OnnxEvaluator())   # passes run outside the driver evaluate through ONNX
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def llama2_7b_graph():
    from omegaconf import OmegaConf

    from compiler.driver.app import config_dir
    from compiler.frontends.models import import_torch
    from passes.cleanup import fold_constants, remove_noops
    g = import_torch(OmegaConf.to_container(OmegaConf.load(config_dir() / "model" / "llama2_7b.yaml")))
    remove_noops(g)
    fold_constants(g)
    return g


def main(argv=None) -> int:
    from compiler.perf.calibration import transfer as T
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--date")
    args = ap.parse_args(argv)
    res = T.experiment(graph=llama2_7b_graph())
    print(T.format_experiment(res))
    print("bands:", json.dumps(T.bands(res), default=float))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, sort_keys=True, default=float))
    if args.write:
        for p in T.write_library(res, args.date):
            print("wrote", p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
