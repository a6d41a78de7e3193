#!/usr/bin/env python3
"""Measure the kernels of rooftop's next cost-model features on a CUDA GPU: modern-architecture
attention/MoE blocks (MLA, windowed / softcapped / sink attention, fine-grained MoE, Qwen3 q/k-norm
layer) and serving-engine kernels (compiled weight-only int8/int4, FP8 GEMMs, FP8 KV-cache decode,
CUDA-graph step overhead).

Writes one JSON (``--out``, schema ``rooftop-kernels/1`` as tools/measure_kernels.py; rewritten after
every sample group so a killed run keeps what it had):

* ``samples``: one per (family, shape) with ``family``, ``kernel`` (the exact PyTorch call),
  ``shape``, ``flops``, ``bytes``, ``time_s`` (median), ``p10``/``p90``, ``graph`` (timed inside a
  CUDA graph), plus ``group`` and family-specific fields (``distinct_experts``, ``padded_M`` ...).
* ``checks``: relative error of each kernel against a float reference at one shape (and which
  attention backend / kernel names ran).
* ``skipped``: what could not run (unsupported op, error text) or what a budget cut.
* ``graph_overhead``: host/launch cost of CUDA-graph replays vs eager launches.

Timing: ``tools/calibrate_gpu.py``'s Timer (k calls cycling over distinct buffer sets so the working
set is >= 4x L2, captured in one CUDA graph, replays timed with CUDA events, median).  Every group has
its own wall-clock budget (``--group-budgets``) inside the overall ``--budget-s``.

    PYTHONUNBUFFERED=1 python3 tools/measure_modern_kernels.py --out $OUT/modern_kernels.json
    python3 tools/measure_modern_kernels.py --smoke --out /tmp/m.json   # tiny shapes, CPU, tests the script
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import math
import os
import sys
import time
import traceback
from types import SimpleNamespace

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import calibrate_gpu as CG  # noqa: E402
import measure_kernels as MK  # noqa: E402  (triton per-token quant, rel_err)

BF16 = torch.bfloat16
FP8 = torch.float8_e4m3fn
GROUP = 128

GROUPS = ["linear", "fp8", "fp8kv", "graph", "qwen3", "mla", "moe", "window", "wquant"]
DEFAULT_BUDGETS = {"linear": 15, "fp8": 35, "fp8kv": 40, "graph": 20, "qwen3": 30, "mla": 85, "moe": 90,
                   "window": 140, "wquant": 200}

LLAMA_KN = [("4096x4096", 4096, 4096), ("4096x11008", 4096, 11008), ("11008x4096", 11008, 4096),
            ("4096x14336", 4096, 14336), ("14336x4096", 14336, 4096)]  # (tag, K, N): y[M,N] = x[M,K] W[N,K]^T
M_QUANT = [1, 2, 4, 8, 16, 32, 64, 128, 256]
M_FP8 = [1, 128, 4096, 16, 2, 4, 8, 32, 64, 256, 1024]  # headline M first (a budget cut drops the rest)


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


rel_err = MK.rel_err


def rot_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def rope_tables(n, d, dev, dtype):
    inv = 1.0 / (10000.0 ** (torch.arange(0, d, 2, device=dev, dtype=torch.float32) / d))
    f = torch.outer(torch.arange(n, device=dev, dtype=torch.float32), inv)
    e = torch.cat([f, f], -1)
    return e.cos().to(dtype), e.sin().to(dtype)


# =========================================================================== runner
class Runner:
    def __init__(self, args):
        self.args = args
        self.smoke = args.smoke
        cal_args = SimpleNamespace(smoke=args.smoke, device=args.device, no_compile=True, budget_s=1e9,
                                   out=None, classes="", budget_scale=1.0)
        self.cal = CG.Calibrator(cal_args)
        self.cal.budgets = {}
        self.dev = self.cal.device
        self.cuda = self.cal.cuda
        self.t0 = time.time()
        self.budgets = dict(DEFAULT_BUDGETS)
        for kv in filter(None, args.group_budgets.split(",")):
            k, v = kv.split("=")
            self.budgets[k] = float(v)
        self.res = {"schema": "rooftop-kernels/1", "smoke": self.smoke, "tool": "tools/measure_modern_kernels.py",
                    "cmd": " ".join(sys.argv),
                    "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "device": {"name": self.cal.dev_name, "sm_count": self.cal.sm_count, "l2_bytes": self.cal.l2,
                               "capability": self.cal.capability, "total_memory_bytes": self.cal.total_mem},
                    "versions": self.cal.versions(),
                    "timing": "tools/calibrate_gpu.py Timer: CUDA graph of k calls over distinct buffer sets "
                              "(working set >= 4x L2 where one call's is smaller), replays timed with CUDA events; "
                              "time_s = median per call (p10/p90 over replays). MoE: same Timer, calls rotate "
                              "over distinct random routings instead of buffer copies.",
                    "conventions": {
                        "flops": "useful work: GEMM 2MKN; attention 4*B*H*Sq*Lvis*d over visible (unmasked) "
                                 "query-key pairs (causal ~ half, window ~ S*W); masked dense kernels also "
                                 "carry flops_dense (all pairs)",
                        "bytes": "each input read once, each output written once, in its stored dtype "
                                 "(weights + activations/caches)",
                        "shape": "linear {M,K,N,tag} with y[M,N]=x[M,K]W[N,K]^T; attention {B,H,Hkv,d,Sq,L,W}; "
                                 "MoE {model,tokens,E,top_k,inter,hidden,shared_inter}",
                    },
                    "checks": {}, "samples": [], "skipped": [], "notes": [], "group_wall_s": {},
                    "budgets_s": self.budgets}
        self.out = args.out
        self.quant = None
        if self.cuda:
            try:
                self.quant = MK.triton_row_quant()
                x = torch.randn(5, 4096, device=self.dev, dtype=BF16)
                q, s = self.quant(x, fp8=True)
                qe, se = MK.eager_row_quant(x, fp8=True)
                self.res["checks"]["act_quant_fp8_triton_vs_eager_rel_err"] = round(
                    rel_err(q.float() * s, qe.float() * se), 6)
            except Exception as e:
                self.quant = None
                self.note(f"triton per-token quant unavailable, eager quant used: {e!r}"[:300])
        self._compiled = {}
        if self.cuda:
            import torch._dynamo as dynamo
            for k in ("recompile_limit", "cache_size_limit"):
                if hasattr(dynamo.config, k):
                    setattr(dynamo.config, k, 256)
            for k in ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
                if hasattr(dynamo.config, k):
                    setattr(dynamo.config, k, 4096)

    # ------------------------------------------------------------------ helpers
    def note(self, s):
        self.res["notes"].append(s)
        log("note:", s)

    def elapsed(self):
        return time.time() - self.t0

    def write(self):
        self.res["samples"] = list(self.cal.samples)
        self.res["skipped_by_timer"] = list(self.cal.skipped)
        self.res["wall_s"] = round(self.elapsed(), 1)
        tmp = self.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.res, f, indent=1, sort_keys=True, default=str)
        os.replace(tmp, self.out)

    def over(self):
        return time.time() - self.tg > self.gbudget or self.elapsed() > self.args.budget_s

    def skip(self, what, why):
        d = dict(what)
        d["group"] = self.gname
        d["why"] = str(why)[:400]
        self.res["skipped"].append(d)
        log("  skip", json.dumps(d)[:300])

    def rand(self, *s, dtype=BF16, scale=1.0):
        if dtype in (BF16, torch.float16, torch.float32, torch.float64):
            t = torch.randn(*s, device=self.dev, dtype=dtype)  # no fp32 temporary for big bf16 weights
            return t.mul_(scale) if scale != 1.0 else t
        return (torch.randn(*s, device=self.dev, dtype=torch.float32) * scale).to(dtype)

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def compile(self, fn, **kw):
        """torch.compile on CUDA; the plain function in smoke (CPU)."""
        if not self.cuda or self.args.no_compile:
            return fn
        return torch.compile(fn, **kw)

    def sample(self, family, kernel, shape, flops, nbytes, make_call, ws=None, extra=None, reps=None):
        """One timed sample (Timer via Calibrator.measure); returns the sample dict or None."""
        if self.over():
            self.skip({"family": family, "shape": shape}, "budget")
            return None
        ex = {"family": family, "kernel": kernel, "group": self.gname}
        if extra:
            ex.update(extra)
        return self.cal.measure(family, family, shape, flops, nbytes, ws if ws is not None else nbytes, make_call,
                                extra=ex, census=False, reps=reps)

    def time_direct(self, family, kernel, shape, flops, nbytes, calls, reps, extra=None, warmup=2):
        """Time a list of prepared calls (rotated) with the Timer; appends a sample like measure()."""
        if self.over():
            self.skip({"family": family, "shape": shape}, "budget")
            return None
        try:
            ts, info = self.cal.timer.time_calls(calls, len(calls), reps=reps, warmup=warmup)
        except Exception as e:
            self.skip({"family": family, "shape": shape}, "error: " + repr(e))
            self.sync()
            return None
        med = CG.quantile(ts, 0.5)
        s = {"class": family, "name": family, "family": family, "kernel": kernel, "group": self.gname,
             "shape": shape, "flops": float(flops), "bytes": float(nbytes), "time_s": CG._r(med),
             "times_s": [CG._r(x) for x in ts], "p10": CG._r(CG.quantile(ts, 0.1)),
             "p90": CG._r(CG.quantile(ts, 0.9)), "copies": len(calls), "calls_per_replay": len(calls),
             "graph": info["graph"]}
        if extra:
            s.update(extra)
        self.cal.samples.append(s)
        log(f"  {family:28s} {json.dumps(shape, sort_keys=True)[:90]:90s} {med * 1e6:10.2f} us")
        return s

    def check(self, name, fn):
        try:
            v = fn()
            self.res["checks"][name] = round(v, 6) if isinstance(v, float) else v
        except Exception as e:
            self.res["checks"][name] = "FAIL " + repr(e)[:300]
            if self.args.verbose:
                traceback.print_exc()
        log(f"  check {name}: {self.res['checks'][name]}")
        self.sync()

    def kernels_of(self, fn):
        """Names of device kernels one call launches (profiler), compacted."""
        try:
            ks = self.cal.kernel_names(fn)
            return CG.summarize_kernels(ks)
        except Exception as e:
            return {"error": repr(e)[:200]}

    # ------------------------------------------------------------------ driver
    def run(self):
        log(f"device {self.res['device']['name']} torch {torch.__version__} cuda {torch.version.cuda}")
        want = self.args.groups.split(",")
        for g in [g for g in GROUPS if g in want]:
            self.gname, self.tg = g, time.time()
            self.gbudget = self.budgets.get(g, 60) * self.args.budget_scale
            if self.elapsed() > self.args.budget_s:
                self.skip({"group_whole": g}, "overall budget")
                continue
            log(f"== {g} (elapsed {self.elapsed():.1f} s, budget {self.gbudget:.0f} s)")
            try:
                with torch.no_grad():
                    getattr(self, "run_" + g)()
            except Exception as e:
                traceback.print_exc()
                self.note(f"group {g} aborted: {e!r}"[:400])
            if self.cuda:
                try:
                    torch.cuda.synchronize()
                except Exception:
                    pass
                torch.cuda.empty_cache()
            self.res["group_wall_s"][g] = round(time.time() - self.tg, 1)
            self.write()
        self.summary()

    # =================================================================== 5/6 linear: bf16 baseline
    def shapes(self):
        return LLAMA_KN if not self.smoke else [("tiny_a", 256, 512), ("tiny_b", 512, 256)]

    def run_linear(self):
        ms = M_FP8 if not self.smoke else [1, 16, 64]
        for M in ms:
            for tag, K, N in self.shapes():
                x_b = 2 * M * K + 2 * M * N + 2 * K * N

                def mk(M=M, K=K, N=N):
                    x, w = self.rand(M, K), self.rand(N, K, scale=0.02)
                    return lambda: F.linear(x, w)
                self.sample("dense_bf16", "F.linear(x bf16, W bf16) (cuBLAS)", {"M": M, "K": K, "N": N, "tag": tag},
                            2 * M * K * N, x_b, mk)

    # =================================================================== 6 fp8 GEMMs
    def run_fp8(self):
        K, N = (4096, 4096) if not self.smoke else (256, 256)
        quant = self.quant or MK.eager_row_quant

        def c_fp8(rowwise):
            def g():
                M = 48
                x = self.rand(M, K)
                w = self.rand(N, K, scale=0.02)
                if rowwise:
                    q, sa = quant(x, fp8=True)
                    sw = w.float().abs().amax(1, keepdim=True) / 448.0
                    wq = (w.float() / sw).to(FP8)
                    y = torch._scaled_mm(q, wq.t(), scale_a=sa, scale_b=sw.t().contiguous(), out_dtype=BF16)
                    sw = sw.reshape(-1)
                else:
                    sa = (x.float().abs().amax() / 448.0)
                    sw = (w.float().abs().amax() / 448.0)
                    q = (x.float() / sa).to(FP8)
                    wq = (w.float() / sw).to(FP8)
                    y = torch._scaled_mm(q, wq.t(), scale_a=sa, scale_b=sw, out_dtype=BF16)
                    sw = sw.reshape(1, 1)
                deq = (q.double() * sa.double()) @ (wq.double() * sw.double().reshape(-1, 1)).t()
                return {"vs_bf16_inputs": round(rel_err(y, x.double() @ w.double().t()), 6),
                        "vs_dequantized_operands": round(rel_err(y, deq), 6)}
            return g
        self.check("fp8_tensorwise_vs_bf16_inputs_rel_err", c_fp8(False))
        self.check("fp8_rowwise_pipeline_vs_bf16_inputs_rel_err", c_fp8(True))

        def tw(M, K, N):
            a = self.rand(M, K).to(FP8)
            b = self.rand(N, K).to(FP8).t()
            sa = torch.tensor(0.5, device=self.dev)
            sb = torch.tensor(0.01, device=self.dev)
            return lambda: torch._scaled_mm(a, b, scale_a=sa, scale_b=sb, out_dtype=BF16)

        def rw(M, K, N):
            a = self.rand(M, K).to(FP8)
            b = self.rand(N, K).to(FP8).t()
            sa = torch.rand(M, 1, device=self.dev, dtype=torch.float32)
            sb = torch.rand(1, N, device=self.dev, dtype=torch.float32)
            return lambda: torch._scaled_mm(a, b, scale_a=sa, scale_b=sb, out_dtype=BF16)

        def pipe(M, K, N):
            x = self.rand(M, K)
            b = self.rand(N, K).to(FP8).t()
            sb = torch.rand(1, N, device=self.dev, dtype=torch.float32)

            def call():
                q, sa = quant(x, fp8=True)
                return torch._scaled_mm(q, b, scale_a=sa, scale_b=sb, out_dtype=BF16)
            return call

        qname = "Triton per-token amax+e4m3 quant kernel (tools/measure_kernels.py)" if self.quant else \
            "eager per-token quant (amax, div, clamp, cast)"
        fams = [
            ("fp8_tensorwise_gemm", "torch._scaled_mm(a e4m3, b e4m3 (col-major), scale_a=0-dim fp32, "
             "scale_b=0-dim fp32, out_dtype=bf16): static per-tensor scales, activation already e4m3 (no quant "
             "kernel)", tw, lambda M, K, N: M * K + K * N + 2 * M * N),
            ("fp8_rowwise_gemm", "torch._scaled_mm(a e4m3, b e4m3, scale_a=[M,1] fp32, scale_b=[1,N] fp32, "
             "out_dtype=bf16): GEMM alone", rw, lambda M, K, N: M * K + K * N + 2 * M * N + 4 * (M + N)),
            ("fp8_rowwise_pipeline", f"{qname} on bf16 x + torch._scaled_mm rowwise", pipe,
             lambda M, K, N: 2 * M * K + K * N + 2 * M * N + 4 * N),
        ]
        ms = M_FP8 if not self.smoke else [1, 16, 64]
        broken = set()
        for M in ms:
            for tag, K, N in self.shapes():
                for fam, kern, make, nb in fams:
                    if fam in broken:
                        continue
                    shp = {"M": M, "K": K, "N": N, "tag": tag}
                    s = self.sample(fam, kern, shp, 2 * M * K * N, nb(M, K, N), lambda: make(M, K, N))
                    if s is None and not self.over():
                        Mp = max(16, -(-M // 16) * 16)
                        if Mp != M:
                            s = self.sample(fam, kern, shp, 2 * M * K * N, nb(M, K, N), lambda: make(Mp, K, N),
                                            extra={"padded_M": Mp})
                        if s is None and M == ms[0] and tag == self.shapes()[0][0]:
                            broken.add(fam)
                            self.skip({"family": fam}, "fails at the first shape: " +
                                      str((self.cal.skipped[-1] if self.cal.skipped else {}).get("why")))

    # =================================================================== 5 weight-only int8 / int4
    def int4_weight(self, N, K):
        wq = torch.randint(0, 16, (N, K), device=self.dev, dtype=torch.int32)
        wu8 = (wq[:, ::2] << 4 | wq[:, 1::2]).to(torch.uint8)
        packed = torch.ops.aten._convert_weight_to_int4pack(wu8, 8)
        sz = torch.empty(K // GROUP, N, 2, device=self.dev, dtype=BF16)
        sz[..., 0].uniform_(0.001, 0.01)
        sz[..., 1].normal_(0, 0.01)
        return wq, wu8, packed, sz

    @staticmethod
    def int4_dequant(wu8, s, z):
        """Eager unpack+dequant of uint8-packed int4 [N, K/2] (high nibble first), tinygemm convention
        w = (q - 8) * scale + zero per 128-group; s, z [N, K/128] bf16."""
        N = wu8.shape[0]
        q = torch.stack([wu8 >> 4, wu8 & 15], -1).view(N, -1, GROUP).to(BF16)
        return ((q - 8) * s.unsqueeze(-1) + z.unsqueeze(-1)).view(N, -1)

    def run_wquant(self):
        shapes = self.shapes()
        ms = [1, 16, 128, 2, 4, 8, 32, 64, 256] if not self.smoke else [1, 16]  # headline M first
        K0, N0 = shapes[0][1], shapes[0][2]

        def int8_lin(x, wq, s):  # gpt-fast WeightOnlyInt8Linear.forward
            return F.linear(x, wq.to(dtype=x.dtype)) * s

        def int4_lin(x, packed, sz):  # gpt-fast WeightOnlyInt4Linear (linear_forward_int4)
            return torch.ops.aten._weight_int4pack_mm(x, packed, GROUP, sz)

        def int4_deq_lin(x, wu8, s, z):
            return F.linear(x, Runner.int4_dequant(wu8, s, z))

        def cdt():
            if self.cuda:
                import torch._inductor.config as ic
                return ic.patch(coordinate_descent_tuning=True)
            return contextlib.nullcontext()
        c_int8 = self.compile(int8_lin, dynamic=False)
        c_int4 = self.compile(int4_lin, dynamic=False)
        c_int4d = self.compile(int4_deq_lin, dynamic=False)

        x = self.rand(16, K0)

        def ck_int8():
            wq = torch.randint(-127, 128, (N0, K0), device=self.dev, dtype=torch.int8)
            s = torch.rand(N0, device=self.dev, dtype=BF16) * 0.01
            with cdt():
                y = c_int8(x, wq, s)
            return rel_err(y, x.double() @ (wq.double() * s.double()[:, None]).t())

        def ck_int4(fn):
            def g():
                wq, wu8, packed, sz = self.int4_weight(N0, K0)
                sc = sz[..., 0].float().repeat_interleave(GROUP, 0).t()
                zz = sz[..., 1].float().repeat_interleave(GROUP, 0).t()
                ref = x.double() @ ((wq.double() - 8) * sc.double() + zz.double()).t()
                with cdt():
                    y = fn(x, packed, sz) if fn is not None else c_int4d(x, wu8, sz[..., 0].t().contiguous(),
                                                                        sz[..., 1].t().contiguous())
                return rel_err(y, ref)
            return g
        self.check("int8_weightonly_compiled_rel_err", ck_int8)
        self.check("int4_tinygemm_compiled_rel_err", ck_int4(c_int4))
        self.check("int4_tinygemm_eager_rel_err", ck_int4(int4_lin))
        self.check("int4_dequant_gemm_compiled_rel_err", ck_int4(None))

        act = lambda M, K, N: 2 * M * K + 2 * M * N  # noqa: E731
        i8b = lambda M, K, N: act(M, K, N) + K * N + 2 * N  # noqa: E731
        i4b = lambda M, K, N: act(M, K, N) + K * N // 2 + (K // GROUP) * N * 4  # noqa: E731

        def mk_int8(fn):
            def make(M, K, N):
                x = self.rand(M, K)
                wq = torch.randint(-127, 128, (N, K), device=self.dev, dtype=torch.int8)
                s = torch.rand(N, device=self.dev, dtype=BF16) * 0.01
                return lambda: fn(x, wq, s)
            return make

        def mk_int8pack(M, K, N):
            x = self.rand(M, K)
            wq = torch.randint(-127, 128, (N, K), device=self.dev, dtype=torch.int8)
            s = torch.rand(N, device=self.dev, dtype=BF16) * 0.01
            return lambda: torch._weight_int8pack_mm(x, wq, s)

        def mk_int4(fn):
            def make(M, K, N):
                x = self.rand(M, K)
                _, _, packed, sz = self.int4_weight(N, K)
                return lambda: fn(x, packed, sz)
            return make

        def mk_int4d(fn):
            def make(M, K, N):
                x = self.rand(M, K)
                wu8 = torch.randint(0, 256, (N, K // 2), device=self.dev, dtype=torch.int32).to(torch.uint8)
                s = torch.rand(N, K // GROUP, device=self.dev, dtype=BF16) * 0.01
                z = torch.rand(N, K // GROUP, device=self.dev, dtype=BF16) * 0.01
                return lambda: fn(x, wu8, s, z)
            return make

        # (family, kernel, make, bytes, shapes, Ms, compiled)
        fams = [
            ("int8_wo_compiled", "torch.compile(lambda x,wq,s: F.linear(x, wq.to(bf16)) * s, dynamic=False) with "
             "inductor coordinate_descent_tuning=True (gpt-fast WeightOnlyInt8Linear), per-channel bf16 scale",
             mk_int8(c_int8), i8b, shapes[:1] + shapes[3:] + shapes[1:3], ms, True),
            ("int8_wo_dequant_eager", "eager F.linear(x, wq.to(bf16)) * s (convert kernel writes bf16 W, cuBLAS "
             "GEMM, scale kernel)", mk_int8(int8_lin), i8b, shapes, ms, False),
            ("int8_wo_int8pack", "torch._weight_int8pack_mm(x bf16, wq int8 [N,K], s bf16 [N])", mk_int8pack, i8b,
             shapes, ms, False),
            ("int4_tinygemm", "torch.ops.aten._weight_int4pack_mm(x, packed (inner_k_tiles 8), 128, "
             "scales_and_zeros bf16 [K/128,N,2]) eager (the op gpt-fast's compiled WeightOnlyInt4Linear calls)",
             mk_int4(int4_lin), i4b, shapes, ms, False),
            ("int4_tinygemm_compiled", "torch.compile(aten._weight_int4pack_mm wrapper, dynamic=False) "
             "(gpt-fast int4 path)", mk_int4(c_int4), i4b, shapes[:1], ms, True),
            ("int4_dequant_gemm_eager", "eager unpack uint8 nibbles (>>4, &15, stack) -> bf16, (q-8)*s+z per "
             "128-group, F.linear (cuBLAS)", mk_int4d(int4_deq_lin), i4b, shapes, ms, False),
            ("int4_dequant_gemm_compiled", "torch.compile(unpack+dequant+F.linear, dynamic=False, "
             "coordinate_descent_tuning=True)", mk_int4d(c_int4d), i4b, shapes[:1],
             [m for m in ms if m in (1, 16, 128)] or ms[:1], True),
        ]
        # eager/cheap families first, then the compiled ones (compile time dominates)
        fams.sort(key=lambda f: f[6])
        broken = set()
        for fam, kern, make, nb, shp, mlist, compiled in fams:
            tf = time.time()
            for M in mlist:
                for tag, K, N in shp:
                    if fam in broken:
                        continue
                    if compiled and time.time() - tf > 0.45 * self.gbudget:
                        self.skip({"family": fam, "shape": {"M": M, "K": K, "N": N, "tag": tag}}, "family budget")
                        continue
                    t1 = time.time()
                    with (cdt() if compiled else contextlib.nullcontext()):
                        s = self.sample(fam, kern, {"M": M, "K": K, "N": N, "tag": tag}, 2 * M * K * N,
                                        nb(M, K, N), lambda: make(M, K, N),
                                        extra={"compiled": bool(compiled and self.cuda)})
                    if s is not None and compiled:
                        s["wall_incl_compile_s"] = round(time.time() - t1, 2)
                    if s is None and M == mlist[0] and tag == shp[0][0] and not self.over():
                        broken.add(fam)
                        self.skip({"family": fam}, "fails at the first shape: " +
                                  str((self.cal.skipped[-1] if self.cal.skipped else {}).get("why")))
            self.write()
        if self.cuda:
            try:
                fn = mk_int8(c_int8)(1, K0, N0)
                with cdt():
                    self.res["checks"]["int8_wo_compiled_kernels_M1"] = self.kernels_of(fn)
                fn = mk_int8(c_int8)(16, K0, N0)
                with cdt():
                    self.res["checks"]["int8_wo_compiled_kernels_M16"] = self.kernels_of(fn)
            except Exception as e:
                self.res["checks"]["int8_wo_compiled_kernels"] = "FAIL " + repr(e)[:200]

    # =================================================================== 7 FP8 KV-cache decode
    def sdpa_gqa(self, q, k, v, **kw):
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=k.shape[1] != q.shape[1], **kw)

    def run_fp8kv(self):
        H, Hkv, d = (32, 8, 128) if not self.smoke else (4, 2, 32)
        Bs = [1, 4, 16, 64] if not self.smoke else [1, 2]
        Cs = [1024, 4096, 16384] if not self.smoke else [64, 256]
        sdpa = self.sdpa_gqa
        flex = None
        try:
            from torch.nn.attention.flex_attention import flex_attention
            flex = self.flex_fn("plain", flex_attention)
        except Exception as e:
            self.skip({"family": "fp8kv_flex"}, "flex_attention import: " + repr(e))

        def dq_sdpa(q, k8, v8, sk, sv, kb, vb):
            kb.copy_(k8)
            vb.copy_(v8)
            return sdpa(q * sk, kb, vb) * sv

        # correctness: fp8 dequant path vs float reference on the dequantized values
        B, C = 2, Cs[-1]
        q = self.rand(B, H, 1, d)
        k = self.rand(B, Hkv, C, d)
        v = self.rand(B, Hkv, C, d)
        sk = (k.float().abs().amax() / 448.0)
        sv = (v.float().abs().amax() / 448.0)
        k8, v8 = (k.float() / sk).to(FP8), (v.float() / sv).to(FP8)
        kd, vd = k8.double() * sk.double(), v8.double() * sv.double()
        rep = H // Hkv
        ref = F.scaled_dot_product_attention(q.double(), kd.repeat_interleave(rep, 1), vd.repeat_interleave(rep, 1))
        ref_bf = F.scaled_dot_product_attention(q.double(), k.double().repeat_interleave(rep, 1),
                                                v.double().repeat_interleave(rep, 1))
        kb, vb = torch.empty_like(k), torch.empty_like(v)
        self.check("fp8kv_dequant_sdpa_vs_float_on_dequantized_rel_err",
                   lambda: rel_err(dq_sdpa(q, k8, v8, sk.to(BF16), sv.to(BF16), kb, vb), ref))
        self.check("fp8kv_quantization_error_vs_bf16_kv_rel_err", lambda: rel_err(ref, ref_bf))
        support = {}
        self.res["fp8kv_support"] = support

        def attempt(name, fn):
            try:
                y = fn()
                self.sync()
                support[name] = {"runs": True, "rel_err_vs_dequantized_ref": round(rel_err(y.float(), ref), 6),
                                 "out_dtype": str(y.dtype)}
            except Exception as e:
                self.sync()
                support[name] = {"runs": False, "error": repr(e)[:300]}
            log(f"  fp8kv support {name}: {support[name]}")

        attempt("sdpa_q_bf16_kv_e4m3", lambda: sdpa(q, k8, v8))
        attempt("sdpa_all_e4m3", lambda: sdpa(q.to(FP8), k8, v8))
        if flex is not None:
            fsc = self.flex_fn("scaled", flex_attention)
            attempt("flex_q_bf16_kv_e4m3", lambda: fsc(q, k8, v8, None, float(sk) / math.sqrt(d)).float() * sv)
            attempt("flex_all_e4m3", lambda: fsc(q.to(FP8), k8, v8, None, float(sk) / math.sqrt(d)).float() * sv)
        flex_fp8_ok = flex is not None and support.get("flex_all_e4m3", {}).get("runs") and \
            support["flex_all_e4m3"].get("rel_err_vs_dequantized_ref", 1) < 0.05
        flex_mixed_ok = flex is not None and support.get("flex_q_bf16_kv_e4m3", {}).get("runs") and \
            support["flex_q_bf16_kv_e4m3"].get("rel_err_vs_dequantized_ref", 1) < 0.05
        self.res["fp8kv_support"]["note"] = ("flex attempts: compiled flex_attention(dynamic=False) with "
                                             "scale=s_k/sqrt(d) and the output times s_v; flex_all_e4m3 also "
                                             "casts q to e4m3 (adds error); rel err vs the float64 reference "
                                             "on the dequantized K/V")
        for B in Bs:
            for C in Cs:
                shp = {"B": B, "H": H, "Hkv": Hkv, "d": d, "Sq": 1, "L": C}
                fl = 4 * B * H * C * d
                kv16 = 2 * B * Hkv * C * d * 2
                kv8 = kv16 // 2
                qo = 2 * B * H * d * 2

                def mk_bf(B=B, C=C):
                    q, k, v = self.rand(B, H, 1, d), self.rand(B, Hkv, C, d), self.rand(B, Hkv, C, d)
                    return lambda: sdpa(q, k, v)

                def mk_dq(B=B, C=C):
                    q = self.rand(B, H, 1, d)
                    k8, v8 = self.rand(B, Hkv, C, d).to(FP8), self.rand(B, Hkv, C, d).to(FP8)
                    kb, vb = torch.empty(B, Hkv, C, d, device=self.dev, dtype=BF16), \
                        torch.empty(B, Hkv, C, d, device=self.dev, dtype=BF16)
                    sk = torch.tensor(0.01, device=self.dev, dtype=BF16)
                    return lambda: dq_sdpa(q, k8, v8, sk, sk, kb, vb)

                self.sample("decode_sdpa_bf16kv", "F.scaled_dot_product_attention(q[B,32,1,128], K/V bf16 "
                            "[B,8,C,128], enable_gqa=True) default backend", shp, fl, kv16 + qo, mk_bf)
                self.sample("decode_sdpa_fp8kv_dequant", "K/V e4m3 per-tensor scale: kbuf.copy_(k8), "
                            "vbuf.copy_(v8) (bf16 buffers), SDPA(q*s_k, kbuf, vbuf, enable_gqa)*s_v", shp, fl,
                            kv8 + qo, mk_dq, ws=kv8 + 2 * kv16,
                            extra={"bytes_incl_dequant_roundtrip": kv8 + 2 * kv16 + kv16 + qo})
                if flex is not None:
                    def mk_fx(B=B, C=C):
                        q, k, v = self.rand(B, H, 1, d), self.rand(B, Hkv, C, d), self.rand(B, Hkv, C, d)
                        return lambda: flex(q, k, v, None)
                    self.sample("decode_flex_bf16kv", "torch.compile(flex_attention)(q, K, V bf16, "
                                "block_mask=None, enable_gqa=True) (flex decoding kernel)", shp, fl, kv16 + qo, mk_fx)
                    if flex_mixed_ok:
                        def mk_mx(B=B, C=C):
                            q = self.rand(B, H, 1, d)
                            k8, v8 = self.rand(B, Hkv, C, d).to(FP8), self.rand(B, Hkv, C, d).to(FP8)
                            return lambda: flex(q, k8, v8, None)
                        self.sample("decode_flex_fp8kv_mixed", "torch.compile(flex_attention)(q bf16, K/V e4m3 "
                                    "[B,8,C,128], block_mask=None, enable_gqa=True): the kernel loads e4m3 K/V "
                                    "(per-tensor scales folded into scale= and the output)", shp, fl, kv8 + qo,
                                    mk_mx)
                    if flex_fp8_ok:
                        def mk_f8(B=B, C=C):
                            q = self.rand(B, H, 1, d).to(FP8)
                            k8, v8 = self.rand(B, Hkv, C, d).to(FP8), self.rand(B, Hkv, C, d).to(FP8)
                            return lambda: flex(q, k8, v8, None)
                        self.sample("decode_flex_fp8kv", "torch.compile(flex_attention)(q e4m3, K/V e4m3, "
                                    "enable_gqa=True) (all-e4m3 inputs, e4m3 output)", shp, fl, kv8 + qo // 2, mk_f8)

    # =================================================================== 8 CUDA-graph step overhead
    def run_graph(self):
        out = {"impl": {}, "points": {}}
        self.res["graph_overhead"] = out
        if not self.cuda:
            self.skip({"what": "graph_overhead"}, "needs CUDA")
            return
        x = torch.zeros(1, device=self.dev)
        N = 2000

        def host_loop(fn, n, sync_each=False):
            for _ in range(20):
                fn()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
                if sync_each:
                    torch.cuda.synchronize()
            t1 = time.perf_counter()
            torch.cuda.synchronize()
            t2 = time.perf_counter()
            return (t1 - t0) / n, (t2 - t0) / n  # host issue time / call, wall / call (incl. drain)

        # eager tiny kernels
        iss, wall = host_loop(lambda: x.add_(1.0), N)
        out["points"]["eager_tiny_kernel"] = {"host_issue_s": CG._r(iss), "wall_per_call_s": CG._r(wall)}
        iss, wall = host_loop(lambda: x.add_(1.0), 500, sync_each=True)
        out["points"]["eager_tiny_kernel_sync_each"] = {"wall_per_call_s": CG._r(wall)}
        # graphs of n tiny kernels
        for n in (1, 10, 100, 1000):
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for _ in range(n):
                    x.add_(1.0)
            iss, wall = host_loop(g.replay, 1000 if n <= 100 else 200)
            _, wall_sync = host_loop(g.replay, 300 if n <= 100 else 100, sync_each=True)
            ev = [torch.cuda.Event(enable_timing=True) for _ in range(51)]
            torch.cuda._sleep(1_000_000)
            ev[0].record()
            for i in range(50):
                g.replay()
                ev[i + 1].record()
            torch.cuda.synchronize()
            gts = [ev[i].elapsed_time(ev[i + 1]) * 1e-3 for i in range(50)]
            out["points"][f"graph_{n}_tiny_kernels"] = {
                "host_replay_call_s": CG._r(iss), "wall_per_replay_back_to_back_s": CG._r(wall),
                "wall_per_replay_sync_each_s": CG._r(wall_sync),
                "gpu_time_per_replay_s": CG._r(CG.quantile(gts, 0.5))}
            log(f"  graph {n:5d} kernels: host {iss * 1e6:.2f} us, wall {wall * 1e6:.2f} us, "
                f"sync-each {wall_sync * 1e6:.2f} us, gpu {CG.quantile(gts, 0.5) * 1e6:.2f} us")
            del g
        out["impl"]["tiny"] = ("x.add_(1.0) on one fp32 element; host_replay_call_s = host time per g.replay() "
                               "call queued back to back; wall_per_replay_back_to_back_s incl. the final drain; "
                               "sync_each = replay + torch.cuda.synchronize() per step; gpu_time_per_replay_s = "
                               "CUDA events between back-to-back replays")
        # 32-layer tiny decoder decode step
        cfg = dict(layers=32, hidden=256, heads=4, kv_heads=4, head_dim=64, intermediate=512, vocab=1024)
        C = 256
        old = CG.FP16
        CG.FP16 = BF16
        try:
            model = CG.TinyLlama(cfg, self.dev, smoke=False)
        finally:
            CG.FP16 = old
        model.dtype = BF16
        model.cos, model.sin = model.cos.to(BF16), model.sin.to(BF16)
        cache = model.new_cache(1, C + 1)
        tok = torch.randint(0, cfg["vocab"], (1, 1), device=self.dev)
        step = lambda: model.decode_step(tok, cache, C)  # noqa: E731
        y_e = step()
        ks = self.kernels_of(step)
        iss, wall = host_loop(step, 200)
        _, wall_sync = host_loop(step, 100, sync_each=True)
        g = torch.cuda.CUDAGraph()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            step()
        torch.cuda.current_stream().wait_stream(s)
        with torch.cuda.graph(g):
            y_g = step()
        g.replay()
        torch.cuda.synchronize()
        self.res["checks"]["graph_tiny_decode_replay_vs_eager_rel_err"] = round(rel_err(y_g, y_e), 6)
        giss, gwall = host_loop(g.replay, 500)
        _, gwall_sync = host_loop(g.replay, 200, sync_each=True)
        out["points"]["tiny32_decode_step"] = {
            "config": dict(cfg, batch=1, context=C, dtype="bfloat16"),
            "kernels_per_step": ks.get("kernels"), "gpu_busy_s_per_step": ks.get("gpu_busy_s"),
            "eager_host_issue_s": CG._r(iss), "eager_wall_back_to_back_s": CG._r(wall),
            "eager_wall_sync_each_s": CG._r(wall_sync),
            "graph_host_replay_call_s": CG._r(giss), "graph_wall_back_to_back_s": CG._r(gwall),
            "graph_wall_sync_each_s": CG._r(gwall_sync)}
        out["impl"]["tiny32"] = ("CG.TinyLlama (tools/calibrate_gpu.py) 32 layers, hidden 256, 4 heads x 64, "
                                 "inter 512, vocab 1024, bf16, eager F.rms_norm, SDPA; one decode step at position "
                                 "256 (B=1); eager = Python issuing every kernel; graph = the same step captured")
        log(f"  tiny32 decode: {ks.get('kernels')} kernels; eager issue {iss * 1e6:.1f} us, sync-each "
            f"{wall_sync * 1e6:.1f} us; graph issue {giss * 1e6:.1f} us, back-to-back {gwall * 1e6:.1f} us, "
            f"sync-each {gwall_sync * 1e6:.1f} us")
        for key, fam, v in (("eager_wall_sync_each_s", "step_tiny32_decode_eager", wall_sync),
                            ("graph_wall_back_to_back_s", "step_tiny32_decode_graph", gwall)):
            self.cal.samples.append({"class": fam, "name": fam, "family": fam, "group": "graph",
                                     "kernel": out["impl"]["tiny32"] + f" [{key}]",
                                     "shape": {"layers": 32, "B": 1, "context": C, "kernels": ks.get("kernels")},
                                     "flops": 0.0, "bytes": 0.0, "time_s": CG._r(v), "p10": None, "p90": None,
                                     "graph": fam.endswith("graph"), "timer": "host perf_counter"})
        del g, model, cache

    # =================================================================== 4 Qwen3 q/k norm and layer
    def run_qwen3(self):
        if self.smoke:
            D, H, Hkv, d, I, C = 256, 4, 2, 64, 512, 128
            Bs, Ss, Ts = [1, 4], [64], [1, 64]
        else:
            D, H, Hkv, d, I, C = 4096, 32, 8, 128, 12288, 4096
            Bs, Ss, Ts = [1, 2, 4, 8, 16, 32, 64], [512, 1024, 2048, 4096], [1, 8, 32, 64, 512, 2048, 4096]
        eps = 1e-6
        cos, sin = rope_tables(C + max(Ss) + 2, d, self.dev, BF16)

        def make_w(dtype=BF16):
            w = lambda *s: self.rand(*s, scale=0.02, dtype=dtype)  # noqa: E731
            return dict(wq=w(H * d, D), wk=w(Hkv * d, D), wv=w(Hkv * d, D), wo=w(D, H * d), wg=w(I, D),
                        wu=w(I, D), wd=w(D, I), ln1=1 + self.rand(D, scale=0.1, dtype=dtype),
                        ln2=1 + self.rand(D, scale=0.1, dtype=dtype), qn=1 + self.rand(d, scale=0.1, dtype=dtype),
                        kn=1 + self.rand(d, scale=0.1, dtype=dtype))

        def layer(x, L, pos, cache, qk_norm=True):
            B, S, _ = x.shape
            h = F.rms_norm(x, (D,), L["ln1"], eps)
            q = F.linear(h, L["wq"]).view(B, S, H, d)
            k = F.linear(h, L["wk"]).view(B, S, Hkv, d)
            v = F.linear(h, L["wv"]).view(B, S, Hkv, d).transpose(1, 2)
            if qk_norm:
                q = F.rms_norm(q, (d,), L["qn"], eps)
                k = F.rms_norm(k, (d,), L["kn"], eps)
            q, k = q.transpose(1, 2), k.transpose(1, 2)
            c, s = cos[pos:pos + S].to(x.dtype), sin[pos:pos + S].to(x.dtype)
            q, k = q * c + rot_half(q) * s, k * c + rot_half(k) * s
            if cache is None:
                o = self.sdpa_gqa(q, k, v, is_causal=True)
            else:
                kc, vc = cache
                kc[:, :, pos:pos + S].copy_(k)
                vc[:, :, pos:pos + S].copy_(v)
                o = self.sdpa_gqa(q, kc[:, :, :pos + S], vc[:, :, :pos + S], is_causal=S > 1)
            x = x + F.linear(o.transpose(1, 2).reshape(B, S, H * d), L["wo"])
            h = F.rms_norm(x, (D,), L["ln2"], eps)
            return x + F.linear(F.silu(F.linear(h, L["wg"])) * F.linear(h, L["wu"]), L["wd"])

        def ck_layer():
            L = make_w()
            Lf = {k: v.double() for k, v in L.items()}
            x = self.rand(2, 64 if not self.smoke else 16, D)
            y = layer(x, L, 0, None)
            yr = layer(x.double(), Lf, 0, None)
            return {"output": round(rel_err(y, yr), 6),
                    "residual_delta (bf16 rounding of x+delta dominates)": round(rel_err(y - x, yr - x.double()), 6)}

        def ck_norm():
            q = self.rand(8, H, d)
            w = 1 + self.rand(d, scale=0.1)
            qf = q.double()
            ref = qf * torch.rsqrt(qf.pow(2).mean(-1, keepdim=True) + eps) * w.double()
            return rel_err(F.rms_norm(q, (d,), w, eps), ref)
        self.check("qwen3_qk_rmsnorm_rel_err", ck_norm)
        self.check("qwen3_layer_prefill_vs_float64_rel_err", ck_layer)
        # per-head q/k RMSNorm alone (two F.rms_norm calls over [T,32,128] and [T,8,128])
        for T in Ts:
            def mk(T=T):
                q, k = self.rand(T, H, d), self.rand(T, Hkv, d)
                wq_, wk_ = 1 + self.rand(d, scale=0.1), 1 + self.rand(d, scale=0.1)
                return lambda: (F.rms_norm(q, (d,), wq_, eps), F.rms_norm(k, (d,), wk_, eps))
            nb = 2 * 2 * T * (H + Hkv) * d + 4 * d
            self.sample("qwen3_qk_rmsnorm", "F.rms_norm(q[T,32,128], (128,), w_q) + F.rms_norm(k[T,8,128], (128,), "
                        "w_k) eager (2 kernels)", {"T": T, "H": H, "Hkv": Hkv, "d": d}, 4 * T * (H + Hkv) * d, nb, mk)
        wbytes = 2 * (D * (H + 2 * Hkv) * d + H * d * D + 3 * D * I + 2 * D + 2 * d)
        lin_fl = lambda T: 2 * T * (D * (H + 2 * Hkv) * d + H * d * D + 3 * D * I)  # noqa: E731
        for qkn in (True, False):
            fam = "qwen3_8b_layer_decode" + ("" if qkn else "_no_qknorm")
            for B in Bs:
                def mk(B=B, qkn=qkn):
                    L = make_w()
                    kc = self.rand(B, Hkv, C + 1, d)
                    vc = self.rand(B, Hkv, C + 1, d)
                    x = self.rand(B, 1, D)
                    return lambda: layer(x, L, C, (kc, vc), qkn)
                kvb = 2 * B * Hkv * (C + 1) * d * 2
                self.sample(fam, "eager Qwen3-8B-shaped decoder layer: F.rms_norm, q/k/v F.linear, per-head "
                            "q/k F.rms_norm" + ("" if qkn else " (omitted)") + ", rotate-half rope, KV-cache "
                            "copy_, SDPA(enable_gqa) over C+1 keys, o_proj, residual, SwiGLU MLP",
                            {"B": B, "context": C, "hidden": D, "H": H, "Hkv": Hkv, "d": d, "inter": I},
                            lin_fl(B) + 4 * B * H * (C + 1) * d, wbytes + kvb + 4 * B * D, mk)
        for S in Ss:
            for qkn in (True, False):
                fam = "qwen3_8b_layer_prefill" + ("" if qkn else "_no_qknorm")

                def mk(S=S, qkn=qkn):
                    L = make_w()
                    x = self.rand(1, S, D)
                    return lambda: layer(x, L, 0, None, qkn)
                self.sample(fam, "eager Qwen3-8B-shaped decoder layer prefill (B=1, causal SDPA enable_gqa, "
                            "q/k norm" + ("" if qkn else " omitted") + ")",
                            {"B": 1, "S": S, "hidden": D, "H": H, "Hkv": Hkv, "d": d, "inter": I},
                            lin_fl(S) + 2 * H * S * S * d, wbytes + 4 * S * D, mk)

    # =================================================================== 1 MLA
    MLA_CFGS = {
        "deepseek_v2_lite": dict(hidden=2048, heads=16, kv_lora_rank=512, qk_rope_head_dim=64, qk_nope_head_dim=128,
                                 v_head_dim=128, q_lora_rank=None),
        "deepseek_v3": dict(hidden=7168, heads=128, kv_lora_rank=512, qk_rope_head_dim=64, qk_nope_head_dim=128,
                            v_head_dim=128, q_lora_rank=1536),
    }

    def run_mla(self):
        cfgs = dict(self.MLA_CFGS)
        if self.smoke:
            cfgs = {"tiny_mla": dict(hidden=128, heads=4, kv_lora_rank=64, qk_rope_head_dim=16, qk_nope_head_dim=32,
                                     v_head_dim=32, q_lora_rank=None),
                    "tiny_mla_qlora": dict(hidden=128, heads=4, kv_lora_rank=64, qk_rope_head_dim=16,
                                           qk_nope_head_dim=32, v_head_dim=32, q_lora_rank=96)}
            Bs, Cs, Ss = [1, 4], [64, 128], [64]
        else:
            Bs, Cs, Ss = [1, 2, 4, 8, 16, 32, 64], [512, 1024, 2048, 4096, 8192], [512, 1024, 2048, 4096]
        self.res["mla"] = {"configs": cfgs, "impl": {
            "decode_absorbed": "x[B,D] -> q path (q_proj, or q_a_proj + RMSNorm + q_b_proj) -> q_nope, q_pe (rope); "
                               "kv_a_proj_with_mqa -> latent RMSNorm, k_pe rope, written into the latent cache "
                               "[B, maxctx, 512+64] at pos=ctx-1; q_lat = bmm(q_nope[H,B,128], W_UK[H,128,512]); "
                               "core over cache[:, :ctx] shared by all heads; o = bmm(o_lat[H,B,512], "
                               "W_UV^T[H,512,128]); o_proj. bf16, scale 1/sqrt(192)",
            "core_bmm": "scores = bmm(q_cat[B,H,576], cache^T[B,576,ctx]); softmax fp32 -> bf16; "
                        "o_lat = bmm(p[B,H,ctx], cache[:, :, :512]) (cache read twice)",
            "core_sdpa": "F.scaled_dot_product_attention(q_cat[B,1,H,576] (heads as queries), cache[B,1,ctx,576], "
                         "cache[..., :512], scale) default backend (head dim 576: flash and cuDNN refuse it)",
            "prefill_expanded": "B=1, S tokens: q path, kv_a_proj + RMSNorm + rope, latent written to cache, "
                                "kv_b_proj up-projection [S,H,256] -> k_nope, v; k = cat(k_nope, k_pe broadcast); "
                                "SDPA causal with qk dim 192, v dim 128; o_proj"}, "backends": {}}
        for name, c in cfgs.items():
            if self.over():
                self.skip({"mla_model": name}, "budget")
                continue
            self._mla_model(name, c, Bs, Cs, Ss)
            self.write()

    def _mla_weights(self, c):
        D, H, r, dr, dn, dv, qr = (c[k] for k in ("hidden", "heads", "kv_lora_rank", "qk_rope_head_dim",
                                                  "qk_nope_head_dim", "v_head_dim", "q_lora_rank"))
        w = lambda *s: self.rand(*s, scale=0.02)  # noqa: E731
        W = {}
        if qr:
            W["wqa"], W["qa_norm"], W["wqb"] = w(qr, D), 1 + self.rand(qr, scale=0.1), w(H * (dn + dr), qr)
        else:
            W["wq"] = w(H * (dn + dr), D)
        W["wkva"], W["kva_norm"] = w(r + dr, D), 1 + self.rand(r, scale=0.1)
        W["wkvb"] = w(H * (dn + dv), r)
        W["wo"] = w(D, H * dv)
        kvb = W["wkvb"].view(H, dn + dv, r)
        W["w_uk"] = kvb[:, :dn].contiguous()                       # [H, dn, r]
        W["w_uvt"] = kvb[:, dn:].transpose(1, 2).contiguous()      # [H, r, dv]
        W["nbytes"] = sum(t.numel() * t.element_size() for k, t in W.items() if k not in ("w_uk", "w_uvt"))
        return W

    def _mla_fns(self, c, cos, sin):
        D, H, r, dr, dn, dv, qr = (c[k] for k in ("hidden", "heads", "kv_lora_rank", "qk_rope_head_dim",
                                                  "qk_nope_head_dim", "v_head_dim", "q_lora_rank"))
        scale = 1.0 / math.sqrt(dn + dr)
        eps = 1e-6

        def q_path(W, x):
            if qr:
                h = F.rms_norm(F.linear(x, W["wqa"]), (qr,), W["qa_norm"], eps)
                q = F.linear(h, W["wqb"])
            else:
                q = F.linear(x, W["wq"])
            return q.view(*x.shape[:-1], H, dn + dr)

        def rope(t, p0, n):  # t [..., n, (H,) dr] with positions p0..p0+n-1 along dim 0 of cos
            cc, ss = cos[p0:p0 + n], sin[p0:p0 + n]
            if t.dim() == 3:  # [n, H, dr]
                cc, ss = cc[:, None], ss[:, None]
            return t * cc.to(t.dtype) + rot_half(t) * ss.to(t.dtype)

        def kv_path(W, x, cache, pos):  # x [B, D] (decode) -> writes cache[:, pos]
            kv = F.linear(x, W["wkva"])
            lat = F.rms_norm(kv[..., :r], (r,), W["kva_norm"], eps)
            kpe = kv[..., r:] * cos[pos].to(x.dtype) + rot_half(kv[..., r:]) * sin[pos].to(x.dtype)
            cache[:, pos].copy_(torch.cat([lat, kpe], -1))

        def absorb(W, q, pos):  # q [B,H,dn+dr] -> q_cat [B,H,r+dr]
            q_nope, q_pe = q[..., :dn], q[..., dn:]
            q_pe = q_pe * cos[pos].to(q.dtype) + rot_half(q_pe) * sin[pos].to(q.dtype)
            q_lat = torch.bmm(q_nope.transpose(0, 1), W["w_uk"]).transpose(0, 1)
            return torch.cat([q_lat, q_pe], -1)

        def core_bmm(qc, kvc):
            s = torch.bmm(qc, kvc.transpose(1, 2))
            p = torch.softmax(s.float() * scale, -1).to(qc.dtype)
            return torch.bmm(p, kvc[..., :r])

        def core_sdpa(qc, kvc):
            return F.scaled_dot_product_attention(qc.unsqueeze(1), kvc.unsqueeze(1), kvc[..., :r].unsqueeze(1),
                                                  scale=scale).squeeze(1)

        def uv_o(W, o_lat):
            o = torch.bmm(o_lat.transpose(0, 1), W["w_uvt"]).transpose(0, 1)
            return F.linear(o.reshape(o.shape[0], H * dv), W["wo"])

        def block(W, x, cache, ctx, core):
            pos = ctx - 1
            q = q_path(W, x)
            kv_path(W, x, cache, pos)
            qc = absorb(W, q, pos)
            return uv_o(W, core(qc, cache[:, :ctx]))

        def prefill(W, x, cache, flash_pad=False):  # x [S, D], B=1
            S = x.shape[0]
            q = q_path(W, x)
            kv = F.linear(x, W["wkva"])
            lat = F.rms_norm(kv[:, :r], (r,), W["kva_norm"], eps)
            kpe = rope(kv[:, r:], 0, S)
            cache[0, :S].copy_(torch.cat([lat, kpe], -1))
            kvb = F.linear(lat, W["wkvb"]).view(S, H, dn + dv)
            k = torch.cat([kvb[..., :dn], kpe[:, None, :].expand(S, H, dr)], -1)
            v = kvb[..., dn:]
            qq = torch.cat([q[..., :dn], rope(q[..., dn:], 0, S)], -1)
            qq, k, v = qq.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None]
            if flash_pad:
                o = F.scaled_dot_product_attention(qq, k, F.pad(v, (0, dn + dr - dv)), is_causal=True,
                                                   scale=scale)[..., :dv]
            else:
                o = F.scaled_dot_product_attention(qq, k, v, is_causal=True, scale=scale)
            return F.linear(o[0].transpose(0, 1).reshape(S, H * dv), W["wo"])

        return SimpleNamespace(q_path=q_path, kv_path=kv_path, absorb=absorb, core_bmm=core_bmm,
                               core_sdpa=core_sdpa, uv_o=uv_o, block=block, prefill=prefill, scale=scale)

    def _mla_reference(self, c, W, x, cache_after, ctx, fns, cos, sin):
        """Expanded (non-absorbed) decode in float64 on the same weights and cache contents."""
        D, H, r, dr, dn, dv, qr = (c[k] for k in ("hidden", "heads", "kv_lora_rank", "qk_rope_head_dim",
                                                  "qk_nope_head_dim", "v_head_dim", "q_lora_rank"))
        Wd = {k: (v.double() if torch.is_tensor(v) else v) for k, v in W.items()}
        pos = ctx - 1
        q = fns.q_path(Wd, x.double())  # [B,H,dn+dr]
        q_pe = q[..., dn:] * cos[pos].double() + rot_half(q[..., dn:]) * sin[pos].double()
        qf = torch.cat([q[..., :dn], q_pe], -1)
        kvc = cache_after[:, :ctx].double()
        lat, kpe = kvc[..., :r], kvc[..., r:]
        kvb = (lat @ Wd["wkvb"].t()).view(*lat.shape[:2], H, dn + dv)  # [B,L,H,256]
        k = torch.cat([kvb[..., :dn], kpe[:, :, None, :].expand(-1, -1, H, dr)], -1)
        v = kvb[..., dn:]
        s = torch.einsum("bhd,blhd->bhl", qf, k) * fns.scale
        o = torch.einsum("bhl,blhd->bhd", torch.softmax(s, -1), v)
        return o.reshape(o.shape[0], H * dv) @ Wd["wo"].t()

    def _mla_model(self, name, c, Bs, Cs, Ss):
        D, H, r, dr, dn, dv, qr = (c[k] for k in ("hidden", "heads", "kv_lora_rank", "qk_rope_head_dim",
                                                  "qk_nope_head_dim", "v_head_dim", "q_lora_rank"))
        maxc = max(Cs + Ss) + 1
        cos, sin = rope_tables(maxc + 1, dr, self.dev, torch.float32)
        fns = self._mla_fns(c, cos, sin)
        W0 = self._mla_weights(c)
        wbytes = W0["nbytes"]
        # -------- checks
        Bc, Cc = 2, Cs[1]
        x = self.rand(Bc, D)
        cache = self.rand(Bc, maxc, r + dr)
        for core in ("bmm", "sdpa"):
            def g(core=core):
                cc = cache.clone()
                y = fns.block(W0, x, cc, Cc, getattr(fns, "core_" + core))
                return rel_err(y, self._mla_reference(c, W0, x, cc, Cc, fns, cos, sin))
            self.check(f"mla_{name}_absorbed_{core}_vs_expanded_float64_rel_err", g)

        def g_pre(flash_pad=False):
            S = Ss[0] if self.smoke else 256
            xs = self.rand(S, D)
            cc = cache[:1].clone()
            y = fns.prefill(W0, xs, cc, flash_pad)
            # reference: float64 expanded prefill (same function on double weights, math SDPA)
            Wd = {k: (v.double() if torch.is_tensor(v) else v) for k, v in W0.items()}
            fd = self._mla_fns(c, cos.double(), sin.double())
            yr = fd.prefill(Wd, xs.double(), cc.double().clone())
            return rel_err(y, yr)
        self.check(f"mla_{name}_prefill_expanded_vs_float64_rel_err", g_pre)
        self.check(f"mla_{name}_prefill_expanded_vpad192_vs_float64_rel_err", lambda: g_pre(True))
        if self.cuda and name == next(iter(self.res["mla"]["configs"])):
            be = {}
            from torch.nn.attention import SDPBackend, sdpa_kernel
            qc = self.rand(2, H, r + dr)
            kvc = self.rand(2, 512, r + dr)
            qq, kk, vv = self.rand(1, H, 256, dn + dr), self.rand(1, H, 256, dn + dr), self.rand(1, H, 256, dv)
            for bname in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
                b = getattr(SDPBackend, bname, None)
                if b is None:
                    continue
                for what, fn in (("decode_absorbed_576", lambda: fns.core_sdpa(qc, kvc)),
                                 ("prefill_qk192_v128", lambda: F.scaled_dot_product_attention(
                                     qq, kk, vv, is_causal=True))):
                    try:
                        with sdpa_kernel([b]):
                            fn()
                        self.sync()
                        be[f"{what}:{bname}"] = "runs"
                    except Exception as e:
                        self.sync()
                        be[f"{what}:{bname}"] = "no: " + str(e).split("\n")[0][:160]
            be["decode_absorbed_576:default_kernels"] = self.kernels_of(lambda: fns.core_sdpa(qc, kvc))
            be["prefill_qk192_v128:default_kernels"] = self.kernels_of(
                lambda: F.scaled_dot_product_attention(qq, kk, vv, is_causal=True))
            self.res["mla"]["backends"] = be
            log("  sdpa backends:", json.dumps({k: v for k, v in be.items() if isinstance(v, str)})[:600])
        del W0
        # -------- decode
        pool = []

        def weights(i):
            while len(pool) <= i:
                pool.append(self._mla_weights(c))
            return pool[i]
        ctr = {"i": 0}

        def nextw():
            ctr["i"] += 1
            return weights(ctr["i"] % 8)  # up to 8 distinct weight sets rotate (Timer copies)

        qp = (D * qr + qr + qr * H * (dn + dr)) if qr else D * H * (dn + dr)
        base = {"model": name}
        for B in Bs:
            ctx0 = Cs[0]
            # ctx-independent pieces
            pieces = [
                ("mla_q_path", "q path: " + ("F.linear(x, q_a_proj) + F.rms_norm + F.linear(q_b_proj)" if qr
                                             else "F.linear(x, q_proj)"), 2 * B * qp, 2 * qp + 2 * B * D,
                 lambda W, x, cc: fns.q_path(W, x)),
                ("mla_kv_a_path", "F.linear(x, kv_a_proj_with_mqa) + F.rms_norm(latent) + rope(k_pe) + cat + "
                 "cache[:, pos].copy_", 2 * B * D * (r + dr), 2 * D * (r + dr) + 2 * B * (D + r + dr),
                 lambda W, x, cc: fns.kv_path(W, x, cc, ctx0 - 1)),
            ]
            for fam, kern, fl, nb, fn in pieces:
                def mk(fn=fn, B=B):
                    W = nextw()
                    x = self.rand(B, D)
                    cc = self.rand(B, ctx0, r + dr)
                    return lambda: fn(W, x, cc)
                self.sample(fam, kern, dict(base, B=B), fl, nb, mk)

            def mk_abs(B=B):
                W = nextw()
                q = self.rand(B, H, dn + dr)
                return lambda: fns.absorb(W, q, ctx0 - 1)
            self.sample("mla_absorb_uk", "rope(q_pe) + torch.bmm(q_nope[H,B,128], W_UK[H,128,512]) + cat -> "
                        "q_cat[B,H,576]", dict(base, B=B), 2 * B * H * dn * r, 2 * H * dn * r + 2 * B * H * (
                            dn + dr + r + dr), mk_abs)

            def mk_uvo(B=B):
                W = nextw()
                o = self.rand(B, H, r)
                return lambda: fns.uv_o(W, o)
            self.sample("mla_uv_oproj", "torch.bmm(o_lat[H,B,512], W_UV^T[H,512,128]) + F.linear(o, o_proj)",
                        dict(base, B=B), 2 * B * H * (r * dv + dv * D),
                        2 * (H * r * dv + D * H * dv) + 2 * B * (H * r + D), mk_uvo)
            for C in Cs:
                shp = dict(base, B=B, ctx=C)
                core_fl = 2 * B * H * C * (r + dr + r)
                core_b = 2 * B * C * (r + dr) + 2 * B * H * (r + dr + r)
                for core in ("bmm", "sdpa"):
                    def mk_core(B=B, C=C, core=core):
                        qc = self.rand(B, H, r + dr)
                        cc = self.rand(B, C, r + dr)
                        f = getattr(fns, "core_" + core)
                        return lambda: f(qc, cc)
                    self.sample(f"mla_core_{core}", self.res["mla"]["impl"]["core_" + core], shp, core_fl, core_b,
                                mk_core)
                blk_fl = 2 * B * (qp + D * (r + dr) + H * dn * r + H * r * dv + D * H * dv) + core_fl
                blk_b = wbytes + 2 * B * C * (r + dr) + 4 * B * D
                for core in ("bmm", "sdpa"):
                    def mk_blk(B=B, C=C, core=core):
                        W = nextw()
                        x = self.rand(B, D)
                        cc = self.rand(B, C, r + dr)
                        f = getattr(fns, "core_" + core)
                        return lambda: fns.block(W, x, cc, C, f)
                    self.sample(f"mla_decode_absorbed_{core}", "whole MLA attention block, absorbed decode: " +
                                self.res["mla"]["impl"]["decode_absorbed"] + "; core=" + core, shp, blk_fl, blk_b,
                                mk_blk, extra={"weight_bytes": wbytes, "latent_cache_bytes": 2 * B * C * (r + dr)})
        # -------- prefill
        for S in Ss:
            shp = dict(base, B=1, S=S)
            att_fl = 2 * H * S * S * (dn + dr + dv) // 2
            fl = 2 * S * (qp + D * (r + dr) + r * H * (dn + dv) + D * H * dv) + att_fl
            for flash_pad in (False, True):
                def mk_pre(S=S, fp=flash_pad):
                    W = nextw()
                    x = self.rand(S, D)
                    cc = self.rand(1, S, r + dr)
                    return lambda: fns.prefill(W, x, cc, fp)
                self.sample("mla_prefill_expanded" + ("_vpad192" if flash_pad else ""),
                            self.res["mla"]["impl"]["prefill_expanded"] + (
                                " (v zero-padded to 192 so q/k/v head dims match; output sliced; SDPA default backend)" if flash_pad
                                else " (SDPA default backend)"),
                            shp, fl, wbytes + 4 * S * D + 2 * S * (r + dr), mk_pre)

            def mk_kvb(S=S):
                W = nextw()
                lat = self.rand(S, r)
                return lambda: F.linear(lat, W["wkvb"])
            self.sample("mla_prefill_kv_b_upproj", "F.linear(latent[S,512], kv_b_proj[H*256,512])", shp,
                        2 * S * r * H * (dn + dv), 2 * (S * r + r * H * (dn + dv) + S * H * (dn + dv)), mk_kvb)
            for flash_pad in (False, True):
                def mk_att(S=S, fp=flash_pad):
                    q, k = self.rand(1, H, S, dn + dr), self.rand(1, H, S, dn + dr)
                    v = self.rand(1, H, S, dn + dr if fp else dv)
                    return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=fns.scale)
                self.sample("mla_prefill_sdpa" + ("_qk192_vpad192" if flash_pad else "_qk192_v128"),
                            "F.scaled_dot_product_attention causal, q/k dim 192, v dim " +
                            ("192 (padded)" if flash_pad else "128") + ", default backend", shp, att_fl,
                            2 * H * S * (3 * (dn + dr) + (dn + dr if flash_pad else dv)), mk_att)
        del pool
        if self.cuda:
            torch.cuda.empty_cache()

    # =================================================================== 3 MoE
    MOE_CFGS = {
        "qwen3_30b_a3b": dict(hidden=2048, experts=128, top_k=8, inter=768, shared_inter=0),
        "deepseek_v2_lite": dict(hidden=2048, experts=64, top_k=6, inter=1408, shared_inter=2 * 1408),
        "deepseek_v3": dict(hidden=7168, experts=256, top_k=8, inter=2048, shared_inter=2048),
    }

    def run_moe(self):
        cfgs = dict(self.MOE_CFGS)
        if self.smoke:
            cfgs = {"tiny_moe": dict(hidden=64, experts=16, top_k=4, inter=32, shared_inter=32)}
            Ts = [1, 4, 64]
        else:
            Ts = [1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 2048, 4096, 8192]
        self.res["moe"] = {"configs": cfgs, "impl": {
            "common": "one MoE layer, bf16: router F.linear [T,D]x[D,E] + softmax + topk computed (not used for "
                      "dispatch); dispatch by fixed uniform-random top-k routings drawn on the host (seed 0, "
                      "distinct experts per token), routing weights random; shared expert(s) as one dense SwiGLU "
                      "MLP over all T tokens where the model has them; whole layer in one CUDA graph; calls "
                      "rotate over several routings so the touched weights exceed 4x L2",
            "moe_grouped_mm": "on device: sort(flat expert ids) -> perm; x.index_select(perm//k); counts by "
                              "scatter_add_ -> cumsum -> int32 offs; torch._grouped_mm(xs, W_gate_up[E,D,2I] "
                              "(transposed view of [E,2I,D]), offs=offs); silu*up; torch._grouped_mm(h, "
                              "W_down[E,I,D] (view of [E,D,I]), offs=offs); * routing weight; index_add_ back",
            "moe_loop": "for each touched expert (host list): index_select its tokens, F.linear gate_up, "
                        "chunk/silu/mul, F.linear down, * routing weight, index_add_ (tools/measure_kernels.py "
                        "MoE group style)"}}
        g = torch.Generator().manual_seed(0)
        for name, c in cfgs.items():
            if self.over():
                self.skip({"moe_model": name}, "budget")
                continue
            try:
                self._moe_model(name, c, Ts, g)
            except torch.cuda.OutOfMemoryError as e:
                self.skip({"moe_model": name}, "OOM: " + str(e)[:200])
            if self.cuda:
                torch.cuda.empty_cache()
            self.write()

    def _moe_model(self, name, c, Ts, gen):
        D, E, k, I, SI = (c[x] for x in ("hidden", "experts", "top_k", "inter", "shared_inter"))
        w_gu = self.rand(E, 2 * I, D, scale=0.02)
        w_d = self.rand(E, D, I, scale=0.02)
        w_gu_t, w_d_t = w_gu.transpose(1, 2), w_d.transpose(1, 2)  # [E,D,2I], [E,I,D] column-major views
        w_r = self.rand(E, D, scale=0.02)
        s_gu = self.rand(2 * SI, D, scale=0.02) if SI else None
        s_d = self.rand(D, SI, scale=0.02) if SI else None

        def routing(T):
            routes = torch.stack([torch.randperm(E, generator=gen)[:k] for _ in range(T)])  # [T,k]
            wts = torch.rand(T, k, generator=gen)
            touched = sorted(set(routes.flatten().tolist()))
            per = {}
            for e in touched:
                tok, slot = (routes == e).nonzero(as_tuple=True)
                per[e] = (tok.to(self.dev), wts[tok, slot].to(self.dev, BF16)[:, None])
            return SimpleNamespace(routes=routes.to(self.dev), wts=wts.to(self.dev, BF16), touched=touched,
                                   per=per, T=T)

        def common(x, out):
            logits = F.linear(x, w_r)
            torch.topk(torch.softmax(logits.float(), -1), k, dim=-1)
            if SI:
                a, u = F.linear(x, s_gu).chunk(2, -1)
                out.copy_(F.linear(F.silu(a) * u, s_d))
            else:
                out.zero_()

        def step_grouped(x, R, out):
            common(x, out)
            flat = R.routes.flatten()
            se, perm = torch.sort(flat, stable=True)
            tok = perm // k
            xs = x.index_select(0, tok)
            counts = torch.zeros(E, device=x.device, dtype=torch.int32).scatter_add_(
                0, flat, torch.ones_like(flat, dtype=torch.int32))
            offs = torch.cumsum(counts, 0, dtype=torch.int32)
            a, u = torch._grouped_mm(xs, w_gu_t, offs=offs).chunk(2, -1)
            y = torch._grouped_mm(F.silu(a) * u, w_d_t, offs=offs)
            y = y * R.wts.flatten().index_select(0, perm)[:, None]
            out.index_add_(0, tok, y)
            return out

        def step_loop(x, R, out):
            common(x, out)
            for e in R.touched:
                ii, we = R.per[e]
                a, u = F.linear(x.index_select(0, ii), w_gu[e]).chunk(2, -1)
                out.index_add_(0, ii, F.linear(F.silu(a) * u, w_d[e]) * we)
            return out

        # correctness vs float64 at one size
        Tc = 64 if not self.smoke else 8
        R = routing(Tc)
        x = self.rand(Tc, D)

        def ref():
            out = torch.zeros(Tc, D, dtype=torch.float64, device=self.dev)
            xd = x.double()
            if SI:
                a, u = (xd @ s_gu.double().t()).chunk(2, -1)
                out += (F.silu(a) * u) @ s_d.double().t()
            for e in R.touched:
                ii, we = R.per[e]
                a, u = (xd[ii] @ w_gu[e].double().t()).chunk(2, -1)
                out.index_add_(0, ii, ((F.silu(a) * u) @ w_d[e].double().t()) * we.double())
            return out
        r64 = ref()
        self.check(f"moe_{name}_grouped_mm_rel_err",
                   lambda: rel_err(step_grouped(x, R, torch.empty(Tc, D, device=self.dev, dtype=BF16)), r64))
        self.check(f"moe_{name}_loop_rel_err",
                   lambda: rel_err(step_loop(x, R, torch.empty(Tc, D, device=self.dev, dtype=BF16)), r64))
        expert_b = 2 * 3 * D * I
        dense_b = 2 * (3 * D * SI + E * D)
        broken = set()
        for T in Ts:
            if self.over():
                self.skip({"moe_model": name, "tokens": T}, "budget")
                continue
            # rotate routings so the touched weights of one replay exceed 4x L2
            exp_touched = E * (1 - (1 - k / E) ** T)
            nrot = max(1, min(8, math.ceil(self.cal.target_ws / max(1.0, exp_touched * expert_b + dense_b))))
            Rs = [routing(T) for _ in range(nrot)]
            xs = [self.rand(T, D) for _ in range(nrot)]
            outs = [torch.empty(T, D, device=self.dev, dtype=BF16) for _ in range(nrot)]
            distinct = sum(len(R.touched) for R in Rs) / nrot
            fl = 2 * T * k * 3 * D * I + 2 * T * 3 * D * SI + 2 * T * D * E
            nb = distinct * expert_b + dense_b + 2 * 2 * T * D
            shp = {"model": name, "tokens": T, "E": E, "top_k": k, "inter": I, "hidden": D, "shared_inter": SI}
            extra = {"distinct_experts": distinct, "expected_distinct_uniform": CG._r(exp_touched),
                     "routings_rotated": nrot, "weight_bytes_touched": distinct * expert_b + dense_b}
            reps = 5 if self.smoke else (10 if T >= 1024 else 20)
            for fam, fn in (("moe_grouped_mm", step_grouped), ("moe_loop", step_loop)):
                if fam in broken:
                    continue
                calls = [(lambda i=i: fn(xs[i], Rs[i], outs[i])) for i in range(nrot)]
                s = self.time_direct(fam, self.res["moe"]["impl"][fam], shp, fl, nb, calls, reps,
                                     extra=dict(extra, kernel_common=self.res["moe"]["impl"]["common"]))
                if s is None and T == Ts[0]:
                    broken.add(fam)
            del Rs, xs, outs
        del w_gu, w_d, w_gu_t, w_d_t

    # =================================================================== 2 windowed / softcap / sinks
    def flex_fn(self, kind, flex_attention):
        """A compiled flex_attention wrapper per variant (cached).  dynamic=--flex-dynamic (default True:
        one compile serves every shape); if that compile fails at first use the variant falls back to
        torch.compile's automatic dynamic (static first, dynamic on the first recompile), noted."""
        if kind in self._compiled:
            return self._compiled[kind]

        def sm(score, b, h, qi, ki):  # literal constants: a closure float turns symbolic under dynamic=True
            return 50.0 * torch.tanh(score / 50.0)

        def plain(q, k, v, bm):
            return flex_attention(q, k, v, block_mask=bm, enable_gqa=k.shape[1] != q.shape[1])

        def scaled(q, k, v, bm, scale):
            return flex_attention(q, k, v, block_mask=bm, scale=scale, enable_gqa=k.shape[1] != q.shape[1])

        def softcap(q, k, v, bm):
            return flex_attention(q, k, v, score_mod=sm, block_mask=bm, enable_gqa=k.shape[1] != q.shape[1])

        def sink(q, k, v, bm, sinks):
            try:
                from torch.nn.attention.flex_attention import AuxRequest
                o, aux = flex_attention(q, k, v, block_mask=bm, enable_gqa=k.shape[1] != q.shape[1],
                                        return_aux=AuxRequest(lse=True))
                lse = aux.lse
            except ImportError:
                o, lse = flex_attention(q, k, v, block_mask=bm, enable_gqa=k.shape[1] != q.shape[1],
                                        return_lse=True)
            return o * torch.sigmoid(lse - sinks[None, :, None]).unsqueeze(-1).to(o.dtype)
        fn = {"plain": plain, "softcap": softcap, "sink": sink, "scaled": scaled}[kind]
        if not self.cuda or self.args.no_compile:
            self._compiled[kind] = fn
            return fn
        dyn = False if kind == "scaled" else self.args.flex_dynamic
        state = {"fn": torch.compile(fn, dynamic=dyn), "tried": False}
        runner = self

        def call(*a):
            if state["tried"]:
                return state["fn"](*a)
            try:
                y = state["fn"](*a)
                state["tried"] = True
                return y
            except Exception as e:
                if dyn is None:
                    raise
                runner.note(f"flex {kind}: torch.compile(dynamic={dyn}) failed, falling back to automatic "
                            f"dynamic: {e!r}"[:400])
                state["fn"] = torch.compile(fn, dynamic=None)
                state["tried"] = True
                return state["fn"](*a)
        self._compiled[kind] = call
        return call

    def run_window(self):
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        except Exception as e:
            self.skip({"family": "flex_attention"}, "import: " + repr(e))
            return
        if self.smoke:
            H, Hkv, d = 4, 2, 32
            Ss, Ws = [256], [64, 128]
            dec = [(1, 256), (2, 512)]
        else:
            H, Hkv, d = 32, 8, 128
            Ss, Ws = [1024, 2048, 4096, 8192], [128, 512, 4096]
            dec = [(B, C) for B in (1, 8, 32) for C in (1024, 4096, 16384, 32768)]
        self.res["window"] = {"heads": H, "kv_heads": Hkv, "head_dim": d, "softcap": 50.0,
                              "flex_compile": f"torch.compile(wrapper, dynamic={self.args.flex_dynamic})",
                              "block_masks": "create_block_mask(mask_mod, None, None, Q_LEN, KV_LEN) built outside "
                                             "the timed region (BLOCK_SIZE 128); window / position in 0-dim "
                                             "device tensors read by mask_mod"}
        dev = self.dev
        win = torch.tensor(128, device=dev)
        qpos = torch.tensor(0, device=dev)

        def causal(b, h, qi, ki):
            return qi >= ki

        def sliding(b, h, qi, ki):
            return (qi >= ki) & (qi - ki < win)

        def dec_sliding(b, h, qi, ki):
            return (ki <= qpos) & (qpos - ki < win)

        def bm_for(mm, Sq, L):
            return create_block_mask(mm, None, None, Sq, L, device=str(dev) if self.cuda else "cpu")

        fplain, fsoft, fsink = (self.flex_fn(kk, flex_attention) for kk in ("plain", "softcap", "sink"))
        flash_fwd = getattr(torch.ops.aten, "_flash_attention_forward", None)

        def flash_win(q, k, v, W):
            # q [B,S,H,d], k/v [B,L,Hkv,d]; FA2 native sliding window (bottom-right aligned causal)
            o = flash_fwd(q, k, v, None, None, q.shape[1], k.shape[1], 0.0, True, False,
                          window_size_left=W - 1, window_size_right=0)
            return o[0]

        # ---------- checks (prefill S0 and decode) vs float64 with explicit masks
        S0 = 256 if self.smoke else 1024
        W0 = Ws[0] if self.smoke else 128
        q, k, v = self.rand(1, H, S0, d), self.rand(1, Hkv, S0, d), self.rand(1, Hkv, S0, d)
        rep = H // Hkv
        kd, vd = k.double().repeat_interleave(rep, 1), v.double().repeat_interleave(rep, 1)
        i = torch.arange(S0, device=dev)
        cmask = i[:, None] >= i[None, :]
        wmask = cmask & (i[:, None] - i[None, :] < W0)
        sinks = self.rand(H, scale=1.0).float()

        def ref(mask, softcap=False, sink=None):
            s = (q.double() @ kd.transpose(-1, -2)) / math.sqrt(d)
            if softcap:
                s = 50.0 * torch.tanh(s / 50.0)
            s = s.masked_fill(~mask, float("-inf"))
            if sink is not None:
                s = torch.cat([s, sink.double()[None, :, None, None].expand(1, H, s.shape[2], 1)], -1)
                return torch.softmax(s, -1)[..., :-1] @ vd
            return torch.softmax(s, -1) @ vd
        win.fill_(W0)
        bm_c, bm_w = bm_for(causal, S0, S0), bm_for(sliding, S0, S0)
        self.check("window_flex_sliding_prefill_rel_err", lambda: rel_err(fplain(q, k, v, bm_w), ref(wmask)))
        self.check("window_flex_causal_prefill_rel_err", lambda: rel_err(fplain(q, k, v, bm_c), ref(cmask)))
        self.check("window_flex_softcap_prefill_rel_err",
                   lambda: rel_err(fsoft(q, k, v, bm_c), ref(cmask, softcap=True)))
        self.check("window_flex_sink_prefill_rel_err",
                   lambda: rel_err(fsink(q, k, v, bm_c, sinks), ref(cmask, sink=sinks)))
        self.check("window_sdpa_boolmask_prefill_rel_err", lambda: rel_err(
            F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1),
                                           attn_mask=wmask), ref(wmask)))
        if self.cuda and flash_fwd is not None:
            self.check("window_flash_native_window_prefill_rel_err", lambda: rel_err(
                flash_win(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), W0).transpose(1, 2),
                ref(wmask)))
        # decode check: q at position L-1 over a cache of L
        L0 = S0
        qd = q[:, :, -1:]
        qpos.fill_(L0 - 1)
        bm_dw = bm_for(dec_sliding, 1, L0)

        def ref_dec(W=None):
            s = (qd.double() @ kd.transpose(-1, -2)) / math.sqrt(d)
            if W is not None:
                s[..., : L0 - W] = float("-inf")
            return torch.softmax(s, -1) @ vd
        self.check("window_flex_decode_sliding_rel_err", lambda: rel_err(fplain(qd, k, v, bm_dw), ref_dec(W0)))
        self.check("window_flex_decode_full_rel_err", lambda: rel_err(fplain(qd, k, v, None), ref_dec()))
        if self.cuda and flash_fwd is not None:
            self.check("window_flash_native_window_decode_rel_err", lambda: rel_err(
                flash_win(qd.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), W0).transpose(1, 2),
                ref_dec(W0)))
        self.check("window_ring_decode_sdpa_rel_err", lambda: rel_err(
            self.sdpa_gqa(qd, k[:, :, L0 - W0:], v[:, :, L0 - W0:]), ref_dec(W0)))
        if self.cuda:
            self.res["window"]["kernels"] = {
                "flex_sliding_prefill": self.kernels_of(lambda: fplain(q, k, v, bm_w)),
                "sdpa_boolmask_prefill": self.kernels_of(lambda: F.scaled_dot_product_attention(
                    q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), attn_mask=wmask)),
                "sdpa_causal_prefill": self.kernels_of(lambda: self.sdpa_gqa(q, k, v, is_causal=True)),
                "flex_decode": self.kernels_of(lambda: fplain(qd, k, v, bm_dw)),
            }
        flash_ok = self.cuda and flash_fwd is not None and isinstance(
            self.res["checks"].get("window_flash_native_window_prefill_rel_err"), float) and \
            self.res["checks"]["window_flash_native_window_prefill_rel_err"] < 0.05
        del q, k, v, kd, vd

        def vis_prefill(S, W):  # visible (q, k) pairs, causal with window W (None = full)
            if W is None or W >= S:
                return S * (S + 1) // 2
            return W * (W + 1) // 2 + (S - W) * W

        def shp(B, Sq, L, W):
            return {"B": B, "H": H, "Hkv": Hkv, "d": d, "Sq": Sq, "L": L, "W": W}
        fl_kern = {
            "flex_sliding": "torch.compile(flex_attention)(q,k,v, block_mask=sliding-window causal mask, "
                            "enable_gqa=True)",
            "flex_causal": "torch.compile(flex_attention)(q,k,v, block_mask=causal, enable_gqa=True)",
            "flex_softcap": "torch.compile(flex_attention)(q,k,v, score_mod=50*tanh(s/50), block_mask=causal, "
                            "enable_gqa=True)",
            "flex_sink": "torch.compile(flex_attention(..., block_mask=causal, return_aux=AuxRequest(lse=True)) "
                         "then o*sigmoid(lse - sink[h]) (learned per-head sink logit), one compiled fn",
            "sdpa_causal": "F.scaled_dot_product_attention(q,k,v, is_causal=True, enable_gqa=True) default backend",
            "sdpa_boolmask": "F.scaled_dot_product_attention(q, K, V repeated to 32 heads, attn_mask=bool [S,S] "
                             "window mask) default backend (masked dense kernel)",
            "flash_native_window": "torch.ops.aten._flash_attention_forward(q[B,S,H,d], k, v, ..., is_causal=True, "
                                   "window_size_left=W-1, window_size_right=0) (FA2 sliding window)",
        }
        self.res["window"]["kernel_calls"] = fl_kern
        # ---------- prefill
        for S in Ss:
            qkv_b = lambda L: 2 * (2 * H * S * d + 2 * Hkv * L * d)  # noqa: E731
            bm_c = bm_for(causal, S, S)

            def mk_f(fn, bm, extra=(), S=S):
                def make():
                    q, k, v = self.rand(1, H, S, d), self.rand(1, Hkv, S, d), self.rand(1, Hkv, S, d)
                    return lambda: fn(q, k, v, bm, *extra)
                return make

            def mk_sdpa(S=S):
                q, k, v = self.rand(1, H, S, d), self.rand(1, Hkv, S, d), self.rand(1, Hkv, S, d)
                return lambda: self.sdpa_gqa(q, k, v, is_causal=True)
            fc = 4 * H * vis_prefill(S, None) * d
            self.sample("attn_prefill_sdpa_causal", fl_kern["sdpa_causal"], shp(1, S, S, None), fc, qkv_b(S),
                        mk_sdpa)
            self.sample("attn_prefill_flex_causal", fl_kern["flex_causal"], shp(1, S, S, None), fc, qkv_b(S),
                        mk_f(fplain, bm_c))
            self.sample("attn_prefill_flex_softcap", fl_kern["flex_softcap"], shp(1, S, S, None), fc, qkv_b(S),
                        mk_f(fsoft, bm_c))
            self.sample("attn_prefill_flex_sink", fl_kern["flex_sink"], shp(1, S, S, None), fc, qkv_b(S),
                        mk_f(fsink, bm_c, (sinks,)))
            for W in Ws:
                win.fill_(W)
                bm_w = bm_for(sliding, S, S)
                fw = 4 * H * vis_prefill(S, W) * d
                self.sample("attn_prefill_flex_sliding", fl_kern["flex_sliding"], shp(1, S, S, W), fw, qkv_b(S),
                            mk_f(fplain, bm_w), extra={"block_mask_sparsity_pct": CG._r(float(bm_w.sparsity()))})
                i = torch.arange(S, device=dev)
                wm = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < W)

                def mk_m(S=S, wm=wm):
                    q, k, v = self.rand(1, H, S, d), self.rand(1, H, S, d), self.rand(1, H, S, d)
                    return lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=wm)
                self.sample("attn_prefill_sdpa_boolmask", fl_kern["sdpa_boolmask"], shp(1, S, S, W), fw,
                            2 * 4 * H * S * d + S * S, mk_m, extra={"flops_dense": 4 * H * S * S * d})
                del wm
                if flash_ok:
                    def mk_fw(S=S, W=W):
                        q, k, v = self.rand(1, S, H, d), self.rand(1, S, Hkv, d), self.rand(1, S, Hkv, d)
                        return lambda: flash_win(q, k, v, W)
                    self.sample("attn_prefill_flash_window", fl_kern["flash_native_window"], shp(1, S, S, W), fw,
                                qkv_b(S), mk_fw)
            self.write()
        # ---------- decode
        for B, C in dec:
            qo = 2 * 2 * B * H * d

            def mk_d(fn, bm, L, extra=(), B=B):
                def make():
                    q, k, v = self.rand(B, H, 1, d), self.rand(B, Hkv, L, d), self.rand(B, Hkv, L, d)
                    return lambda: fn(q, k, v, bm, *extra)
                return make

            def mk_sd(L, B=B):
                def make():
                    q, k, v = self.rand(B, H, 1, d), self.rand(B, Hkv, L, d), self.rand(B, Hkv, L, d)
                    return lambda: self.sdpa_gqa(q, k, v)
                return make
            kvb = lambda L: 2 * 2 * B * Hkv * L * d  # noqa: E731
            f = lambda L: 4 * B * H * L * d  # noqa: E731
            self.sample("attn_decode_sdpa_full", "F.scaled_dot_product_attention(q[B,32,1,128], K/V [B,8,C,128], "
                        "enable_gqa=True) default backend", shp(B, 1, C, None), f(C), kvb(C) + qo, mk_sd(C))
            self.sample("attn_decode_flex_full", "torch.compile(flex_attention)(q, K, V, block_mask=None, "
                        "enable_gqa=True)", shp(B, 1, C, None), f(C), kvb(C) + qo, mk_d(fplain, None, C))
            self.sample("attn_decode_flex_softcap", "torch.compile(flex_attention)(q, K, V, score_mod=50*tanh(s/50),"
                        " block_mask=None, enable_gqa=True)", shp(B, 1, C, None), f(C), kvb(C) + qo,
                        mk_d(fsoft, None, C))
            self.sample("attn_decode_flex_sink", "compiled flex_attention(return lse) + o*sigmoid(lse-sink[h])",
                        shp(B, 1, C, None), f(C), kvb(C) + qo, mk_d(fsink, None, C, (sinks,)))
            qpos.fill_(C - 1)
            for W in Ws:
                if W >= C:
                    continue
                win.fill_(W)
                bm = bm_for(dec_sliding, 1, C)
                self.sample("attn_decode_flex_sliding", "torch.compile(flex_attention)(q, K/V [B,8,C,128], "
                            "block_mask=last-W window at position C-1, enable_gqa=True) (full-length cache)",
                            shp(B, 1, C, W), f(W), kvb(W) + qo, mk_d(fplain, bm, C))
                self.sample("attn_decode_ring_sdpa", "F.scaled_dot_product_attention(q, K/V ring cache "
                            "[B,8,W,128] (only the last W entries), enable_gqa=True)", shp(B, 1, C, W), f(W),
                            kvb(W) + qo, mk_sd(W))
                if flash_ok:
                    def mk_fwd(B=B, C=C, W=W):
                        q, k, v = self.rand(B, 1, H, d), self.rand(B, C, Hkv, d), self.rand(B, C, Hkv, d)
                        return lambda: flash_win(q, k, v, W)
                    self.sample("attn_decode_flash_window", fl_kern["flash_native_window"] + " over the full-"
                                "length cache", shp(B, 1, C, W), f(W), kvb(W) + qo, mk_fwd)
            if (B, C) == dec[0] or (B, C) == dec[len(dec) // 2]:
                # masked dense decode: a bool [1, C] window mask through SDPA (reads the whole cache)
                W = Ws[0]
                m = torch.zeros(1, C, dtype=torch.bool, device=dev)
                m[:, C - W:] = True

                def mk_md(B=B, C=C, m=m):
                    q, k, v = self.rand(B, H, 1, d), self.rand(B, H, C, d), self.rand(B, H, C, d)
                    return lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=m)
                self.sample("attn_decode_sdpa_boolmask", "F.scaled_dot_product_attention(q, K/V repeated to 32 heads,"
                            " attn_mask=bool[1,C] last-W window) default backend", shp(B, 1, C, W), f(W),
                            2 * 2 * B * H * C * d + qo, mk_md, extra={"flops_dense": f(C)})
            self.write()

    # ------------------------------------------------------------------ summary
    def summary(self):
        S = self.cal.samples

        def t(fam, **kw):
            for s in S:
                if s.get("family") == fam and all(s["shape"].get(a) == b for a, b in kw.items()):
                    return s["time_s"]
            return None

        def us(x):
            return "-" if x is None else f"{x * 1e6:.1f}"
        print("\n=== headline (us) ===")
        for m in ("deepseek_v2_lite", "deepseek_v3", "tiny_mla"):
            for B in (1, 32, 4):
                for C in (4096, 128):
                    a, b = t("mla_decode_absorbed_bmm", model=m, B=B, ctx=C), t("mla_decode_absorbed_sdpa", model=m,
                                                                                B=B, ctx=C)
                    if a or b:
                        print(f"MLA {m} absorbed decode B={B} ctx={C}: bmm {us(a)} sdpa {us(b)}")
        for S_ in (8192, 256):
            r = [t("attn_prefill_sdpa_causal", Sq=S_), t("attn_prefill_flex_causal", Sq=S_)]
            r += [t("attn_prefill_flex_sliding", Sq=S_, W=W) for W in (128, 512, 4096, 64)]
            r += [t("attn_prefill_sdpa_boolmask", Sq=S_, W=W) for W in (128, 4096)]
            if any(r):
                print(f"prefill S={S_}: sdpa causal {us(r[0])}, flex causal {us(r[1])}, flex W128/512/4096 "
                      f"{us(r[2])}/{us(r[3])}/{us(r[4])}, masked dense W128/4096 {us(r[6])}/{us(r[7])}")
        for m in ("qwen3_30b_a3b", "deepseek_v3", "tiny_moe"):
            for T in (1, 64, 1024, 4):
                a, b = t("moe_grouped_mm", model=m, tokens=T), t("moe_loop", model=m, tokens=T)
                if a or b:
                    print(f"MoE {m} T={T}: grouped {us(a)} loop {us(b)}")
        tag = self.shapes()[0][0]
        for M in (1, 16, 128, 4096):
            r = [t(f, M=M, tag=tag) for f in ("dense_bf16", "int8_wo_compiled", "int8_wo_int8pack", "int4_tinygemm",
                                              "int4_tinygemm_compiled", "fp8_tensorwise_gemm", "fp8_rowwise_pipeline")]
            if any(r):
                print(f"{tag} M={M}: bf16 {us(r[0])} int8c {us(r[1])} int8pack {us(r[2])} int4 {us(r[3])} "
                      f"int4c {us(r[4])} fp8t {us(r[5])} fp8row+q {us(r[6])}")
        for B in (1, 16, 64):
            a, b = t("decode_sdpa_bf16kv", B=B, L=16384), t("decode_sdpa_fp8kv_dequant", B=B, L=16384)
            if a or b:
                print(f"decode B={B} ctx=16k: bf16 KV {us(a)}  fp8 KV dequant+SDPA {us(b)}")
        go = (self.res.get("graph_overhead") or {}).get("points", {})
        if go:
            print("graph overhead:", json.dumps(go.get("tiny32_decode_step", {}), default=str)[:400])
        print("checks:", json.dumps(self.res["checks"], default=str)[:3000])
        print("notes:", self.res["notes"])
        print("fp8kv_support:", json.dumps(self.res.get("fp8kv_support"), default=str)[:800])
        print(f"samples {len(S)}, skipped {len(self.res['skipped'])} + timer {len(self.cal.skipped)}; "
              f"wall {self.elapsed():.1f} s; groups {self.res['group_wall_s']}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (tests the script)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--groups", default=",".join(GROUPS), help="comma list of " + ",".join(GROUPS))
    ap.add_argument("--budget-s", type=float, default=520.0, help="overall wall-clock budget (s)")
    ap.add_argument("--group-budgets", default="", help="e.g. 'mla=60,window=100' (s), overrides defaults")
    ap.add_argument("--budget-scale", type=float, default=1.0)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--flex-dynamic", type=lambda s: None if s == "auto" else s == "true", default=True,
                    help="dynamic= for the compiled flex wrappers: true (default), false, auto")
    ap.add_argument("--verbose", action="store_true")
    Runner(CG.parse_args(ap, argv)).run()


if __name__ == "__main__":
    main()
