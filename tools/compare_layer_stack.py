#!/usr/bin/env python3
"""Predicted vs measured: the tensor-parallel Llama-2-70B stack of tools/measure_collectives.py.

Imports llama2_70b (meta weights, default pipeline), costs it on ``--hardware`` with
:func:`compiler.analysis.parallel.analyze_parallel` at tp = 2/4/8 for the measured points (prefill of 2048
tokens at batch 1; decode at batch 1 and 32 over a 2048-token cache) and prints a table beside the
measured times when ``--measured`` is given (the JSON of tools/measure_collectives.py; the
hardware YAML's ``collectives:`` block, if fitted from the same file, supplies the collective
costs). The prediction covers the whole model; the measured stack has the 80 decoder layers only
(no embedding, final norm or LM head: ~2-3 % of the time).

    PYTHONPATH=. python tools/compare_layer_stack.py --hardware h200 [--measured collectives_h200.json] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from compiler.backend.evaluate import OnnxEvaluator  # noqa: E402
from passes.base import install_default_evaluator  # noqa: E402

install_default_evaluator(OnnxEvaluator())   # passes run outside the driver evaluate through ONNX


def predict(hardware: str, tps=(2, 4, 8), prefill=2048, context=2048, batches=(1, 32)) -> list[dict]:
    import yaml
    from compiler.perf.cost import CostModel
    from compiler.perf.hardware import hardware_by_name
    from compiler.frontends.models import import_torch
    from compiler.analysis.parallel import ParallelPlan, per_device_times, shard_table
    from compiler.frontends.families import dims as dims_from_hf
    from passes import PassContext, PassManager, make_pass

    hw = hardware_by_name(hardware)
    mcfg = yaml.safe_load((ROOT / "conf" / "model" / "llama2_70b.yaml").read_text())
    g = import_torch(mcfg)
    pl = yaml.safe_load((ROOT / "conf" / "pipeline" / "default.yaml").read_text())
    PassManager([make_pass(p, PassContext(hardware=hw, points=((1, prefill, 0, "prefill"),)))
                 for p in pl["passes"]])(g)
    cm = CostModel(g, hw)
    dims = dims_from_hf(mcfg["config"])
    rows = []
    for tp in tps:
        table = shard_table(cm, dims, ParallelPlan(tp=tp))
        points = [("prefill", 1, prefill, 0)] + [("decode", b, 1, context) for b in batches]
        for phase, b, s, p in points:
            r = per_device_times(cm, table, b, s, p, phase)
            rows.append({"tp": tp, "phase": phase, "batch": b, "seq": s, "context": p,
                         "predicted_s": float(r["time"][0]), "predicted_comm_s": float(r["comm_time"][0])})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hardware", default="h200")
    ap.add_argument("--measured", help="JSON from tools/measure_collectives.py")
    ap.add_argument("--mode", default="graph", help="measured mode for decode rows (graph|eager)")
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args(argv)
    rows = predict(a.hardware)
    meas = {}
    if a.measured:
        data = json.loads(Path(a.measured).read_text())
        for m in data.get("layer_stack", []):
            if m["phase"] == "prefill" or m["mode"] == a.mode:
                meas[(m["tp"], m["phase"], m["batch"])] = m
    print(f"{'tp':>3s} {'phase':8s} {'batch':>5s} {'predicted ms':>13s} {'(comm ms)':>10s} "
          f"{'measured ms':>12s} {'(comm ms)':>10s} {'error':>7s}")
    for r in rows:
        m = meas.get((r["tp"], r["phase"], r["batch"]))
        if m:
            r["measured_s"] = m["time_s"]
            r["measured_comm_s"] = m["comm_time_s"]
            r["error"] = r["predicted_s"] / m["time_s"] - 1
        print(f"{r['tp']:3d} {r['phase']:8s} {r['batch']:5d} {r['predicted_s'] * 1e3:13.2f} "
              f"{r['predicted_comm_s'] * 1e3:10.2f} "
              + (f"{m['time_s'] * 1e3:12.2f} {m['comm_time_s'] * 1e3:10.2f} {100 * r['error']:6.1f}%" if m else
                 f"{'-':>12s} {'-':>10s} {'-':>7s}"))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
