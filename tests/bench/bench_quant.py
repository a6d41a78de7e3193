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
- ``ort quantize_dynamic``: ``onnxruntime.quantization.quantize_dynamic`` (QInt8 weights, per
  channel) of the rooftop fp32 ``model.onnx``;
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
# decoders only: the tied LM head quantized too (its own int4 copy; the Gather keeps the fp32 table)
DECODER_SCHEMES = [("w4a16 +head", ["quant.exclude=[embeddings]"])]


def _compose(overrides):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from compiler.driver.app import config_dir
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        cfg = compose("config", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=False) | {"hydra": None}


def build_variants(model: str, work: Path, samples: int) -> tuple[dict[str, str], dict]:
    """{variant: model path} and the model config."""
    from compiler.driver.pipeline import run
    paths: dict[str, str] = {}
    base = ["hardware=cpu", "pipeline=default", "report.html=false", "progress=false",
            "accuracy.enabled=false"]      # accuracy is measured below, once, for every variant alike
    schemes = SCHEMES + (DECODER_SCHEMES if _compose([f"model={model}"])["model"].get("task") == "causal_lm" else [])
    for name, extra in [("rooftop fp32", [])] + [(f"rooftop {q}", [f"quant={q.split()[0]}", *x]) for q, x in schemes]:
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
            out[i.name] = rng.standard_normal(shape).astype(np.float32)
    return out


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
    args = ap.parse_args(argv)
    record = {"schema": "rooftop-bench-quant/1", "date": time.strftime("%Y-%m-%d"), "threads": THREADS,
              "machine": machine(), "models": {}}
    import onnxruntime as ort
    print(f"onnxruntime {ort.__version__} CPU, {THREADS} threads, allow_spinning=0, medians of round-robin rounds; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")
    for model in args.models:
        with tempfile.TemporaryDirectory(prefix=f"bench_quant_{model}_") as tmp:
            print(f"\n== {model}: building variants", flush=True)
            paths, mcfg = build_variants(model, Path(tmp), args.samples)
            acc, vocab = accuracy_of(paths, mcfg, args.samples)
            if mcfg.get("task") == "embedding":
                cases = {"b1 s128": (1, SEQ, 0), "b8 s128": (8, SEQ, 0)}
            else:
                cases = {"prefill b1": (1, SEQ, 0), "prefill b8": (8, SEQ, 0),
                         "decode b1 @128": (1, 1, SEQ), "decode b8 @128": (8, 1, SEQ)}
            rounds = args.rounds_gpt2 if model == "gpt2" else args.rounds
            t = time_cases(paths, cases, rounds, vocab)
            metric = next(iter(acc.values()))["metric"]
            print(f"{rounds} rounds; per case: median wall ms and its ratio to rooftop fp32, median CPU ms (all threads) and its ratio; "
                  f"load average {os.getloadavg()[0]:.1f} after")
            head = f"{'variant':22s} " + " ".join(f"{c:>32s}" for c in cases) + f"  {metric:>18s}"
            if metric == "top1_agreement":
                head += f" {'KL nats':>9s}"
            print(head)
            base = {c: t[("rooftop fp32", c)] for c in cases}
            for v in paths:
                cells = " ".join(f"{t[(v, c)][0] * 1e3:8.1f} {t[(v, c)][0] / base[c][0]:5.2f}x "
                                 f"{t[(v, c)][1] * 1e3:8.1f} {t[(v, c)][1] / base[c][1]:5.2f}x" for c in cases)
                a = acc[v]
                line = f"{v:22s} {cells}  {a['value']:18.4f}"
                if metric == "top1_agreement":
                    line += f" {a['kl_nats']['mean']:9.5f}"
                print(line, flush=True)
            print(f"(accuracy: {acc['rooftop fp32']['samples']} samples, {acc['rooftop fp32']['tokens']} tokens, "
                  f"tokenizer {acc['rooftop fp32']['tokenizer']}; ratios vs rooftop fp32)")
            record["models"][model] = {
                "rounds": rounds, "cases": {c: {"batch": b, "seq": s_, "past": p_} for c, (b, s_, p_) in cases.items()},
                "variants": {v: {"wall_s": {c: t[(v, c)][0] for c in cases}, "cpu_s": {c: t[(v, c)][1] for c in cases},
                                 "accuracy": {k: acc[v][k] for k in ("metric", "value", "samples", "tokens") if k in acc[v]}
                                 | ({"kl_nats_mean": acc[v]["kl_nats"]["mean"]} if "kl_nats" in acc[v] else {})}
                             for v in paths}}
    if args.json:
        import json
        record["onnxruntime"] = ort.__version__
        Path(args.json).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
