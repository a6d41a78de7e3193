"""Benchmark of quantization in onnxruntime CPU (prints a table; not a test).

Models: ``minilm`` (all-MiniLM-L6-v2, real weights) at batch 1 and 8, sequence 128; ``gpt2``
(the 124M config, seeded random weights) prefill of 128 tokens and one decode step at 128 cached
tokens, batch 1 and 8. Variants, all from the same fp32 model:

- ``rooftop fp32``: ``rooftop model=<m> pipeline=default hardware=cpu`` (quant=none);
- ``rooftop <q>``: the same with ``quant=<q>`` for w8a16, w4a16 (default: uint4 + zero point,
  RTN), w8a8, fp8, and the w4a16 variants ``sym`` (``quant.symmetric=true``: int4, full range),
  ``gptq`` (``quant.method=gptq``), ``acc0`` (``quant.ort_accuracy_level=0``: fp32 activations
  in MatMulNBits) and, for GPT-2, ``+head`` (``quant.exclude=[embeddings]``: the tied LM head
  quantized as its own int4 copy; by default it stays fp32);
- ``rooftop auto``: ``quant=auto`` — a format per layer and embedding table chosen by the cost
  model under an accuracy budget (MiniLM: ``quant.max_accuracy_drop=0.01`` in cosine, at batch 8 ×
  128 tokens; GPT-2: ``quant.metric=kl quant.max_accuracy_drop=0.01`` with an int8 KV cache, at
  batch 8, decode at 128 cached tokens);
- GPT-2 only: ``w4a16 +tied +kv8`` — int4 everywhere, the embedding table quantized and shared by
  the tied LM head (``quant.exclude=[]``), the KV cache stored int8 in the artifact
  (``kv.dtype=int8``), RTN and GPTQ;
- ``ort quantize_dynamic``: ``onnxruntime.quantization.quantize_dynamic`` (QInt8 weights, per
  channel) of the rooftop fp32 ``model.onnx``, MatMuls only (as before), and ``+Gather``: its Gather
  quantization too (the embedding table; the file-size reference — its default operator set would
  also make a ``QAttention`` that rejects opset 23's attributes);
- ``ort MatMulNBits`` / ``ort MatMulNBits asym``:
  ``onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer`` (4 bits, block 128,
  accuracy level 4; symmetric, and asymmetric — its default) of the same file.

Latency: onnxruntime CPU, ``intra_op_num_threads=2``, default graph optimizations, each artifact's
recorded session config (rooftop's MatMulNBits accuracy level), and
``session.intra_op.allow_spinning=0`` for every variant alike: on a shared, loaded machine
spinning worker threads inflated fp32 MiniLM latency ~5× and made ratios noise. Medians over
round-robin rounds in one process (one run of each variant per round, shuffled order), of the
wall time and of the process CPU time (all threads; steadier under load), each with its ratio to
rooftop fp32 (on a quiet machine the wall ratio is the latency a user sees).
Accuracy beside it: MiniLM embedding cosine, GPT-2 top-1 agreement and KL of next-token
distributions, both against the rooftop fp32 model on the evaluation split of the shipped text
(compiler/backend/accuracy.py). FP8 on CPU is an accuracy simulation (DequantizeLinear to fp32): its
latency is not FP8 latency.

    .venv/bin/python tests/bench/bench_quant.py [--rounds 20] [--rounds-gpt2 6] [--models minilm gpt2] [--samples 8]
        [--json OUT]     # also write the medians, the accuracy and the machine (memory read bandwidth) as JSON
        [--variants REGEX]   # only the variants whose name matches (rooftop fp32 and the peers always run)
        [--per-layer]        # quant=auto's predicted per-layer gains against onnxruntime's per-node profile

Per layer (``--per-layer``): the fp32 artifact and the ``auto`` artifact are profiled by onnxruntime
(``SessionOptions.enable_profiling``) on the acceptance case (MiniLM batch 8 × 128; GPT-2 decode at
batch 8); each linear layer's time is its GEMM node plus the nodes that exist only for it (the
bias-row ``Pad`` of the fp32 CPU form, a shared ``DynamicQuantizeLinear`` split among its readers,
a bias ``Add`` / activation right after it), the i-th layer of a (K, N) shape in the IR matched
to the i-th GEMM of that shape in the profile (a tied head, listed first, runs last); the
sign of ``t(fp32) − t(auto)`` per layer is compared with the sign of the search's predicted gain
for that phase (report.json ``compression.quantization.auto.layers[].predicted_gain_by_phase_s``).
Then every linear in every format: the uniform w8a16 / w4a16 / w8a8 variants (those built) are
profiled the same way and set beside the cost model's time of that layer in each format
(``layers[].predicted_time_by_format_s``): per layer the format measured and predicted fastest,
per format the sign agreement of the gain over fp32, and the sum of the layers' times if each took
its measured-fastest format — whether a per-layer mix can beat the best uniform scheme.

``--json`` output of a GPT-2 run is what tests/perf/test_cpu_kernels.py holds rooftop's CPU cost predictions
to (compiler/perf/calibration/data/e2e/cpu_ort_gpt2.json).
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

THREADS = int(os.environ.get("BENCH_THREADS", "2"))
SEQ = 128
SCHEMES = [("w8a16", []), ("w4a16", []), ("w4a16 sym", ["quant.symmetric=true"]),
           ("w4a16 gptq", ["quant.method=gptq"]), ("w4a16 acc0", ["quant.ort_accuracy_level=0"]), ("w8a8", []),
           ("fp8", [])]
SESSION = {"session.intra_op.allow_spinning": "0"}
ENCODER_SCHEMES = [("auto", ["quant.max_accuracy_drop=0.01", "workload.batch=8", "workload.prompt_len=128"])]
# decoders only: the tied LM head quantized too — its own int4 copy (the Gather keeps the fp32 table), or
# sharing the quantized table with the Gather; the KV cache int8 in the artifact; quant=auto on the decode case
DECODER_SCHEMES = [("w4a16 +head", ["quant.exclude=[embeddings]"]),
                   ("w4a16 +tied +kv8", ["quant.exclude=[]", "kv.dtype=int8"]),
                   ("w4a16 gptq +tied +kv8", ["quant.exclude=[]", "quant.method=gptq", "kv.dtype=int8"]),
                   ("auto", ["quant.metric=kl", "quant.max_accuracy_drop=0.01", "kv.dtype=int8", "workload.batch=8",
                             "workload.prompt_len=128", "workload.context_len=128", "quant.sensitivity.samples=4"])]
HARDWARE = "cpu_2vcpu"      # conf/hardware/cpu_2vcpu.yaml: this benchmark's machine


def _compose(overrides):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from compiler.driver.app import config_dir
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        cfg = compose("config", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=False) | {"hydra": None}


def build_variants(model: str, work: Path, samples: int, only: str | None = None) -> tuple[dict[str, str], dict]:
    """{variant: model path} and the model config."""
    import re

    from compiler.driver.pipeline import run
    paths: dict[str, str] = {}
    base = [f"hardware={HARDWARE}", "pipeline=default", "report.html=false", "progress=false",
            "accuracy.enabled=false"]      # accuracy is measured below, once, for every variant alike
    decoder = _compose([f"model={model}"])["model"].get("task") == "causal_lm"
    schemes = SCHEMES + (DECODER_SCHEMES if decoder else ENCODER_SCHEMES)
    todo = [("rooftop fp32", [])] + [(f"rooftop {q}", [f"quant={q.split()[0]}", *x]) for q, x in schemes]
    todo = [(n, x) for n, x in todo if n == "rooftop fp32" or not only or re.search(only, n)]
    for name, extra in todo:
        out = work / name.replace(" ", "_")
        t0 = time.perf_counter()
        cfg = _compose([f"model={model}", *base, *extra])
        run(cfg, str(out), show_progress=False)
        paths[name] = str(out / "model.onnx")
        print(f"  built {name:22s} {time.perf_counter() - t0:6.1f} s", flush=True)
    import onnx
    from onnx import inliner
    # The peers quantize graph-level MatMuls only: the fp32 model hardware=cpu gives (fuse target
    # cpu: biased linears as Gemm) would leave them nothing to do. So they get the same fp32 model
    # fused for the portable target (MatMul + Add), with rooftop's local functions inlined, and
    # quantize its MatMuls (quantize_dynamic would turn ONNX Attention into a QAttention that
    # rejects the opset-23 attributes). Ratios stay relative to "rooftop fp32" (the cpu target).
    cfg = _compose([f"model={model}", *base])
    cfg["pipeline"]["passes"] = [dict(p, target="portable") if isinstance(p, dict) and p.get("name") == "fuse"
                                 else p for p in cfg["pipeline"]["passes"]]
    run(cfg, str(work / "fp32_portable"), show_progress=False)
    fp32 = str(work / "fp32_inlined.onnx")
    onnx.save(inliner.inline_local_functions(onnx.load(str(work / "fp32_portable" / "model.onnx"))), fp32)
    n_matmul = sum(n.op_type == "MatMul" for n in onnx.load(fp32).graph.node)
    assert n_matmul, "the peers' fp32 model has no graph-level MatMul to quantize"
    from onnxruntime.quantization import QuantType, quantize_dynamic
    p = str(work / "ort_dynamic.onnx")
    quantize_dynamic(fp32, p, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"])
    paths["ort quantize_dynamic"] = p
    p = str(work / "ort_dynamic_gather.onnx")     # its Gather quantization too (all ops would make a QAttention
    quantize_dynamic(fp32, p, weight_type=QuantType.QInt8, per_channel=True,   # that rejects opset 23's attributes)
                     op_types_to_quantize=["MatMul", "Gather"])
    paths["ort quantize_dynamic +Gather"] = p
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    for name, sym in (("ort MatMulNBits", True), ("ort MatMulNBits asym", False)):
        q = MatMulNBitsQuantizer(onnx.load(fp32), block_size=128, is_symmetric=sym, accuracy_level=4)
        q.process()
        p = str(work / f"ort_nbits_{int(sym)}.onnx")
        q.model.save_model_to_file(p, use_external_data_format=False)
        paths[name] = p
    return paths, _compose([f"model={model}"])["model"]


def feeds(sess, batch: int, seq: int, past: int, vocab: int, rng) -> dict[str, np.ndarray]:
    out = {}
    for i in sess.get_inputs():
        if i.name == "input_ids":
            out[i.name] = rng.integers(0, vocab, (batch, seq)).astype(np.int64)
        elif i.name == "position_ids":
            out[i.name] = np.broadcast_to(np.arange(past, past + seq), (batch, seq)).astype(np.int64).copy()
        elif i.name == "attention_mask":
            out[i.name] = np.ones((batch, seq), np.int64)
        elif i.name == "token_type_ids":
            out[i.name] = np.zeros((batch, seq), np.int64)
        elif i.name.startswith("past_"):
            shape = [batch] + [past if isinstance(d, str) or d is None else d for d in i.shape[1:]]
            out[i.name] = (rng.integers(-127, 128, shape).astype(np.int8) if i.type == "tensor(int8)" else
                           rng.standard_normal(shape).astype(np.float32))
    return out


def file_mb(path: str) -> float:
    return sum(os.path.getsize(p) for p in (path, path + ".data") if os.path.exists(p)) / 1e6


GEMMS = ("MatMul", "Gemm", "FusedMatMul", "MatMulNBits", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
         "MatMulInteger", "QGemm")
HELPERS_IN = ("Pad", "DynamicQuantizeLinear", "QuantizeLinear")
HELPERS_OUT = ("Add", "Gelu", "FastGelu", "BiasGelu", "Relu", "Sigmoid", "Mul", "QuickGelu")


def layer_times(path: str, feeds_: dict, rounds: int) -> list[dict]:
    """onnxruntime's per-node profile of ``path`` on ``feeds_`` (median over ``rounds``), grouped per
    linear layer in execution order: ``[{"K", "N", "time_s"}]`` (see the module docstring)."""
    import json

    import onnx
    import onnxruntime as ort

    from onnx import inliner

    from compiler.backend.quantized import session_config
    m = onnx.load(path, load_external_data=False)
    cfg = session_config(m)
    # Local-function bodies carry no node names, and onnxruntime names inlined nodes in its profile
    # but serializes the optimized graph without them: inline and name every node first, so the
    # profile's names and the optimized graph's agree.
    m = inliner.inline_local_functions(onnx.load(path))
    for i, n in enumerate(m.graph.node):
        if not n.name:
            n.name = f"_bench_{n.op_type}_{i}"
    so = ort.SessionOptions()
    so.enable_profiling = True
    so.intra_op_num_threads, so.inter_op_num_threads = THREADS, 1
    so.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        so.profile_file_prefix = os.path.join(tmp, "prof")
        so.optimized_model_filepath = os.path.join(tmp, "opt.onnx")
        for k, v in {**cfg, **SESSION}.items():
            so.add_session_config_entry(k, str(v))
        path = os.path.join(tmp, "named.onnx")
        onnx.save(m, path, save_as_external_data=m.ByteSize() > 1_500_000_000, location="named.onnx.data")
        del m
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        outs = [sess.get_outputs()[0].name]
        for _ in range(2):
            sess.run(outs, feeds_)
        sess.end_profiling()
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        for _ in range(rounds):
            sess.run(outs, feeds_)
        prof = sess.end_profiling()
        events = json.load(open(prof))
        opt = onnx.load(os.path.join(tmp, "opt.onnx"), load_external_data=False)
    nodes = {n.name: n for n in opt.graph.node}
    times: dict[str, list[float]] = {}
    shapes: dict[str, tuple] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            name = e["name"][: -len("_kernel_time")]
            times.setdefault(name, []).append(e["dur"] * 1e-6)
            args = e.get("args", {})
            shapes.setdefault(name, (args.get("input_type_shape"), args.get("output_type_shape")))
    med = {k: float(np.median(v)) for k, v in times.items()}
    readers: dict[str, list[str]] = {}
    for n in opt.graph.node:
        for t in n.input:
            readers.setdefault(t, []).append(n.name)
    producer = {t: n.name for n in opt.graph.node for t in n.output}
    order = [e["name"][: -len("_kernel_time")] for e in events if e.get("cat") == "Node"
             and e["name"].endswith("_kernel_time")]
    seen, out = set(), []
    for name in order:
        n = nodes.get(name)
        if name in seen or n is None or n.op_type not in GEMMS:
            continue
        seen.add(name)
        ins, outs_ = shapes.get(name, (None, None))
        try:
            k = int(list(ins[0].values())[0][-1])
            nn = int(list(outs_[0].values())[0][-1])
        except (TypeError, IndexError, ValueError, AttributeError):
            continue
        t = med.get(name, 0.0)
        a = producer.get(n.input[0])
        if a in nodes and nodes[a].op_type in HELPERS_IN:
            t += med.get(a, 0.0) / max(1, len([r for r in readers.get(nodes[a].output[0], [])
                                               if nodes.get(r) is not None and nodes[r].op_type in GEMMS]))
        y = n.output[0]
        for _ in range(2):          # a bias Add / an activation right after it
            rs = readers.get(y, [])
            if len(rs) != 1 or nodes[rs[0]].op_type not in HELPERS_OUT:
                break
            t += med.get(rs[0], 0.0)
            y = nodes[rs[0]].output[0]
        out.append({"K": k, "N": nn, "time_s": t, "op": n.op_type})
    return out


def nth_gemm(profile: list[dict], k: int, n: int, i: int) -> int | None:
    """Index in ``profile`` (execution order) of the ``i``-th GEMM of a K×N weight (K + 1: the fp32
    CPU form's bias row): layers of one shape run in the order of the IR's layers, and a tied head
    listed first among quant=auto's units runs last."""
    hits = [j for j, x in enumerate(profile) if x["N"] == n and x["K"] in (k, k + 1)]
    return hits[i] if i < len(hits) else None


def per_layer_agreement(fp32: str, art: str, report: dict, feeds_: dict, phase: str, rounds: int) -> dict:
    """Sign agreement of the search's predicted per-layer gains with onnxruntime's per-layer times
    (``feeds_``: {"fp32": feeds, "auto": feeds} — the same tokens; an int8 cache differs in type)."""
    auto = report["compression"]["quantization"]["auto"]
    ta, tb = layer_times(fp32, feeds_["fp32"], rounds), layer_times(art, feeds_["auto"], rounds)
    rows = []
    occ: dict[tuple, int] = {}
    for x in auto["layers"]:
        if x["format"] == "keep" or (x["kind"] == "embedding" and not x["ops"]):
            continue
        k, n = x["shape"]
        i = occ[(k, n)] = occ.get((k, n), -1) + 1
        ja, jb = nth_gemm(ta, k, n, i), nth_gemm(tb, k, n, i)
        if ja is None or jb is None:
            rows.append({"weight": x["weight"], "matched": False})
            continue
        pred = x["predicted_gain_by_phase_s"][phase]
        meas = ta[ja]["time_s"] - tb[jb]["time_s"]
        rows.append({"weight": x["weight"], "format": x["format"], "matched": True, "predicted_gain_s": pred,
                     "measured_gain_s": meas, "fp32_s": ta[ja]["time_s"], "quantized_s": tb[jb]["time_s"],
                     "kernel": tb[jb]["op"], "agree": (pred > 0) == (meas > 0)})
    matched = [r for r in rows if r["matched"]]
    return {"phase": phase, "layers": rows, "matched": len(matched), "unmatched": len(rows) - len(matched),
            "agree": sum(r["agree"] for r in matched),
            "agreement": (sum(r["agree"] for r in matched) / len(matched)) if matched else None}


#: the uniform variants whose every layer is in one of quant=auto's formats (the per-format profile)
UNIFORM_FORMATS = {"rooftop fp32": "keep", "rooftop w8a16": "w8a16", "rooftop w4a16": "w4a16_g128",
                   "rooftop w8a8": "w8a8"}


def per_layer_formats(paths: dict[str, str], report: dict, feeds_of, phase: str, rounds: int) -> dict:
    """Every linear layer in every format against the cost model's per-format times: each uniform
    variant (fp32 = keep, w8a16, w4a16 g128, w8a8) profiled like ``per_layer_agreement``, each layer
    matched in order by (K, N); per layer, the format measured fastest, the one predicted fastest
    (report.json ``...auto.layers[].predicted_time_by_format_s``), and per format the sign of the
    predicted and the measured gain over keep. This is the evidence for whether a per-layer mix can
    beat the best uniform scheme: with additive layer times, the optimum takes each layer's fastest
    format that the accuracy budget allows."""
    auto = report["compression"]["quantization"]["auto"]
    have = {f: v for v, f in UNIFORM_FORMATS.items() if v in paths}
    prof = {f: layer_times(paths[v], feeds_of(v), rounds) for f, v in have.items()}
    rows, occ = [], {}
    for x in auto["layers"]:
        if x["kind"] != "linear" or "predicted_time_by_format_s" not in x:
            continue
        k, n = x["shape"]
        i = occ[(k, n)] = occ.get((k, n), -1) + 1
        meas = {}
        for f, lst in prof.items():
            j = nth_gemm(lst, k, n, i)
            if j is not None:
                meas[f] = lst[j]["time_s"]
        pred = {f: t[phase] for f, t in x["predicted_time_by_format_s"].items() if f in meas}
        if "keep" not in meas or len(meas) < 2:
            rows.append({"weight": x["weight"], "matched": False})
            continue
        signs = {f: ((pred["keep"] - pred[f]) > 0) == ((meas["keep"] - meas[f]) > 0) for f in meas if f != "keep"}
        rows.append({"weight": x["weight"], "matched": True, "chosen": x["format"], "measured_s": meas,
                     "predicted_s": pred, "fastest_measured": min(meas, key=meas.get),
                     "fastest_predicted": min(pred, key=pred.get), "sign_agree": signs})
    m = [r for r in rows if r["matched"]]
    per_fmt = {f: {"agree": sum(r["sign_agree"].get(f, False) for r in m),
                   "of": sum(f in r["sign_agree"] for r in m)} for f in prof if f != "keep"}
    fastest = {f: sum(r["fastest_measured"] == f for r in m) for f in prof}
    return {"phase": phase, "formats": list(prof), "layers": rows, "matched": len(m),
            "fastest_agree": sum(r["fastest_measured"] == r["fastest_predicted"] for r in m),
            "fastest_measured_count": fastest, "sign_agreement_by_format": per_fmt,
            "sum_measured_s": {f: sum(r["measured_s"][f] for r in m if f in r["measured_s"]) for f in prof},
            "sum_best_per_layer_s": sum(min(r["measured_s"].values()) for r in m)}


def time_cases(paths: dict[str, str], cases, rounds: int, vocab: int
               ) -> dict[tuple[str, str], tuple[float, float]]:
    """(median wall s, median process CPU s) per (variant, case)."""
    from compiler.backend.quantized import make_session
    sessions = {v: make_session(p, threads=THREADS, extra=SESSION) for v, p in paths.items()}
    res = {}
    rng = np.random.default_rng(0)
    for case, (b, s, p) in cases.items():
        f = {v: feeds(sess, b, s, p, vocab, rng) for v, sess in sessions.items()}
        outs = {v: [sess.get_outputs()[0].name] for v, sess in sessions.items()}
        for v, sess in sessions.items():      # warm up
            for _ in range(2):
                sess.run(outs[v], f[v])
        times = {v: [] for v in sessions}
        cpu = {v: [] for v in sessions}
        order = list(sessions)
        for _ in range(rounds):
            random.shuffle(order)
            for v in order:
                c0, t0 = time.process_time(), time.perf_counter()
                sessions[v].run(outs[v], f[v])
                times[v].append(time.perf_counter() - t0)
                cpu[v].append(time.process_time() - c0)
        for v in sessions:
            res[(v, case)] = (float(np.median(times[v])), float(np.median(cpu[v])))
    return res


def accuracy_of(paths: dict[str, str], model_cfg: dict, samples: int) -> dict[str, dict]:
    import onnx

    from compiler.backend import accuracy
    ref = paths["rooftop fp32"]
    task = "embedding" if model_cfg.get("task") == "embedding" else "causal_lm"
    m = onnx.load(ref)
    vocab = next(int(onnx.numpy_helper.to_array(i).shape[0]) for i in m.graph.initializer
                 if "wte" in i.name or "word_embeddings" in i.name or "lm_head" in i.name)
    tok = accuracy.make_tokenizer(model_cfg, vocab)
    paras = accuracy.load_paragraphs()
    out = {}
    for v, p in paths.items():
        out[v] = accuracy.evaluate(ref, p, task=task, tokenizer=tok, paragraphs=paras, samples=samples,
                                   seq_len=SEQ, threads=THREADS)
    return out, vocab


def machine() -> dict:
    """CPU model, ISA flags, cores, and the memory read bandwidth two threads reach (torch.sum
    over 400 MB, median of 5) — what a CPU hardware description of this machine needs."""
    import torch

    from compiler.perf.calibration.host import cpu_info
    out = {k: v for k, v in cpu_info().items() if k != "llc_bytes"}
    n = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    a = torch.ones(100_000_000)
    a.sum()
    ts = []
    for _ in range(5):
        t0 = time.perf_counter()
        a.sum()
        ts.append(time.perf_counter() - t0)
    torch.set_num_threads(n)
    out["read_bandwidth_gbs"] = round(4e8 / float(np.median(ts)) / 1e9, 2)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["minilm", "gpt2"])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--rounds-gpt2", type=int, default=6, help="rounds for gpt2 (a prefill at batch 8 takes seconds)")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--json", help="write the medians, accuracy and machine to this JSON file")
    ap.add_argument("--variants", help="regex: build only the rooftop variants whose name matches (and fp32, the peers)")
    ap.add_argument("--per-layer", action="store_true", help="quant=auto's predicted per-layer gains vs onnxruntime's profile")
    ap.add_argument("--gpt2-cases", default="all", choices=["all", "decode"],
                    help="decode: time only the decode steps (the acceptance case) — a batch-8 prefill takes seconds")
    args = ap.parse_args(argv)
    record = {"schema": "rooftop-bench-quant/2", "date": time.strftime("%Y-%m-%d"), "threads": THREADS,
              "hardware": HARDWARE, "machine": machine(), "models": {}}
    import onnxruntime as ort
    print(f"onnxruntime {ort.__version__} CPU, {THREADS} threads, allow_spinning=0, medians of round-robin rounds; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")
    for model in args.models:
        with tempfile.TemporaryDirectory(prefix=f"bench_quant_{model}_") as tmp:
            print(f"\n== {model}: building variants", flush=True)
            paths, mcfg = build_variants(model, Path(tmp), args.samples, args.variants)
            acc, vocab = accuracy_of(paths, mcfg, args.samples)
            if mcfg.get("task") == "embedding":
                cases = {"b1 s128": (1, SEQ, 0), "b8 s128": (8, SEQ, 0)}
                key_case, phase = "b8 s128", "prefill"
            else:
                cases = {"prefill b1": (1, SEQ, 0), "prefill b8": (8, SEQ, 0),
                         "decode b1 @128": (1, 1, SEQ), "decode b8 @128": (8, 1, SEQ)}
                if args.gpt2_cases == "decode":
                    cases = {k: v for k, v in cases.items() if k.startswith("decode")}
                key_case, phase = "decode b8 @128", "decode"
            rounds = args.rounds_gpt2 if model == "gpt2" else args.rounds
            load0 = os.getloadavg()[0]
            t = time_cases(paths, cases, rounds, vocab)
            metric = next(iter(acc.values()))["metric"]
            print(f"{rounds} rounds; per case: median wall ms and its ratio to rooftop fp32, median CPU ms (all threads) and its ratio; "
                  f"load average {load0:.1f} before, {os.getloadavg()[0]:.1f} after")
            head = f"{'variant':28s} " + " ".join(f"{c:>32s}" for c in cases) + f"  {metric:>18s} {'file MB':>8s}"
            if metric == "top1_agreement":
                head += f" {'KL nats':>9s}"
            print(head)
            base = {c: t[("rooftop fp32", c)] for c in cases}
            for v in paths:
                cells = " ".join(f"{t[(v, c)][0] * 1e3:8.1f} {t[(v, c)][0] / base[c][0]:5.2f}x "
                                 f"{t[(v, c)][1] * 1e3:8.1f} {t[(v, c)][1] / base[c][1]:5.2f}x" for c in cases)
                a = acc[v]
                line = f"{v:28s} {cells}  {a['value']:18.4f} {file_mb(paths[v]):8.1f}"
                if metric == "top1_agreement":
                    line += f" {a['kl_nats']['mean']:9.5f}"
                print(line, flush=True)
            print(f"(accuracy: {acc['rooftop fp32']['samples']} samples, {acc['rooftop fp32']['tokens']} tokens, "
                  f"tokenizer {acc['rooftop fp32']['tokenizer']}; ratios vs rooftop fp32)")
            rec = record["models"][model] = {
                "rounds": rounds, "load_average": [load0, os.getloadavg()[0]],
                "cases": {c: {"batch": b, "seq": s_, "past": p_} for c, (b, s_, p_) in cases.items()},
                "variants": {v: {"wall_s": {c: t[(v, c)][0] for c in cases}, "cpu_s": {c: t[(v, c)][1] for c in cases},
                                 "file_mb": file_mb(paths[v]),
                                 "accuracy": {k: acc[v][k] for k in ("metric", "value", "samples", "tokens") if k in acc[v]}
                                 | ({"kl_nats_mean": acc[v]["kl_nats"]["mean"]} if "kl_nats" in acc[v] else {})}
                             for v in paths}}
            rec["acceptance"] = acceptance(model, rec, key_case, metric)
            for line in rec["acceptance"]["lines"]:
                print("ACCEPTANCE " + line)
            if args.per_layer and "rooftop auto" in paths:
                import json
                rep = json.loads((Path(paths["rooftop auto"]).parent / "report.json").read_text())
                b_, s_, p_ = cases[key_case]
                from compiler.backend.quantized import make_session
                f = feeds(make_session(paths["rooftop auto"]), b_, s_, p_, vocab, np.random.default_rng(1))
                f32 = feeds(make_session(paths["rooftop fp32"]), b_, s_, p_, vocab, np.random.default_rng(1))
                agree = per_layer_agreement(paths["rooftop fp32"], paths["rooftop auto"], rep,
                                            {"fp32": f32, "auto": f}, phase, rounds)
                rec["per_layer"] = agree
                for r in agree["layers"]:
                    if r["matched"]:
                        print(f"  {r['weight']:55s} {r['format']:11s} predicted {r['predicted_gain_s'] * 1e3:+9.4f} ms  "
                              f"measured {r['measured_gain_s'] * 1e3:+9.4f} ms ({r['fp32_s'] * 1e3:.3f} → "
                              f"{r['quantized_s'] * 1e3:.3f} ms, {r['kernel']})  {'agree' if r['agree'] else 'DISAGREE'}")
                print(f"ACCEPTANCE {model} per-layer sign agreement ({phase}, {key_case}): {agree['agree']}/{agree['matched']}"
                      f" = {100 * (agree['agreement'] or 0):.0f} % ({agree['unmatched']} layers not matched in the profile)")

                def feeds_of(v):
                    return feeds(make_session(paths[v]), b_, s_, p_, vocab, np.random.default_rng(1))
                pf = rec["per_layer_formats"] = per_layer_formats(paths, rep, feeds_of, phase, rounds)
                print(f"per layer and format ({phase}, {key_case}; ms measured / predicted):")
                for r in pf["layers"]:
                    if r["matched"]:
                        cells = "  ".join(f"{f} {r['measured_s'][f] * 1e3:7.3f}/{r['predicted_s'][f] * 1e3:7.3f}"
                                          for f in pf["formats"] if f in r["measured_s"])
                        print(f"  {r['weight']:45s} {cells}  fastest {r['fastest_measured']} (predicted "
                              f"{r['fastest_predicted']}), auto chose {r['chosen']}")
                print(f"ACCEPTANCE {model} per-layer fastest format measured = predicted: {pf['fastest_agree']}/{pf['matched']}; "
                      f"measured fastest per format {pf['fastest_measured_count']}; sign of the gain over fp32 per format "
                      + ", ".join(f"{f} {x['agree']}/{x['of']}" for f, x in pf["sign_agreement_by_format"].items()))
                print(f"ACCEPTANCE {model} sum of the layers' measured times: "
                      + ", ".join(f"{f} {t * 1e3:.2f} ms" for f, t in pf["sum_measured_s"].items())
                      + f"; each layer in its fastest format {pf['sum_best_per_layer_s'] * 1e3:.2f} ms")
    if args.json:
        import json
        record["onnxruntime"] = ort.__version__
        Path(args.json).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        print(f"wrote {args.json}")


def acceptance(model: str, rec: dict, case: str, metric: str) -> dict:
    """The issue's acceptance figures from one process's medians (CPU-time ratios; wall beside)."""
    v = rec["variants"]
    fp = v["rooftop fp32"]
    lines, out = [], {}
    if model == "minilm" and "rooftop auto" in v:
        a = v["rooftop auto"]
        cos = a["accuracy"]["value"]
        uni = {k: x for k, x in v.items() if k.startswith("rooftop ") and k not in ("rooftop auto", "rooftop fp32")
               and x["accuracy"]["value"] >= 0.99}
        best = min(uni, key=lambda k: uni[k]["cpu_s"][case]) if uni else None
        peer = v.get("ort quantize_dynamic +Gather") or v.get("ort quantize_dynamic")
        out = {"auto_cosine": cos, "best_uniform": best,
               "auto_vs_best_uniform_cpu": a["cpu_s"][case] / uni[best]["cpu_s"][case] if best else None,
               "auto_vs_best_uniform_wall": a["wall_s"][case] / uni[best]["wall_s"][case] if best else None,
               "auto_file_mb": a["file_mb"], "quantize_dynamic_file_mb": peer["file_mb"] if peer else None}
        lines.append(f"minilm quant=auto cosine {cos:.4f} (≥ 0.99: {cos >= 0.99})")
        if best:
            lines.append(f"minilm {case}: auto / best uniform meeting 0.99 ({best}) = {out['auto_vs_best_uniform_cpu']:.3f}× CPU "
                         f"time, {out['auto_vs_best_uniform_wall']:.3f}× wall")
        if peer:
            lines.append(f"minilm file: auto {a['file_mb']:.1f} MB vs ort quantize_dynamic {peer['file_mb']:.1f} MB "
                         f"(MatMul only: {v['ort quantize_dynamic']['file_mb']:.1f} MB)")
    if model == "gpt2":
        for name in ("rooftop w4a16 +tied +kv8", "rooftop w4a16 gptq +tied +kv8", "rooftop auto"):
            if name in v:
                x = v[name]
                r_cpu, r_wall = x["cpu_s"][case] / fp["cpu_s"][case], x["wall_s"][case] / fp["wall_s"][case]
                kl = x["accuracy"].get("kl_nats_mean")
                out[name] = {"cpu_ratio": r_cpu, "wall_ratio": r_wall, "kl": kl}
                lines.append(f"gpt2 {name} {case}: {r_cpu:.3f}× fp32 CPU time, {r_wall:.3f}× wall; KL {kl:.4f} nats")
    out["lines"] = lines
    return out


if __name__ == "__main__":
    main()
