"""Analysis: what the cost model and the memory plan say about one workload, as plain data.

:func:`analyze` turns the run context (:class:`compiler.analysis.context.RunContext`: config,
workload, hardware, graph, cost model, schedule, pass records, model dimensions, draft,
measurements) into a plain dict — phases with their op tables, latency, memory totals, capacity
(with the SLO search), the throughput-versus-batch sweep, and the sections of the other analyses
(parallel, serve, speculative, MoE, early exit). ``reports/`` only renders this result
(report.json, report.md, report.html).

Task-honest figures: a causal LM has prefill (TTFT) and decode (TPOT) phases and a request of
``gen_len`` generated tokens; an encoder (``task`` embedding / custom: no KV cache) has one
forward pass per batch: its latency is per batch, throughput is in sequences/s, and there is no
decode phase, TPOT or "generated tokens".
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from compiler.analysis import early_exit, layers, moe
from compiler.analysis import runtime as runtime_sec
from compiler.analysis import speculative as spec
from compiler.analysis.capacity import capacity_section
from compiler.analysis.context import RunContext
from compiler.analysis.parallel import parallel_section, parallel_step_time, plan_of
from compiler.analysis.disaggregated import disaggregated_section
from compiler.analysis.prefix import pinned_blocks, prefix_hook, prefix_model_of, prefix_section
from compiler.analysis.serving import (config_of, cost_model_step_time, max_model_len_of, request_tokens,
                                       sample_requests, serve_block, serve_enabled, serve_section, simulate)
from compiler.errors import ConfigError
from compiler.ir import Graph, S
from compiler.perf.memory import kv_bytes_per_token, kv_dtype, kv_layers, param_count, weights_bytes

GB = 1e9
CAPACITY_SEARCH_MAX = 4096


def is_generative(g: Graph) -> bool:
    """A model that generates tokens step by step (a KV cache was lifted or imported)."""
    return bool(g.meta.get("kv_tensors")) or g.meta.get("task") == "causal_lm"


def recomputes(g: Graph) -> bool:
    """A generative model whose graph has no KV cache (e.g. ``pipeline=none``): each decode step
    runs the whole sequence again — costed that way, never as one token attending to itself."""
    return is_generative(g) and not g.meta.get("kv_tensors")


def takes_tokens(g: Graph) -> bool:
    """The model reads a sequence (an input has the sequence dimension S): its workload is in
    tokens. An MLP or a CNN has none; its figures are per input and per batch."""
    for name in g.inputs:
        for d in g.type(name).shape:
            if S in getattr(d, "free_symbols", ()):
                return True
    return False


def decode_step(ctx, recompute: bool):
    """(S, P, cost phase) of one decode step at ``ctx`` tokens of context: one new token against
    the cache, or without a cache the ``ctx + 1`` tokens of the whole sequence, nothing cached."""
    if recompute:
        return np.asarray(ctx) + 1, 0, "prefill"
    return 1, ctx, "decode"


def reserved_tokens(cfg: Mapping, tokens: int, max_model_len: int | None = None) -> int:
    """KV-cache tokens one sequence of ``tokens`` holds in the configured layout: whole blocks
    (paged), or the reservation of ``max_model_len`` (contiguous; ``kv.max_model_len``, default
    the longest planned request)."""
    kv = dict(cfg.get("kv") or {})
    if kv.get("layout", "contiguous") == "paged":
        bs = int(kv.get("block_size") or 16)
        return -(-int(tokens) // bs) * bs
    return max(int(max_model_len or kv.get("max_model_len") or tokens), int(tokens))


def phase_result(cm, sched, b: int, s: int, p: int, phase: str) -> dict[str, Any]:
    ops = cm.op_table(b, s, p, phase)
    blocks = layers.op_blocks(cm.graph)   # the per-layer breakdown (compiler/analysis/layers.py)
    layers.annotate(ops, blocks, {it.name: it.node for it in cm.items if it.node})
    by_class: dict[str, float] = {}
    bound_time = {"compute": 0.0, "memory": 0.0, "latency": 0.0}
    for o in ops:
        by_class[o["class"]] = by_class.get(o["class"], 0.0) + o["time_s"]
        bound_time[o["bound"]] += o["time_s"]
    flops = sum(o["flops"] for o in ops)
    byts = sum(o["bytes"] for o in ops)
    split = {k: sum(o["bytes_split"][k] for o in ops) for k in ("weights", "activations", "kv")}
    host = float(cm.host_time(b, s)) if getattr(cm, "runtime", None) is not None else None
    return {
        "point": {"B": b, "S": s, "P": p},
        "time_s": sum(o["time_s"] for o in ops) + (host or 0.0),
        **({"host_overhead_s": host} if host is not None else {}),
        "flops": flops, "bytes": byts, "bytes_split": split,
        "intensity": flops / byts if byts else None,
        "bound": max(bound_time, key=bound_time.get),
        "time_by_class_s": dict(sorted(by_class.items())),
        "activation_peak_bytes": float(sched.activation_peak(b, s, p)[0]),
        "blocks": layers.block_sums(ops),
        "layers": layers.layer_rows(ops, layers.layer_facts(cm.graph)),
        "ops": ops,
    }


def request_latency(cm, b: int, prompt: int, gen: int, ctx: int, generative: bool, *, recompute: bool = False,
                    tokens: bool = True) -> dict[str, Any]:
    """TTFT, TPOT, end-to-end and throughput of one request of ``b`` sequences.

    Causal LM: TTFT = prefill; ``gen_len - 1`` decode steps follow over a growing cache;
    throughput counts generated tokens only (0 when ``gen_len=0``: nothing is generated).
    Without a KV cache (``recompute``) every decode step runs the whole sequence again.
    Encoder: one forward pass per batch; throughput in sequences/s (and tokens processed/s; a
    model without a token input: inputs/s, no token figure).
    """
    ttft = float(cm.phase_time(b, prompt, 0, "prefill")[0]) + request_overhead(cm)
    if not generative:
        if not tokens:      # an MLP / CNN: inputs per batch, no tokens
            return {"kind": "encoder", "unit": "inputs", "batch_latency_s": ttft, "ttft_s": ttft, "tpot_s": None,
                    "e2e_s": ttft, "throughput_seq_s": b / ttft, "throughput_inputs_s": b / ttft,
                    "throughput_tok_s": None, "throughput_counts": "inputs (the model reads no token sequence)"}
        return {"kind": "encoder", "batch_latency_s": ttft, "ttft_s": ttft, "tpot_s": None,
                "e2e_s": ttft, "throughput_seq_s": b / ttft, "throughput_tok_s": b * prompt / ttft,
                "throughput_counts": "tokens processed (prompt tokens of every sequence)"}
    steps = np.arange(1, gen) if gen > 1 else np.zeros(0)
    s_, p_, ph = decode_step(prompt + steps - 1, recompute)
    step_times = cm.phase_time(b, s_, p_, ph) if len(steps) else np.zeros(0)
    e2e = float(ttft + step_times.sum())
    s_, p_, ph = decode_step(ctx, recompute)
    tpot = float(cm.phase_time(b, s_, p_, ph)[0])
    out = {"kind": "generative", "ttft_s": ttft, "tpot_s": tpot, "e2e_s": e2e,
           "throughput_tok_s": b * gen / e2e, "decode_throughput_tok_s": b / tpot,
           "throughput_counts": "generated tokens"}
    if recompute:
        out["decode"] = "recompute"
    return out


def fit_count(sched, w_bytes: float, kv_tok: float, held: float, act_tokens: int, reserve: float,
              usable: float) -> tuple[int, np.ndarray]:
    """The largest batch B with weights + B x ``held`` KV tokens + the activation peak of B sequences
    of ``act_tokens`` + reserve within ``usable`` bytes, and the fit mask over
    1..:data:`CAPACITY_SEARCH_MAX` — the one formula behind every capacity figure of a report
    (``capacity.max_batch`` stops at the search range and says so in ``limited_by``; the layouts'
    ``max_sequences`` do not)."""
    def need(b):
        return w_bytes + b * kv_tok * held + sched.activation_peak(b, act_tokens, 0) + reserve

    batches = np.arange(1, CAPACITY_SEARCH_MAX + 1)
    fits = need(batches) <= usable
    best = int(batches[fits].max()) if fits.any() else 0
    if best == CAPACITY_SEARCH_MAX:       # beyond the table: doubling, then bisection (need grows with B)
        lo, hi = best, 2 * best
        while hi < 2 ** 48 and need(np.array([hi]))[0] <= usable:
            lo, hi = hi, 2 * hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if need(np.array([mid]))[0] <= usable else (lo, mid)
        best = lo
    return best, fits


def request_overhead(cm) -> float:
    """The runtime profile's host time per request (tokenization, admission, returning the first
    token), added to the time to first token; 0 without a profile."""
    rt = getattr(cm, "runtime", None)
    return rt.request_s if rt is not None else 0.0


def capacity(cfg: Mapping, cm, sched, hw, w_bytes, kv_tok, tokens, prompt, ctx, reserve,
             generative: bool = True, *, usable: float | None = None, step=None, reserved: int | None = None,
             act_tokens: int | None = None, recompute: bool = False) -> dict[str, Any]:
    """Largest batch that fits in device memory (``usable`` bytes: memory x
    ``memory.gpu_utilization``; per device under a parallel plan, with its weights and KV bytes per
    token); with ``slo.*`` set, the largest that also meets the latency objectives (``step(b, s, p,
    phase)``: one device's or the plan's step times). ``reserved``: KV tokens a sequence holds in
    the configured layout (:func:`reserved_tokens`; default ``tokens``); ``act_tokens``: the
    sequence length of the largest activation (without a KV cache, the longest recompute step)."""
    usable = hw.memory_bytes if usable is None else usable
    step = step or cm.phase_time
    batches = np.arange(1, CAPACITY_SEARCH_MAX + 1)
    held = reserved or tokens            # KV tokens a sequence holds in the configured layout
    exact, fits = fit_count(sched, w_bytes, kv_tok, held, act_tokens or prompt, reserve, usable)
    max_batch = min(exact, CAPACITY_SEARCH_MAX)     # ≥ the search range: limited_by says so
    beside = int(max(usable - w_bytes, 0) // (kv_tok * held)) if kv_tok and held else None
    out: dict[str, Any] = {"max_batch": max_batch, "tokens_per_sequence": tokens,
                           # sequences whose KV cache fits beside the weights alone (no activations,
                           # no reserve): the first-order figure usually quoted
                           "max_batch_weights_kv_only": beside,
                           "limited_by": "memory" if max_batch < batches[-1] else "search range"}
    slo = dict(cfg.get("slo") or {})
    if slo.get("ttft_ms") is not None or (generative and slo.get("tpot_ms") is not None):
        ok = fits.copy()
        cand = batches[: max(max_batch, 1)]
        if slo.get("ttft_ms") is not None:
            ok[: len(cand)] &= step(cand, prompt, 0, "prefill") * 1e3 <= float(slo["ttft_ms"])
        if generative and slo.get("tpot_ms") is not None:
            s_, p_, ph = decode_step(ctx, recompute)
            ok[: len(cand)] &= step(cand, s_, p_, ph) * 1e3 <= float(slo["tpot_ms"])
        ok[len(cand):] = False
        out["max_batch_slo"] = int(batches[ok].max()) if ok.any() else 0
        out["slo"] = {k: slo.get(k) for k in ("ttft_ms", "tpot_ms")}
    return out


def throughput_sweep(cm, hw, ctx, max_batch, w_bytes, kv_tok, tokens, reserve, sched, prompt,
                     generative: bool = True, *, usable: float | None = None, step=None,
                     act_tokens: int | None = None, recompute: bool = False, per_token: bool = True) -> list[dict]:
    """Decode TPOT and throughput (causal LM) or batch latency and sequences/s (encoder) over
    powers of two up to twice the max batch (and the max batch itself)."""
    usable = hw.memory_bytes if usable is None else usable
    step = step or cm.phase_time
    top = max(64, 2 * max(max_batch, 1))
    batches = np.unique(np.concatenate([2 ** np.arange(0, int(np.log2(min(top, CAPACITY_SEARCH_MAX))) + 1),
                                        [max(max_batch, 1)]])).astype(int)
    need = w_bytes + batches * kv_tok * tokens + sched.activation_peak(batches, act_tokens or prompt, 0) + reserve
    if generative:
        s_, p_, ph = decode_step(ctx, recompute)
        tpot = step(batches, s_, p_, ph)
        return [{"batch": int(bb), "tpot_s": float(t), "throughput_tok_s": float(bb / t),
                 "fits": bool(n <= usable)} for bb, t, n in zip(batches, tpot, need)]
    lat = step(batches, prompt, 0, "prefill")
    return [{"batch": int(bb), "batch_latency_s": float(t), "throughput_seq_s": float(bb / t),
             "throughput_tok_s": float(bb * prompt / t) if per_token else None, "fits": bool(n <= usable)}
            for bb, t, n in zip(batches, lat, need)]


def calibration_kind(hw) -> str:
    """calibrated / transferred / literature: where the device's efficiencies come from, read from
    the Hardware object (``hw.calibration.source``; from ``efficiency.source`` where it has none)."""
    cal = getattr(hw, "calibration", None)
    src = getattr(cal, "source", None)
    if src in ("calibrated", "transferred", "literature"):
        return src
    text = str(hw.efficiency.source).lower()
    if text.startswith("calibrated"):
        return "calibrated"
    return "transferred" if "transfer" in text else "literature"


def analyze(rc: RunContext) -> dict[str, Any]:
    """The analysis result (a plain dict; report.json is this plus ``schema_version``, ``tool``
    and ``emit``)."""
    cfg, wl, hw, g, cm, sched, records = rc.cfg, rc.workload, rc.hardware, rc.graph, rc.cost, rc.schedule, rc.records
    b, prompt, gen, ctx = wl["batch"], wl["prompt_len"], wl["gen_len"], wl["context_len"]
    generative = is_generative(g)
    recompute = recomputes(g)            # no KV cache: every decode step runs the whole sequence
    per_token = generative or takes_tokens(g)
    phases = {"prefill": phase_result(cm, sched, b, prompt, 0, "prefill")}
    if generative:
        s_, p_, ph = decode_step(ctx, recompute)
        phases["decode"] = phase_result(cm, sched, b, int(s_), p_, ph)
        if recompute:
            phases["decode"]["recompute"] = True
    latency = request_latency(cm, b, prompt, gen, ctx, generative, recompute=recompute, tokens=per_token)

    w_bytes = weights_bytes(g)
    tokens = max(ctx, prompt + gen) if generative else prompt
    kv_tok = kv_bytes_per_token(g, tokens)   # windowed layers hold ≤ W tokens: the average at this length
    held = reserved_tokens(cfg, tokens, max_model_len_of(cfg, wl, tokens)) if generative and kv_tok else tokens
    # the largest activation: the prefill, or without a cache the longest recompute step
    act_tokens = max(prompt, ctx + 1, prompt + gen - 1) if recompute else prompt
    reserve = float(cfg["memory"]["runtime_reserve_gb"]) * GB
    usable = hw.memory_bytes * float(cfg["memory"].get("gpu_utilization", 1.0) or 1.0)
    act_peak = float(sched.activation_peak(b, act_tokens, 0)[0])
    kv_total = kv_tok * b * held
    # capacity planning, parallel plan, serving simulation (compiler/capacity, parallel, serving)
    planning = planning_sections(rc, w_bytes, kv_tok, tokens, reserve) if generative else {}
    par = planning.get("parallel")
    plan = plan_step(rc, par)
    if plan is not None:   # the headline figures are the plan's: per device, collectives included
        w_cap = par["memory_per_device"]["weights_bytes"]          # per device (tp shard, pp stage)
        kv_cap = par["memory_per_device"]["kv_bytes_per_token"]
        single = latency
        latency = plan_latency(plan, par, b, prompt, gen, ctx, request_overhead(cm))
        latency["single_device"] = {k: single[k] for k in ("ttft_s", "tpot_s", "e2e_s", "throughput_tok_s")}
    else:
        w_cap, kv_cap = w_bytes, kv_tok
    cap = capacity(cfg, cm, sched, hw, w_cap, kv_cap, tokens, prompt, ctx, reserve, generative,
                   usable=usable, step=plan, reserved=held, act_tokens=act_tokens, recompute=recompute)
    cap.update(planning.pop("capacity", {}))
    if par is not None:
        cap.update(fit_verdict(cfg, hw, par, cap))
    sweep = throughput_sweep(cm, hw, ctx, cap["max_batch"], w_cap, kv_cap, held, reserve, sched, prompt,
                             generative, usable=usable, step=plan, act_tokens=act_tokens, recompute=recompute,
                             per_token=per_token)
    m = cfg["model"]
    source = g.meta.get("source") or {}
    dynamic = dynamic_sections(rc, {"tpot_s": latency["tpot_s"], "weights_bytes": w_bytes,
                                    "kv_bytes_per_token": kv_tok, "tokens": tokens, "reserve": reserve,
                                    # under a parallel plan: its step times and one device's memory
                                    "step": plan, "weights_bytes_device": w_cap, "kv_bytes_per_token_device": kv_cap,
                                    "usable_bytes": usable})
    phases.update(dynamic.pop("phases", {}))
    latency.update(dynamic.pop("latency", {}))
    dtype = m.get("dtype") or _graph_dtype(g)
    rsec = runtime_sec.section(rc, generative)
    return {
        "model": {
            "name": str(m.get("name") or g.name), "source": str(m.get("source")),
            "dtype": str(dtype or ""), "weights": str(m.get("weights") or ("file" if source else "")),
            "task": g.meta.get("task"), "generative": generative, "parameters": param_count(g),
            "ops": len(g), "op_counts": g.ops_by_kind(), "inputs": list(g.inputs), "outputs": list(g.outputs),
            "layers": (g.meta.get("kv_paging") or {}).get("layers")
                      or sum(1 for t in g.inputs if t.startswith("past_key.")),
            "max_positions": g.meta.get("max_positions"),
            "import": g.meta.get("import_stats", {}),
        },
        "hardware": {
            "name": hw.name, "description": hw.description, "vendor": hw.vendor, "kind": hw.kind,
            "peak_flops": dict(hw.peak_flops), "sparse_peak_flops": dict(hw.sparse_peak_flops),
            "memory_bytes": hw.memory_bytes, "memory_bandwidth": hw.memory_bandwidth,
            "ridge_point_fp16": hw.ridge_point("fp16"), "efficiency_source": hw.efficiency.source,
            "calibration": calibration_kind(hw),
        },
        "workload": dict(wl),
        "pipeline": {"name": str(cfg["pipeline"].get("name", "")), "passes": [r.name for r in records]},
        "passes": [{"name": r.name, "changed": r.changed, "stats": r.stats,
                    "cost_before": r.cost_before, "cost_after": r.cost_after,
                    **({"notes": [dict(n) for n in r.notes]} if getattr(r, "notes", ()) else {})}
                   for r in records],
        "phases": phases,
        "memory": {
            "weights_bytes": w_bytes, "kv_cache_bytes": kv_total, "kv_bytes_per_token": kv_tok,
            "kv_tokens_per_sequence": tokens, **({"kv_tokens_reserved_per_sequence": held} if held != tokens else {}),
            "activation_peak_bytes": act_peak,
            "runtime_reserve_bytes": reserve, "total_bytes": w_bytes + kv_total + act_peak + reserve,
            "capacity_bytes": hw.memory_bytes, "usable_bytes": usable,
            "fits_one_device": bool(w_bytes + kv_total + act_peak + reserve <= usable),
            **({"kv_dtype": kv_dtype(g)} if kv_dtype(g) else {}),
            **kv_layout_facts(g, generative),
        },
        "capacity": cap,
        "latency": latency,
        "throughput_vs_batch": sweep,
        **dynamic,
        **planning,
        **({"runtime": rsec} if rsec is not None else {}),
    }


def planning_sections(rc: RunContext, weights_bytes: float, kv_bytes_per_token: float, tokens: float,
                      reserve_bytes: float) -> dict[str, Any]:
    """The capacity planning (``capacity`` additions incl. ``kv_blocks``, compiler/analysis/capacity.py),
    ``parallel`` (compiler/analysis/parallel.py) and ``serve`` (compiler/analysis/serving.py) sections
    for the ``kv=``, ``parallel.*``, ``serve.*`` and ``memory.gpu_utilization`` settings. Causal
    decoders with a KV cache only (else empty).

    ``kv_bytes_per_token`` is in the cache's stored format (``kv.dtype`` applied). Capacity is per
    device: with a parallel plan, the per-device weights and KV."""
    cfg, wl, hw, g, cm, sched = rc.cfg, rc.workload, rc.hardware, rc.graph, rc.cost, rc.schedule
    kv_dt = kv_dtype(g) or "fp16"
    out: dict[str, Any] = {}
    kv_inputs = [t for t in g.inputs if t in set(g.meta.get("kv_tensors", ()))]
    if not kv_inputs or not kv_bytes_per_token:
        return out
    mem = dict(cfg.get("memory") or {})
    util = float(mem.get("gpu_utilization") if mem.get("gpu_utilization") is not None else 1.0)
    b, prompt, ctx = wl["batch"], wl["prompt_len"], wl["context_len"]
    act = float(sched.activation_peak(b, prompt, 0)[0])
    dims = rc.dims if (cfg.get("model") or {}).get("source") == "hf_config" else None
    par = parallel_section(cm, hw, cfg.get("parallel"), dims, batch=b, prompt_len=prompt,
                           context_len=ctx, tokens=tokens, kv_bytes_per_token=kv_bytes_per_token,
                           weights_bytes=weights_bytes, activation_peak_bytes=act,
                           reserve_bytes=reserve_bytes, gpu_utilization=util)
    plan = plan_of(cfg.get("parallel"))
    if par is not None:
        out["parallel"] = par
    # capacity of one device: per-device weights and KV bytes per token under the plan
    if par is not None and plan.devices > 1:
        w_dev = par["memory_per_device"]["weights_bytes"]
        kv_dev = par["memory_per_device"]["kv_bytes_per_token"]
    else:
        w_dev, kv_dev = weights_bytes, kv_bytes_per_token
    enabled = serve_enabled(cfg.get("serve"))
    seq = request_tokens(cfg, wl, tokens)
    kvc = dict(cfg.get("kv") or {})
    kvc["max_model_len"] = max_model_len_of(cfg, wl, tokens)
    kvc["dtype"] = kv_dt
    sec = capacity_section(kv=kvc, gpu_utilization=util, memory_bytes=hw.memory_bytes,
                           weights_bytes=w_dev, kv_bytes_per_token=kv_dev, model_kv_dtype=kv_dt,
                           activation_peak_bytes=act, reserve_bytes=reserve_bytes, sequence_tokens=seq)
    sec["per_device"] = bool(par is not None and plan.devices > 1)
    # one answer: each layout's sequence count by the formula of capacity.max_batch (weights, the
    # layout's KV reservation, the activation peak of that many sequences, the reserve)
    usable = hw.memory_bytes * util

    def fit(held: float) -> int:
        return fit_count(sched, w_dev, sec["kv_bytes_per_token"], held, prompt, reserve_bytes, usable)[0]

    bs, c, pg = sec["tokens_per_block"], sec["contiguous"], sec["paged"]
    c["max_sequences"] = fit(sec["max_model_len"])
    pg["max_sequences"] = fit(pg["blocks_per_sequence"] * bs)
    pg["max_sequences_guaranteed"] = fit(-(-int(sec["sequence_tokens"]["max"]) // bs) * bs)
    pg["vs_contiguous"] = pg["max_sequences"] / c["max_sequences"] if c["max_sequences"] else None
    sec["max_sequences"] = pg["max_sequences"] if sec["kv_layout"] == "paged" else c["max_sequences"]
    out["capacity"] = {"kv_blocks": sec["kv_blocks"], "kv_layout": sec["kv_layout"],
                       "tokens_per_block": sec["tokens_per_block"], "kv_budget_bytes": sec["kv_budget_bytes"],
                       "max_sequences": sec["max_sequences"], "kv": sec}
    if enabled and sec["kv_blocks"] < 1:
        best = ((par or {}).get("tp_options") or {}).get("min_tp_that_fits")
        raise ConfigError(
            f"serve: no KV-cache memory is left to serve requests on {hw.name} (KV budget "
            f"{sec['kv_budget_bytes'] / 1e9:.1f} GB per device: memory x memory.gpu_utilization - weights - "
            f"activations - runtime reserve), so the simulation cannot admit one. "
            + (f"Shard the model with parallel.tp={best}, " if best and best > plan.tp else "")
            + "use a larger device, quantize the weights (quant=), or turn the simulation off (serve.enabled=false).")
    if enabled:
        if par is not None and plan.devices > 1:
            st = parallel_step_time(cm, plan, dims)
        else:
            st = cost_model_step_time(cm)
        paged = sec["kv_layout"] == "paged"
        sb = serve_block(cfg, wl)
        pfx = dict(sb.get("prefix") or {})
        hook, kv_blocks, model = None, sec["kv_blocks"], None
        if pfx.get("enabled"):      # prefix caching (compiler/analysis/prefix.py): block-level reuse
            if not paged:
                raise ConfigError("serve.prefix needs a paged KV cache (prefix caching reuses whole blocks): "
                                  "add kv=paged.")
            model = prefix_model_of(pfx, int(sb.get("seed") or 0), sec["tokens_per_block"])
            hook = prefix_hook(model)
            kv_blocks -= pinned_blocks(model)
            if kv_blocks < 1:
                raise ConfigError(f"serve.prefix: the {pinned_blocks(model)} pinned prefix blocks take the whole "
                                  f"KV budget ({sec['kv_blocks']} blocks); shorten serve.prefix.prefix_len or "
                                  "lower serve.prefix.prefixes.")
        out["serve"] = serve_section(st, sb, cfg.get("slo"), kv_blocks=kv_blocks,
                                     block_size=sec["tokens_per_block"],
                                     reserve_tokens=None if paged else sec["max_model_len"],
                                     static_max_batch=min(sec["contiguous"]["max_sequences"],
                                                          int(sb.get("max_num_seqs") or 256)),
                                     **({"prefix": hook} if hook is not None else {}))
        if model is not None:
            out["serve"]["prefix"] = _prefix_report(cm, st, sb, cfg.get("slo"), model, out["serve"],
                                                    kv_blocks=sec["kv_blocks"], block_size=sec["tokens_per_block"])
        if (sb.get("disaggregated") or {}).get("enabled"):
            out["serve"]["disaggregated"] = disaggregated_section(
                rc, sb, cfg.get("slo"), weights_bytes=weights_bytes, kv_bytes_per_token=kv_bytes_per_token,
                act_bytes=act, reserve_bytes=reserve_bytes, utilization=util, block_size=sec["tokens_per_block"],
                coloc_step=st, coloc_kv_blocks=kv_blocks, coloc_tp=plan.tp, coloc_pp=plan.pp, prefix=hook)
    return out


def _prefix_report(cm, st, sb, slo, model, serve: dict, *, kv_blocks: int, block_size: int) -> dict:
    """``serve.prefix``: the cache's effect, the same workload simulated without it beside."""
    scfg = config_of(sb, slo)
    _, prompt, out = sample_requests(scfg)
    base = simulate(st, scfg, kv_blocks=kv_blocks, block_size=block_size, prefix=prefix_hook(model, caching=False))
    keys = ("ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "throughput_tok_s", "slo_attainment", "preemptions")

    def flops(s, p):
        s, p = np.asarray(s, float), np.asarray(p, float)
        return cm.evaluate(np.ones_like(s), s, p, "prefill")["flops"].sum(axis=0)

    def ptime(s, p):
        return st(np.ones(len(s)), np.asarray(p, float), np.asarray(s, float))
    return prefix_section(model, prompt, out, flops=flops, prefill_time=ptime, kv_blocks=kv_blocks,
                          with_cache={k: serve[k] for k in keys}, without_cache={k: getattr(base, k) for k in keys})


def plan_step(rc: RunContext, par):
    """``step(b, s, p, phase)`` of the parallel plan (per-device ops + collectives + pipeline sends,
    compiler/analysis/parallel.py), or None on one device."""
    if par is None or par.get("devices", 1) <= 1:
        return None
    st = parallel_step_time(rc.cost, plan_of(rc.cfg.get("parallel")), rc.dims)

    def step(b, s, p, phase=None):
        b, s, p = np.broadcast_arrays(*(np.atleast_1d(np.asarray(x, float)) for x in (b, s, p)))
        return st(b, p, s)
    return step


def plan_latency(step, par, b, prompt, gen, ctx, request_s: float = 0.0) -> dict[str, Any]:
    """:func:`request_latency` under the parallel plan: TTFT and TPOT are the plan's per-phase times
    (``parallel.phases``), the request's decode steps the plan's step times; ``request_s`` is the
    runtime's host time per request."""
    ttft = float(par["phases"]["prefill"]["time_s"]) + request_s
    tpot = float(par["phases"]["decode"]["time_s"])
    steps = np.arange(1, gen) if gen > 1 else np.zeros(0)
    e2e = ttft + (float(step(np.full(len(steps), b), 1, prompt + steps - 1).sum()) if len(steps) else 0.0)
    return {"kind": "generative", "ttft_s": ttft, "tpot_s": tpot, "e2e_s": e2e,
            "throughput_tok_s": b * gen / e2e, "decode_throughput_tok_s": b / tpot,
            "throughput_counts": "generated tokens",
            "basis": f"parallel plan tp={par['tp']} pp={par['pp']} ep={par['ep']} ({par['devices']} devices): "
                     "per-device op times + collectives (parallel.phases)"}


def fit_verdict(cfg, hw, par, cap: Mapping | None = None) -> dict[str, Any]:
    """Whether the run's plan fits its devices, and the smallest tensor-parallel degree that does
    (``capacity.fits``, ``capacity.min_tp_that_fits``, and a ``capacity.note`` when it does not fit:
    with the fix that applies — a smaller batch where the weights fit and the batch's KV cache and
    activations do not, else more devices or smaller weights)."""
    mem = par["memory_per_device"]
    tpo = par.get("tp_options") or {}
    out: dict[str, Any] = {"fits": bool(mem["fits"]), "min_tp_that_fits": tpo.get("min_tp_that_fits"),
                           "fits_one_device": tpo.get("fits_one_device")}
    if not mem["fits"]:
        best = tpo.get("min_tp_that_fits")
        where = f"{par['tp']} x {hw.name}" if par.get("devices", 1) > 1 else f"one {hw.name}"
        need = f"{mem['total_bytes'] / GB:.1f} GB per device (weights {mem['weights_bytes'] / GB:.1f} GB)"
        reserve = float((cfg.get("memory") or {}).get("runtime_reserve_gb") or 0.0) * GB
        batch = (cfg.get("workload") or {}).get("batch")
        mb = (cap or {}).get("max_batch")
        if mb and batch and mb < batch and mem["weights_bytes"] + reserve < mem["usable_bytes"]:
            fix = (f"the weights fit, the KV cache and activations of workload.batch={batch} do not: lower it to "
                   f"workload.batch={mb} (capacity.max_batch), shorten the sequences or store the cache in "
                   f"8 bits (kv.dtype=fp8)")
        elif best:
            fix = (f"parallel.tp={best} fits ({next(o['total_bytes'] for o in tpo['options'] if o['tp'] == best) / GB:.1f} "
                   f"GB per device)")
        else:
            fix = (f"no tensor-parallel degree up to the node's {hw.interconnect.num_devices_per_node} devices fits; "
                   f"quantize the weights (quant=) or add pipeline stages (parallel.pp)")
        out["note"] = (f"does not fit: {need} > {mem['usable_bytes'] / GB:.1f} GB usable on {where}; {fix}. "
                       f"The latency figures assume it ran.")
    return out


def dynamic_sections(rc: RunContext, base) -> dict[str, Any]:
    """Speculative decoding (``phases.verify`` + ``speculative``, compiler/analysis/speculative.py),
    chunked prefill (``phases.prefill_chunked``), MoE routing (``moe``, compiler/analysis/moe.py) and
    early exit (``early_exit``, compiler/analysis/early_exit.py)."""
    cfg, wl, g, cm, sched = rc.cfg, rc.workload, rc.graph, rc.cost, rc.schedule
    out: dict[str, Any] = {"phases": {}, "latency": {}}
    if g.meta.get("task") != "causal_lm":
        return out
    b, ctx = wl["batch"], wl["context_len"]
    chunk = (cfg.get("workload") or {}).get("prefill_chunk")
    if chunk:
        chunk = int(chunk)
        res = phase_result(cm, sched, b, min(chunk, wl["prompt_len"]), 0, spec.attention_class(chunk))
        res.update(spec.chunked_prefill(cm, b, wl["prompt_len"], chunk))
        out["phases"]["prefill_chunked"] = res
        out["latency"]["ttft_chunked_s"] = res["time_s"]
    msec = moe.analyze(rc)
    if msec is not None:
        out["moe"] = msec
    esec = early_exit.analyze(rc)
    if esec is not None:
        out["early_exit"] = esec
    sec = spec.analyze(rc, base)
    if sec is not None:
        out["phases"]["verify"] = phase_result(cm, sched, b, sec["gamma"] + 1, ctx, spec.attention_class(sec["gamma"] + 1))
        out["speculative"] = sec
    return out


def kv_layout_facts(g: Graph, generative: bool) -> dict[str, Any]:
    """``memory.kv_layers`` (window, bytes per token and cache kind of every layer) and
    ``memory.kv_bytes_per_token_unbounded`` (every layer holding every token) when the layers'
    caches differ — windowed layers or a latent cache; nothing for a uniform full cache."""
    rows = kv_layers(g) if generative else []
    if not rows or all(r["cache"] == "full" for r in rows):
        return {}
    return {"kv_layers": rows, "kv_bytes_per_token_unbounded": float(sum(r["kv_bytes_per_token"] for r in rows))}


def _graph_dtype(g: Graph) -> str | None:
    """The dtype most parameter bytes are stored in (an imported file's dtype)."""
    by: dict[str, int] = {}
    for p in g.params.values():
        if p.annotations.get("const"):
            continue
        n = int(p.type.numel()) if not hasattr(p.type.numel(), "free_symbols") else 0
        by[p.type.dtype] = by.get(p.type.dtype, 0) + n
    return max(by, key=by.get) if by else None


def gates(cfg: Mapping, result: Mapping) -> list[str]:
    """The violated ``gate.*`` budgets, as ``key: what is value, limit L`` lines (under a parallel
    plan: the plan's latency and the memory per device)."""
    gate = cfg.get("gate") or {}
    lat, mem = result["latency"], result["memory"]
    generative = lat.get("kind") != "encoder"
    thr = lat["throughput_tok_s"] if generative else lat["throughput_seq_s"]
    par = result.get("parallel") or {}
    per_device = par.get("devices", 1) > 1          # a parallel plan: its latency, memory per device
    mem_b = par["memory_per_device"]["total_bytes"] if per_device else mem["total_bytes"]
    checks = [
        ("max_ttft_ms", lat["ttft_s"] * 1e3, "max", "TTFT (ms)" if generative else "batch latency (ms)"),
        ("max_tpot_ms", (lat["tpot_s"] or 0.0) * 1e3 if generative else None, "max", "TPOT (ms)"),
        ("max_memory_gb", mem_b / 1e9, "max", "memory per device (GB)" if per_device else "memory (GB)"),
        ("min_throughput", thr, "min", "throughput (tokens/s)" if generative else "throughput (sequences/s)"),
    ]
    failed = []
    for key, value, kind, what in checks:
        limit = gate.get(key)
        if limit is None or value is None:
            continue
        if (kind == "max" and value > limit) or (kind == "min" and value < limit):
            failed.append(f"gate.{key}: {what} is {value:.4g}, limit {float(limit):.4g}")
    return failed
