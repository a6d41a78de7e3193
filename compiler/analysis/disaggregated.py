"""Disaggregated serving: prefill and decode on separate pools, the KV cache shipped between them.

The systems modelled: DistServe (Zhong et al., OSDI 2024), Splitwise (Patel et al., ISCA 2024),
and the xPyD deployments of NVIDIA Dynamo and llm-d. A request arrives at the **prefill pool**,
waits FCFS for the earliest free prefill instance, is prefilled there (in a batch of the requests
queued at that moment, up to ``serve.max_batched_tokens`` new tokens) and emits its first token
(TTFT ends). Its KV cache — the prompt's tokens in the cache's stored format (``kv.dtype``
applied), ``prompt x kv_bytes_per_token`` bytes — then crosses the link to the **decode pool**:

* wire time = ``bytes / (bandwidth x lanes)``; the KV is sharded over the prefill instance's
  devices and each device sends its shard on its own link, so ``lanes`` = min(devices per prefill
  instance, devices per decode instance); then ``latency`` per transfer;
* a prefill instance's links carry one transfer at a time (FIFO, in prefill order): a slow link is
  a queue, and its capacity (bandwidth / KV bytes per request) bounds the pool's rate;
* overlapped (``serve.disaggregated.overlap_transfer``, the default: layer-by-layer sends while the
  prefill runs, as Splitwise and DistServe do): a transfer may start with its prefill and ends no
  earlier than ``prefill end + wire / layers`` (the last layer goes after), so on an idle link only
  ``max(wire / layers, wire - prefill time)`` shows; not overlapped: it starts at the prefill's end.

The decode pool receives requests in the order their KV lands, round-robin over its instances
(so the instances are independent); each instance is a continuous-batching decode engine: FCFS
admission while it has fewer than ``serve.max_num_seqs`` sequences and free KV blocks for the
request's whole length (reserved on admission: a decode-only instance never preempts), one token
per running sequence per step at the cost model's decode step time ``T(b, mean context, 1)``.
TPOT = (finish − first token) / (output − 1) includes the transfer and the decode queueing.

Beside it, the **co-located** pool of the same GPU count: ``N // (tp x pp)`` replicas of the run's
parallel plan, each the continuous-batching simulation of :mod:`compiler.analysis.serving` at
``rate / replicas`` (a Poisson stream split at random stays Poisson). **Goodput** (DistServe's
metric): the largest rate whose SLO attainment (TTFT and TPOT both met) reaches
``serve.slo_target``, per GPU.

**Sustained**: a finite run of requests can "meet" a loose TPOT SLO far past the pools' capacity
(the backlog's wait is spread over each request's output tokens and the run ends before it
matters), so a rate counts as met only when the run is also steady: the mean end-to-end latency of
the last quarter of the requests (in arrival order) is at most :data:`STEADY_RATIO` times that of
the second quarter — a queue that grows without bound fails it, noise does not. The same rule
applies to the co-located pool (:func:`sustained`).

Per pool the step times come from the cost model of the pool's hardware and parallel plan
(:func:`compiler.analysis.parallel.parallel_step_time` for tp/pp > 1); per device the pool holds
``weights / (tp x pp)`` of the weights (replicated norms and embeddings ignored) and the KV heads of
its tensor-parallel shard.
"""
from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from compiler.analysis.capacity import kv_budget
from compiler.analysis.parallel import (ParallelPlan, check_plan, kv_fraction, parallel_step_time)
from compiler.analysis.serving import (ServeConfig, ServeResult, StepTable, _result, config_of,
                                       cost_model_step_time, max_rate_meeting_slo, sample_requests,
                                       simulate, with_rate)
from compiler.errors import ConfigError
from compiler.perf.cost import CostModel
from compiler.perf.hardware import hardware_by_name

__all__ = ["sustained", "is_steady", "STEADY_RATIO", "check_disaggregated", "Pool", "Link", "transfer_times", "link_schedule", "simulate_prefill_pool", "simulate_decode_pool",
           "simulate_disaggregated", "disaggregated_section", "link_of", "DEFAULT_LINK_LATENCY_S"]

STEADY_RATIO = 1.25
DEFAULT_LINK_LATENCY_S = 10e-6     # the per-collective floor hardware YAMLs cite for NVLink (nccl#1259)
_GB = 1e9


@dataclass(frozen=True)
class Pool:
    """``instances`` engine instances of ``tp`` x ``pp`` devices of ``hardware``."""
    instances: int
    tp: int = 1
    pp: int = 1
    hardware: str = ""

    def __post_init__(self):
        for k in ("instances", "tp", "pp"):
            v = getattr(self, k)
            if int(v) != v or v < 1:
                raise ConfigError(f"a serving pool's {k}={v!r} must be a positive integer.")

    @property
    def per_instance(self) -> int:
        return self.tp * self.pp

    @property
    def devices(self) -> int:
        return self.instances * self.tp * self.pp


@dataclass(frozen=True)
class Link:
    """The KV-transfer link: ``bandwidth`` bytes/s per device and direction, ``latency_s`` per
    transfer, ``overlapped`` with the prefill or not."""
    name: str
    bandwidth: float
    latency_s: float
    overlapped: bool = True


def transfer_times(prompt, prefill_s, *, kv_bytes_per_token: float, link: Link, lanes: int,
                   layers: int) -> np.ndarray:
    """Seconds from a prefill's end until its KV cache is on the decode instance (module doc)."""
    if link.bandwidth <= 0:
        raise ConfigError(f"the KV-transfer link {link.name!r} has no bandwidth; set "
                          "serve.disaggregated.link_bandwidth_gbs (e.g. 50 for 400 Gb/s InfiniBand).")
    wire = np.asarray(prompt, float) * kv_bytes_per_token / (link.bandwidth * max(int(lanes), 1))
    if link.overlapped:
        wire = np.maximum(wire / max(int(layers), 1), wire - np.asarray(prefill_s, float))
    return link.latency_s + wire


def link_schedule(end: np.ndarray, dur: np.ndarray, inst: np.ndarray, wire: np.ndarray, *, link: Link,
                  layers: int) -> np.ndarray:
    """Times the KV caches are on the decode side: per prefill instance one FIFO link (module doc)."""
    ready = np.empty(len(end))
    free: dict[int, float] = {}
    L = max(int(layers), 1)
    for i in np.lexsort((np.arange(len(end)), end)).tolist():
        k = int(inst[i])
        start = end[i] - dur[i] if link.overlapped else end[i]
        begin = max(free.get(k, 0.0), start)
        done = begin + wire[i]
        if link.overlapped:
            done = max(done, end[i] + wire[i] / L)
        free[k] = done
        ready[i] = done + link.latency_s
    return ready


def simulate_prefill_pool(tab: StepTable, arrival: np.ndarray, new: np.ndarray, ctx: np.ndarray, *,
                          instances: int, max_batched_tokens: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """FCFS over ``instances`` prefill instances: (end time, the batch's duration, the instance,
    batches, summed batch sizes). A free instance takes every queued request up to
    ``max_batched_tokens`` new tokens (at least one); ``new`` tokens are computed over ``ctx`` cached
    ones (a prefix hit)."""
    n = len(arrival)
    end = np.empty(n)
    dur = np.empty(n)
    inst = np.empty(n, np.int64)
    free = [(0.0, k) for k in range(int(instances))]
    heapq.heapify(free)
    nl, cl, al = new.tolist(), ctx.tolist(), arrival.tolist()
    i = batches = batch_sum = 0
    while i < n:
        f, k = heapq.heappop(free)
        t = max(f, al[i])
        j, tokens, segs = i, 0, []
        while j < n and al[j] <= t and (j == i or tokens + nl[j] <= max_batched_tokens):
            segs.append((j, nl[j], cl[j]))
            tokens += nl[j]
            j += 1
        dt = tab.combine(0.0, tab.prefill_list(segs))
        end[i:j] = t + dt
        dur[i:j] = dt
        inst[i:j] = k
        heapq.heappush(free, (t + dt, k))
        batches += 1
        batch_sum += j - i
        i = j
    return end, dur, inst, batches, batch_sum


def _decode_instance(tab: StepTable, ready: np.ndarray, ctx0: np.ndarray, steps_left: np.ndarray, *,
                     kv_blocks: int, block_size: int, max_num_seqs: int) -> tuple[np.ndarray, int, int, int]:
    """One decode-only continuous-batching instance; requests sorted by ``ready``. Returns (finish
    times, steps, summed batch sizes, largest batch)."""
    n = len(ready)
    finish = np.empty(n)
    hold = -(-(ctx0 + steps_left) // block_size)
    done = np.zeros(n, np.int64)
    waiting: deque[int] = deque()
    running: list[int] = []
    free = int(kv_blocks)
    t = 0.0
    nxt = fin = steps = batch_sum = batch_max = 0
    while fin < n:
        while nxt < n and ready[nxt] <= t:
            waiting.append(nxt)
            nxt += 1
        while waiting and len(running) < max_num_seqs and hold[waiting[0]] <= free:
            r = waiting.popleft()
            free -= int(hold[r])
            running.append(r)
        if not running:
            t = float(ready[nxt])
            continue
        R = np.asarray(running, np.int64)
        kmax = int((steps_left[R] - done[R]).min())
        ctx = float((ctx0[R] + done[R]).mean())
        ts = tab.decode_times(np.full(kmax, len(R)), ctx + np.arange(kmax, dtype=float))
        cum = np.cumsum(ts)
        if not waiting and nxt < n:     # an arrival that could be admitted ends the run of steps
            kmax = min(kmax, int(np.searchsorted(cum, ready[nxt] - t)) + 1)
        t += float(cum[kmax - 1])
        done[R] += kmax
        steps += kmax
        batch_sum += len(R) * kmax
        batch_max = max(batch_max, len(R))
        ended = R[done[R] >= steps_left[R]]
        if len(ended):
            finish[ended] = t
            free += int(hold[ended].sum())
            fin += len(ended)
            gone = set(ended.tolist())
            running = [r for r in running if r not in gone]
    return finish, steps, batch_sum, batch_max


def simulate_decode_pool(tab: StepTable, ready: np.ndarray, ctx0: np.ndarray, steps_left: np.ndarray, *,
                         instances: int, kv_blocks: int, block_size: int,
                         max_num_seqs: int) -> tuple[np.ndarray, int, int, int]:
    """Round-robin over ``instances`` decode instances in the order the requests become ready;
    requests with no decode step left finish when ready. (finish, steps, batch sum, largest batch)."""
    n = len(ready)
    finish = np.array(ready, float)
    need = -(-(ctx0 + steps_left) // block_size)
    if n and int(need.max()) > kv_blocks:
        raise ConfigError(f"a request of {int((ctx0 + steps_left).max())} tokens needs {int(need.max())} KV "
                          f"blocks but a decode instance holds {kv_blocks}: raise "
                          "serve.disaggregated.decode_tp, use a larger decode_hardware or shorten serve lengths.")
    go = np.flatnonzero(steps_left > 0)
    go = go[np.argsort(ready[go], kind="stable")]
    steps = batch_sum = batch_max = 0
    for k in range(int(instances)):
        mine = go[k::int(instances)]
        if not len(mine):
            continue
        f, s, b, m = _decode_instance(tab, ready[mine], ctx0[mine], steps_left[mine], kv_blocks=kv_blocks,
                                      block_size=block_size, max_num_seqs=max_num_seqs)
        finish[mine] = f
        steps += s
        batch_sum += b
        batch_max = max(batch_max, m)
    return finish, steps, batch_sum, batch_max


def is_steady(r: ServeResult) -> bool:
    """The run's backlog does not grow (module doc: sustained)."""
    e2e = np.asarray(r.e2e_s, float)
    q = len(e2e) // 4
    if q < 2:
        return True
    second, last = float(e2e[q:2 * q].mean()), float(e2e[3 * q:].mean())
    return last <= STEADY_RATIO * max(second, 1e-12)


def sustained(r: ServeResult) -> ServeResult:
    """``r`` with SLO attainment 0 when the run is not steady (module doc)."""
    if r.slo_attainment is None or is_steady(r):
        return r
    return replace(r, slo_attainment=0.0)


@dataclass
class DisaggResult:
    result: ServeResult
    transfer_s: np.ndarray
    transfer_bytes: np.ndarray
    prefill_batches: int
    prefill_mean_batch: float


def simulate_disaggregated(cfg: ServeConfig, *, prefill: Pool, decode: Pool, prefill_table: StepTable,
                           decode_table: StepTable, link: Link, kv_bytes_per_token: float, layers: int,
                           decode_kv_blocks: int, block_size: int = 16,
                           prefix: Callable | None = None) -> DisaggResult:
    """The whole disaggregated system at ``cfg.rate`` (module doc)."""
    arrival, prompt, out = sample_requests(cfg)
    cached = np.zeros_like(prompt)
    if prefix is not None:
        prompt, cached, _ = prefix(prompt, out)
    end, dur, inst, batches, bsum = simulate_prefill_pool(prefill_table, arrival, prompt - cached, cached,
                                                          instances=prefill.instances,
                                                          max_batched_tokens=cfg.max_batched_tokens)
    if link.bandwidth <= 0:
        raise ConfigError(f"the KV-transfer link {link.name!r} has no bandwidth; set "
                          "serve.disaggregated.link_bandwidth_gbs (e.g. 50 for 400 Gb/s InfiniBand).")
    lanes = min(prefill.per_instance, decode.per_instance)
    go = out > 1
    wire = prompt * kv_bytes_per_token / (link.bandwidth * lanes)
    ready = end.copy()
    ready[go] = link_schedule(end[go], dur[go], inst[go], wire[go], link=link, layers=layers)
    xfer = ready - end
    finish, steps, dsum, dmax = simulate_decode_pool(decode_table, ready, prompt + 1, out - 1,
                                                     instances=decode.instances, kv_blocks=decode_kv_blocks,
                                                     block_size=block_size, max_num_seqs=cfg.max_num_seqs)
    res = _result("disaggregated", cfg, arrival, end, finish, out, 0, steps, dsum, dmax, decode_kv_blocks)
    return DisaggResult(res, xfer, prompt * kv_bytes_per_token, batches, bsum / max(batches, 1))


# --------------------------------------------------------------------------- the report section

def link_of(d: Mapping, hw_p, hw_d) -> Link:
    """The KV-transfer link from ``serve.disaggregated.link_*`` or the pools' interconnects (the
    slower one when the pools' hardware differ)."""
    ics = [hw_p.interconnect, hw_d.interconnect]
    bw = d.get("link_bandwidth_gbs")
    lat = d.get("link_latency_us")
    slow = min(ics, key=lambda ic: ic.bandwidth)
    name = "serve.disaggregated.link_bandwidth_gbs" if bw is not None else slow.name
    bandwidth = float(bw) * _GB if bw is not None else slow.bandwidth
    if lat is not None:
        latency = float(lat) * 1e-6
    else:
        lats = [ic.latency_s for ic in ics if ic.latency_s is not None]
        latency = max(lats) if lats else DEFAULT_LINK_LATENCY_S
    return Link(name, bandwidth, latency, bool(d.get("overlap_transfer", True)))


@dataclass
class PoolModel:
    """A pool's hardware, step-time table and KV blocks per instance."""
    pool: Pool
    hw: Any
    step_time: Callable
    kv_blocks: int


def pool_model(rc, pool: Pool, *, weights_bytes: float, kv_bytes_per_token: float, act_bytes: float,
               reserve_bytes: float, utilization: float, block_size: int, cache: dict | None = None) -> PoolModel:
    """Hardware, step time and KV blocks of one pool instance (module doc: per-device memory)."""
    key = (pool.hardware, pool.tp, pool.pp)
    if cache is not None and key in cache:
        hw, st = cache[key]
    else:
        hw = rc.hardware if pool.hardware in ("", None, rc.hardware.name) else hardware_by_name(pool.hardware)
        cm = rc.cost if hw is rc.hardware else CostModel(rc.graph, hw)
        plan = ParallelPlan(tp=pool.tp, pp=pool.pp)
        if plan.devices > 1:
            if rc.dims is None:
                raise ConfigError("serve.disaggregated: a pool's tp/pp > 1 needs a transformer described by a "
                                  "Hugging Face config (model.config); this model has none — keep *_tp=*_pp=1.")
            check_plan(plan, rc.dims, hw)
            st = parallel_step_time(cm, plan, rc.dims)
        else:
            st = cost_model_step_time(cm)
        if cache is not None:
            cache[key] = (hw, st)
    kv_dev = kv_bytes_per_token * (kv_fraction(rc.dims.kv_heads, pool.tp) if rc.dims else 1.0) / pool.pp
    budget = kv_budget(hw.memory_bytes, weights_bytes / pool.per_instance, act_bytes, reserve_bytes, utilization)
    blocks = int(budget // (kv_dev * block_size)) if budget > 0 else 0
    return PoolModel(pool, hw, st, blocks)


def check_disaggregated(d: Mapping) -> None:
    """Range checks of ``serve.disaggregated.*`` (compiler/driver/config.py)."""
    if not d.get("enabled"):
        return
    for side in ("prefill", "decode"):
        _pool_of(d, side, "")
        name = d.get(f"{side}_hardware")
        if name:
            hardware_by_name(str(name))
    for k in ("link_bandwidth_gbs", "link_latency_us"):
        v = d.get(k)
        if v is not None and not v > 0:
            raise ConfigError(f"serve.disaggregated.{k}={v!r} must be positive (or null: the hardware's interconnect).")


def _pool_of(d: Mapping, side: str, hw_name: str) -> Pool:
    return Pool(int(d.get(f"{side}_instances") or 1), int(d.get(f"{side}_tp") or 1), int(d.get(f"{side}_pp") or 1),
                str(d.get(f"{side}_hardware") or hw_name))


_ROW = ("slo_attainment", "ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s", "throughput_tok_s")


def _row(r: ServeResult, replicas: int = 1) -> dict:
    """Figures of the system: a co-located replica's throughput times the replicas."""
    d = {k: getattr(r, k) for k in _ROW}
    d["throughput_tok_s"] *= replicas
    return d


def disaggregated_section(rc, serve: Mapping, slo: Mapping | None, *, weights_bytes: float,
                          kv_bytes_per_token: float, act_bytes: float, reserve_bytes: float, utilization: float,
                          block_size: int, coloc_step: Callable, coloc_kv_blocks: int, coloc_tp: int = 1,
                          coloc_pp: int = 1, prefix: Callable | None = None) -> dict:
    """``serve.disaggregated`` of report.json: the disaggregated system and the co-located pool of
    the same GPU count at ``serve.rate``, their goodput per GPU, a rate sweep."""
    d = dict(serve.get("disaggregated") or {})
    cfg = config_of(serve, slo)
    hw_name = rc.hardware.name
    pools = {side: _pool_of(d, side, hw_name) for side in ("prefill", "decode")}
    cache: dict = {}
    models = {side: pool_model(rc, p, weights_bytes=weights_bytes, kv_bytes_per_token=kv_bytes_per_token,
                               act_bytes=act_bytes, reserve_bytes=reserve_bytes, utilization=utilization,
                               block_size=block_size, cache=cache) for side, p in pools.items()}
    for side, m in models.items():
        if m.kv_blocks < 1:
            raise ConfigError(f"serve.disaggregated: the {side} pool's weights do not leave KV memory on "
                              f"{m.hw.name} at {side}_tp={m.pool.tp} {side}_pp={m.pool.pp}; raise {side}_tp "
                              f"or pick a larger {side}_hardware.")
    link = link_of(d, models["prefill"].hw, models["decode"].hw)
    layers = rc.dims.layers if rc.dims else 1
    _, prompt, out = sample_requests(cfg)
    if prefix is not None:
        prompt = prefix(prompt, out)[0]
    longest = int((prompt + out).max())
    ctx_grid = longest if prefix is not None else None
    ptab = StepTable(models["prefill"].step_time, 1, longest, int(prompt.max()), chunk=ctx_grid)
    dtab = StepTable(models["decode"].step_time, cfg.max_num_seqs, longest, 2)
    total = pools["prefill"].devices + pools["decode"].devices
    per_rep = coloc_tp * coloc_pp
    replicas = total // per_rep
    if replicas < 1:
        raise ConfigError(f"serve.disaggregated: the pools hold {total} devices, fewer than one co-located "
                          f"replica of parallel.tp x parallel.pp = {per_rep}; add instances or lower parallel.*.")
    ctab = StepTable(coloc_step, cfg.max_num_seqs, longest, cfg.chunk_tokens if cfg.chunked_prefill else longest,
                     chunk=cfg.chunk_tokens if cfg.chunked_prefill else ctx_grid)

    def disagg(rate) -> DisaggResult:
        return simulate_disaggregated(with_rate(cfg, rate), prefill=pools["prefill"], decode=pools["decode"],
                                      prefill_table=ptab, decode_table=dtab, link=link,
                                      kv_bytes_per_token=kv_bytes_per_token, layers=layers,
                                      decode_kv_blocks=models["decode"].kv_blocks, block_size=block_size,
                                      prefix=prefix)

    def coloc(rate) -> ServeResult:      # the system at ``rate``: one replica at rate / replicas
        return simulate(None, with_rate(cfg, rate / replicas), kv_blocks=coloc_kv_blocks,
                        block_size=block_size, table=ctab, prefix=prefix)

    main = disagg(cfg.rate)
    co = coloc(cfg.rate)
    out_d: dict[str, Any] = {
        "prefill": {"instances": pools["prefill"].instances, "tp": pools["prefill"].tp, "pp": pools["prefill"].pp,
                    "hardware": models["prefill"].hw.name, "devices": pools["prefill"].devices,
                    "mean_batch": main.prefill_mean_batch},
        "decode": {"instances": pools["decode"].instances, "tp": pools["decode"].tp, "pp": pools["decode"].pp,
                   "hardware": models["decode"].hw.name, "devices": pools["decode"].devices,
                   "kv_blocks_per_instance": models["decode"].kv_blocks, "mean_batch": main.result.mean_batch},
        "devices": total,
        "link": {"name": link.name, "bandwidth_gbs": link.bandwidth / _GB, "latency_us": link.latency_s * 1e6,
                 "lanes": min(pools["prefill"].per_instance, pools["decode"].per_instance),
                 "overlapped": link.overlapped},
        "transfer": {"bytes_mean": float(main.transfer_bytes.mean()),
                     "time_mean_s": float(main.transfer_s.mean()),
                     "time_p99_s": float(np.percentile(main.transfer_s, 99))},
        "rate": cfg.rate,
        "at_rate": _row(main.result),
        "colocated": {"replicas": replicas, "tp": coloc_tp, "pp": coloc_pp, "devices": replicas * per_rep,
                      "hardware": rc.hardware.name, "at_rate": _row(co, replicas)},
        "slo": {"ttft_s": cfg.slo_ttft_s, "tpot_s": cfg.slo_tpot_s, "target": cfg.slo_target},
    }
    best_d = best_c = None
    if cfg.slo_ttft_s is not None or cfg.slo_tpot_s is not None:
        best_d, _ = max_rate_meeting_slo(lambda r: sustained(disagg(r).result), cfg, start=cfg.rate)
        best_c, _ = max_rate_meeting_slo(lambda r: sustained(coloc(r)), cfg, start=cfg.rate)
        out_d["goodput"] = {
            "disaggregated_req_s": best_d, "colocated_req_s": best_c,
            "disaggregated_per_gpu_req_s": best_d / total, "colocated_per_gpu_req_s": best_c / (replicas * per_rep),
            "ratio": (best_d / total) / (best_c / (replicas * per_rep)) if best_c else None}
    centre = max(best_d or 0.0, best_c or 0.0) or cfg.rate
    rates = sorted({round(centre * f, 12) for f in (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)})
    sweep = []
    for q in rates:
        rd, rcol = disagg(q).result, coloc(q)
        sweep.append({"rate": q, "rate_per_gpu": q / total,
                      "disaggregated": _row(rd) | {"goodput_req_s": q * (rd.slo_attainment or 0.0)},
                      "colocated": _row(rcol, replicas) | {"goodput_req_s": q * (rcol.slo_attainment or 0.0)}})
    out_d["sweep"] = sweep
    return out_d
