"""The pipeline: import → passes → schedule → cost → emit → report, as one plain function.

``run(cfg, out_dir)`` takes the composed Hydra config (or any mapping of the same shape) and
writes ``model.onnx`` (+ ``model.onnx.data``), ``report.json``, ``report.md``, ``report.html``
into ``out_dir``. Everything is first written to a staging directory inside ``out_dir`` and
moved into place only when every artifact exists, so a failure leaves nothing partial behind.
A violated gate raises :class:`GateError` (exit 3) after the report is written.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from compiler.errors import ConfigError, GateError, RooftopError
from compiler.ir import Graph

log = logging.getLogger("rooftop")

OUTPUT_FILES = ("model.onnx", "model.onnx.data", "report.json", "report.md", "report.html")


def _plain(cfg) -> dict:
    try:
        from omegaconf import DictConfig, OmegaConf
        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return dict(cfg)


def _pos_int(v, key: str, minimum: int = 1) -> int:
    try:
        iv = int(v)
        if iv != v and not (isinstance(v, str) and str(iv) == v):
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={v!r} is not an integer; set {key} to a whole number "
                          f"≥ {minimum}, e.g. {key}={max(minimum, 1)}.") from None
    if iv < minimum:
        raise ConfigError(f"{key}={iv} is out of range; it must be ≥ {minimum}.")
    return iv


def workload_of(cfg: Mapping) -> dict[str, int]:
    w = dict(cfg.get("workload") or {})
    batch = _pos_int(w.get("batch", 1), "workload.batch")
    prompt = _pos_int(w.get("prompt_len", 128), "workload.prompt_len")
    gen = _pos_int(w.get("gen_len", 0), "workload.gen_len", minimum=0)
    ctx = w.get("context_len")
    ctx = prompt if ctx is None else _pos_int(ctx, "workload.context_len", minimum=0)
    return {"batch": batch, "prompt_len": prompt, "gen_len": gen, "context_len": ctx}


@contextlib.contextmanager
def progress_display(enabled: bool):
    """A rich progress bar for long stages (quiet when disabled or not a terminal)."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), transient=True) as prog:
        yield prog


class _Stage:
    def __init__(self, prog, desc: str):
        self.prog = prog
        self.task = prog.add_task(desc, total=1) if prog else None

    def __call__(self, done, total):
        if self.prog:
            self.prog.update(self.task, completed=done, total=max(total, 1))


def import_model(cfg: Mapping, prog=None) -> Graph:
    mcfg = cfg["model"]
    src = str(mcfg.get("source"))
    if src == "onnx":
        from compiler.importers.onnx_import import import_onnx
        path = mcfg.get("path")
        if not path:
            raise ConfigError("model=onnx needs model.path=<file.onnx>; pass it on the command "
                              "line, e.g. rooftop model=onnx model.path=/abs/path/model.onnx.")
        return import_onnx(str(path), name=str(mcfg.get("name", "onnx")), progress=_Stage(prog, "import onnx"))
    from compiler.importers.models import import_torch
    return import_torch(mcfg, progress=_Stage(prog, f"import {mcfg.get('name')}"))


def run(cfg: Any, out_dir: str, *, show_progress: bool | None = None) -> dict[str, Any]:
    """Run the whole pipeline; returns the report dict."""
    from compiler import provenance
    from compiler.cost import CostModel
    from compiler.hardware import load_hardware
    from compiler.schedule import schedule
    from passes import PassContext, PassManager, make_pass
    from passes.quant.passes import compression_passes
    from reports.report import build_report, write_reports

    cfg = _plain(cfg)
    wl = workload_of(cfg)
    for key in ("model", "hardware", "pipeline"):
        if not isinstance(cfg.get(key), Mapping):
            raise ConfigError(f"config group {key!r} is missing; choose one with {key}=<name>.")
    hw = load_hardware(cfg["hardware"])
    from compiler import speculative
    speculative.validate(cfg)
    pass_ctx = PassContext(hardware=hw, points=tuple(_record_points(wl)))
    passes = [make_pass(p, pass_ctx) for p in (cfg["pipeline"].get("passes") or [])]
    lossy = compression_passes(cfg, pass_ctx, wl)   # quant= / sparsity= (validated before the import)
    emit_cfg = dict(cfg.get("emit") or {})
    if show_progress is None:
        show_progress = bool(cfg.get("progress", True)) and os.isatty(2)

    os.makedirs(out_dir, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=".staging-", dir=out_dir)
    timings: dict[str, float] = {}
    try:
        with progress_display(show_progress) as prog:
            t0 = time.perf_counter()
            g = import_model(cfg, prog)
            from passes.moe import apply_routing
            apply_routing(g, cfg.get("moe"), cfg["model"].get("config"))  # moe.routing onto the expert annotations
            _early_exit(g, cfg)
            g.verify()
            timings["import_s"] = time.perf_counter() - t0

            points = _record_points(wl)
            cost_fn = (lambda gr: _cost_totals(gr, hw, points)) if cfg["pipeline"].get("record_cost", True) else None
            pm = PassManager(passes, debug=bool(cfg["pipeline"].get("debug", False)), cost_fn=cost_fn,
                             progress=(lambda name, i, n: _Stage(prog, "passes")(i, n)) if prog else None)
            t0 = time.perf_counter()
            pm(g)
            g.verify()
            records = list(pm.records)
            # quant= / sparsity= (passes/quant): lossy, so the graph before them is the accuracy reference
            reference = g.copy() if lossy and g.has_weights() else None
            if lossy:
                pm2 = PassManager(lossy, debug=bool(cfg["pipeline"].get("debug", False)), cost_fn=cost_fn)
                pm2(g)
                g.verify()
                records += pm2.records
            g.meta["_draft_graph"] = _draft_graph(cfg, pass_ctx)  # speculative draft, same passes
            timings["passes_s"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            sched = schedule(g)
            cm = CostModel(g, hw)
            timings["cost_s"] = time.perf_counter() - t0

            emit_info = _emit(g, emit_cfg, stage, prog)
            t0 = time.perf_counter()
            report = build_report(cfg, wl, hw, g, cm, sched, records, emit_info)
            _compression_report(cfg, report, g, hw, reference, emit_info, stage, prog)
            provenance.stamp(stage, cfg, report)
            write_reports(report, stage, html=bool((cfg.get("report") or {}).get("html", True)))
            timings["report_s"] = time.perf_counter() - t0
        _commit(stage, out_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    log.info("timings: %s", {k: round(v, 3) for k, v in timings.items()})
    _check_gates(cfg, report)
    return report


def _draft_graph(cfg: Mapping, pass_ctx) -> Graph | None:
    """The speculative draft model (speculative.draft_model=<name>), imported cost-only and run
    through the same pass recipe as the target; None when there is none."""
    from compiler import speculative
    from passes import PassManager, make_pass
    sc = speculative.spec_config(cfg)
    if sc is None or sc["draft_model"] == "self":
        return None
    from compiler.importers.models import import_torch
    dg = import_torch(dict(speculative.load_model_config(sc["draft_model"]), weights="meta"))
    PassManager([make_pass(p, pass_ctx) for p in (cfg["pipeline"].get("passes") or [])])(dg)
    return dg


def _compression_report(cfg, report, g: Graph, hw, reference: Graph | None, emit_info, stage: str, prog) -> None:
    """``weight_formats``, ``compression`` and ``accuracy`` (compiler/compression.py,
    compiler/accuracy.py) after quant= / sparsity=."""
    from compiler import accuracy, compression
    report["weight_formats"] = compression.weight_formats(g)
    sec = compression.section(g, hw)
    if sec is None:
        return
    report["compression"] = sec
    if reference is None or not emit_info.get("emitted"):
        why = sec.get("note") or emit_info.get("reason") or "no artifact was emitted"
        report["accuracy"] = {"measured": False, "reason": why}
        return
    acfg = dict(cfg.get("accuracy") or {})
    if str(acfg.get("enabled", "auto")).lower() in ("false", "0"):
        report["accuracy"] = {"measured": False, "reason": "accuracy.enabled=false"}
        return
    path = os.path.join(stage, "model.onnx")
    report["accuracy"] = {"measured": True, **accuracy.run_stage(cfg, reference, path, vocab=accuracy.vocab_of(g),
                                                                 progress=_Stage(prog, "accuracy") if prog else None)}
    sec["artifact_check"] = accuracy.quantization_check(g, path)
    if sec["artifact_check"].get("checked") and not sec["artifact_check"]["ok"]:
        from compiler.emit_onnx import EmitError
        raise EmitError(f"the quantized artifact differs from the same quantization computed in fp32 by "
                        f"{sec['artifact_check']['max_abs_diff']:.3g} (bound {sec['artifact_check']['bound']:.3g}); "
                        f"this is a rooftop bug — run without quant= to get an artifact.")


def _early_exit(g: Graph, cfg: Mapping) -> None:
    """early_exit=layers: exit heads inserted before the pipeline's passes (passes/early_exit.py)."""
    from compiler.early_exit import exit_config, op_layers
    if str((cfg.get("early_exit") or {}).get("mode", "none")) == "none":
        return
    if g.meta.get("task") != "causal_lm":
        raise ConfigError("early_exit=layers needs a causal LM (a decoder with an LM head); use early_exit=none.")
    ec = exit_config(cfg, op_layers(g)[1])
    from passes.early_exit import insert_exit_heads
    insert_exit_heads(g, ec["layers"], ec["probabilities"])


def _record_points(wl) -> list[tuple[int, int, int, str]]:
    return [(wl["batch"], wl["prompt_len"], 0, "prefill"), (wl["batch"], 1, wl["context_len"], "decode")]


def _cost_totals(g: Graph, hw, points) -> dict[str, Any]:
    from compiler.cost import CostModel
    cm = CostModel(g, hw)
    out = {}
    for b, s, p, phase in points:
        t = cm.totals(b, s, p, phase)
        out[phase] = {"time_s": t["time"], "flops": t["flops"], "bytes": t["bytes"]}
    return out


def _emit(g: Graph, emit_cfg: Mapping, stage: str, prog) -> dict[str, Any]:
    from compiler.emit_onnx import EmitError, save
    mode = emit_cfg.get("enabled", "auto")
    if mode in (False, "false", "False", 0):
        return {"emitted": False, "reason": "emit.enabled=false"}
    if not g.has_weights():
        if mode in (True, "true", "True", 1):
            raise EmitError(
                "emit.enabled=true but the model was built on the meta device (model.weights=meta), "
                "so there are no weights to write into model.onnx. Use model.weights=random for a "
                "seeded random-weight ONNX model, or leave emit.enabled=auto to cost it only.")
        note = ("ONNX emission skipped: the model has meta weights (model.weights=meta); the cost "
                "report is complete. Use model.weights=random to emit model.onnx.")
        log.warning(note)
        return {"emitted": False, "reason": note}
    ext = emit_cfg.get("external_data", "auto")
    ext = None if ext in ("auto", None) else bool(ext)
    info = save(g, os.path.join(stage, "model.onnx"), external_data=ext)
    info["emitted"] = True
    if emit_cfg.get("verify", True):
        info["verified"] = verify_in_onnxruntime(os.path.join(stage, "model.onnx"), g)
    return info


def verify_in_onnxruntime(path: str, g: Graph, batch: int = 2, seq: int = 5, past: int = 3) -> dict:
    """Load the emitted model in onnxruntime and run one step on seeded inputs; returns shapes."""
    import onnxruntime as ort
    from compiler.emit_onnx import EmitError
    from compiler.ir import DTYPES, subs, SYMBOLS
    try:
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise EmitError(f"onnxruntime rejected the emitted model: {e}") from e
    rng = np.random.default_rng(0)
    vals = {SYMBOLS["B"]: batch, SYMBOLS["S"]: seq, SYMBOLS["P"]: past}
    feeds = {}
    for name in g.inputs:
        ty = g.type(name)
        shape = [int(subs(d, vals)) for d in ty.shape]
        npdt = DTYPES[ty.dtype][1]
        if name == "position_ids":
            feeds[name] = np.broadcast_to(np.arange(past, past + seq), shape).astype(npdt)
        elif ty.dtype in ("int64", "int32"):
            feeds[name] = rng.integers(0, int(g.meta.get("vocab_size", 64)), shape).astype(npdt)
        elif name == "attention_mask":
            feeds[name] = np.ones(shape, npdt)
        else:
            feeds[name] = rng.standard_normal(shape).astype(npdt)
    outs = sess.run(None, feeds)
    bad = [o.name for o, v in zip(sess.get_outputs(), outs) if v.dtype.kind == "f" and not np.isfinite(v).all()]
    if bad:
        raise EmitError(f"the emitted model produced non-finite values in {bad} in onnxruntime")
    return {"runtime": f"onnxruntime {ort.__version__} CPU", "batch": batch, "seq": seq, "past": past,
            "outputs": {o.name: list(v.shape) for o, v in zip(sess.get_outputs(), outs)}}


def _commit(stage: str, out_dir: str):
    for f in OUTPUT_FILES:  # a previous run's artifacts in the same dir are replaced whole
        p = os.path.join(out_dir, f)
        if os.path.exists(p) and not os.path.exists(os.path.join(stage, f)):
            os.unlink(p)
    for f in sorted(os.listdir(stage)):
        os.replace(os.path.join(stage, f), os.path.join(out_dir, f))
    os.rmdir(stage)


def _check_gates(cfg: Mapping, report: Mapping):
    gate = dict(cfg.get("gate") or {})
    lat, mem = report["latency"], report["memory"]
    checks = [
        ("gate.max_ttft_ms", lat["ttft_s"] * 1e3, "max", "TTFT (ms)"),
        ("gate.max_tpot_ms", lat["tpot_s"] * 1e3, "max", "TPOT (ms)"),
        ("gate.max_memory_gb", mem["total_bytes"] / 1e9, "max", "memory (GB)"),
        ("gate.min_throughput", lat["throughput_tok_s"], "min", "throughput (tokens/s)"),
    ]
    from compiler.accuracy import gate_checks
    acc = report.get("accuracy")
    checks += gate_checks(gate, acc if acc and acc.get("measured") else None)
    failed = []
    for key, value, kind, what in checks:
        limit = gate.get(key.split(".")[1])
        if limit is None:
            continue
        try:
            limit = float(limit)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={limit!r} is not a number; set it to a number or null.") from None
        if (kind == "max" and value > limit) or (kind == "min" and value < limit):
            failed.append(f"{key}: {what} is {value:.4g}, limit {limit:.4g}")
    if failed:
        raise GateError("gate exceeded — " + "; ".join(failed) + ". The report was written; "
                        "relax the gate or change the model, pipeline or hardware.")


__all__ = ["run", "RooftopError", "OUTPUT_FILES", "workload_of", "verify_in_onnxruntime"]
