#!/usr/bin/env python3
"""Host time of one onnxruntime ``InferenceSession.run`` call on this CPU: the ``ort_cpu`` runtime
profile's per-step and per-bound-tensor overheads (conf/runtime/ort_cpu.yaml).

A decoder step binds every graph input and output (input ids, positions, one past key and value
per layer in, the logits and one present key and value per layer out), so the fixed cost of a
step grows with the tensors bound. The model here does almost no work and has two nodes whatever
N is (the per-node dispatch cost is the hardware's ``launch_overhead_us``, not this): N
one-element float inputs ``Concat``-ed and ``Split`` back into N outputs. ``run()`` is timed over
many calls with fresh numpy inputs, as a generate loop feeds them, for N = 1 … 256; the figure of
an N is the fastest of several rounds (the machine is shared: the slower rounds are other
processes' time). The fit is ``time = per_call + per_tensor * (2 N - 2)`` (N inputs + N outputs;
the one-tensor model is the call alone): ``per_call`` the one-tensor time, ``per_tensor`` the
median over N ≥ 4 of ``(time(N) - time(1)) / (2 N - 2)``; the spread of those estimates is the
error band (the cost per tensor is not quite constant: binding many tensors costs more each).

    python tools/measure_ort_overhead.py --out compiler/perf/calibration/data/cpu_ort_overhead.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import datetime, timezone

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper


def model(n: int) -> bytes:
    ins = [helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, [1]) for i in range(n)]
    outs = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [1]) for i in range(n)]
    split = helper.make_tensor("split", TensorProto.INT64, [n], [1] * n)
    nodes = [helper.make_node("Concat", [f"x{i}" for i in range(n)], ["c"], axis=0),
             helper.make_node("Split", ["c", "split"], [f"y{i}" for i in range(n)], axis=0)]
    g = helper.make_graph(nodes, "io", ins, outs, initializer=[split])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 10
    onnx.checker.check_model(m)
    return m.SerializeToString()


def time_run(n: int, threads: int, calls: int, rounds: int) -> dict:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model(n), so, providers=["CPUExecutionProvider"])
    feeds = [{f"x{i}": np.full(1, float(k), np.float32) for i in range(n)} for k in range(calls)]
    for f in feeds[:20]:
        sess.run(None, f)
    per = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for f in feeds:
            sess.run(None, f)
        per.append((time.perf_counter() - t0) / calls)
    return {"tensors_in": n, "tensors_out": n, "time_s": min(per), "median_s": statistics.median(per),
            "rounds_s": per}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args(argv)
    samples = [time_run(n, a.threads, a.calls, a.rounds) for n in (1, 4, 16, 64, 128, 256)]
    t1 = samples[0]["time_s"]
    per = np.array([(s["time_s"] - t1) / (2 * s["tensors_in"] - 2) for s in samples[1:]])
    c0, c1 = t1, float(np.median(per))
    x = np.array([2 * s["tensors_in"] - 2 for s in samples], float)
    y = np.array([s["time_s"] for s in samples])
    pred = c0 + c1 * x
    out = {
        "schema": "rooftop-ort-overhead/1", "tool": "tools/measure_ort_overhead.py",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": {"processor": platform.processor() or platform.machine(), "threads": a.threads},
        "onnxruntime": ort.__version__,
        "method": "InferenceSession.run on a Concat + Split model (two nodes, N inputs, N outputs), fresh numpy "
                  "inputs per call; the fastest round's mean per call",
        "samples": samples,
        "fit": {"per_call_us": c0 * 1e6, "per_tensor_us": c1 * 1e6,
                "per_tensor_range_us": [float(per.min()) * 1e6, float(per.max()) * 1e6],
                "median_rel_err": float(np.median(np.abs(pred / y - 1))), "max_rel_err": float(np.max(np.abs(pred / y - 1)))},
    }
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(json.dumps(out["fit"], indent=1))


if __name__ == "__main__":
    main()
