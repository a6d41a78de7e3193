#!/usr/bin/env python3
"""Predicted (rooftop's cost model with the shipped H200 efficiencies) versus measured (H200,
``compiler/perf/calibration/data/h200_kernels.json`` and ``h200.json``) for the whole-model runs:

* Llama-2-7B-shaped prefill / decode (``h200.json`` e2e): rooftop's CostModel on ``llama2_7b``.
* Llama-3.2-1B-shaped prefill / decode, LM head tied to the embedding table
  (``e2e/h200_llama3_1b.json``, ``calibrate_gpu.py --classes e2e --e2e-model llama3_1b``):
  CostModel on ``llama3_1b``.
* Speculative verify step, Llama-3-8B shape, T new tokens against a 4096-token cache:
  CostModel on ``llama3_8b`` at (B=1, S=T, P=4096), attention class decode for T=1, prefill above.
* Llama-2-13B-shaped model, bf16 / W4A16 / FP8, decode at B=1, 8, 32 (context 512) and prefill
  512: CostModel on ``llama2_13b``; for W4A16 and FP8 every weight GEMM except the LM head is
  re-priced with its measured kernel family (``kernel_families`` of the H200 YAML) on the
  scheme's stored bytes (int4: 0.5 B per weight + a bf16 scale and zero per 128; fp8: 1 B);
  the fp8 per-tensor variant adds its eager activation quantization (amax, cast, divide, cast)
  priced by the reduction / elementwise classes.
* MoE decode step (one layer, Qwen1.5-MoE-A2.7B and DeepSeekMoE-16B shapes): a hand-written
  kernel list of the measured program (router, shared expert, and per touched expert: gather,
  gate_up GEMM, SiLU, mul, down GEMM, weight gather, scale, index_add) priced by the calibrated
  class model, with E·(1 − (1 − k/E)^B) distinct experts (uniform routing).

    PYTHONPATH=. python tools/predict_measured.py [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from compiler.backend.evaluate import OnnxEvaluator  # noqa: E402
from passes.base import install_default_evaluator  # noqa: E402

install_default_evaluator(OnnxEvaluator())   # passes run outside the driver evaluate through ONNX
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def graph(name):
    from omegaconf import OmegaConf

    from compiler.driver.app import config_dir
    from compiler.frontends.models import import_torch
    from passes.cleanup import fold_constants, remove_noops
    from passes.fusion import fuse_eager_attention
    from passes.kv_cache import lift_kv_cache
    g = import_torch(OmegaConf.to_container(OmegaConf.load(config_dir() / "model" / f"{name}.yaml")))
    remove_noops(g)
    # the KV cache, as the default pipeline's first passes make it (importers run no passes): a
    # decode step reads the cached context; no operator fusion (the measured programs are eager ops)
    fuse_eager_attention(g)
    lift_kv_cache(g)
    fold_constants(g)
    return g


def rel(p, m):
    return p / m - 1.0


def e2e(hw, meas, name="llama2_7b"):
    from compiler.perf.cost import CostModel
    cm = CostModel(graph(name), hw)
    rows = []
    for phase in ("prefill", "decode"):
        for p in meas["e2e"][phase]:
            if p["mode"] != "cuda_graph":
                continue
            if phase == "prefill":
                t = cm.phase_time(p["batch"], p["prompt"], 0, "prefill")[0]
                rows.append({"phase": "prefill", "batch": p["batch"], "tokens": p["prompt"], "measured_s": p["time_s"],
                             "predicted_s": float(t)})
            else:
                t = cm.phase_time(p["batch"], 1, p["ctx"], "decode")[0]
                rows.append({"phase": "decode", "batch": p["batch"], "context": p["ctx"], "measured_s": p["time_s"],
                             "predicted_s": float(t)})
    return rows


def verify(hw, kern):
    from compiler.perf.cost import CostModel
    cm = CostModel(graph("llama3_8b"), hw)
    rows = []
    for p in kern["verify"]["points"]:
        T, C = p["T"], p["context"]
        t = cm.phase_time(1, T, C, "decode" if T == 1 else "prefill")[0]
        rows.append({"T": T, "context": C, "measured_s": p["time_s"], "predicted_s": float(t)})
    return rows


def _family_time(hw, fam, flops, nbytes):
    from compiler.perf import efficiency as E
    k = hw.kernel_family(fam)
    P = hw.peak(k.peak_dtype, k.sparse)
    p = E.ClassParams(k.compute, k.memory, k.flops_half * P / hw.peak("fp16"), k.bytes_half)
    return E.op_time(p, flops, nbytes, P, hw.memory_bandwidth, hw.efficiency.launch_overhead_s)


def _class_time(hw, cls, flops, nbytes):
    from compiler.perf import efficiency as E
    c = hw.efficiency.for_class(cls)
    return E.op_time(E.ClassParams(c.compute, c.memory, c.flops_half, c.bytes_half), flops, nbytes,
                     hw.peak("fp16"), hw.memory_bandwidth, hw.efficiency.launch_overhead_s)


def model13b(hw, kern):
    from compiler.perf.cost import CostModel
    g = graph("llama2_13b")
    cm = CostModel(g, hw)
    V, D = 32000, 5120
    rows = []
    for p in kern["model13b"]["points"]:
        scheme = p["scheme"]
        if p["phase"] == "decode":
            b, s, c, ph = p["batch"], 1, p["context"], "decode"
        else:
            b, s, c, ph = 1, p["prompt"], 0, "prefill"
        r = cm.evaluate(b, s, c, ph)
        t = r["time"][:, 0].copy()
        if scheme != "bf16":
            fam = {"w4a16": "w4a16", "fp8": "fp8_pipeline", "fp8_tensorwise": "fp8_tensorwise"}[scheme]
            for i, it in enumerate(cm.items):
                w = float(r["weights"][i, 0])
                if it.cost_class != "gemm" or w <= 0 or abs(w - V * D * 2) < 1:  # LM head stays bf16
                    continue
                n = w / 2  # weight elements
                if scheme == "w4a16":
                    wb = n / 2 + (n / 128) * 4
                else:
                    wb = n + 4 * (n ** 0.5)
                t[i] = _family_time(hw, fam, float(r["flops"][i, 0]), float(r["activations"][i, 0]) + wb)
                if scheme == "fp8_tensorwise":  # the measured program's eager per-tensor act quant:
                    mk = float(r["activations"][i, 0]) / 2  # ~ M*K (+ M*N) elements, counted once
                    t[i] += (_class_time(hw, "reduction", mk, 2 * mk)            # amax
                             + 2 * _class_time(hw, "elementwise", mk, 6 * mk)    # float(), divide
                             + _class_time(hw, "elementwise", mk, 5 * mk))       # cast to e4m3
        rows.append({"scheme": scheme, "phase": p["phase"], "batch": b, "tokens": s if ph == "prefill" else None,
                     "context": c if ph == "decode" else None, "measured_s": p["time_s"], "predicted_s": float(t.sum())})
    return rows


def moe(hw, kern):
    from compiler.perf import efficiency as E
    eff = hw.efficiency
    P, W, L = hw.peak("fp16"), hw.memory_bandwidth, eff.launch_overhead_s

    def k(cls, f, b):
        c = eff.for_class(cls)
        return E.op_time(E.ClassParams(c.compute, c.memory, c.flops_half, c.bytes_half), f, b, P, W, L)

    def gemm(m, kk, n):
        return k("gemm", 2 * m * kk * n, 2 * (m * kk + kk * n + m * n))

    def ew(nel, reads=2):
        return k("elementwise", nel, 2 * nel * (reads + 1))

    rows = []
    shapes = kern["moe"]["shapes"]
    for p in kern["moe"]["points"]:
        c = shapes[p["model"]]
        B, D, Ex, I, kk, SI = p["batch"], c["hidden"], c["experts"], c["inter"], c["top_k"], c["shared_inter"]
        touched = Ex * (1 - (1 - kk / Ex) ** B)
        n_e = B * kk / touched
        t = gemm(B, D, Ex) + k("reduction", 5 * B * Ex, 4 * B * Ex * 2) + k("reduction", B * Ex, 4 * B * Ex)  # router
        t += gemm(B, D, 2 * SI) + ew(B * SI, 1) + ew(B * SI) + gemm(B, SI, D) + k("copy", 0, 2 * 2 * B * D)
        if c["shared_gate"]:
            t += gemm(B, D, 1) + ew(B, 1) + ew(B * D)
        per = (k("copy", 0, 2 * 2 * n_e * D) + gemm(n_e, D, 2 * I) + ew(n_e * I, 1) + ew(n_e * I)
               + gemm(n_e, I, D) + k("copy", 0, 2 * 2 * n_e * Ex) + ew(n_e * D) + ew(n_e * D))
        t += touched * per
        rows.append({"model": p["model"], "batch": B, "distinct_experts_measured": p["distinct_experts"],
                     "distinct_experts_predicted": touched, "measured_s": p["time_s"], "predicted_s": float(t)})
    return rows


def med(rows):
    return float(np.median([abs(rel(r["predicted_s"], r["measured_s"])) for r in rows]))


def main(argv=None) -> int:
    from compiler.perf.calibration import DATA_DIR
    from compiler.perf.hardware import hardware_by_name
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    hw = hardware_by_name("h200")
    meas = json.loads((DATA_DIR / "h200.json").read_text())
    kern = json.loads((DATA_DIR / "h200_kernels.json").read_text())
    out = {"hardware": hw.name, "calibration": hw.calibration.summary() if hw.calibration else None}
    e2e_1b = json.loads((DATA_DIR / "e2e" / "h200_llama3_1b.json").read_text())   # tools/calibrate_gpu.py --e2e-model
    for key, fn, args_ in (("llama2_7b_e2e", e2e, (hw, meas)), ("llama3_1b_e2e", e2e, (hw, e2e_1b, "llama3_1b")),
                           ("verify_llama3_8b", verify, (hw, kern)),
                           ("llama2_13b_quant", model13b, (hw, kern)), ("moe_decode_layer", moe, (hw, kern))):
        rows = fn(*args_)
        out[key] = {"rows": rows, "median_abs_err": med(rows)}
        print(f"\n== {key}: median |error| {med(rows):.1%}")
        for r in rows:
            lab = " ".join(f"{k}={v}" for k, v in r.items() if k not in ("measured_s", "predicted_s") and v is not None
                           and not isinstance(v, float))
            print(f"  {lab:55s} measured {r['measured_s'] * 1e3:9.3f} ms  predicted {r['predicted_s'] * 1e3:9.3f} ms"
                  f"  {rel(r['predicted_s'], r['measured_s']):+6.1%}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
