"""Published engine measurements replayed through rooftop: the runtime profiles' validation and fit.

``compiler/perf/calibration/data/published_engines.json`` holds figures printed by inference engines
(TensorRT-LLM's performance tables, gpt-fast, torchao, LMDeploy, vLLM's CI, the Qwen2.5 speed
benchmark, NIM), each with its source and the workload it ran. This module turns every point into
the rooftop command that describes it (:func:`case_of`: model, hardware, ``runtime=`` of its
engine, ``quant=``, ``kv.dtype``, ``parallel.tp``, the workload and, for in-flight-batching
throughput, ``serve.mode=offline`` with the engine's scheduler settings), predicts the published
metric with the same analysis functions a run uses, and prints predicted against published:

    python -m compiler.driver.published                 # the table, per-group medians, unexpressed points
    python -m compiler.driver.published --runtime eager # every point priced as plain PyTorch (before profiles)
    python -m compiler.driver.published --fit trtllm    # refit a profile's fitted parameters (prints YAML)
    python -m compiler.driver.published --check 8       # the first 8 points through the whole pipeline too

Metric mapping (docs/measurements/published_engines.md): static-batch throughput = batch x output /
(prefill + every decode step over the growing cache); batch-1 TTFT = the prefill plus the
runtime's per-request host time; per-token latency = one decode step at input + output / 2;
single-stream tokens/s = output / (prefill + decode steps); end-to-end latency = prefill + decode
steps; offline (and closed-loop concurrency) throughput = the serving simulation with every
request at t = 0 under the engine's admission policy and batch limits.

A point rooftop cannot express (ShareGPT length mixes without the dataset; engines without a
profile; weight formats quant= lacks) is listed with the reason, never dropped silently.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from compiler.analysis.context import RunContext
from compiler.analysis.parallel import parallel_step_time, plan_of
from compiler.analysis.serving import StepTable, config_of, cost_model_step_time, sample_requests, serve_block, simulate
from compiler.analysis.phases import GB, analyze, planning_sections, request_latency, request_overhead
from compiler.driver.config import model_dims, register, register_resolvers, validate
from compiler.errors import InternalError
from compiler.driver.pipeline import (compression_passes, kv_passes, model_passes, runtime_of, with_runtime_defaults,
                                      workload_of)
from compiler.frontends.models import import_torch
from compiler.perf import efficiency as eff
from compiler.perf.cost import CostModel
from compiler.perf.hardware import load_hardware
from compiler.perf.memory import kv_bytes_per_token, weights_bytes
from compiler.perf.runtime import Runtime, runtime_by_name, runtime_dir
from compiler.perf.schedule import schedule
from compiler.perf import kernel_families as kf
from compiler.resources import CALIBRATION_DATA, conf_dir
from passes import PassContext, PassManager, make_pass

DATA = CALIBRATION_DATA / "published_engines.json"
METRICS = ("tpot_s", "ttft_s", "output_throughput_tok_s", "tokens_per_s_per_user", "e2e_s")
#: which acceptance band a metric belongs to (latency of one token vs TTFT vs throughput)
METRIC_GROUP = {"tpot_s": "tpot", "tokens_per_s_per_user": "tpot", "ttft_s": "ttft",
                "output_throughput_tok_s": "throughput", "e2e_s": "throughput"}
TARGET = {"tpot": 0.10, "ttft": 0.15, "throughput": 0.15}

QUANT = {"fp8": "fp8", "int8": "w8a16", "int4": "w4a16"}
#: engine of a published point -> the runtime profile that describes it
#: published MoE models whose checkpoints carry routed experts
MOE_CHECKPOINTS = ("mixtral_8x7b",)
#: the first version of an engine whose FP8 checkpoints run the routed experts in FP8: TensorRT-LLM
#: 0.10.0 release notes, "Added FP8 quantization support for Mixtral"
#: (https://github.com/NVIDIA/TensorRT-LLM/releases/tag/v0.10.0) — the v0.9.0 tables' "FP8" Mixtral
#: rows ran FP8 attention and dense layers with 16-bit experts
FP8_MOE_SINCE = {"trtllm": (0, 10, 0)}


def _version(v: str | None) -> tuple[int, ...]:
    return tuple(int(x) for x in (v or "0").split(".")[:3] if x.isdigit())


def _fp8_experts(p: Mapping) -> bool:
    """The engine that published ``p`` ran its FP8 checkpoint's routed experts in FP8."""
    since = FP8_MOE_SINCE.get(p["engine"])
    return since is None or _version(p.get("engine_version")) >= since
ENGINE_RUNTIME = {"trtllm": "trtllm", "nim": "trtllm", "gpt-fast": "compiled", "torchao": "compiled",
                  "vllm": "vllm", "lmdeploy": "lmdeploy"}


def points() -> list[dict]:
    return json.loads(DATA.read_text())["points"]


@dataclasses.dataclass
class Case:
    """A published point as rooftop replays it: the overrides of the equivalent command (None when
    it cannot be expressed, with ``why``), and how its metric is read."""

    point: dict
    overrides: list[str] | None
    why: str = ""
    serve: bool = False              # the metric comes from the serving simulation
    #: the checkpoint's weight formats (``model.weight_formats``) the published run used beyond
    #: ``quant=``: FP8 checkpoints of MoE models quantize the routed experts too, which ``quant=fp8``
    #: (linear layers only) leaves in 16 bits
    weight_formats: dict | None = None

    @property
    def id(self) -> str:
        return self.point["id"]

    @property
    def runtime(self) -> str | None:
        for o in self.overrides or ():
            if o.startswith("runtime="):
                return o.split("=", 1)[1]
        return None

    @property
    def group(self) -> tuple[str, str, str]:
        p = self.point
        return METRIC_GROUP[p["metric"]], p["hardware"], p["precision"]["weights"]

    def command(self) -> str:
        extra = ([f"model.weight_formats={{{','.join(f'{k}:{v}' for k, v in self.weight_formats.items())}}}"]
                 if self.weight_formats else [])
        return "rooftop " + " ".join([o for o in self.overrides or () if o not in ("emit.enabled=false", "progress=false")]
                                     + extra)

    def config(self) -> dict:
        """The validated configuration of the case's command."""
        cfg = compose(self.overrides)
        if self.weight_formats:
            cfg["model"]["weight_formats"] = dict(self.weight_formats)
        return validate(cfg)


def case_of(p: Mapping, runtime: str | None = None) -> Case:
    """The rooftop command that replays published point ``p`` (see the module doc); ``runtime``
    prices it with another profile than its engine's."""
    w, prec = p["workload"], p["precision"]
    if p["engine"] not in ENGINE_RUNTIME:
        return Case(dict(p), None, f"no runtime profile for {p['engine']} (ShareGPT serving runs of SGLang)")
    if w["input_len"] is None:
        return Case(dict(p), None, "ShareGPT request mix: its prompt-length distribution is not available "
                                   "offline (no copy of the dataset), so the workload cannot be replayed")
    o = [f"model={p['model']}", f"hardware={p['hardware']}", f"runtime={runtime or ENGINE_RUNTIME[p['engine']]}",
         "emit.enabled=false", "progress=false"]
    wq = prec["weights"]
    if wq in QUANT:
        if wq == "fp8" and prec["activations"] != "fp8":
            return Case(dict(p), None, "FP8 weight-only with 16-bit activations: quant= has no such scheme")
        o.append(f"quant={QUANT[wq]}")
        if wq == "int4" and "group 64" in (prec.get("method") or "") + " " + p["id"].replace("-64-", " group 64 "):
            o.append("quant.group_size=64")
    formats = None
    if wq == "fp8" and p["model"] in MOE_CHECKPOINTS and _fp8_experts(p):
        # an FP8 checkpoint of an engine that runs FP8 MoE quantizes the routed experts too;
        # quant=fp8 covers the linear layers (MatMul) here, the experts' FP8 weights are stated as the
        # checkpoint's format (passes/weight_formats.py; its 128x128 block scale adds 0.002 bit
        # per weight to a per-tensor scale's 8). Older engines kept the experts in 16 bits.
        formats = {"experts": "fp8_block128"}
    if wq == "fp8" and p["model"] in MOE_CHECKPOINTS:
        # quant=fp8 quantizes the experts too (per channel); these rows state the experts'
        # format themselves: the checkpoint's block-128 FP8 above, or 16 bits (older engines)
        o.append("quant.exclude=[embeddings,lm_head,experts]")
    kv = prec.get("kv_cache")
    if kv == "fp8" or (kv is None and wq == "fp8" and p["engine"] in ("trtllm", "nim")):
        # TensorRT-LLM FP8 checkpoints carry an FP8 KV cache unless stated otherwise
        # (trtllm-build --quantization FP8 / ModelOpt kv_cache_qformat fp8)
        o.append("kv.dtype=fp8")
    if p["tp"] > 1:
        o.append(f"parallel.tp={p['tp']}")
    mode, metric = w["mode"], p["metric"]
    inp, out = int(w["input_len"]), int(w["output_len"])
    b = int(w["batch"] or 1)
    if mode in ("static_batch", "single_stream") or (mode == "online" and b == 1):
        # one batch (a closed loop at concurrency 1: one request at a time)
        o += [f"workload.batch={b}", f"workload.prompt_len={inp}", f"workload.gen_len={out}"]
        if metric == "tpot_s":
            o.append(f"workload.context_len={inp + out // 2}")
        return Case(dict(p), o, weight_formats=formats)
    n = int(w["num_requests"] or 500)
    o += ["kv=paged", "serve.mode=offline", f"serve.requests={n}", f"serve.prompt_len={inp}",
          f"serve.output_len={out}", f"workload.prompt_len={inp}", f"workload.gen_len={out}"]
    if mode == "online":
        # a closed loop at concurrency b: a new request whenever one finishes = an offline queue
        # with at most b running
        o.append(f"serve.max_num_seqs={b}")
    elif p["id"].startswith("trtllm0130"):
        # trtllm-bench v0.13 sample output: max runtime batch 4096, 8192 tokens, KV memory 99 %
        o += ["serve.max_num_seqs=4096", "serve.max_batched_tokens=8192", "memory.gpu_utilization=0.99"]
    elif p["id"].startswith("trtllm10"):
        o.append("memory.gpu_utilization=0.95")      # kv_cache_free_gpu_mem_fraction 0.95 (the doc's)
    return Case(dict(p), o, serve=True, weight_formats=formats)


def compose(overrides: Sequence[str]) -> dict:
    from hydra import compose as _compose, initialize_config_dir
    from omegaconf import OmegaConf
    register()
    register_resolvers()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        cfg = _compose("config", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)


def metric_of(case: Case, latency: Mapping | None, serve: Mapping | None) -> float:
    """The published metric from rooftop's ``latency`` / ``serve`` sections."""
    m = case.point["metric"]
    if case.serve:
        return float(serve["throughput_tok_s"])
    return float({"output_throughput_tok_s": latency["throughput_tok_s"],
                  "tokens_per_s_per_user": latency["throughput_tok_s"], "ttft_s": latency["ttft_s"],
                  "tpot_s": latency["tpot_s"], "e2e_s": latency["e2e_s"]}[m])


class Replayer:
    """Imports each model once and compiles each (model, hardware, quant, kv) once; predicts a
    case's metric under any runtime profile (re-binding the cost model when only its fitted
    parameters change)."""

    def __init__(self):
        self.imports: dict[str, Any] = {}
        self.graphs: dict[tuple, Any] = {}
        self.contexts: dict[tuple, tuple] = {}

    def _graph(self, cfg, wl, hw):
        key = (cfg["model"]["name"], hw.name, json.dumps(cfg["quant"], sort_keys=True),
               json.dumps(cfg["kv"], sort_keys=True), json.dumps(cfg["model"].get("weight_formats"), sort_keys=True))
        if key not in self.graphs:
            name = cfg["model"]["name"]
            if name not in self.imports:
                self.imports[name] = import_torch(cfg["model"])
            g = copy.deepcopy(self.imports[name])
            ctx = PassContext(hardware=hw, points=((wl["batch"], wl["prompt_len"], 0, "prefill"),
                                                     (wl["batch"], 1, wl["context_len"], "decode")))
            recipe = [make_pass(p, ctx) for p in (cfg["pipeline"].get("passes") or [])]
            recipe += kv_passes(cfg, wl, ctx, [p.name for p in recipe])
            pm = PassManager([PassManager(model_passes(cfg, g, ctx), name="model"),
                              PassManager(recipe, name="recipe"),
                              PassManager(compression_passes(cfg, ctx, wl), name="compression")])
            pm(g)
            self.graphs[key] = g
        return self.graphs[key]

    def context(self, case: Case, runtime: Runtime | None = None) -> RunContext:
        """The run context of a case (its cost model bound to ``runtime``, default: the case's)."""
        key = (case.id, case.runtime, runtime.name if runtime is not None else None)
        if key not in self.contexts:
            cfg = case.config()
            wl = workload_of(cfg)
            hw = load_hardware(cfg["hardware"])
            rt = runtime or runtime_of(cfg)
            cfg = with_runtime_defaults(cfg, rt)
            g = self._graph(cfg, wl, hw)
            rc = RunContext(cfg=cfg, workload=wl, hardware=hw, graph=g, cost=CostModel(g, hw, rt),
                            schedule=schedule(g), dims=model_dims(cfg["model"]), runtime=rt)
            self.contexts[key] = (rc,)
        rc = self.contexts[key][0]
        if runtime is not None and rc.cost.runtime is not runtime:
            rc.cost.rebind(runtime)
        return rc

    def predict(self, case: Case, runtime: Runtime | None = None, *, requests: int | None = None) -> float:
        """The case's metric: the analysis functions :func:`compiler.analysis.phases.analyze` uses,
        only those the metric needs. ``requests``: replay a serving case through the simulation
        alone (the KV budget planned once; no static-batching comparison), at most this many
        requests — the same figure as the whole planning when it covers the published count."""
        rc = self.context(case, runtime)
        cm, wl, cfg = rc.cost, rc.workload, rc.cfg
        b, prompt, gen, ctx = wl["batch"], wl["prompt_len"], wl["gen_len"], wl["context_len"]
        if case.serve:
            if requests is not None:
                return self._serve_fast(case, rc, requests)
            tokens = max(ctx, prompt + gen)
            planning = planning_sections(rc, weights_bytes(rc.graph), kv_bytes_per_token(rc.graph), tokens,
                                         float(cfg["memory"]["runtime_reserve_gb"]) * GB)
            return metric_of(case, None, planning["serve"])
        plan = plan_of(cfg.get("parallel"))
        if plan.devices == 1:
            return metric_of(case, request_latency(cm, b, prompt, gen, ctx, True), None)
        st = parallel_step_time(cm, plan, rc.dims)
        ttft = float(st(b, 0, prompt)[0]) + request_overhead(cm)
        steps = np.arange(1, gen) if gen > 1 else np.zeros(0)
        e2e = ttft + (float(st(np.full(len(steps), b), prompt + steps - 1, 1).sum()) if len(steps) else 0.0)
        tpot = float(st(b, ctx, 1)[0])
        return metric_of(case, {"ttft_s": ttft, "tpot_s": tpot, "e2e_s": e2e, "throughput_tok_s": b * gen / e2e}, None)

    def _serve_fast(self, case: Case, rc: RunContext, requests: int) -> float:
        """The serving simulation alone (what serve_section runs first), on the KV budget the
        case's planning found once — no static-batching comparison, no parallel section."""
        key = ("serve", case.id, case.runtime)
        if key not in self.contexts:
            wl, cfg = rc.workload, rc.cfg
            tokens = max(wl["context_len"], wl["prompt_len"] + wl["gen_len"])
            sec = planning_sections(rc, weights_bytes(rc.graph), kv_bytes_per_token(rc.graph), tokens,
                                    float(cfg["memory"]["runtime_reserve_gb"]) * GB)["serve"]
            sb = serve_block(cfg, wl)
            self.contexts[key] = (sb, sec["kv_blocks"], sec["block_size"], sec["layout"])
        sb, blocks, bs, layout = self.contexts[key]
        if layout != "paged":
            raise InternalError("the fast serving path replays paged caches only")
        cfg = rc.cfg
        plan = plan_of(cfg.get("parallel"))
        st = parallel_step_time(rc.cost, plan, rc.dims) if plan.devices > 1 else cost_model_step_time(rc.cost)
        scfg = config_of(dict(sb, requests=min(int(sb.get("requests") or requests), requests)), cfg.get("slo"))
        _, p_, o_ = sample_requests(scfg)
        longest = int((p_ + o_).max())
        table = StepTable(st, scfg.max_num_seqs, longest, scfg.chunk_tokens if scfg.chunked_prefill else longest,
                          chunk=scfg.chunk_tokens if scfg.chunked_prefill else None)
        return float(simulate(None, scfg, kv_blocks=blocks, block_size=bs, table=table).throughput_tok_s)

    def report(self, case: Case) -> dict:
        """The whole analysis of the case's command (what ``rooftop`` writes to report.json)."""
        return analyze(self.context(case))


# --------------------------------------------------------------------------------------------
# the table

def log_err(pred: float, value: float, metric: str) -> float:
    """Signed relative error of the prediction (pred / published − 1)."""
    return pred / value - 1.0


def summarize(rows: Sequence[dict]) -> dict:
    """Median |error| per metric group, per (group, GPU, precision), and the worst points."""
    ok = [r for r in rows if r.get("pred") is not None]
    out: dict[str, Any] = {"points": len(rows), "replayed": len(ok),
                           "not_expressed": [{"id": r["id"], "why": r["why"]} for r in rows if r.get("pred") is None]}
    by: dict[str, list] = {}
    fine: dict[str, list] = {}
    for r in ok:
        g = METRIC_GROUP[r["metric"]]
        by.setdefault(g, []).append(abs(r["err"]))
        fine.setdefault(f"{g} / {r['hardware']} / {r['precision']}", []).append(abs(r["err"]))
    out["median_abs_err"] = {g: float(np.median(v)) for g, v in sorted(by.items())}
    out["n"] = {g: len(v) for g, v in sorted(by.items())}
    out["by_group"] = {k: {"n": len(v), "median_abs_err": float(np.median(v)), "max_abs_err": float(np.max(v))}
                       for k, v in sorted(fine.items())}
    out["off_by_2x"] = [r["id"] for r in ok if r["pred"] / r["value"] >= 2 or r["pred"] / r["value"] <= 0.5]
    out["meets_target"] = {g: out["median_abs_err"][g] <= TARGET[g] for g in out["median_abs_err"]}
    return out


def replay(runtime: str | None = None, only: str | None = None, progress=None, *,
           profile: str | None = None, replayer: Replayer | None = None) -> list[dict]:
    """Every published point (those whose id contains ``only``; those whose engine's profile is
    ``profile``) predicted by its command (priced with ``runtime`` when given); ``replayer``: reuse
    its imported models and compiled graphs."""
    r = replayer or Replayer()
    rows = []
    for p in points():
        if only and only not in p["id"]:
            continue
        if profile and ENGINE_RUNTIME.get(p["engine"]) != profile:
            continue
        case = case_of(p, runtime)
        row = {"id": case.id, "engine": p["engine"], "model": p["model"], "hardware": p["hardware"], "metric": p["metric"],
               "precision": p["precision"]["weights"], "tp": p["tp"], "value": p["value"]}
        if case.overrides is None:
            row.update(pred=None, why=case.why)
        else:
            t0 = time.perf_counter()
            pred = r.predict(case, requests=FIT_REQUESTS)
            row.update(pred=pred, err=log_err(pred, p["value"], p["metric"]), runtime=case.runtime,
                       command=case.command(), seconds=time.perf_counter() - t0)
        rows.append(row)
        if progress:
            progress(row)
    return rows


def table_md(rows: Sequence[dict], eager: Sequence[dict] | None = None) -> str:
    """The markdown table of every replayed point (the page --docs writes)."""
    ev = {r["id"]: r for r in eager or ()}
    head = "| point | runtime | GPU | TP | precision | metric | published | rooftop | error |"
    rule = "|---|---|---|---|---|---|---|---|---|"
    if eager is not None:
        head += " error, runtime=eager |"
        rule += "---|"
    lines = [head, rule]
    for r in rows:
        if r.get("pred") is None:
            continue
        line = (f"| `{r['id']}` | {r['runtime']} | {r['hardware']} | {r['tp']} | {r['precision']} | "
                f"{r['metric']} | {r['value']:.4g} | {r['pred']:.4g} | {r['err']:+.1%} |")
        if eager is not None:
            e = ev.get(r["id"])
            line += f" {e['err']:+.1%} |" if e and e.get("pred") is not None else " — |"
        lines.append(line)
    return "\n".join(lines)


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def kernels_md() -> str:
    """Per profile, the kernel families it prices differently from the hardware classes: model,
    per-architecture figures or measured curve, source, error band."""
    out = []
    for name in ("compiled", "vllm", "trtllm", "lmdeploy", "ort_cpu", "ideal"):
        rt = runtime_by_name(name)
        out.append(f"### `runtime={name}` — {rt.engine}\n")
        out.append("| op family | kernel | priced by | figures | source | error band |")
        out.append("|---|---|---|---|---|---|")
        for fam, k in sorted(rt.kernels.items()):
            if k.model == "hardware" and name != "ort_cpu":
                continue
            if k.model == "efficiency":
                figs = "; ".join(f"{a}: " + ", ".join(f"{kk} {vv:g}" for kk, vv in sorted(p.items()))
                                 for a, p in sorted(k.params.items()))
            elif k.model == "measured":
                c = kf.curve(k.measured) or {"points": []}
                figs = "time / bf16 GEMM at M: " + ", ".join(f"{m}: {r:.2f}" for m, r in c["points"])
                if k.params:
                    figs += "; " + "; ".join(f"{a} (fitted): " + ", ".join(f"{kk} {vv:g}" for kk, vv in sorted(p.items()))
                                             for a, p in sorted(k.params.items()))
            elif k.model == "roofline":
                figs = "datasheet peak and bandwidth"
            else:
                figs = "the hardware's class"
            band = (f"±{_pct(k.error_median)} median" + (f", ±{_pct(k.error_p90)} p90" if k.error_p90 is not None else "")
                    if k.error_median is not None else "—")
            out.append(f"| `{fam}` | {k.kernel} | {k.model} | {figs} | {k.source} | {band} |")
        if rt.collectives:
            out.append("")
            out.append("| collective | latency added | fraction of bus bandwidth | source | error band |")
            out.append("|---|---|---|---|---|")
            for kk, c in sorted(rt.collectives.items()):
                band = (f"±{_pct(c.error_median)} median" + (f", ±{_pct(c.error_p90)} p90" if c.error_p90 is not None else "")
                        if c.error_median is not None else "—")
                out.append(f"| `{kk}` | {c.latency_s * 1e6:.4g} µs | {c.bandwidth_fraction:.3g} | {c.source} | {band} |")
        host = [(kk, h) for kk, h in sorted(rt.host.items()) if h.value_s]
        if host:
            out.append("")
            out.append("| host time | value | source | error band |")
            out.append("|---|---|---|---|")
            for kk, h in host:
                band = (f"±{_pct(h.error_median)} median" + (f", ±{_pct(h.error_p90)} p90" if h.error_p90 is not None else "")
                        if h.error_median is not None else "—")
                out.append(f"| `{kk}` | {h.value_s * 1e6:.4g} µs | {h.source} | {band} |")
        out.append("")
        out.append(f"Scheduler defaults: max_num_seqs {rt.max_num_seqs}, max_batched_tokens {rt.max_batched_tokens}, "
                   f"admission `{rt.admission}`, gpu_utilization {rt.gpu_utilization:g}, LM head `{rt.lm_head}`, "
                   f"KV read in-kernel: {', '.join(rt.kv_cache_in_kernel) or 'none'}, MoE dispatch `{rt.moe_dispatch}`"
                   + (f" ({rt.serve_source})" if rt.serve_source else "") + ".\n")
    return "\n".join(out)


def summary_md(rows: Sequence[dict], eager: Sequence[dict]) -> str:
    s, se = summarize(rows), summarize(eager)
    out = ["| metric | target | points | median \\|error\\| | p90 | max | off by ≥ 2x | runtime=eager: median | eager: off by ≥ 2x |",
           "|---|---|---|---|---|---|---|---|---|"]
    for g in ("tpot", "ttft", "throughput"):
        e = [abs(r["err"]) for r in rows if r.get("pred") is not None and METRIC_GROUP[r["metric"]] == g]
        ee = [r for r in eager if r.get("pred") is not None and METRIC_GROUP[r["metric"]] == g]
        off = [r for r in rows if r.get("pred") is not None and METRIC_GROUP[r["metric"]] == g
               and (r["pred"] / r["value"] >= 2 or r["pred"] / r["value"] <= 0.5)]
        off_e = [r for r in ee if r["pred"] / r["value"] >= 2 or r["pred"] / r["value"] <= 0.5]
        out.append(f"| {g} | ≤ {_pct(TARGET[g])} | {len(e)} | {_pct(float(np.median(e)))} | "
                   f"{_pct(float(np.percentile(e, 90)))} | {_pct(float(np.max(e)))} | {len(off)} | "
                   f"{_pct(se['median_abs_err'][g])} | {len(off_e)} |")
    out.append("")
    out.append("| metric / GPU / weights | points | median \\|error\\| | max | runtime=eager: median |")
    out.append("|---|---|---|---|---|")
    for k, v in s["by_group"].items():
        e = se["by_group"].get(k, {})
        out.append(f"| {k} | {v['n']} | {_pct(v['median_abs_err'])} | {_pct(v['max_abs_err'])} | "
                   f"{_pct(e['median_abs_err']) if e else '—'} |")
    return "\n".join(out)


#: the generated part of docs/measurements/published_engines.md (between these lines)
DOCS_BEGIN = "<!-- BEGIN replay: generated by python -m compiler.driver.published --docs; do not edit by hand -->"
DOCS_END = "<!-- END replay -->"


def profile_table_md(rows: Sequence[dict]) -> str:
    """Per runtime profile x GPU x weight precision x metric group: points, median, p90 and worst
    |error| (the worst point named with its signed error), points off by 2x or more."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("pred") is None:
            continue
        groups.setdefault((r["runtime"], r["hardware"], r["precision"], METRIC_GROUP[r["metric"]]), []).append(r)
    out = ["| runtime | GPU | weights | metric | points | median \\|error\\| | p90 | worst | off by ≥ 2x |",
           "|---|---|---|---|---|---|---|---|---|"]
    order = {"trtllm": 0, "vllm": 1, "lmdeploy": 2, "compiled": 3}
    for key in sorted(groups, key=lambda k: (order.get(k[0], 9), k[1], k[2], k[3])):
        rs = groups[key]
        e = np.abs([r["err"] for r in rs])
        worst = max(rs, key=lambda r: abs(r["err"]))
        off = sum(1 for r in rs if r["pred"] / r["value"] >= 2 or r["pred"] / r["value"] <= 0.5)
        out.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {len(rs)} | {_pct(float(np.median(e)))} | "
                   f"{_pct(float(np.percentile(e, 90)))} | {worst['err']:+.1%} (`{worst['id']}`) | {off} |")
    return "\n".join(out)


def docs_md(rows: Sequence[dict], eager: Sequence[dict], seconds: float | None = None) -> str:
    """The generated part of the measurements page (between :data:`DOCS_BEGIN` and :data:`DOCS_END`)."""
    import datetime
    n_rep = sum(1 for r in rows if r.get("pred") is not None)
    took = f" The replay of both took {seconds:.0f} s on the 2-vCPU machine that generated it." if seconds else ""
    return f"""{DOCS_BEGIN}
## Replay: rooftop's engine profiles against these points

Generated {datetime.date.today().isoformat()} on a 2-vCPU CPU machine (the cost model only, no GPU) by

```bash
python -m compiler.driver.published --docs docs/measurements/published_engines.md
```

Each of the {len(rows)} points above is replayed as the rooftop command that describes it — model, hardware,
`runtime=` of its engine, `quant=`, `kv.dtype`, `parallel.tp`, the workload, and for in-flight batching
`serve.mode=offline` with the engine's scheduler settings — {n_rep} of them; the same commands with
`runtime=eager` (rooftop before runtime profiles) stand beside them.{took} Guide:
[docs/guide/runtime_profiles.md](../guide/runtime_profiles.md).

### Acceptance: median |error| per metric (TPOT ≤ 10 %, TTFT and throughput ≤ 15 %, nothing off by 2x)

TPOT counts per-token latencies and single-stream tokens/s (1 / TPOT); throughput counts output tokens/s
and end-to-end latencies (vLLM's CI: a batch's whole generate call). Generated {datetime.date.today().isoformat()}
(2-vCPU CPU machine, `python -m compiler.driver.published --docs docs/measurements/published_engines.md`).

{summary_md(rows, eager)}

### Per profile, GPU, precision and metric

Generated {datetime.date.today().isoformat()} (2-vCPU CPU machine, `python -m compiler.driver.published --docs docs/measurements/published_engines.md`).

{profile_table_md(rows)}

### Kernel families per profile (figures per GPU architecture; measured curves are H100 time ratios against bf16 `F.linear`)

Families a profile does not list run as the hardware's calibrated classes (`eager`). Generated
{datetime.date.today().isoformat()} (2-vCPU CPU machine, `python -m compiler.driver.published --docs docs/measurements/published_engines.md`).

{kernels_md()}
### Every replayed point

Generated {datetime.date.today().isoformat()} (2-vCPU CPU machine, `python -m compiler.driver.published --docs docs/measurements/published_engines.md`).

{table_md(rows, eager)}

### Points rooftop cannot express

{not_expressed_md(rows)}
{DOCS_END}
"""


def write_docs(path: str) -> None:
    """Replay every point (its profile and runtime=eager, one import per model) and write the
    generated part of the measurements page ``path`` between :data:`DOCS_BEGIN` and
    :data:`DOCS_END` — the rest of the page (sources, workload mapping) is kept; a page without the
    markers gets the part before its ``## Sources`` section (or at its end)."""
    from pathlib import Path
    t0 = time.perf_counter()
    rp = Replayer()
    rows = replay(replayer=rp)
    eager = replay("eager", replayer=rp)
    block = docs_md(rows, eager, time.perf_counter() - t0)
    page = Path(path)
    text = page.read_text(encoding="utf-8") if page.exists() else ""
    if DOCS_BEGIN in text and DOCS_END in text:
        head, rest = text.split(DOCS_BEGIN, 1)
        text = head + block.rstrip("\n") + rest.split(DOCS_END, 1)[1]
    elif "\n## Sources" in text:
        head, rest = text.split("\n## Sources", 1)
        text = head + "\n" + block + "\n## Sources" + rest
    else:
        text = text + ("\n" if text else "") + block
    page.write_text(text, encoding="utf-8")


def not_expressed_md(rows: Sequence[dict]) -> str:
    out = ["| point | why rooftop cannot replay it |", "|---|---|"]
    for r in rows:
        if r.get("pred") is None:
            out.append(f"| `{r['id']}` | {r['why']} |")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# fitting the profiles' fitted figures

#: per runtime: the parameters fitted to its published points — (kind, families, architecture, key)
#: for a kernel efficiency, ("host", key) for a host time (µs), ("collective", kind, key) for the
#: engine's collective (``latency_us`` added, ``bandwidth_fraction`` of the bus bandwidth)
FIT: dict[str, list[tuple]] = {
    "trtllm": [("kernel", ("gemm.fp8", "gemm.fp8_dynamic"), "hopper", "compute"),
               ("kernel", ("gemm.fp8", "gemm.fp8_dynamic"), "hopper", "memory"),
               ("kernel", ("gemm.fp8", "gemm.fp8_dynamic"), "ada", "compute"),
               ("kernel", ("moe",), "hopper", "compute"),
               ("kernel", ("moe",), "ampere", "compute"),
               ("kernel", ("attention.decode",), "default", "memory"),
               ("kernel", ("attention.decode",), "default", "compute"),
               ("kernel", ("attention.prefill",), "default", "compute"),
               ("host", "step_us"), ("host", "request_us"), ("host", "per_sequence_us"),
               ("collective", "all_reduce", "latency_us"), ("collective", "all_reduce", "bandwidth_fraction")],
    "compiled": [("kernel", ("gemm.bf16",), "ampere", "memory"), ("kernel", ("gemm.bf16",), "hopper", "memory"),
                 ("kernel", ("gemm.w8a16",), "ampere", "memory"), ("kernel", ("gemm.w4a16",), "ampere", "memory"),
                 ("host", "step_us")],
    "vllm": [("host", "step_us"), ("host", "per_sequence_us"),
             ("kernel", ("gemm.w8a16",), "default", "memory"), ("kernel", ("gemm.w4a16",), "default", "memory")],
    "lmdeploy": [("host", "step_us"), ("host", "per_sequence_us"), ("host", "request_us"),
                 ("kernel", ("gemm.w4a16",), "default", "memory")],
}


#: fitting replays a serving case through the simulation alone (the KV budget planned once), with
#: the published number of requests
FIT_REQUESTS = 10**9


def _apply(rt: Runtime, spec: Sequence[tuple], x: Sequence[float]) -> Runtime:
    for s, v in zip(spec, x):
        if s[0] == "host":
            rt = rt.with_host(**{s[1]: v})
        elif s[0] == "collective":
            rt = rt.with_collective(s[1], **{s[2]: v})
        else:
            for fam in s[1]:
                rt = rt.with_params(fam, s[2], **{s[3]: v})
    return rt


def _value(rt: Runtime, s: tuple) -> float:
    if s[0] == "host":
        return rt.host_s(s[1]) * 1e6
    if s[0] == "collective":
        c = rt.collectives.get(s[1])
        if s[2] == "latency_us":
            return max(c.latency_s * 1e6 if c is not None else 0.0, 1.0)
        return min(c.bandwidth_fraction if c is not None else 1.0, 0.99)
    prm = rt.kernels[s[1][0]].params_for(s[2]) or {}
    return float(prm.get(s[3], 0.5))


def fit_spec(name: str, keys: Sequence[str] | None = None) -> list[tuple]:
    """``FIT[name]``, or its entries naming one of ``keys`` (a family, an architecture, a host key,
    or several joined by ``/``: ``moe/hopper``)."""
    spec = FIT[name]
    if not keys:
        return list(spec)
    def names(s):
        if s[0] == "collective":
            return ("collective",) + tuple(s[1:])
        return (s[1],) if s[0] == "host" else s[1] + (s[2], s[3])
    return [s for s in spec if any(all(part in names(s) for part in k.split("/")) for k in keys)]


def fit(name: str, replayer: Replayer | None = None, *, log=print, only: str | None = None,
        keys: Sequence[str] | None = None) -> tuple[Runtime, list[dict]]:
    """Fit the ``FIT[name]`` parameters of profile ``name`` (those naming ``keys``) to its published
    points (those whose id contains ``only``): a robust (soft-L1) loss of log(predicted /
    published), Nelder–Mead in transformed coordinates (logit of a fraction, log of a host time)."""
    rp = replayer or Replayer()
    base = runtime_by_name(name)
    spec = fit_spec(name, keys)
    cases = [c for c in (case_of(p) for p in points()) if c.overrides is not None and c.runtime == name
             and (not only or only in c.id)]
    values = np.array([c.point["value"] for c in cases], float)
    inverse = np.array([c.point["metric"] in ("ttft_s", "tpot_s", "e2e_s") for c in cases])

    def positive(s):    # a time (log coordinate), else a fraction (logit)
        return s[0] == "host" or (s[0] == "collective" and s[2] == "latency_us")

    def to_x(v):
        return np.array([math.log(max(vi, 1e-3)) if positive(s) else math.log(vi / (1 - vi))
                         for s, vi in zip(spec, v)])

    def from_x(x):
        return [math.exp(xi) if positive(s) else 1 / (1 + math.exp(-xi)) for s, xi in zip(spec, x)]

    def objective(x):
        rt = _apply(base, spec, from_x(x))
        pred = np.array([rp.predict(c, rt, requests=FIT_REQUESTS) for c in cases])
        r = np.log(pred / values)
        return float(eff._loss(r[None, :])[0])

    x0 = to_x([_value(base, s) for s in spec])
    t0 = time.perf_counter()
    best, fbest = eff._nelder_mead(objective, x0, step=np.full(len(x0), 0.4), max_iter=20 * len(x0), tol=1e-5)
    fitted = _apply(base, spec, from_x(best))
    log(f"fit {name}: {len(cases)} points, loss {fbest:.4f}, {time.perf_counter() - t0:.0f} s")
    for s, v in zip(spec, from_x(best)):
        log(f"  {s}: {v:.4g}")
    rows = []
    for c, val in zip(cases, values):
        pred = rp.predict(c, fitted)
        rows.append({"id": c.id, "value": val, "pred": pred, "err": pred / val - 1,
                     "precision": c.point["precision"]["weights"], "metric": c.point["metric"],
                     "model": c.point["model"], "tp": c.point["tp"]})
        log(f"  {c.id:60s} {val:10.4g} {pred:10.4g} {pred / val - 1:+7.1%}")
    del inverse
    return fitted, rows


#: published models with routed experts (the points the ``moe`` kernel's band is measured on)
MOE_MODELS = ("mixtral", "moe", "deepseek")

#: kernel family -> the published precisions whose points exercise it (error bands)
_BAND_PRECISIONS = {"gemm.fp8": ("fp8",), "gemm.fp8_dynamic": ("fp8",), "gemm.w8a16": ("int8",),
                    "gemm.w4a16": ("int4",), "gemm.bf16": ("bf16",), "gemm.fp16": ("fp16",)}


def error_bands(name: str, spec: Sequence[tuple], rows: Sequence[dict]) -> dict[str, tuple[float, float, str]]:
    """Median and p90 |error| of the published points each fitted figure prices."""
    out = {}
    for s in spec:
        keys = (s[1],) if s[0] in ("host", "collective") else s[1]
        for key in keys:
            if key in _BAND_PRECISIONS:
                sel = [r for r in rows if r["precision"] in _BAND_PRECISIONS[key]]
            elif key == "moe":
                sel = [r for r in rows if any(m in r.get("model", "") for m in MOE_MODELS)]
            elif key == "request_us":
                sel = [r for r in rows if r["metric"] == "ttft_s"]
            elif s[0] == "collective":
                sel = [r for r in rows if int(r.get("tp") or 1) > 1]
            else:
                sel = list(rows)
            if not sel:
                continue
            e = np.abs([r["err"] for r in sel])
            out[key] = (float(np.median(e)), float(np.percentile(e, 90)),
                        f"|error| of the {len(sel)} published {name} points it prices "
                        f"(python -m compiler.driver.published)")
    return out


def _sig(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def write_profile(name: str, fitted: Runtime, spec: Sequence[tuple], bands: Mapping[str, tuple[float, float, str]],
                  note: str) -> None:
    """Write the fitted figures (and their error bands) into ``conf/runtime/<name>.yaml``, keeping
    the file's comments and layout (ruamel.yaml round trip)."""
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap
    y = YAML()
    y.width = 120
    path = runtime_dir() / f"{name}.yaml"
    doc = y.load(path.read_text(encoding="utf-8"))
    for s in spec:
        if s[0] == "collective":
            if "collectives" not in doc:
                doc["collectives"] = CommentedMap()
            c = doc["collectives"].setdefault(s[1], CommentedMap())
            fig = fitted.collectives[s[1]]
            c[s[2]] = _sig(fig.latency_s * 1e6 if s[2] == "latency_us" else fig.bandwidth_fraction)
            c["source"] = note
            if s[1] in bands:
                med, p90, basis = bands[s[1]]
                c["error_band"] = CommentedMap(median=_sig(med, 3), p90=_sig(p90, 3), basis=basis)
            continue
        if s[0] == "host":
            h = doc["host"].setdefault(s[1], CommentedMap())
            h["value"] = _sig(fitted.host_s(s[1]) * 1e6)
            h["source"] = note
            if s[1] in bands:
                med, p90, basis = bands[s[1]]
                h["error_band"] = CommentedMap(median=_sig(med, 3), p90=_sig(p90, 3), basis=basis)
            continue
        for fam in s[1]:
            k = doc["kernels"][fam]
            prm = k.setdefault("params", CommentedMap())
            arch = prm.setdefault(s[2], CommentedMap())
            arch[s[3]] = _sig(float(fitted.kernels[fam].params_for(s[2])[s[3]]))
            k["source"] = note
            if fam in bands:
                med, p90, basis = bands[fam]
                k["error_band"] = CommentedMap(median=_sig(med, 3), p90=_sig(p90, 3), basis=basis)
    import io
    buf = io.StringIO()
    y.dump(doc, buf)
    path.write_text(buf.getvalue(), encoding="utf-8")


def write_bands(name: str, rows: Sequence[dict]) -> None:
    """The error band of every fitted figure of ``name`` from replayed ``rows`` (its published
    points at the profile's current figures), written into ``conf/runtime/<name>.yaml``; values
    and sources stay as they are."""
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap
    y = YAML()
    y.width = 120
    path = runtime_dir() / f"{name}.yaml"
    doc = y.load(path.read_text(encoding="utf-8"))
    bands = error_bands(name, FIT[name], [dict(r, precision=r["precision"]) for r in rows])
    for key, (med, p90, basis) in bands.items():
        node = (doc["host"].get(key) if key in doc.get("host", {}) else
                doc["collectives"].get(key) if key in (doc.get("collectives") or {}) else doc["kernels"].get(key))
        if node is None:
            continue
        node["error_band"] = CommentedMap(median=_sig(med, 3), p90=_sig(p90, 3), basis=basis)
    import io
    buf = io.StringIO()
    y.dump(doc, buf)
    path.write_text(buf.getvalue(), encoding="utf-8")


# --------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m compiler.driver.published", description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write every row and the summary here")
    ap.add_argument("--markdown", help="write the markdown table here")
    ap.add_argument("--only", help="points whose id contains this")
    ap.add_argument("--runtime", help="price every point with this profile (e.g. eager)")
    ap.add_argument("--fit", help="fit this profile's fitted parameters to its points")
    ap.add_argument("--write", action="store_true", help="with --fit: write the figures into conf/runtime/<name>.yaml")
    ap.add_argument("--docs", help="write the measurements page (the page --docs writes) here")
    ap.add_argument("--keys", help="with --fit: fit only the figures naming these (comma-separated: family, "
                                   "architecture or host key)")
    ap.add_argument("--bands", help="replay this profile's points at its current figures and write their error "
                                    "bands into conf/runtime/<name>.yaml")
    a = ap.parse_args(argv)
    if a.docs:
        write_docs(a.docs)
        return 0
    if a.fit:
        keys = a.keys.split(",") if a.keys else None
        fitted, rows = fit(a.fit, only=a.only, keys=keys)
        if a.write:
            n = len(rows)
            cmd = f"python -m compiler.driver.published --fit {a.fit}" + (f" --only {a.only}" if a.only else "") + \
                (f" --keys {a.keys}" if a.keys else "")
            spec = fit_spec(a.fit, keys)
            write_profile(a.fit, fitted, spec, error_bands(a.fit, spec, rows),
                          f"fitted to {n} published {a.fit} points (compiler/perf/calibration/data/published_engines.json; "
                          f"{cmd})")
        return 0
    if a.bands:
        rows = [r for r in replay(None, a.only, profile=a.bands) if r.get("pred") is not None]
        for r in rows:
            print(f"{r['id']:60s} {r['value']:10.4g} {r['pred']:10.4g} {r['err']:+7.1%}", flush=True)
        write_bands(a.bands, rows)
        return 0

    def show(row):
        if row.get("pred") is None:
            print(f"{row['id']:60s} not expressed: {row['why']}", flush=True)
        else:
            print(f"{row['id']:60s} {row['value']:10.4g} {row['pred']:10.4g} {row['err']:+7.1%}", flush=True)

    rows = replay(a.runtime, a.only, progress=show)
    s = summarize(rows)
    print()
    for g, v in s["median_abs_err"].items():
        print(f"median |error| {g:10s} {v:6.1%} over {s['n'][g]} points (target {TARGET[g]:.0%})")
    for k, v in s["by_group"].items():
        print(f"  {k:40s} n={v['n']:3d} median {v['median_abs_err']:6.1%} max {v['max_abs_err']:6.1%}")
    print(f"off by 2x or more: {s['off_by_2x'] or 'none'}")
    print(f"not expressed: {len(s['not_expressed'])} of {s['points']}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows, "summary": s}, f, indent=1)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(table_md(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
