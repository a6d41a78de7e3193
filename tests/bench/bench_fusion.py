"""Benchmark of operator fusion in onnxruntime (prints a table; not a test).

For ``minilm`` (all-MiniLM-L6-v2, real weights) and ``gpt2`` (the 124M config
``conf/model/gpt2.yaml``, seeded random weights), batch 1 and 8, sequence 128: onnxruntime CPU
latency (``intra_op_num_threads=2``, median of repeated runs in one process) of

- ``rooftop``: rooftop's own model — torch.export import, ``pipeline=fuse`` on ``hardware=cpu``
  (a causal LM has a KV cache: prefill with an empty past); the fuse pass's ``target: auto`` picks
  its ``cpu`` forms there (Q/K/V not merged, bias epilogues as 2-D ``Gemm``);
- ``rooftop portable``: the same with ``target: portable`` (what every other hardware gets);
- ``plain dynamo`` / ``plain legacy``: ``torch.onnx.export`` of the same module, ``dynamo=True``
  (opset 23) and the TorchScript exporter (opset 17);
- ``rooftop<-dynamo`` / ``rooftop<-legacy``: rooftop run on those export files (``model=onnx``
  import, the same passes);
- ``ort-opt dynamo`` / ``ort-opt legacy``: those files after
  ``onnxruntime.transformers.optimizer.optimize_model`` (model_type bert / gpt2), where it runs;
  a crash is caught and reported.

Each model is timed in ``BENCH_EPOCHS`` (3) epochs of fresh sessions (the same GEMMs run up to
~10 % apart from one session to another), and every session uses onnxruntime's default graph optimizations (ORT_ENABLE_ALL), as a user would,
``intra_op_num_threads=2`` and no thread spinning (``BENCH_SPIN=1`` turns it back on). Models are
timed round-robin (one run of each per round, in a shuffled order) so that load on the machine hits
all alike, for at least ``--repeat`` rounds and ``--seconds`` (30 by default); only the
first output (logits / last_hidden_state) is fetched — rooftop's causal LMs also return the KV cache
they fill, which the plain exports (``use_cache=False``) do not compute at all.
A second table splits each model's kernel time (onnxruntime's profiler) into GEMMs — the same
MLAS kernels in every variant — and everything else, the part fusion can change.
Target: rooftop ≤ 1.0× the ORT optimizer's latency wherever the optimizer runs, and faster than
the plain exports everywhere.

    .venv/bin/python tests/bench/bench_fusion.py [--repeat 10] [--models minilm gpt2] [--batches 1 8]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from compiler.backend.evaluate import OnnxEvaluator  # noqa: E402
from passes.base import install_default_evaluator  # noqa: E402

install_default_evaluator(OnnxEvaluator())   # passes run outside the driver evaluate through ONNX
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SEQ = 128
MIN_SECONDS = 30.0
THREADS = int(os.environ.get("BENCH_THREADS", "2"))
ORT_TYPES = {"minilm": ("bert", 12, 384), "gpt2": ("gpt2", 12, 768)}


def _compose(overrides):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from compiler.driver.app import config_dir
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        cfg = compose("config", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=False) | {"hydra": None}


_INNER: dict = {}


def _module(name: str):
    """(the transformers model, its model config, causal?, vocab size) — one per name, shared by
    every variant. Random-weight models get random biases and norm parameters too (HF initializes
    them to 0 and 1, which an exporter may fold away: a trained model's are never zero)."""
    import torch

    from compiler.frontends.models import build_hf, build_minilm
    if name not in _INNER:
        cfg = _compose([f"model={name}"])["model"]
        inner = build_minilm(cfg) if cfg["source"] == "minilm" else build_hf(cfg)
        if cfg.get("weights") == "random":
            g = torch.Generator().manual_seed(1)
            with torch.no_grad():
                for pname, p in inner.named_parameters():
                    if p.ndim == 1:
                        base = 1.0 if ("ln" in pname or "norm" in pname) and pname.endswith("weight") else 0.0
                        p.copy_(base + 0.02 * torch.randn(p.shape, generator=g))
        _INNER[name] = (inner.eval(), cfg, cfg.get("task", "causal_lm") == "causal_lm", int(inner.config.vocab_size))
    return _INNER[name]


def _wrapped(name: str):
    """(input_ids, attention_mask) → logits / last_hidden_state, no cache: what a user exports."""
    import torch
    inner, _, causal, _ = _module(name)

    class Wrapped(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            if causal:
                return self.m(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
            return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    return Wrapped(inner).eval()


def export_plain(name: str, out_dir: str) -> dict[str, str]:
    import torch
    _, _, causal, vocab = _module(name)
    module = _wrapped(name)
    ids = torch.randint(0, vocab, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.int64)
    out_name = "logits" if causal else "last_hidden_state"
    paths = {}
    with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        p = os.path.join(out_dir, f"{name}_dynamo.onnx")
        bd, sd = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("seq", min=2, max=1024)
        prog = torch.onnx.export(module, (), kwargs={"input_ids": ids, "attention_mask": mask}, dynamo=True,
                                 opset_version=23, input_names=["input_ids", "attention_mask"],
                                 output_names=[out_name],
                                 dynamic_shapes={"input_ids": {0: bd, 1: sd}, "attention_mask": {0: bd, 1: sd}})
        prog.save(p)
        paths["plain dynamo"] = p
        p = os.path.join(out_dir, f"{name}_legacy.onnx")
        torch.onnx.export(module, (ids, mask), p, dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask"], output_names=[out_name],
                          dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                                        out_name: {0: "batch", 1: "seq"}})
        paths["plain legacy"] = p
    return paths


def ort_optimize(name: str, src: str, dst: str) -> str:
    from onnxruntime.transformers.optimizer import optimize_model
    kind, heads, hidden = ORT_TYPES[name]
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = optimize_model(src, model_type=kind, num_heads=heads, hidden_size=hidden)
        m.save_model_to_file(dst)
    return dst


def _fuse_and_save(g, out_dir: str, batch: int, tag: str, target: str = "auto"):
    """The passes of conf/pipeline/fuse.yaml costed on hardware=cpu at this batch (the fuse pass
    with ``target``), then ONNX emission; returns (model path, the fuse pass's non-zero stats)."""
    from compiler.backend.emit import save
    from compiler.perf.hardware import load_hardware
    from passes import PassContext, PassManager, make_pass
    cfg = _compose(["pipeline=fuse", "hardware=cpu"])
    ctx = PassContext(load_hardware(cfg["hardware"]), ((batch, SEQ, 0, "prefill"), (batch, 1, SEQ, "decode")))
    passes = [dict(p, target=target) if isinstance(p, dict) and p.get("name") == "fuse" else p
              for p in cfg["pipeline"]["passes"]]
    pm = PassManager([make_pass(p, ctx) for p in passes])
    pm(g)
    d = os.path.join(out_dir, f"rooftop_{tag}_b{batch}")
    os.makedirs(d, exist_ok=True)
    save(g, os.path.join(d, "model.onnx"))
    stats = next(r.stats for r in pm.records if r.name == "fuse")
    return os.path.join(d, "model.onnx"), {k: v for k, v in stats.items() if v}


def build_rooftop(name: str, out_dir: str, batch: int, target: str = "auto") -> tuple[str, dict]:
    """rooftop's model: torch.export import of the same module (causal LMs: KV cache lifted),
    then :func:`_fuse_and_save`."""
    from compiler.frontends.models import CausalLMWrapper, EncoderWrapper, import_torch
    inner, mcfg, causal, _ = _module(name)
    module = CausalLMWrapper(inner) if causal else EncoderWrapper(inner)
    g = import_torch(mcfg, module=module, task="causal_lm" if causal else "embedding")
    return _fuse_and_save(g, out_dir, batch, f"{name}_{target}", target)


def build_rooftop_from_onnx(src: str, out_dir: str, batch: int, tag: str) -> str:
    """rooftop on an existing ONNX file: ``model=onnx`` import, then :func:`_fuse_and_save`."""
    from compiler.frontends.onnx_import import import_onnx
    return _fuse_and_save(import_onnx(src), out_dir, batch, tag)[0]


SPIN = os.environ.get("BENCH_SPIN", "0")


def session(path: str, profile_prefix: str | None = None):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    # no busy-waiting worker threads: on a shared 2-vCPU machine spinning makes run times bimodal
    so.add_session_config_entry("session.intra_op.allow_spinning", SPIN)
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def feeds_for(sess, batch: int, vocab: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for i in sess.get_inputs():
        if i.name == "input_ids":
            feeds[i.name] = rng.integers(0, vocab, (batch, SEQ), dtype=np.int64)
        elif i.name == "attention_mask":
            feeds[i.name] = np.ones((batch, SEQ), np.int64)
        elif i.name == "position_ids":
            feeds[i.name] = np.broadcast_to(np.arange(SEQ), (batch, SEQ)).astype(np.int64)
        elif i.name.startswith("past_"):
            shape = [batch if d in ("B", "batch") else 0 if isinstance(d, str) else d for d in i.shape]
            feeds[i.name] = np.zeros(shape, np.float32)
        else:
            raise ValueError(f"unexpected input {i.name} {i.shape}")
    return feeds


EPOCHS = int(os.environ.get("BENCH_EPOCHS", "3"))


def latencies(paths: dict[str, str], batch: int, vocab: int, repeat: int,
              cpu: dict[str, float] | None = None) -> dict[str, float | str]:
    """Median latency (ms) of each model, measured round-robin (one run of each per round) so
    that load drift on the machine hits every model alike, in ``EPOCHS`` epochs that each open
    fresh sessions: the same GEMM kernels run up to ~10 % apart from one session to the next
    (where the prepacked weights land in memory), so one session per model would turn that luck
    into a difference between models. A model that fails: its error. ``cpu``, when given, gets
    each model's median process CPU time per run (ms, every thread; no spinning, so waiting costs
    none): the work a model costs, much steadier than wall time on a shared machine."""
    out: dict[str, float | str] = {}
    times: dict[str, list[float]] = {}
    cpu_times: dict[str, list[float]] = {}
    order = random.Random(0)
    for epoch in range(EPOCHS):
        sessions = {}
        for k, p in paths.items():
            if k in out:
                continue
            try:
                s = session(p)
                f = feeds_for(s, batch, vocab)
                s.run(None, f)
                sessions[k] = (s, f)
            except Exception as e:
                out[k] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        outputs = {k: [s.get_outputs()[0].name] for k, (s, _) in sessions.items()}   # logits / hidden states
        rounds, t_start, r = max(2, repeat // EPOCHS + 1), time.perf_counter(), 0
        while r < rounds:
            keys = list(sessions)
            order.shuffle(keys)   # no model always runs first (or right after the biggest one)
            for k in keys:
                s, f = sessions[k]
                c0, t0 = time.process_time(), time.perf_counter()
                s.run(outputs[k], f)
                if r:   # the first round of an epoch warms up
                    times.setdefault(k, []).append(time.perf_counter() - t0)
                    cpu_times.setdefault(k, []).append(time.process_time() - c0)
            r += 1
            if r == 2:   # cheap configurations get more rounds: at least ~MIN_SECONDS in all
                per_round = (time.perf_counter() - t_start) / 2
                rounds = max(rounds, min(400, int(MIN_SECONDS / EPOCHS / max(per_round, 1e-6)) + 1))
        del sessions
    for k, ts in times.items():
        out[k] = float(np.median(ts)) * 1e3
        if cpu is not None:
            cpu[k] = float(np.median(cpu_times[k])) * 1e3
    return out


GEMM_OPS = frozenset({"MatMul", "Gemm", "FusedMatMul", "FusedGemm", "MatMulNBits", "MatMulInteger",
                      "QGemm", "DynamicQuantizeMatMul"})


def kernel_split(paths: dict[str, str], batch: int, vocab: int, runs: int = 5) -> dict[str, tuple[float, float]]:
    """onnxruntime's profiler, per model: (GEMM kernel ms, every other kernel ms) per run, medians
    over ``runs`` runs. GEMMs are the same MLAS kernels in every variant; the rest is what fusion
    can win."""
    import json
    out = {}
    with tempfile.TemporaryDirectory(prefix="bench_prof_") as tmp:
        for k, p in paths.items():
            try:
                s = session(p, os.path.join(tmp, "p"))
            except Exception:
                continue
            f = feeds_for(s, batch, vocab)
            names = [s.get_outputs()[0].name]
            for _ in range(runs + 1):
                s.run(names, f)
            with open(s.end_profiling()) as fh:
                events = json.load(fh)
            per_run = _runs_from_events(events)[1:]  # the first run warms up
            out[k] = (float(np.median([r[0] for r in per_run])), float(np.median([r[1] for r in per_run])))
    return out


def _runs_from_events(events) -> list[list[float]]:
    """Kernel times grouped by the model_run each falls in (by timestamp)."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    acc = [[0.0, 0.0] for _ in runs]
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            for i, (a, b) in enumerate(runs):
                if a <= e["ts"] <= b:
                    acc[i][0 if e["args"].get("op_name") in GEMM_OPS else 1] += e["dur"] / 1e3
                    break
    return acc


def ort_version() -> str:
    import onnxruntime
    return onnxruntime.__version__


def _print_ratio_table(rows: list[dict], cols: list[str]) -> None:
    """One line per model and batch: each column's ms, then rooftop over the faster ORT-optimized
    model and over the faster plain export."""
    head = f"{'model':8} {'batch':>5} " + " ".join(f"{c:>16}" for c in cols) + f" {'vs ort-opt':>11} {'vs plain':>9}"
    print(head)
    print("-" * len(head))
    for r in rows:
        vals = " ".join(f"{r[c]:16.1f}" if r.get(c) else f"{'n/a':>16}" for c in cols)
        opt = [r[c] for c in ("ort-opt dynamo", "ort-opt legacy") if r.get(c)]
        plain = [r[c] for c in ("plain dynamo", "plain legacy") if r.get(c)]
        vs_opt = f"{r['rooftop'] / min(opt):.2f}x" if opt else "n/a"
        vs_plain = f"{r['rooftop'] / min(plain):.2f}x" if plain else "n/a"
        print(f"{r['model']:8} {r['batch']:>5} {vals} {vs_opt:>11} {vs_plain:>9}")


def main(argv=None) -> int:
    global MIN_SECONDS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["minilm", "gpt2"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=MIN_SECONDS, help="least time per row (all models)")
    args = ap.parse_args(argv)
    MIN_SECONDS = args.seconds
    rows, notes, splits, cpu_rows = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="bench_fusion_") as tmp:
        for name in args.models:
            _, _, causal, vocab = _module(name)
            files = export_plain(name, tmp)
            for kind in ("dynamo", "legacy"):
                try:
                    files[f"ort-opt {kind}"] = ort_optimize(name, files[f"plain {kind}"],
                                                            os.path.join(tmp, f"{name}_{kind}_ortopt.onnx"))
                    session(files[f"ort-opt {kind}"])  # a model the optimizer broke fails here
                except Exception as e:  # the optimizer's crash is a result, not a failure
                    files.pop(f"ort-opt {kind}", None)
                    notes.append(f"{name}: onnxruntime.transformers optimizer on the {kind} export failed: "
                                 f"{type(e).__name__}: {str(e).splitlines()[0][:160]}")
            for batch in args.batches:
                rt, stats = build_rooftop(name, tmp, batch)
                if batch == args.batches[0]:
                    notes.append(f"{name}: rooftop fusions {stats}")
                models = {"rooftop": rt, "rooftop portable": build_rooftop(name, tmp, batch, "portable")[0], **files}
                for kind in ("dynamo", "legacy"):   # rooftop run on the exported files themselves
                    try:
                        models[f"rooftop<-{kind}"] = build_rooftop_from_onnx(files[f"plain {kind}"], tmp, batch,
                                                                              f"{name}_{kind}")
                    except Exception as e:
                        notes.append(f"{name}: rooftop on the {kind} export failed: {type(e).__name__}: {e}")
                cpu: dict[str, float] = {}
                lat = latencies(models, batch, vocab, args.repeat, cpu)
                cpu_rows.append({"model": name, "batch": batch, **cpu})
                split = kernel_split(models, batch, vocab)
                splits.append((name, batch, split))
                row = {"model": name, "batch": batch}
                for k, v in lat.items():
                    row[k] = v if isinstance(v, float) else None
                    if not isinstance(v, float):
                        notes.append(f"{name} b{batch} {k}: {v}")
                rows.append(row)
                print(f"  done {name} batch {batch}: " + ", ".join(
                    f"{k} {v:.1f}" for k, v in row.items() if isinstance(v, float)), flush=True)
    cols = ["rooftop", "rooftop portable", "plain dynamo", "plain legacy", "ort-opt dynamo", "ort-opt legacy",
            "rooftop<-dynamo", "rooftop<-legacy"]
    print(f"\nonnxruntime {ort_version()} CPU latency, ms: median over >= {args.repeat} shuffled round-robin "
          f"rounds in {EPOCHS} epochs of fresh sessions (>= {MIN_SECONDS:.0f} s per row); seq {SEQ}; "
          f"intra_op_num_threads={THREADS}")
    _print_ratio_table(rows, cols)
    print("\n(vs ort-opt: rooftop / the faster ORT-optimized model; vs plain: rooftop / the faster plain export)")
    print("(rooftop<-dynamo / rooftop<-legacy: rooftop's passes run on those export files, model=onnx)")
    for r in rows:
        for kind in ("dynamo", "legacy"):
            a, b, o = r.get(f"rooftop<-{kind}"), r.get(f"plain {kind}"), r.get(f"ort-opt {kind}")
            if a and b:
                print(f"  {r['model']} b{r['batch']} {kind} file: rooftop {a / b:.2f}x the plain file"
                      + (f", {a / o:.2f}x the ORT-optimized file" if o else " (ORT optimizer: n/a)"))
    print("\nprocess CPU time per run, ms (median; all threads): the work, steadier than wall time "
          "when other processes share the cores")
    _print_ratio_table(cpu_rows, cols)
    print("\nonnxruntime profiler, kernel ms per run (median of 5): GEMM + everything else "
          "(the part fusion can change)")
    head = f"{'model':8} {'batch':>5} " + " ".join(f"{c:>17}" for c in cols)
    print(head)
    print("-" * len(head))
    for name, batch, split in splits:
        vals = " ".join(f"{split[c][0]:8.1f}+{split[c][1]:7.1f}" if c in split else f"{'n/a':>17}" for c in cols)
        print(f"{name:8} {batch:>5} {vals}")
    for n in notes:
        print(" -", n)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:
        traceback.print_exc()
        sys.exit(1)
