"""``search=sizing``: the cheapest deployment that serves ``serve.rate`` within ``slo.*``.

The question of a capacity planner (AIConfigurator, DistServe's placement search): how many GPUs
of which kind, at which tp / pp and ``max_num_seqs``, co-located or disaggregated, serve R
requests/s of this length distribution within the SLOs at the lowest cost? Answered with the
cost model and the serving simulators (compiler/analysis/serving.py, disaggregated.py), never a
GPU, in one process.

**Candidates** (``sizing.*``): for every device kind of ``sizing.hardware`` (null: the run's), tp of
``sizing.tp``, pp of ``sizing.pp`` (plans the model or the node cannot run, and pools whose weights
leave no room for the longest request's KV, are dropped) and ``max_num_seqs`` of
``sizing.max_num_seqs``:

* co-located: R replicas of (kind, tp, pp), 1 ≤ R x tp x pp ≤ ``sizing.max_devices``; a
  replica serves ``rate / R`` (compiler/analysis/serving.py :func:`simulate`);
* disaggregated (``sizing.modes``): a prefill pool (kind, tp, pp, n_p instances) and a decode pool
  (kind', tp', pp', n_d instances, max_num_seqs), n_p x tp x pp + n_d x tp' x pp' ≤ max devices,
  the KV link from the hardware (compiler/analysis/disaggregated.py).

Cost: devices x the kind's list price (``hardware.price.usd_per_gpu_hour`` of
conf/hardware/<kind>.yaml, overridden by ``sizing.prices.<kind>``) in US dollars per hour.
A candidate is feasible when its SLO attainment at ``serve.rate`` (both TTFT and TPOT met)
reaches ``serve.slo_target`` and the run is steady (its backlog does not grow:
:func:`compiler.analysis.disaggregated.is_steady`).

**Search** (exact, deterministic): candidates in increasing cost (ties: the key order below); every
candidate of the cheapest cost group that has a feasible one is simulated and the best attainment
wins (then the smaller key). Pruned without a simulation — an exact bound, not a heuristic: a
disaggregated candidate whose prefill pool alone misses the TTFT SLO (the prefill pool does not
depend on the decode pool, and its TTFT attainment only rises with more instances, so the
smallest sufficient n_p per prefill plan is found once). :func:`exhaustive` simulates every
candidate; a test checks both agree. Each simulation runs ``sizing.requests`` requests (the
``serve.seed`` stream), so the answer is a function of the config.

**Pareto front**: cost against goodput at the rate (requests/s meeting both SLOs = rate x
attainment) over the simulated candidates — what less money buys. **Launch settings**: the
chosen configuration as ``vllm serve`` or ``trtllm-serve`` flags (``sizing.runtime``).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, List, Optional

import numpy as np

from compiler.analysis.disaggregated import (Link, Pool, is_steady, link_of, pool_model, simulate_disaggregated,
                                             simulate_prefill_pool)
from compiler.analysis.prefix import prefix_hook, prefix_model_of
from compiler.analysis.serving import (ServeConfig, ServeResult, StepTable, config_of, sample_requests,
                                       serve_block, simulate, with_rate)
from compiler.errors import ConfigError
from compiler.perf.hardware import hardware_by_name
from compiler.perf.memory import kv_bytes_per_token, weights_bytes

__all__ = ["SizingConfig", "Candidate", "Sizer", "candidates", "search", "exhaustive", "pareto",
           "launch_commands", "sizing_section", "MODES", "RUNTIMES"]

MODES = ("colocated", "disaggregated")
RUNTIMES = ("vllm", "trtllm")
GB = 1e9


@dataclass
class SizingConfig:
    """``sizing.*`` (search=sizing; compiler/driver/sizing.py). Lists are the search grid."""
    hardware: Optional[List[str]] = None      # device kinds (conf/hardware names); null = the run's
    tp: List[int] = field(default_factory=lambda: [1, 2, 4, 8])
    pp: List[int] = field(default_factory=lambda: [1])
    max_num_seqs: List[int] = field(default_factory=lambda: [64, 256])
    modes: List[str] = field(default_factory=lambda: ["colocated", "disaggregated"])
    max_devices: int = 8                      # GPUs of the whole deployment at most
    requests: int = 300                       # simulated requests per candidate
    prices: Dict[str, float] = field(default_factory=dict)   # USD per GPU-hour, overriding the hardware's
    runtime: str = "vllm"                     # launch settings for: vllm | trtllm
    model_id: Optional[str] = None            # the model's path / Hugging Face id in the launch command


def check_sizing(s: Mapping) -> None:
    """Range checks of ``sizing.*`` (compiler/driver/config.py)."""
    for k in ("tp", "pp", "max_num_seqs"):
        v = list(s.get(k) or [])
        if not v or any(int(x) != x or x < 1 for x in v):
            raise ConfigError(f"sizing.{k}={v!r} must be a non-empty list of positive integers, e.g. [1, 2, 4].")
    bad = [m for m in (s.get("modes") or []) if m not in MODES]
    if bad or not s.get("modes"):
        raise ConfigError(f"sizing.modes={s.get('modes')!r}: use a non-empty list of {', '.join(MODES)}.")
    if int(s.get("max_devices") or 0) < 1 or int(s.get("requests") or 0) < 1:
        raise ConfigError("sizing.max_devices and sizing.requests must be positive integers.")
    if s.get("runtime") not in RUNTIMES:
        raise ConfigError(f"sizing.runtime={s.get('runtime')!r}: use one of {', '.join(RUNTIMES)}.")
    for k, v in (s.get("prices") or {}).items():
        if not (isinstance(v, (int, float)) and v > 0):
            raise ConfigError(f"sizing.prices.{k}={v!r} must be a positive price in US dollars per GPU-hour.")


@dataclass(frozen=True)
class Candidate:
    mode: str
    hardware: str
    tp: int
    pp: int
    instances: int
    max_num_seqs: int
    devices: int
    cost_per_hour: float
    decode_hardware: str = ""
    decode_tp: int = 0
    decode_pp: int = 0
    decode_instances: int = 0

    @property
    def key(self) -> tuple:
        return (round(self.cost_per_hour, 9), self.devices, self.mode, self.hardware, self.tp, self.pp,
                self.instances, self.decode_hardware, self.decode_tp, self.decode_pp, self.decode_instances,
                self.max_num_seqs)

    def label(self) -> str:
        if self.mode == "colocated":
            return f"{self.instances}x {self.hardware} tp{self.tp}pp{self.pp} seqs{self.max_num_seqs}"
        return (f"P {self.instances}x {self.hardware} tp{self.tp}pp{self.pp} + D {self.decode_instances}x "
                f"{self.decode_hardware} tp{self.decode_tp}pp{self.decode_pp} seqs{self.max_num_seqs}")


class Sizer:
    """Simulates candidates. ``pool(kind, tp, pp)`` gives a :class:`compiler.analysis.disaggregated.
    PoolModel` or None (the plan cannot run); ``link(kind_p, kind_d)`` the KV link."""

    def __init__(self, cfg: ServeConfig, *, pool: Callable, link: Callable[[str, str], Link],
                 kv_bytes_per_token: float, layers: int, block_size: int, prefix: Callable | None = None):
        self.cfg, self._pool, self._link = cfg, pool, link
        self.kv_tok, self.layers, self.bs, self.prefix = kv_bytes_per_token, layers, block_size, prefix
        self.arrival, prompt, self.out = sample_requests(cfg)
        self.cached = np.zeros_like(prompt)
        if prefix is not None:
            prompt, self.cached, _ = prefix(prompt, self.out)
        self.prompt = prompt
        self.longest = int((prompt + self.out).max())
        self._models: dict = {}
        self._tables: dict = {}
        self._np_min: dict = {}
        self.simulations = 0

    def model(self, kind: str, tp: int, pp: int):
        k = (kind, tp, pp)
        if k not in self._models:
            m = self._pool(kind, tp, pp)
            if m is not None and m.kv_blocks < -(-self.longest // self.bs):
                m = None          # the longest request does not fit
            self._models[k] = m
        return self._models[k]

    def table(self, kind: str, tp: int, pp: int, role: str) -> StepTable:
        k = (kind, tp, pp, role)
        if k not in self._tables:
            st = self.model(kind, tp, pp).step_time
            ctx = self.longest if self.prefix is not None else None
            cfg = self.cfg
            if role == "prefill":
                self._tables[k] = StepTable(st, 1, self.longest, int(self.prompt.max()), chunk=ctx)
            elif role == "decode":
                self._tables[k] = StepTable(st, 512, self.longest, 2)
            else:
                chunk = cfg.chunk_tokens if cfg.chunked_prefill else ctx
                self._tables[k] = StepTable(st, 512, self.longest,
                                            cfg.chunk_tokens if cfg.chunked_prefill else self.longest, chunk=chunk)
        return self._tables[k]

    def np_min(self, kind: str, tp: int, pp: int, limit: int) -> int:
        """Fewest prefill instances whose TTFT attainment alone reaches the target (limit + 1: none)."""
        k = (kind, tp, pp)
        if k in self._np_min:
            return self._np_min[k]
        cfg = self.cfg
        best = limit + 1
        if cfg.slo_ttft_s is None:
            best = 1
        else:
            tab = self.table(kind, tp, pp, "prefill")
            for n in range(1, limit + 1):
                end = simulate_prefill_pool(tab, self.arrival, self.prompt - self.cached, self.cached,
                                            instances=n, max_batched_tokens=cfg.max_batched_tokens)[0]
                if np.mean(end - self.arrival <= cfg.slo_ttft_s) >= cfg.slo_target:
                    best = n
                    break
        self._np_min[k] = best
        return best

    def evaluate(self, c: Candidate) -> ServeResult:
        self.simulations += 1
        cfg = replace(self.cfg, max_num_seqs=c.max_num_seqs)
        if c.mode == "colocated":
            m = self.model(c.hardware, c.tp, c.pp)
            return simulate(None, with_rate(cfg, cfg.rate / c.instances), kv_blocks=m.kv_blocks,
                            block_size=self.bs, table=self.table(c.hardware, c.tp, c.pp, "coloc"),
                            prefix=self.prefix)
        dm = self.model(c.decode_hardware, c.decode_tp, c.decode_pp)
        return simulate_disaggregated(
            cfg, prefill=Pool(c.instances, c.tp, c.pp, c.hardware),
            decode=Pool(c.decode_instances, c.decode_tp, c.decode_pp, c.decode_hardware),
            prefill_table=self.table(c.hardware, c.tp, c.pp, "prefill"),
            decode_table=self.table(c.decode_hardware, c.decode_tp, c.decode_pp, "decode"),
            link=self._link(c.hardware, c.decode_hardware), kv_bytes_per_token=self.kv_tok, layers=self.layers,
            decode_kv_blocks=dm.kv_blocks, block_size=self.bs, prefix=self.prefix).result

    def feasible(self, r: ServeResult) -> bool:
        """Attainment reaches the target and the run is steady (disaggregated.sustained)."""
        return r.slo_attainment is not None and r.slo_attainment >= self.cfg.slo_target and is_steady(r)


def candidates(sizer: Sizer, *, kinds: list[str], tps: list[int], pps: list[int], seqs: list[int],
               modes: list[str], max_devices: int, price: Callable[[str], float]) -> list[Candidate]:
    """Every candidate of the grid whose plans run and fit, in search order (cost, then key)."""
    plans = [(k, t, p) for k in kinds for t in sorted(set(tps)) for p in sorted(set(pps))
             if t * p <= max_devices and sizer.model(k, t, p) is not None]
    out = []
    for k, t, p in plans:
        per = t * p
        for m in sorted(set(seqs)):
            if "colocated" in modes:
                for r in range(1, max_devices // per + 1):
                    out.append(Candidate("colocated", k, t, p, r, m, r * per, r * per * price(k)))
            if "disaggregated" in modes:
                for k2, t2, p2 in plans:
                    per2 = t2 * p2
                    for n_p in range(1, (max_devices - per2) // per + 1):
                        for n_d in range(1, (max_devices - n_p * per) // per2 + 1):
                            out.append(Candidate("disaggregated", k, t, p, n_p, m, n_p * per + n_d * per2,
                                                 n_p * per * price(k) + n_d * per2 * price(k2), k2, t2, p2, n_d))
    out.sort(key=lambda c: c.key)
    return out


def _pick(group: list[tuple[Candidate, ServeResult]]) -> tuple[Candidate, ServeResult]:
    return min(group, key=lambda cr: (-cr[1].slo_attainment, cr[0].key))


def search(sizer: Sizer, cands: list[Candidate], max_devices: int) -> dict[str, Any]:
    """The cheapest feasible candidate (module doc), the simulated ones and the pruned count."""
    evaluated: list[tuple[Candidate, ServeResult]] = []
    pruned = 0
    i = 0
    while i < len(cands):
        j = i
        while j < len(cands) and round(cands[j].cost_per_hour, 9) == round(cands[i].cost_per_hour, 9):
            j += 1
        ok = []
        for c in cands[i:j]:
            if c.mode == "disaggregated" and c.instances < sizer.np_min(c.hardware, c.tp, c.pp,
                                                                        max_devices // (c.tp * c.pp)):
                pruned += 1
                continue
            r = sizer.evaluate(c)
            evaluated.append((c, r))
            if sizer.feasible(r):
                ok.append((c, r))
        if ok:
            best = _pick(ok)
            return {"best": best, "evaluated": evaluated, "pruned": pruned}
        i = j
    return {"best": None, "evaluated": evaluated, "pruned": pruned}


def exhaustive(sizer: Sizer, cands: list[Candidate]) -> tuple[Candidate, ServeResult] | None:
    """Every candidate simulated; the cheapest feasible (ties as :func:`search`)."""
    ok = [(c, r) for c in cands for r in [sizer.evaluate(c)] if sizer.feasible(r)]
    if not ok:
        return None
    cheapest = min(round(c.cost_per_hour, 9) for c, _ in ok)
    return _pick([cr for cr in ok if round(cr[0].cost_per_hour, 9) == cheapest])


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other beats on both axes (lower cost, higher goodput), by cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -1.0
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def launch_commands(c: Candidate, *, runtime: str, model_id: str, serve: ServeConfig, block_size: int,
                    utilization: float, prefix: bool, kv_dtype: str | None) -> list[str]:
    """The chosen configuration as engine command lines (one per pool; run ``instances`` of each
    behind a router)."""
    extra_v = ([f"--block-size {block_size}"] + (["--enable-prefix-caching"] if prefix else [])
               + (["--enable-chunked-prefill"] if serve.chunked_prefill else [])
               + ([f"--kv-cache-dtype {kv_dtype}"] if kv_dtype in ("fp8",) else []))

    def vllm(tp, pp, role=None):
        parts = [f"vllm serve {model_id}", f"--tensor-parallel-size {tp}", f"--pipeline-parallel-size {pp}",
                 f"--max-num-seqs {c.max_num_seqs}", f"--max-num-batched-tokens {serve.max_batched_tokens}",
                 f"--gpu-memory-utilization {utilization:g}"] + extra_v
        if role:
            parts.append("--kv-transfer-config '{\"kv_connector\":\"NixlConnector\",\"kv_role\":\"kv_both\"}'")
        return " ".join(parts)

    def trt(tp, pp):
        return (f"trtllm-serve {model_id} --tp_size {tp} --pp_size {pp} --max_batch_size {c.max_num_seqs} "
                f"--max_num_tokens {serve.max_batched_tokens} --kv_cache_free_gpu_memory_fraction {utilization:g}")
    if c.mode == "colocated":
        cmd = vllm(c.tp, c.pp) if runtime == "vllm" else trt(c.tp, c.pp)
        return [f"# {c.instances} replica(s) on {c.hardware}, each:", cmd]
    if runtime == "vllm":
        return [f"# prefill pool: {c.instances} instance(s) on {c.hardware}, each:", vllm(c.tp, c.pp, "prefill"),
                f"# decode pool: {c.decode_instances} instance(s) on {c.decode_hardware}, each:",
                vllm(c.decode_tp, c.decode_pp, "decode"),
                "# and a proxy routing each request prefill -> decode (vLLM's disaggregated-serving examples)"]
    cfg = {"context_servers": {"num_instances": c.instances, "tensor_parallel_size": c.tp,
                               "pipeline_parallel_size": c.pp},
           "generation_servers": {"num_instances": c.decode_instances, "tensor_parallel_size": c.decode_tp,
                                  "pipeline_parallel_size": c.decode_pp, "max_batch_size": c.max_num_seqs}}
    return [f"# disagg_config.yaml: {json.dumps(cfg, sort_keys=True)}",
            f"trtllm-serve disaggregated -c disagg_config.yaml   # model {model_id}"]


def _row(c: Candidate, r: ServeResult, rate: float) -> dict[str, Any]:
    return {**{k: v for k, v in asdict(c).items() if not (c.mode == "colocated" and k.startswith("decode_"))},
            "label": c.label(), "slo_attainment": r.slo_attainment, "goodput_req_s": rate * (r.slo_attainment or 0.0),
            "ttft_p99_s": r.ttft_p99_s, "tpot_p99_s": r.tpot_p99_s, "throughput_tok_s": r.throughput_tok_s * (
                c.instances if c.mode == "colocated" else 1)}


def sizing_section(rc) -> dict[str, Any]:
    """``sizing`` of report.json for a run with ``search=sizing`` (module doc)."""
    cfg, wl, g = rc.cfg, rc.workload, rc.graph
    s = dict(cfg.get("sizing") or {})
    check_sizing(s)
    sb = serve_block(cfg, wl)
    sb["requests"] = int(s["requests"])
    if sb.get("rate") is None:
        raise ConfigError("search=sizing needs the target load: set serve.rate (requests/s), e.g. serve.rate=20.")
    slo = cfg.get("slo") or {}
    if slo.get("ttft_ms") is None and slo.get("tpot_ms") is None:
        raise ConfigError("search=sizing needs SLOs to meet: set slo.ttft_ms and/or slo.tpot_ms.")
    scfg = config_of(sb, slo)
    kv_tok = kv_bytes_per_token(g)
    if not kv_tok:
        raise ConfigError("search=sizing sizes a generative model with a KV cache; this model has none.")
    kinds = list(s.get("hardware") or [rc.hardware.name])
    prices = {k: float(v) for k, v in (s.get("prices") or {}).items()}
    hws = {k: (rc.hardware if k == rc.hardware.name else hardware_by_name(k)) for k in kinds}

    def price(k):
        if k in prices:
            return prices[k]
        if k == rc.hardware.name and ((cfg.get("hardware") or {}).get("price") or {}).get("usd_per_gpu_hour"):
            return float(cfg["hardware"]["price"]["usd_per_gpu_hour"])
        p = hws[k].price_usd_per_hour
        if p is None:
            raise ConfigError(f"search=sizing: hardware {k!r} has no list price; give one with +sizing.prices.{k}=<USD "
                              f"per GPU-hour> (or add price.usd_per_gpu_hour and its source to conf/hardware/{k}.yaml).")
        return p
    for k in kinds:
        price(k)
    mem = dict(cfg.get("memory") or {})
    util = float(mem.get("gpu_utilization") or 1.0)
    reserve = float(mem.get("runtime_reserve_gb") or 0.0) * GB
    act = float(rc.schedule.activation_peak(1, int(scfg.prompt.upper), 0)[0])
    bs = int((cfg.get("kv") or {}).get("block_size") or 16)
    w = weights_bytes(g)
    pfx = dict(sb.get("prefix") or {})
    hook = prefix_hook(prefix_model_of(pfx, scfg.seed, bs)) if pfx.get("enabled") else None
    cache: dict = {}

    def pool(kind, tp, pp):
        try:
            return pool_model(rc, Pool(1, tp, pp, kind), weights_bytes=w, kv_bytes_per_token=kv_tok, act_bytes=act,
                              reserve_bytes=reserve, utilization=util, block_size=bs, cache=cache)
        except ConfigError:
            return None              # a plan the model or the node cannot run
    d = dict(sb.get("disaggregated") or {})
    sizer = Sizer(scfg, pool=pool, link=lambda a, b: link_of(d, hws[a], hws[b]), kv_bytes_per_token=kv_tok,
                  layers=rc.dims.layers if rc.dims else 1, block_size=bs, prefix=hook)
    max_dev = int(s["max_devices"])
    cands = candidates(sizer, kinds=kinds, tps=list(s["tp"]), pps=list(s["pp"]), seqs=list(s["max_num_seqs"]),
                       modes=list(s["modes"]), max_devices=max_dev, price=price)
    if not cands:
        raise ConfigError(f"search=sizing: no plan of sizing.tp={list(s['tp'])} pp={list(s['pp'])} runs this model "
                          f"on {', '.join(kinds)} within sizing.max_devices={max_dev} (the weights and the longest "
                          "request's KV must fit); allow larger tp, more devices or other hardware.")
    res = search(sizer, cands, max_dev)
    rate = scfg.rate
    rows = [_row(c, r, rate) for c, r in res["evaluated"]]
    front = pareto([(x["cost_per_hour"], x["goodput_req_s"]) for x in rows])
    out: dict[str, Any] = {
        "rate": rate, "slo": {"ttft_s": scfg.slo_ttft_s, "tpot_s": scfg.slo_tpot_s, "target": scfg.slo_target},
        "grid": {"hardware": kinds, "tp": list(s["tp"]), "pp": list(s["pp"]), "max_num_seqs": list(s["max_num_seqs"]),
                 "modes": list(s["modes"]), "max_devices": max_dev, "requests": int(s["requests"])},
        "prices_usd_per_gpu_hour": {k: price(k) for k in kinds},
        "price_sources": {k: ("sizing.prices" if k in prices else hws[k].price_source) for k in kinds},
        "candidates": len(cands), "simulated": len(rows), "pruned": res["pruned"],
        "front": [rows[i] for i in front],
    }
    if res["best"] is None:
        out["best"] = None
        out["note"] = (f"no candidate meets the SLOs at {rate:g} requests/s within {max_dev} devices: raise "
                       "sizing.max_devices, add hardware kinds, or relax slo.*.")
        return out
    c, r = res["best"]
    mid = s.get("model_id") or str((cfg.get("model") or {}).get("name") or "MODEL")
    out["best"] = _row(c, r, rate) | {"launch": {"runtime": s["runtime"], "commands": launch_commands(
        c, runtime=s["runtime"], model_id=mid, serve=scfg, block_size=bs, utilization=util,
        prefix=hook is not None, kv_dtype=(cfg.get("kv") or {}).get("dtype"))}}
    return out
