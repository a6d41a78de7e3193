"""Serving simulation: an iteration-level (continuous-batching) scheduler beside static batching.

A discrete-event simulation, one event per model iteration, of the scheduler of Orca (Yu et al.,
OSDI 2022) and vLLM (Kwon et al., SOSP 2023), driven by the cost model's step times:

* requests arrive as a Poisson process at ``rate`` (common random numbers: the same seed gives the
  same arrival pattern scaled by 1/rate, so a rate sweep is smooth), with prompt and output lengths
  from :class:`LengthDist` distributions;
* **admission** — FCFS from the waiting queue while KV blocks remain (a new request needs the
  blocks of its prompt plus its first token; with a contiguous cache, ``reserve_tokens`` up front)
  and while the batch has fewer than ``max_num_seqs`` sequences and the step fewer than
  ``max_batched_tokens`` new tokens;
* **prefill stalls decodes** (vLLM's default without chunking): a step that admits requests runs
  their prefills only; the running sequences wait for it;
* **chunked prefill** (Sarathi-Serve, Agrawal et al. 2024; vLLM ``enable_chunked_prefill``): every
  step carries all running decodes plus prompt chunks up to a budget of ``chunk_tokens`` tokens;
* **preemption** — when a decode step needs a new block and none is free, the most recently admitted
  sequence is preempted (its blocks freed; it is recomputed later from prompt + generated tokens:
  vLLM's recompute mode);
* requests longer than the whole KV budget are rejected up front (the configuration is wrong).

Step time: a callable ``step_time(batch_sizes, contexts, new_tokens)`` evaluates arrays of points —
``b`` sequences each processing ``s`` new tokens over ``p`` cached ones (``CostModel.phase_time(b, s,
p, phase)``; :func:`cost_model_step_time` adapts a :class:`compiler.perf.cost.CostModel`). It is
evaluated once on a grid; the simulation interpolates (linear in the context, exact in the batch).
A decode step of ``b`` sequences with contexts ``c_i`` costs ``T(b, mean c, 1)`` (decode attention
is linear in the context). Each prefill segment costs ``T(1, p_j, s_j)`` on its own; a step
streams the weights once, so ``k`` segments together save ``k - 1`` weight passes (priced as
``T(1, 0, 1)``, a decode step at batch 1 and no context), and never cost less than the longest.

Static batching: when idle, the server takes up to ``max_batch`` waiting requests, pads them to the
longest prompt and runs them until the longest output is done; every request in the batch returns
at the end (``T(k, 0, max prompt)`` then ``T(k, ctx, 1)`` per step).

Outputs (:class:`ServeResult`): throughput (output tokens/s, requests/s), TTFT and TPOT p50/p99
(TPOT = (finish - first token) / (output tokens - 1)), SLO attainment (the fraction of requests
meeting both the TTFT and the TPOT SLO), preemptions, mean batch; :func:`max_rate_meeting_slo`
bisects the largest Poisson rate whose attainment reaches ``slo_target``.
"""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, List, Optional

import numpy as np

from compiler.errors import ConfigError, InternalError
from compiler.perf.runtime import RuntimeServeYaml

__all__ = ["LengthDist", "ServeConfig", "StepTable", "ServeResult", "simulate", "simulate_static",
           "max_rate_meeting_slo", "cost_model_step_time", "sample_requests"]

StepTime = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
DISTS = ("fixed", "uniform", "exponential", "lognormal")


@dataclass(frozen=True)
class LengthDist:
    """Token-length distribution: ``fixed`` (= mean), ``uniform`` [low, high], ``exponential``
    (mean, clipped to [low, high]) or ``lognormal`` (mean, shape ``sigma``, clipped)."""

    kind: str = "fixed"
    mean: float = 512
    low: int = 1
    high: int | None = None
    sigma: float = 0.5

    def __post_init__(self):
        if self.kind not in DISTS:
            raise ConfigError(f"length distribution {self.kind!r} is unknown; use one of "
                              f"{', '.join(DISTS)}.")
        if not (self.mean >= 1):
            raise ConfigError(f"a length distribution's mean must be >= 1 token, got {self.mean!r}.")
        if self.high is not None and self.high < self.low:
            raise ConfigError(f"length distribution high={self.high} is below low={self.low}.")

    @classmethod
    def of(cls, value: Any, what: str = "length") -> "LengthDist":
        """An int (fixed length), a mapping of the fields, or a LengthDist."""
        if isinstance(value, LengthDist):
            return value
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            return cls("fixed", float(value), int(value), int(value))
        if isinstance(value, Mapping):
            unknown = set(value) - {"kind", "mean", "low", "high", "sigma"}
            if unknown:
                raise ConfigError(f"{what}: unknown key(s) {', '.join(sorted(unknown))}; a length "
                                  "distribution has kind, mean, low, high, sigma.")
            return cls(**dict(value))
        raise ConfigError(f"{what}={value!r}: give a token count or a distribution mapping, e.g. "
                          "{kind: uniform, low: 128, high: 1024}.")

    @property
    def upper(self) -> int:
        if self.kind == "fixed":
            return int(round(self.mean))
        if self.kind == "uniform":
            return int(self.high if self.high is not None else 2 * self.mean - self.low)
        return int(self.high if self.high is not None else math.ceil(8 * self.mean))

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.kind == "fixed":
            x = np.full(n, round(self.mean))
        elif self.kind == "uniform":
            x = rng.integers(self.low, self.upper + 1, n)
        elif self.kind == "exponential":
            x = np.round(rng.exponential(self.mean, n))
        else:
            mu = math.log(self.mean) - self.sigma ** 2 / 2      # E[x] = mean
            x = np.round(rng.lognormal(mu, self.sigma, n))
        return np.clip(x, self.low, self.upper).astype(np.int64)


@dataclass
class ServeDisaggregatedConfig:
    """``serve.disaggregated.*``: prefill and decode on separate pools (DistServe, Splitwise),
    simulated by :mod:`compiler.analysis.disaggregated` beside a co-located pool of the same GPU
    count. Each pool: ``*_instances`` engine instances of ``*_tp`` x ``*_pp`` devices of
    ``*_hardware`` (null: the run's). The KV cache of each request crosses ``link_*`` (null: the
    hardware description's interconnect)."""
    enabled: bool = False
    prefill_instances: int = 1
    prefill_tp: int = 1
    prefill_pp: int = 1
    prefill_hardware: Optional[str] = None
    decode_instances: int = 1
    decode_tp: int = 1
    decode_pp: int = 1
    decode_hardware: Optional[str] = None
    link_bandwidth_gbs: Optional[float] = None   # per device, per direction (null: interconnect.bandwidth_gbs)
    link_latency_us: Optional[float] = None      # per transfer (null: interconnect.latency_us, else 10)
    overlap_transfer: bool = True                # layer-by-layer send during the prefill


@dataclass
class ServePrefixConfig:
    """``serve.prefix.*``: automatic prefix caching (vLLM APC, SGLang RadixAttention) over a
    workload model — ``share`` of the requests start with one of ``prefixes`` shared prompts of
    ``prefix_len`` tokens (a system prompt), or (``turns`` > 1) conversations whose every turn
    re-sends the history; reuse is per whole KV block (:mod:`compiler.analysis.prefix`)."""
    enabled: bool = False
    share: float = 1.0
    prefix_len: int = 0
    prefixes: int = 1
    turns: int = 1


@dataclass
class ServeSimConfig:
    """The ``serve.*`` config block (the schema: the one place of these defaults; the run config
    types ``serve`` with it) — the continuous-batching simulation, beside static batching.
    ``enabled``: auto (run when ``rate`` is set or ``mode`` is offline) | true | false. ``mode``:
    online (Poisson arrivals at ``rate``) | offline (every request at t = 0: throughput). Lengths:
    a token count or a distribution ``{kind: fixed|uniform|exponential|lognormal, mean, low,
    high, sigma}`` (null: the workload's prompt_len / gen_len). SLOs come from ``slo.*``. The
    scheduler settings left null take the runtime profile's engine defaults (``runtime.serve``,
    :class:`compiler.perf.runtime.RuntimeServeYaml`; eager: 256 sequences, 8192 tokens, preempt,
    no chunking)."""
    enabled: Any = "auto"
    mode: str = "online"                    # online | offline
    rate: Optional[float] = None            # requests/s, Poisson arrivals (enabled=true: 1.0)
    requests: int = 1000
    prompt_len: Any = None
    output_len: Any = None
    seed: int = 0
    max_num_seqs: Optional[int] = None      # sequences per step (vLLM max_num_seqs); null: the runtime's
    max_batched_tokens: Optional[int] = None  # prefill tokens per step (vLLM max_num_batched_tokens); null: the runtime's
    admission: Optional[str] = None         # preempt (recompute) | no_evict (reserve the final length); null: the runtime's
    chunked_prefill: Optional[bool] = None  # Sarathi-Serve / vLLM enable_chunked_prefill; null: the runtime's
    chunk_tokens: int = 512                 # tokens per step with chunked prefill
    slo_target: float = 0.9                 # attainment that counts as meeting the SLOs
    find_max_rate: bool = True              # with slo.*: the largest rate meeting them
    sweep: Optional[List[float]] = None     # rates of the plot (null: around the rate)
    disaggregated: ServeDisaggregatedConfig = field(default_factory=ServeDisaggregatedConfig)
    prefix: ServePrefixConfig = field(default_factory=ServePrefixConfig)



@dataclass(frozen=True)
class ServeConfig:
    rate: float = 1.0                  # requests / s (Poisson; the config's null rate with enabled=true)
    requests: int = ServeSimConfig.requests
    prompt: LengthDist = field(default_factory=lambda: LengthDist("fixed", 512))    # (the workload's)
    output: LengthDist = field(default_factory=lambda: LengthDist("fixed", 128))
    seed: int = ServeSimConfig.seed
    # the scheduler's defaults are the runtime profiles' (the eager profile's when none applies)
    max_num_seqs: int = RuntimeServeYaml.max_num_seqs
    max_batched_tokens: int = RuntimeServeYaml.max_batched_tokens
    chunked_prefill: bool = RuntimeServeYaml.chunked_prefill
    chunk_tokens: int = ServeSimConfig.chunk_tokens
    slo_ttft_s: float | None = None
    slo_tpot_s: float | None = None
    slo_target: float = ServeSimConfig.slo_target   # attainment that "meets the SLOs" (DistServe's goodput uses 90 %)
    mode: str = ServeSimConfig.mode    # online: Poisson arrivals at ``rate`` | offline: all at t = 0
    admission: str = RuntimeServeYaml.admission  # preempt (recompute the newest) | no_evict (reserve the final length)

    def __post_init__(self):
        object.__setattr__(self, "prompt", LengthDist.of(self.prompt, "serve.prompt_len"))
        object.__setattr__(self, "output", LengthDist.of(self.output, "serve.output_len"))
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise ConfigError(f"serve.rate={self.rate!r} must be a positive number of requests/s.")
        for key in ("requests", "max_num_seqs", "max_batched_tokens", "chunk_tokens"):
            v = getattr(self, key)
            if int(v) != v or v < 1:
                raise ConfigError(f"serve.{key}={v!r} must be a positive integer.")
        if not (0 < self.slo_target <= 1):
            raise ConfigError(f"serve.slo_target={self.slo_target!r} must be in (0, 1].")
        if self.mode not in ("online", "offline"):
            raise ConfigError(f"serve.mode={self.mode!r}: use online or offline.")
        if self.admission not in ("preempt", "no_evict"):
            raise ConfigError(f"serve.admission={self.admission!r}: use preempt or no_evict.")


def sample_requests(cfg: ServeConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(arrival times s, prompt tokens, output tokens) — deterministic for ``cfg.seed``; the
    arrivals of one seed at two rates differ only by the factor of the rates. Offline: every
    request arrives at t = 0 (the lengths are the same draws)."""
    rng = np.random.default_rng(cfg.seed)
    gaps = rng.exponential(1.0, cfg.requests)
    prompt = cfg.prompt.sample(rng, cfg.requests)
    out = np.maximum(cfg.output.sample(rng, cfg.requests), 1)
    if cfg.mode == "offline":
        return np.zeros(cfg.requests), prompt, out
    return np.cumsum(gaps) / cfg.rate, prompt, out


# --------------------------------------------------------------------------- step-time table

def cost_model_step_time(cm) -> StepTime:
    """``step_time(b, p, s)`` from a :class:`compiler.perf.cost.CostModel` (decode class when s == 1)."""
    def step_time(b, p, s):
        b, p, s = np.broadcast_arrays(*(np.asarray(x, dtype=float) for x in (b, p, s)))
        b, p, s = b.ravel(), p.ravel(), s.ravel()
        out = np.empty(b.shape, dtype=float)
        dec = s <= 1
        if dec.any():
            out[dec] = cm.phase_time(b[dec], s[dec], p[dec], "decode")
        if (~dec).any():
            out[~dec] = cm.phase_time(b[~dec], s[~dec], p[~dec], "prefill")
        return out
    return step_time


def _grid(top: int, n: int) -> np.ndarray:
    top = max(int(top), 1)
    g = np.unique(np.concatenate([np.round(np.geomspace(1, top, n)), np.round(np.linspace(0, top, n))]))
    return g.astype(float)


class StepTable:
    """Step times on a grid, evaluated in one call of ``step_time`` each; interpolated lookups."""

    def __init__(self, step_time: StepTime, max_batch: int, max_context: int, max_new: int,
                 chunk: int | None = None, points: int = 24):
        self.max_batch = int(max(max_batch, 1))
        self.ctx = _grid(max_context, points)
        # every batch size up to 16, then a geometric grid; interpolated linearly in between
        self.bgrid = np.unique(np.concatenate([np.arange(1, min(16, self.max_batch) + 1),
                                               np.round(np.geomspace(1, self.max_batch, points)),
                                               [self.max_batch]])).astype(float)
        bb, cc = np.meshgrid(self.bgrid, self.ctx, indexing="ij")
        coarse = np.asarray(step_time(bb.ravel(), cc.ravel(), np.ones(bb.size)), float).reshape(bb.shape)
        allb = np.arange(1, self.max_batch + 1, dtype=float)
        self.decode = np.stack([np.interp(allb, self.bgrid, coarse[:, j]) for j in range(len(self.ctx))], 1)
        self.new = _grid(max(max_new, 2), 2 * points)
        self.new = self.new[self.new >= 1]
        self.pctx = self.ctx if chunk else np.array([0.0])
        ss, pp = np.meshgrid(self.new, self.pctx, indexing="ij")
        self.prefill = np.asarray(step_time(np.ones(ss.size), pp.ravel(), ss.ravel()), float).reshape(ss.shape)
        self.weights_pass = float(np.asarray(step_time(np.ones(1), np.zeros(1), np.ones(1)), float)[0])
        if not (np.isfinite(self.decode).all() and np.isfinite(self.prefill).all()):
            raise InternalError("step_time returned non-finite values")

    def decode_time(self, b: int, mean_ctx: float) -> float:
        b = min(int(b), self.max_batch)
        return float(np.interp(mean_ctx, self.ctx, self.decode[b - 1]))

    def decode_times(self, b: np.ndarray, ctx: np.ndarray) -> np.ndarray:
        """Vectorized decode lookups (static batching's step sequences)."""
        b = np.minimum(np.asarray(b, int), self.max_batch) - 1
        i = np.clip(np.searchsorted(self.ctx, ctx, side="right") - 1, 0, len(self.ctx) - 2)
        w = np.clip((ctx - self.ctx[i]) / (self.ctx[i + 1] - self.ctx[i]), 0.0, None)
        lo, hi = self.decode[b, i], self.decode[b, i + 1]
        return lo + w * (hi - lo)

    def prefill_times(self, s: np.ndarray, p: np.ndarray) -> np.ndarray:
        s = np.asarray(s, float)
        p = np.asarray(p, float)
        if len(self.pctx) == 1:
            return np.interp(s, self.new, self.prefill[:, 0], right=np.nan) if s.max(initial=0) <= self.new[-1] \
                else self._extrap(s)
        # bilinear in (new tokens, context)
        i = np.clip(np.searchsorted(self.new, s, side="right") - 1, 0, len(self.new) - 2)
        j = np.clip(np.searchsorted(self.pctx, p, side="right") - 1, 0, len(self.pctx) - 2)
        ws = np.clip((s - self.new[i]) / (self.new[i + 1] - self.new[i]), 0, 1)
        wp = np.clip((p - self.pctx[j]) / (self.pctx[j + 1] - self.pctx[j]), 0, 1)
        t = self.prefill
        return ((1 - ws) * (1 - wp) * t[i, j] + ws * (1 - wp) * t[i + 1, j]
                + (1 - ws) * wp * t[i, j + 1] + ws * wp * t[i + 1, j + 1])

    def prefill_list(self, segs) -> list[float]:
        """Scalar lookups for a step's few (request, new tokens, context) segments."""
        import bisect
        if not hasattr(self, "_new_l"):
            self._new_l = self.new.tolist()
            self._p_l = self.pctx.tolist()
            self._t_l = self.prefill.tolist()
        nl, pl, tl = self._new_l, self._p_l, self._t_l
        out = []
        for _, s, p in segs:
            i = min(max(bisect.bisect_right(nl, s) - 1, 0), len(nl) - 2)
            ws = (s - nl[i]) / (nl[i + 1] - nl[i])
            if len(pl) == 1:
                a, b = tl[i][0], tl[i + 1][0]
                out.append(a + ws * (b - a))    # extrapolates linearly past the grid
                continue
            ws = min(max(ws, 0.0), 1.0)
            j = min(max(bisect.bisect_right(pl, p) - 1, 0), len(pl) - 2)
            wp = min(max((p - pl[j]) / (pl[j + 1] - pl[j]), 0.0), 1.0)
            out.append((1 - ws) * (1 - wp) * tl[i][j] + ws * (1 - wp) * tl[i + 1][j]
                       + (1 - ws) * wp * tl[i][j + 1] + ws * wp * tl[i + 1][j + 1])
        return out

    def _extrap(self, s):
        per_tok = (self.prefill[-1, 0] - self.prefill[-2, 0]) / (self.new[-1] - self.new[-2])
        return np.where(s <= self.new[-1], np.interp(s, self.new, self.prefill[:, 0]),
                        self.prefill[-1, 0] + (s - self.new[-1]) * per_tok)

    def combine(self, decode_t: float, seg_t: np.ndarray) -> float:
        """One step's time from its decode part and its prefill segments (module doc)."""
        parts = ([decode_t] if decode_t > 0 else []) + list(seg_t)
        if not parts:
            return 0.0
        return max(sum(parts) - (len(parts) - 1) * self.weights_pass, max(parts))


# --------------------------------------------------------------------------- results

@dataclass
class ServeResult:
    policy: str                         # continuous | continuous_chunked | static
    rate: float
    requests: int
    duration_s: float
    throughput_tok_s: float             # generated tokens / s
    throughput_req_s: float
    ttft_p50_s: float
    ttft_p99_s: float
    tpot_p50_s: float
    tpot_p99_s: float
    e2e_p50_s: float
    e2e_p99_s: float
    slo_attainment: float | None
    preemptions: int
    steps: int
    mean_batch: float
    max_batch: int
    kv_blocks: int | None = None
    ttft_s: np.ndarray | None = field(default=None, repr=False)
    tpot_s: np.ndarray | None = field(default=None, repr=False)
    e2e_s: np.ndarray | None = field(default=None, repr=False)     # per request, arrival order

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("ttft_s")
        d.pop("tpot_s")
        d.pop("e2e_s")
        return d


def _result(policy, cfg, arrival, first, finish, out, preempt, steps, batch_sum, batch_max, kv_blocks):
    ttft = first - arrival
    tpot = np.where(out > 1, (finish - first) / np.maximum(out - 1, 1), 0.0)
    e2e = finish - arrival
    duration = float(finish.max() - arrival.min())
    ok = np.ones(len(out), bool)
    slo = None
    if cfg.slo_ttft_s is not None or cfg.slo_tpot_s is not None:
        if cfg.slo_ttft_s is not None:
            ok &= ttft <= cfg.slo_ttft_s
        if cfg.slo_tpot_s is not None:
            ok &= tpot <= cfg.slo_tpot_s
        slo = float(ok.mean())
    multi = out > 1
    pct = lambda x, q: float(np.percentile(x, q)) if len(x) else 0.0  # noqa: E731
    return ServeResult(
        policy=policy, rate=cfg.rate, requests=int(len(out)), duration_s=duration,
        throughput_tok_s=float(out.sum() / duration), throughput_req_s=float(len(out) / duration),
        ttft_p50_s=pct(ttft, 50), ttft_p99_s=pct(ttft, 99),
        tpot_p50_s=pct(tpot[multi], 50), tpot_p99_s=pct(tpot[multi], 99),
        e2e_p50_s=pct(e2e, 50), e2e_p99_s=pct(e2e, 99), slo_attainment=slo,
        preemptions=int(preempt), steps=int(steps), mean_batch=float(batch_sum / max(steps, 1)),
        max_batch=int(batch_max), kv_blocks=kv_blocks, ttft_s=ttft, tpot_s=tpot, e2e_s=e2e)


# --------------------------------------------------------------------------- continuous batching

def _table_for(step_time, cfg: ServeConfig, prompt, out, table: StepTable | None,
               context: bool = False) -> StepTable:
    if table is not None:
        return table
    longest = int((prompt + out).max())
    if context and not cfg.chunked_prefill:     # prefills over cached prefixes: a context grid
        return StepTable(step_time, cfg.max_num_seqs, longest, longest, chunk=longest)
    if cfg.chunked_prefill:
        return StepTable(step_time, cfg.max_num_seqs, longest, cfg.chunk_tokens, chunk=cfg.chunk_tokens)
    return StepTable(step_time, cfg.max_num_seqs, longest, longest)


def simulate(step_time: StepTime | None, cfg: ServeConfig, *, kv_blocks: int, block_size: int = 16,
             reserve_tokens: int | None = None, table: StepTable | None = None,
             prefix: Callable | None = None) -> ServeResult:
    """Continuous batching over ``kv_blocks`` blocks of ``block_size`` tokens. ``reserve_tokens``
    set = a contiguous cache (each sequence holds that many tokens from admission on). With
    ``cfg.admission`` no_evict a request is admitted only when the blocks of its final length
    (prompt + output) are free, and holds them to the end: no preemption ever (TensorRT-LLM's
    GUARANTEED_NO_EVICT); preempt admits on the prompt's blocks and preempts the newest sequence
    when a decode step runs out (vLLM).

    ``prefix(prompt, out) -> (prompt, cached, shared)`` (prefix caching,
    :func:`compiler.analysis.prefix.prefix_hook`): the requests' prompts, the tokens of each found
    in the cache (block-aligned: its prefill computes only the rest, over them as context) and
    whether those blocks are shared with other requests (held once, outside ``kv_blocks``'s
    per-request accounting) or the request's own (a multi-turn history)."""
    arrival, prompt, out = sample_requests(cfg)
    cached = off = None
    if prefix is not None:
        prompt, cached, shared = prefix(prompt, out)
        off = cached if shared else np.zeros_like(cached)
    n = len(arrival)
    bs = int(block_size)
    total = prompt + out
    hold = (-(-(total - (off if off is not None else 0)) // bs)) if reserve_tokens is None \
        else np.full(n, -(-int(reserve_tokens) // bs))
    if reserve_tokens is not None and (total > reserve_tokens).any():
        raise ConfigError(f"a request of {int(total.max())} tokens exceeds the contiguous "
                          f"reservation of {reserve_tokens} tokens (kv.max_model_len); raise it.")
    if int(hold.max()) > kv_blocks:
        raise ConfigError(f"a request of {int(total.max())} tokens needs {int(hold.max())} KV blocks "
                          f"but the budget holds {kv_blocks}: the KV budget is too small for the "
                          "requested lengths (shorten serve lengths, lower the weights, or add memory).")
    tab = _table_for(step_time, cfg, prompt, out, table, context=cached is not None)
    if cached is None:
        cached = off = np.zeros(n, np.int64)
    sim = _Continuous(cfg, tab, arrival, prompt, out, cached, off, hold, int(kv_blocks), bs, reserve_tokens)
    sim.run()
    policy = "continuous_chunked" if cfg.chunked_prefill else "continuous"
    return _result(policy, cfg, arrival, sim.first, sim.finish, out, sim.preempt, sim.steps, sim.batch_sum,
                   sim.batch_max, kv_blocks)


class _Continuous:
    """The state of one continuous-batching simulation (:func:`simulate`) and its step: choose the
    step's decode sequences and prefill segments (:meth:`schedule`), run a stretch of pure decode
    steps as one lookup when nothing else can happen (:meth:`decode_run`), make room for the
    decode tokens by preempting the newest sequence (:meth:`make_room`), then advance."""

    def __init__(self, cfg, tab, arrival, prompt, out, cached, off, hold, kv_blocks, bs, reserve_tokens):
        n = len(arrival)
        self.cfg, self.tab, self.bs, self.reserve = cfg, tab, bs, reserve_tokens
        self.arrival, self.prompt, self.out, self.cached, self.off, self.hold = arrival, prompt, out, cached, off, hold
        self.n = n
        self.first = np.full(n, np.nan)
        self.finish = np.full(n, np.nan)
        self.gen = np.zeros(n, np.int64)           # tokens generated so far
        self.done_pf = cached.copy()               # prompt(+recomputed) tokens already in the cache
        self.target = prompt.copy()                # tokens to prefill (prompt + generated after preemption)
        self.blocks = np.zeros(n, np.int64)
        self.order = np.zeros(n, np.int64)         # admission stamp (preempt the newest)
        self.waiting: deque[int] = deque()
        self.running: list[int] = []
        self.free = int(kv_blocks)
        self.t = 0.0
        self.nxt = 0
        self.finished = 0
        self.preempt = self.steps = self.batch_sum = self.batch_max = 0
        self.stamp = 0
        self.no_evict = cfg.admission == "no_evict" and reserve_tokens is None

    # ---- blocks
    def blocks_for(self, tokens, r=None):
        """Blocks a request holds for ``tokens`` of cache (its shared prefix blocks, if any, are
        held once for all: ``off``)."""
        if self.reserve is not None:
            return self.hold[0]
        if r is not None:
            tokens = tokens - self.off[r]
        return -(-tokens // self.bs)

    def admit_blocks(self, r, tokens):
        """Blocks a request needs to be admitted with ``tokens`` in its cache."""
        return int(self.hold[r]) if self.no_evict else self.blocks_for(tokens, r)

    # ---- queue moves
    def admit(self, r, need):
        """Move the head of the queue, ``r``, into the batch holding ``need`` blocks."""
        self.waiting.popleft()
        self.free -= need
        self.blocks[r] = need
        self.stamp += 1
        self.order[r] = self.stamp
        self.running.append(r)

    def evict(self, v):
        """Preempt ``v``: free its blocks and requeue it first, to recompute prompt + generated."""
        self.running.remove(v)
        self.free += int(self.blocks[v])
        self.blocks[v] = 0
        self.target[v] = self.prompt[v] + self.gen[v]
        self.done_pf[v] = self.cached[v]
        self.waiting.appendleft(v)
        self.preempt += 1

    def retire(self, E):
        """Those of ``E`` that have generated their output finish at ``t`` and free their blocks."""
        fin = E[self.gen[E] >= self.out[E]]
        if len(fin):
            self.finish[fin] = self.t
            self.finished += len(fin)
            self.free += int(self.blocks[fin].sum())
            self.blocks[fin] = 0
            fs = set(fin.tolist())
            self.running = [r for r in self.running if r not in fs]

    # ---- one step
    def schedule(self):
        """(decode requests, prefill segments (request, new tokens, context before)) of the step."""
        cfg, done_pf, target = self.cfg, self.done_pf, self.target
        segs = []
        if cfg.chunked_prefill:
            budget = cfg.chunk_tokens
            R = np.asarray(self.running, np.int64)
            pf = done_pf[R] < target[R]
            dec = R[~pf].tolist()
            budget -= len(dec)
            for r in R[pf].tolist():
                if budget <= 0:
                    break
                c = min(budget, int(target[r] - done_pf[r]))
                need = max(self.blocks_for(done_pf[r] + c, r) - self.blocks[r], 0)
                if need > self.free:
                    break
                self.free -= need
                self.blocks[r] += need
                segs.append((r, c, int(done_pf[r])))
                budget -= c
            while budget > 0 and self.waiting and len(self.running) < cfg.max_num_seqs:
                r = self.waiting[0]
                c = min(budget, int(target[r] - done_pf[r]))
                need = self.admit_blocks(r, done_pf[r] + c)
                if need > self.free:
                    break
                self.admit(r, need)
                segs.append((r, c, int(done_pf[r])))
                budget -= c
            return dec, segs
        tokens = 0
        while self.waiting and len(self.running) < cfg.max_num_seqs:
            r = self.waiting[0]
            L = int(target[r])
            c0 = int(done_pf[r])          # a cached prefix: only the rest is computed
            need = self.admit_blocks(r, L)
            if need > self.free or (segs and tokens + L - c0 > cfg.max_batched_tokens):
                break
            self.admit(r, need)
            segs.append((r, L - c0, c0))
            tokens += L - c0
        return ([] if segs else list(self.running)), segs

    def decode_run(self, dec) -> bool:
        """A run of pure decode steps until the next event (a sequence finishes, a request arrives
        at an empty queue, or the free blocks would run out) at the cost of one lookup; False when
        not even one step fits."""
        D = np.asarray(dec, np.int64)
        gen, blocks, off, bs = self.gen, self.blocks, self.off, self.bs
        ctx0 = self.prompt[D] + gen[D]
        kmax = int((self.out[D] - gen[D]).min())
        js = np.arange(kmax)
        ts = self.tab.decode_times(np.full(kmax, len(D)), float(ctx0.mean()) + js)
        cum = np.cumsum(ts)
        if not self.waiting and self.nxt < self.n:
            kmax = min(kmax, int(np.searchsorted(cum, self.arrival[self.nxt] - self.t)) + 1)
        if self.reserve is None:
            # new blocks needed for k steps: sum_i max(0, ceil((ctx_i + k - 1) / bs) - blocks_i)
            bD = blocks[D]
            own0 = ctx0 - off[D]

            def need_at(k):
                return int(np.maximum(-(-(own0 + (k - 1)) // bs) - bD, 0).sum())

            if need_at(kmax) > self.free:
                lo_k, hi_k = 0, kmax          # need_at(lo_k) <= free < need_at(hi_k)
                while hi_k - lo_k > 1:
                    mid = (lo_k + hi_k) // 2
                    if need_at(mid) <= self.free:
                        lo_k = mid
                    else:
                        hi_k = mid
                kmax = lo_k
        if kmax < 1:
            return False
        self.t += float(cum[kmax - 1])
        gen[D] += kmax
        if self.reserve is None:
            newb = np.maximum(-(-(ctx0 - off[D] + kmax - 1) // bs), blocks[D])
            self.free -= int((newb - blocks[D]).sum())
            blocks[D] = newb
        self.steps += kmax
        self.batch_sum += len(D) * kmax
        self.batch_max = max(self.batch_max, len(D))
        self.retire(D)
        self.done_pf[D] = self.target[D] = self.prompt[D] + gen[D]
        return True

    def make_room(self, dec, segs):
        """(decode requests left, their new blocks, segments left, decode step time): decode
        sequences need room for one more token; the newest sequence is preempted while none is left."""
        if not dec:
            D = np.zeros(0, np.int64)
            return D, D, segs, 0.0
        D = np.asarray(dec, np.int64)
        ctx = self.prompt[D] + self.gen[D]          # cache length once this step's token is appended
        need = np.maximum(self.blocks_for(ctx, D) - self.blocks[D], 0) if self.reserve is None \
            else np.zeros(len(D), np.int64)
        seg_ids = {sg[0] for sg in segs}
        while need.sum() > self.free:
            victims = [r for r in self.running if r not in seg_ids] or self.running
            v = max(victims, key=self.order.__getitem__)
            self.evict(v)
            keep = D != v
            D, ctx, need = D[keep], ctx[keep], need[keep]
            segs = [s for s in segs if s[0] != v]
            if not len(D):
                break
        dec_t = self.tab.decode_time(len(D), float(ctx.sum()) / len(D)) if len(D) else 0.0
        return D, need, segs, dec_t

    def advance(self, D, need, segs):
        """The step's state changes: decode blocks taken, prefill progress, one token for every
        sequence that emits, finished sequences retired."""
        done_pf, target, gen = self.done_pf, self.target, self.gen
        if len(D):
            self.free -= int(need.sum())
            self.blocks[D] += need
        if segs:
            S_ = np.fromiter((sg[0] for sg in segs), np.int64, len(segs))
            done_pf[S_] += np.fromiter((sg[1] for sg in segs), np.int64, len(segs))
            E = np.concatenate([D, S_[done_pf[S_] >= target[S_]]])   # a prefill's last chunk emits
        else:
            E = D
        if len(E):
            gen[E] += 1
            fresh = np.isnan(self.first[E])
            self.first[E[fresh]] = self.t
            # sequences past their prefill decode from here: their cache holds prompt + generated
            done_pf[E] = target[E] = self.prompt[E] + gen[E]
            self.retire(E)

    def run(self):
        while self.finished < self.n:
            while self.nxt < self.n and self.arrival[self.nxt] <= self.t:
                self.waiting.append(self.nxt)
                self.nxt += 1
            if not self.running and not self.waiting:
                self.t = float(self.arrival[self.nxt])
                continue
            dec, segs = self.schedule()
            if dec and not segs and len(dec) == len(self.running) and self.decode_run(dec):
                continue
            D, need, segs, dec_t = self.make_room(dec, segs)
            if not len(D) and not segs:
                # prefills blocked on memory that only a running prefill holds: free the newest
                self.evict(max(self.running, key=self.order.__getitem__))
                continue
            seg_t = self.tab.prefill_list(segs) if segs else []
            self.t += self.tab.combine(dec_t, seg_t)
            self.steps += 1
            nb = len(D) + len(segs)
            self.batch_sum += nb
            self.batch_max = max(self.batch_max, nb)
            self.advance(D, need, segs)


# --------------------------------------------------------------------------- static batching

def simulate_static(step_time: StepTime | None, cfg: ServeConfig, *, max_batch: int,
                    table: StepTable | None = None) -> ServeResult:
    """Static batching: batches of up to ``max_batch`` requests, padded, run to the longest output."""
    if max_batch < 1:
        raise ConfigError("static batching: not even one sequence fits in memory (max_batch 0).")
    arrival, prompt, out = sample_requests(cfg)
    n = len(arrival)
    tab = table or StepTable(step_time, max(cfg.max_num_seqs, max_batch), int((prompt + out).max()),
                             int(prompt.max()))
    pad_prefill = {}
    first = np.empty(n)
    finish = np.empty(n)
    t = 0.0
    i = 0
    steps = batch_sum = batch_max = 0
    while i < n:
        t = max(t, float(arrival[i]))
        j = i + 1
        while j < n and j - i < max_batch and arrival[j] <= t:
            j += 1
        k = j - i
        P, G = int(prompt[i:j].max()), int(out[i:j].max())
        if (k, P) not in pad_prefill:
            pad_prefill[(k, P)] = float(np.asarray(step_time(np.array([k]), np.array([0]), np.array([P])))[0]) \
                if step_time is not None else float(tab.prefill_times(np.array([P]), np.array([0]))[0])
        t += pad_prefill[(k, P)]
        first[i:j] = t
        if G > 1:
            t += float(tab.decode_times(np.full(G - 1, k), P + np.arange(G - 1, dtype=float)).sum())
        finish[i:j] = t
        steps += G
        batch_sum += k * G
        batch_max = max(batch_max, k)
        i = j
    return _result("static", cfg, arrival, first, finish, out, 0, steps, batch_sum, batch_max, None)


# --------------------------------------------------------------------------- SLO search

def max_rate_meeting_slo(run: Callable[[float], ServeResult], cfg: ServeConfig, *,
                         start: float = 1.0, iters: int = 12) -> tuple[float, list[ServeResult]]:
    """Largest Poisson rate whose SLO attainment is >= ``cfg.slo_target``, by doubling then
    bisection in log space; ``run(rate)`` simulates at a rate. Returns (rate, every run made).
    Rate 0 if even a trickle misses the SLOs."""
    if cfg.slo_ttft_s is None and cfg.slo_tpot_s is None:
        raise ConfigError("the largest rate meeting the SLOs needs slo.ttft_ms and/or slo.tpot_ms.")
    runs: list[ServeResult] = []

    def ok(rate):
        r = run(rate)
        runs.append(r)
        return r.slo_attainment is not None and r.slo_attainment >= cfg.slo_target

    lo, hi = None, None
    r = start
    if ok(r):
        lo = r
        for _ in range(30):
            r *= 2
            if not ok(r):
                hi = r
                break
            lo = r
        if hi is None:
            return lo, runs
    else:
        hi = r
        for _ in range(30):
            r /= 2
            if ok(r):
                lo = r
                break
            hi = r
        if lo is None:
            return 0.0, runs
    for _ in range(iters):
        mid = math.sqrt(lo * hi)
        if ok(mid):
            lo = mid
        else:
            hi = mid
        if hi / lo < 1.01:
            break
    return lo, runs


def with_rate(cfg: ServeConfig, rate: float) -> ServeConfig:
    return replace(cfg, rate=float(rate))


def config_of(serve: Mapping | None, slo: Mapping | None) -> ServeConfig:
    """A :class:`ServeConfig` from the ``serve.*`` and ``slo.*`` config blocks."""
    s = dict(serve or {})
    slo = dict(slo or {})
    known = {"enabled", "rate", "requests", "prompt_len", "output_len", "seed", "max_num_seqs",
             "max_batched_tokens", "chunked_prefill", "chunk_tokens", "slo_target", "find_max_rate",
             "sweep", "mode", "admission", "disaggregated", "prefix"}
    unknown = sorted(set(s) - known)
    if unknown:
        raise ConfigError(f"serve.{unknown[0]} is not a serving setting; known: {', '.join(sorted(known))}.")
    kw = {k: s[k] for k in ("rate", "requests", "seed", "max_num_seqs", "max_batched_tokens",
                            "chunked_prefill", "chunk_tokens", "slo_target", "mode", "admission")
          if s.get(k) is not None}
    if s.get("prompt_len") is not None:
        kw["prompt"] = LengthDist.of(s["prompt_len"], "serve.prompt_len")
    if s.get("output_len") is not None:
        kw["output"] = LengthDist.of(s["output_len"], "serve.output_len")
    for key, name in (("ttft_ms", "slo_ttft_s"), ("tpot_ms", "slo_tpot_s")):
        if slo.get(key) is not None:
            kw[name] = float(slo[key]) * 1e-3
    return ServeConfig(**kw)


_KEYS = ("rate", "throughput_tok_s", "throughput_req_s", "ttft_p50_s", "ttft_p99_s", "tpot_p50_s",
         "tpot_p99_s", "e2e_p50_s", "e2e_p99_s", "slo_attainment", "preemptions", "mean_batch",
         "max_batch", "steps")


def serve_section(step_time: StepTime, serve: Mapping | None, slo: Mapping | None, *, kv_blocks: int,
                  block_size: int = 16, reserve_tokens: int | None = None,
                  static_max_batch: int = 0, prefix: Callable | None = None) -> dict:
    """The report's ``serve`` section: the simulation at ``serve.rate``, static batching beside it,
    the largest rate meeting the SLOs (when set) and a rate sweep for the plot. ``prefix``: the
    prefix-caching hook of :func:`simulate` (None: off)."""
    cfg = config_of(serve, slo)
    s = dict(serve or {})
    arrival, prompt, out = sample_requests(cfg)
    if prefix is not None:
        prompt = prefix(prompt, out)[0]
    longest = int((prompt + out).max())
    table = StepTable(step_time, cfg.max_num_seqs, longest,
                      cfg.chunk_tokens if cfg.chunked_prefill else longest,
                      chunk=cfg.chunk_tokens if cfg.chunked_prefill else (longest if prefix is not None else None))

    def run(rate):
        return simulate(None, with_rate(cfg, rate), kv_blocks=kv_blocks, block_size=block_size,
                        reserve_tokens=reserve_tokens, table=table, prefix=prefix)

    main = run(cfg.rate)
    res = {k: getattr(main, k) for k in _KEYS}
    if cfg.mode == "offline":
        res["rate"] = None
    res.update({"policy": main.policy, "requests": main.requests, "kv_blocks": kv_blocks,
                "mode": cfg.mode, "admission": cfg.admission,
                "max_num_seqs": cfg.max_num_seqs, "max_batched_tokens": cfg.max_batched_tokens,
                "block_size": block_size, "layout": "paged" if reserve_tokens is None else "contiguous",
                "slo": {"ttft_s": cfg.slo_ttft_s, "tpot_s": cfg.slo_tpot_s, "target": cfg.slo_target},
                "prompt_len": dict(asdict(cfg.prompt)), "output_len": dict(asdict(cfg.output))})
    static_tab = None
    if static_max_batch >= 1:
        static_tab = StepTable(step_time, max(cfg.max_num_seqs, static_max_batch), longest, int(prompt.max()))
        st = simulate_static(step_time, cfg, max_batch=static_max_batch, table=static_tab)
        res["static"] = {k: getattr(st, k) for k in _KEYS} | {"max_batch_static": static_max_batch}
    if cfg.mode == "offline":      # every request at t = 0: no rate to search or sweep
        res["sweep"] = []
        return res
    best = None
    if (cfg.slo_ttft_s is not None or cfg.slo_tpot_s is not None) and s.get("find_max_rate", True):
        best, _ = max_rate_meeting_slo(run, cfg, start=cfg.rate)
        res["max_rate_meeting_slo"] = best
    centre = best or cfg.rate
    rates = s.get("sweep") or [centre * f for f in (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0)]
    sweep = []
    for q in rates:
        r = run(float(q))
        row = {k: getattr(r, k) for k in ("rate", "throughput_tok_s", "ttft_p50_s", "ttft_p99_s",
                                          "tpot_p50_s", "tpot_p99_s", "slo_attainment", "preemptions")}
        if static_max_batch >= 1:
            row["static_throughput_tok_s"] = simulate_static(step_time, with_rate(cfg, q),
                                                             max_batch=static_max_batch,
                                                             table=static_tab).throughput_tok_s
        sweep.append(row)
    res["sweep"] = sweep
    return res


# --------------------------------------------------------------------------- report sections

def serve_enabled(serve: Mapping | None) -> bool:
    """``serve.enabled``: true, false, or auto (the default: on when ``serve.rate`` is set or
    ``serve.mode`` is offline)."""
    s = dict(serve or {})
    v = s.get("enabled", "auto")
    if isinstance(v, str):
        v = {"true": True, "false": False}.get(v.lower(), "auto")
    return v is True or (v == "auto" and (s.get("rate") is not None or s.get("mode") == "offline"))


def serve_block(cfg: Mapping, wl: Mapping) -> dict:
    """``serve.*`` without ``enabled``, the lengths defaulting to the workload's prompt / gen."""
    serve = dict(cfg.get("serve") or {})
    serve.pop("enabled", None)
    if serve.get("rate") is None:
        serve.pop("rate", None)
    serve["prompt_len"] = serve.get("prompt_len") or wl["prompt_len"]
    serve["output_len"] = serve.get("output_len") or max(wl["gen_len"], 1)
    return serve


def request_tokens(cfg: Mapping, wl: Mapping, tokens: float) -> np.ndarray:
    """Lengths (prompt + generated) of the requests capacity is planned for: the simulated ones
    with ``serve`` on, else the workload's ``tokens`` per sequence."""
    if serve_enabled(cfg.get("serve")):
        _, sp, so = sample_requests(config_of(serve_block(cfg, wl), cfg.get("slo")))
        return sp + so
    return np.array([max(int(tokens), 1)])


def max_model_len_of(cfg: Mapping, wl: Mapping, tokens: float) -> int:
    """``kv.max_model_len``, or (null) the longest request: the workload's tokens per sequence or
    the longest simulated request."""
    kv = dict(cfg.get("kv") or {})
    if kv.get("max_model_len"):
        return int(kv["max_model_len"])
    return int(max(request_tokens(cfg, wl, tokens).max(), tokens))
