"""Time the onnxruntime CPU kernels rooftop's quantized artifacts run, against the dense fp32
GEMM, over M rows and real linear shapes: the CPU counterpart of tools/measure_kernels.py (H200).

Each family is built with the same node builders the emitter uses (compiler/backend/quantized.py), so
what is timed is what `rooftop hardware=cpu quant=...` writes, after onnxruntime's own rewrites:

- ``dense_fp32``         ``MatMul`` on fp32 weights (MLAS SGEMM; the reference);
- ``w4a16_nbits``        blocked uint4 ``DequantizeLinear`` (group 128, zero point) -> ``MatMul``,
                         rewritten into ``MatMulNBits``; accuracy level 4 (int8 activations);
- ``w4a16_nbits_acc0``   the same at accuracy level 0 (fp32 activations);
- ``w8a16_nbits``        per-channel int8 ``DequantizeLinear`` -> ``MatMul``, which onnxruntime
                         1.32 also rewrites into ``MatMulNBits`` (8 bits); level 4;
                         ``w8a16_nbits_acc0`` at level 0;
- ``w8a8_dynamic``       ``DynamicQuantizeLinear`` + ``MatMulInteger`` (-> ``DynamicQuantizeMatMul``);
- ``w8a8_static``        uint8 QDQ activation + int8 weights (-> ``MatMulIntegerToFloat``);
- ``w8a8_per_token``     per-row symmetric int8 activations, ``MatMulInteger`` + two rescales;
- ``fp8_sim``            float8e4m3fn weights and dynamic activation QDQ -> fp32 ``MatMul``.

Weights stream from memory as in a model: every timed graph holds R independent copies of the
weight (R x weight bytes >= 4x the last-level cache for small M) and runs them one after another;
the time per GEMM is the graph's median over rounds / R. Sessions: ``intra_op_num_threads`` =
``--threads`` (default 2), no spinning, default graph optimizations. Every family is checked
against numpy on the same codes before it is timed.

    .venv/bin/python tools/measure_kernels_ort.py [--quick] [--threads 2] [--out compiler/perf/calibration/data/cpu_ort_kernels.json]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from compiler.resources import CALIBRATION_DATA  # noqa: E402

OUT = CALIBRATION_DATA / "cpu_ort_kernels.json"
#: (name, K, N): GPT-2 124M, MiniLM and Llama-2-7B linears
SHAPES = [("gpt2.qkv", 768, 2304), ("gpt2.fc", 768, 3072), ("gpt2.proj", 3072, 768),
          ("llama7b.qkvo", 4096, 4096), ("llama7b.up", 4096, 11008), ("llama7b.down", 11008, 4096)]
MS = [1, 2, 4, 8, 16, 64, 256, 1024]
MS_LARGE = [1, 8, 64]          # the 7B shapes (a 7B fp32 GEMM at M = 1024 takes seconds per call)
FAMILIES = ["dense_fp32", "w4a16_nbits", "w4a16_nbits_acc0", "w8a16_nbits", "w8a16_nbits_acc0",
            "w8a8_dynamic", "w8a8_static", "w8a8_per_token", "fp8_sim"]
METHOD = ("each timed graph holds R independent copies of the weight (R x fp32 weight bytes >= 4x the "
          "last-level cache for M <= 64, >= 2x above) run one after another; time per GEMM = median over "
          "rounds of the graph / R; intra_op_num_threads = threads, no spinning, default graph optimizations; "
          "every family checked against numpy on the same codes first")
STREAM_BYTES = 440e6      # R copies of the fp32 weight cover >= 4x a 105 MB last-level cache
GROUP = 128


def _quantize(w: np.ndarray, family: str, rng) -> dict:
    """Codes, scales (and zero points) in DequantizeLinear shapes, and the dequantized fp32 W."""
    import ml_dtypes
    K, N = w.shape
    if family.startswith("w4a16"):
        g = w.reshape(K // GROUP, GROUP, N)
        lo, hi = g.min(1), g.max(1)
        s = np.maximum(hi - lo, 1e-8) / 15.0
        z = np.clip(np.round(-lo / s), 0, 15)
        q = np.clip(np.round(g / s[:, None] + z[:, None]), 0, 15)
        deq = ((q - z[:, None]) * s[:, None]).reshape(K, N)
        return {"codes": q.reshape(K, N).astype(ml_dtypes.uint4), "scale": s.astype(np.float32),
                "zp": z.astype(ml_dtypes.uint4), "axis": 0, "block": GROUP, "deq": deq.astype(np.float32)}
    if family.startswith("w8"):
        s = np.maximum(np.abs(w).max(0), 1e-8) / 127.0                        # per output channel
        q = np.clip(np.round(w / s), -127, 127).astype(np.int8)
        deq = (q * s).astype(np.float32)
        return {"codes": q, "scale": s.astype(np.float32), "zp": None, "axis": 1, "block": None, "deq": deq}
    if family == "fp8_sim":
        s = np.maximum(np.abs(w).max(0), 1e-8) / 448.0
        q = (w / s).astype(ml_dtypes.float8_e4m3fn)
        return {"codes": q, "scale": s.astype(np.float32), "zp": None, "axis": 1, "block": None,
                "deq": (q.astype(np.float32) * s).astype(np.float32)}
    raise ValueError(family)


def build(family: str, M: int, K: int, N: int, R: int, rng):
    """(model bytes, feeds, session config, numpy reference of output 0)."""
    import onnx
    from onnx import TensorProto, helper

    from compiler.backend import quantized as qo
    x = (rng.standard_normal((1, M, K))).astype(np.float32)
    inits, nodes, outs = [], [], []
    ref = None
    w = (rng.standard_normal((K, N)) * 0.05).astype(np.float32)
    q = None if family == "dense_fp32" else _quantize(w, family, rng)
    for r in range(R):             # R initializers with the same numbers: each streams from memory
        y = f"y{r}"
        if family == "dense_fp32":
            inits.append(qo.tensor(w, f"w{r}"))
            nodes.append(helper.make_node("MatMul", ["x", f"w{r}"], [y]))
            wr = w
        else:
            wr = q["deq"]
            if family == "w8a8_dynamic":
                inits += [qo.tensor(q["codes"], f"w{r}.q"), qo.tensor(q["scale"], f"w{r}.scale")]
                nodes += qo.matmul_dynamic_int8("x", f"w{r}.q", f"w{r}.scale", None, y, f"mm{r}")
            elif family == "w8a8_per_token":
                inits += [qo.tensor(q["codes"], f"w{r}.q"), qo.tensor(q["scale"], f"w{r}.scale")]
                i3, n3 = qo.matmul_dynamic_int8_per_token("x", f"w{r}.q", f"w{r}.scale", y, f"mm{r}")
                inits += i3
                nodes += n3
            else:
                i2, n2 = qo.dequantize_weight(f"w{r}", q["codes"], q["scale"], q["zp"], q["axis"], q["block"])
                inits += i2
                nodes += n2
                xin = "x"
                if family == "w8a8_static":
                    xin = f"x{r}.dq"
                    i3, n3 = qo.qdq_activation("x", xin, float(np.abs(x).max() / 127.0), 128, "uint8", f"a{r}")
                    inits += i3
                    nodes += n3
                elif family == "fp8_sim":
                    xin = f"x{r}.dq"
                    i3, n3 = qo.qdq_activation_dynamic_fp8("x", xin, f"a{r}")
                    inits += i3
                    nodes += n3
                nodes.append(helper.make_node("MatMul", [xin, f"w{r}"], [y]))
        outs.append(helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, M, N]))
        if r == 0:
            ref = x[0].astype(np.float64) @ wr.astype(np.float64)
    g = helper.make_graph(nodes, "k", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, M, K])], outs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 23)])
    m.ir_version = 10
    level = "0" if family.endswith("_acc0") else "4"
    return m, {"x": x}, {qo.ACCURACY_LEVEL_KEY: level, "session.intra_op.allow_spinning": "0"}, ref


def _tolerance(family: str) -> float:
    # level-4 MatMulNBits and W8A8 quantize the activations to int8; the fp8 form quantizes them
    # to e4m3: compared with the float product on the same dequantized weights
    return {"dense_fp32": 1e-4, "w4a16_nbits_acc0": 1e-4, "w8a16_nbits_acc0": 1e-4}.get(family, 0.05)


def measure(family, M, K, N, threads, rounds, rng, llc, stream_bytes=STREAM_BYTES) -> dict:
    from compiler.backend.quantized import make_session
    wbytes = K * N * 4
    R = max(1, int(np.ceil(max(stream_bytes, 4 * llc) / wbytes))) if M <= 64 else max(1, int(np.ceil(2 * llc / wbytes)))
    # (M > 64: compute-bound; 2x the cache is enough to keep the weights out of it)
    R = min(R, 64)
    m, feeds, cfg, ref = build(family, M, K, N, R, rng)
    sess = make_session(m, threads=threads, extra=cfg)
    if (family, K, N) not in _OPS:      # what onnxruntime made of the form (one copy, same rewrites)
        _OPS[(family, K, N)] = sorted({n.op_type for n in _optimized(build(family, 1, K, N, 1, rng)[0], threads, cfg)})
    ops = _OPS[(family, K, N)]
    y0 = sess.run(["y0"], feeds)[0][0]
    err = float(np.abs(y0 - ref).max() / max(1.0, np.abs(ref).max()))
    if err > _tolerance(family):
        raise RuntimeError(f"{family} M={M} K={K} N={N}: max relative error {err:.2e} vs numpy")
    for _ in range(2):
        sess.run(None, feeds)
    ts = []
    deadline = time.perf_counter() + 2.5
    for _ in range(rounds):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        ts.append(time.perf_counter() - t0)
        if time.perf_counter() > deadline and len(ts) >= 3:
            break
    return {"family": family, "shape": {"M": M, "K": K, "N": N}, "time_s": float(np.median(ts)) / R,
            "copies": R, "runs": len(ts), "max_rel_err": err, "ort_ops": ops}


_OPS: dict[tuple, list[str]] = {}


def _optimized(m, threads, cfg):
    import tempfile

    import onnx

    from compiler.backend.quantized import make_session
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "opt.onnx")
        make_session(m, threads=threads, extra=cfg, optimized_path=p)
        return list(onnx.load(p, load_external_data=False).graph.node)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="GPT-2 shapes, M in 1, 8, 128 only")
    ap.add_argument("--smoke", action="store_true", help="one 256 x 256 shape at M = 1 and 8, one weight copy, "
                    "3 rounds: checks every family builds, is rewritten and matches numpy (seconds)")
    ap.add_argument("--families", nargs="+", default=FAMILIES)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    import onnxruntime as ort
    from rich.progress import Progress
    from compiler.perf.calibration.host import cpu_info
    host = cpu_info()
    llc = host["llc_bytes"] or 105e6        # not exposed: assume a server-sized L3 (more copies, not fewer)
    stream = STREAM_BYTES
    shapes = [("smoke", 256, 256)] if args.smoke else SHAPES[:3] if args.quick else SHAPES
    ms = [1, 8] if args.smoke else [1, 8, 128] if args.quick else MS
    if args.smoke:
        stream, llc, args.rounds = 0.0, 0.0, 3
    jobs = [(f, M, s) for s in shapes for M in (MS_LARGE if s[1] * s[2] > 4e6 and not args.quick else ms)
            for f in args.families]
    rng = np.random.default_rng(0)
    samples = []
    with Progress() as prog:
        task = prog.add_task("onnxruntime CPU kernels", total=len(jobs))
        for s in shapes:                      # families of one (shape, M) back to back: same machine state
            for M in sorted({j[1] for j in jobs if j[2] == s}):
                group = [j for j in jobs if j[1] == M and j[2] == s]
                random.Random(M).shuffle(group)
                for f, _, _ in group:
                    samples.append({**measure(f, M, s[1], s[2], args.threads, args.rounds, rng, llc, stream), "layer": s[0]})
                    prog.advance(task)
                    if not sys.stdout.isatty():
                        x = samples[-1]
                        print(f"[{len(samples)}/{len(jobs)}] {s[0]} M={M} {f}: {x['time_s'] * 1e3:.3f} ms x{x['copies']}",
                              flush=True)
    base = {(x["shape"]["M"], x["shape"]["K"], x["shape"]["N"]): x["time_s"] for x in samples if x["family"] == "dense_fp32"}
    print(f"{'family':18s} " + " ".join(f"M={m:<5d}" for m in ms) + "   (median over shapes of time / dense fp32)")
    for f in args.families:
        row = []
        for m in ms:
            r = [x["time_s"] / base[(m, x["shape"]["K"], x["shape"]["N"])] for x in samples
                 if x["family"] == f and x["shape"]["M"] == m]
            row.append(f"{np.median(r):7.2f}" if r else "      —")
        print(f"{f:18s} " + " ".join(row))
    data = {"schema": "rooftop-ort-kernels/1", "smoke": bool(args.smoke),
            "device": {"name": host["name"], "kind": "cpu", "cores": host["cores"], "llc_bytes": llc,
                       "threads": args.threads, "isa": host["isa"]},
            "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider",
            "date": time.strftime("%Y-%m-%d"), "method": METHOD,
            "samples": samples}
    Path(args.out).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out} ({len(samples)} samples)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
