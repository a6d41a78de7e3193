#!/usr/bin/env python3
"""Measure kernel times per op class on a CUDA GPU, for rooftop's cost-model calibration.

Writes one JSON (``--out``) holding the device, versions, the measured copy bandwidth,
per-op samples ``{class, name, shape, flops, bytes, time_s, times_s, p10, p90, ...}``
and end-to-end Llama-2-7B-shaped prefill/decode timings under ``"e2e"``.

Timing method (CUDA): every op is captured ``k`` times into one CUDA graph, cycling
through ``copies`` distinct input (and weight) buffers so that the working set of one
replay exceeds 4x the L2 cache (the cache is not what is timed); ``k`` is raised for
tiny ops so that one replay lasts >= ~100 us.  Replays are queued back to back behind a
GPU spin, with CUDA events between them; each replay's time / k is one repeat.  The
per-op time therefore includes the in-graph kernel launch gap (this is what the model's
``launch_overhead_s`` stands for); an almost empty kernel timed the same way gives the
``launch`` samples.  ``--smoke`` runs tiny shapes on whatever device is present (CPU
here) with host timers, to test this script and the fitter.

    PYTHONUNBUFFERED=1 python3 tools/calibrate_gpu.py --out $OUT/h100_sxm.json
    python3 tools/calibrate_gpu.py --smoke --out /tmp/smoke.json
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import subprocess
import time
import traceback

import torch
import torch.nn.functional as F

FP16 = torch.float16
ELEM = 2  # bytes per fp16 element

# Datasheet numbers (dense fp16 tensor FLOP/s, memory bytes/s) by device-name pattern.
DATASHEETS = [
    ("H100 80GB HBM3", "h100_sxm", 989.4e12, 3.35e12),
    ("H100 SXM", "h100_sxm", 989.4e12, 3.35e12),
    ("H100 NVL", "h100_nvl", 835.0e12, 3.9e12),
    ("H100 PCIe", "h100_pcie", 756.0e12, 2.0e12),
    ("H200", "h200", 989.4e12, 4.8e12),
    ("A100-SXM4-80GB", "a100_80gb", 312.0e12, 2.039e12),
    ("A100 80GB PCIe", "a100_80gb_pcie", 312.0e12, 1.935e12),
    ("A10", "a10", 125.0e12, 0.6e12),
]

# Linear layer (K, N) shapes: Llama-2-7B and Llama-2-70B / Llama-3-70B.
GEMM_KN = [
    ("7b_qo", 4096, 4096),
    ("7b_gate_up", 4096, 11008),
    ("7b_down", 11008, 4096),
    ("7b_lm_head", 4096, 32000),
    ("70b_qo", 8192, 8192),
    ("70b_kv_gqa", 8192, 1024),
    ("70b_gate_up", 8192, 28672),
    ("70b_down", 28672, 8192),
]
GEMM_M = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def datasheet_for(name: str):
    for pat, key, p, w in DATASHEETS:
        if pat.lower() in name.lower():
            return {"key": key, "peak_flops": p, "bandwidth": w, "match": pat}
    return {"key": "unknown", "peak_flops": 989.4e12, "bandwidth": 3.35e12, "match": None}


def _r(x: float) -> float:
    return float(f"{x:.6g}")


def quantile(xs, q):
    s = sorted(xs)
    if not s:
        return float("nan")
    pos = (len(s) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


# --------------------------------------------------------------------------- timing


class Timer:
    """Times a list of zero-argument calls (one op each) as described in the module doc."""

    def __init__(self, device: torch.device, smoke: bool, min_graph_s: float = 100e-6):
        self.device = device
        self.cuda = device.type == "cuda"
        self.smoke = smoke
        self.min_graph_s = min_graph_s
        self.graph_ok = self.cuda

    def time_calls(self, calls, k: int, reps: int, warmup: int = 2):
        """Returns (per-op times list, info dict). ``calls`` are cycled to make k ops."""
        seq = [calls[i % len(calls)] for i in range(k)]
        if not self.cuda:
            for c in calls:
                c()
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                for c in seq:
                    c()
                ts.append((time.perf_counter() - t0) / k)
            return ts, {"graph": False, "timer": "perf_counter"}
        # CUDA
        for _ in range(warmup):
            for c in calls:
                c()
        torch.cuda.synchronize()
        g = None
        keep = None
        if self.graph_ok:
            try:
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    keep = [c() for c in seq]  # keep outputs alive: distinct addresses
                for _ in range(3):
                    g.replay()
                torch.cuda.synchronize()
            except Exception as e:  # fall back to eager timing
                log("  graph capture failed, timing eagerly:", repr(e)[:200])
                g = None
                keep = None
                torch.cuda.synchronize()
        run = g.replay if g is not None else (lambda: [c() for c in seq])
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(reps + 1)]
        if hasattr(torch.cuda, "_sleep"):
            torch.cuda._sleep(2_000_000)  # let the host queue ahead of the GPU
        ev[0].record()
        for i in range(reps):
            run()
            ev[i + 1].record()
        torch.cuda.synchronize()
        ts = [ev[i].elapsed_time(ev[i + 1]) * 1e-3 / k for i in range(reps)]
        used_graph = g is not None
        del g, keep, run
        return ts, {"graph": used_graph, "timer": "cuda_events"}


class Calibrator:
    def __init__(self, args):
        self.args = args
        self.smoke = args.smoke
        if args.device:
            self.device = torch.device(args.device)
        else:
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.cuda = self.device.type == "cuda"
        self.timer = Timer(self.device, self.smoke)
        self.t_start = time.time()
        self.samples = []
        self.skipped = []
        self.notes = []
        self.class_wall = {}
        self.n_errors = 0
        self.census_todo = []
        if self.cuda:
            props = torch.cuda.get_device_properties(self.device)
            self.dev_name = torch.cuda.get_device_name(self.device)
            self.l2 = int(getattr(props, "L2_cache_size", 50 * 2**20))
            self.total_mem = int(props.total_memory)
            self.sm_count = int(props.multi_processor_count)
            self.capability = f"{props.major}.{props.minor}"
        else:
            self.dev_name = f"cpu ({platform.processor() or platform.machine()})"
            self.l2 = 1 * 2**20
            self.total_mem = 0
            self.sm_count = os.cpu_count() or 1
            self.capability = None
        self.ds = datasheet_for(self.dev_name) if self.cuda else {
            "key": "cpu_smoke", "peak_flops": 1e12, "bandwidth": 50e9, "match": None}
        # rough rates to size repeats (not used in the fit)
        self.est_p = 0.6 * self.ds["peak_flops"] if self.cuda else 2e11
        self.est_w = 0.8 * self.ds["bandwidth"] if self.cuda else 1e10
        self.target_ws = 4 * self.l2
        self.copy_mem_cap = 6 * 2**30 if self.cuda else 64 * 2**20

    # ------------------------------------------------------------------ helpers
    def elapsed(self):
        return time.time() - self.t_start

    def rand(self, *shape, dtype=FP16, scale=1.0):
        t = torch.randn(*shape, device=self.device, dtype=dtype)
        if scale != 1.0:
            t.mul_(scale)
        return t

    def est(self, flops, bytes_):
        return max(flops / self.est_p, bytes_ / self.est_w) + (3e-6 if self.cuda else 20e-6)

    def fits(self, nbytes):
        if not self.cuda:
            return nbytes < 2 * 2**30
        free, _ = torch.cuda.mem_get_info(self.device)
        return nbytes < 0.85 * free

    def measure(self, cls, name, shape, flops, bytes_, ws_bytes, make_call, extra=None,
                reps=None, max_copies=64, exclude=False, census=True):
        """Build ``copies`` independent calls with ``make_call()`` and time them."""
        try:
            copies = max(1, min(max_copies, math.ceil(self.target_ws / max(ws_bytes, 1))))
            copies = max(1, min(copies, int(self.copy_mem_cap // max(ws_bytes, 1))))
            if not self.fits(copies * ws_bytes * 1.3):
                if copies > 1 and self.fits(ws_bytes * 1.3):
                    copies = 1
                else:
                    self.skipped.append({"class": cls, "name": name, "shape": shape, "why": "does not fit memory"})
                    log(f"  skip {cls} {name} {shape}: memory")
                    return None
            calls = [make_call() for _ in range(copies)]
            t_est = self.est(flops, bytes_)
            per_graph = max(1, math.ceil(self.timer.min_graph_s / (t_est * copies)))
            k = min(max(copies * per_graph, copies), 4096)
            if reps is None:
                reps = 5 if self.smoke else int(min(50, max(25, 0.3 / (t_est * k))))
            ts, info = self.timer.time_calls(calls, k, reps)
            del calls
            if self.cuda and copies * ws_bytes > 2**30:
                torch.cuda.empty_cache()
        except torch.cuda.OutOfMemoryError as e:  # pragma: no cover (GPU only)
            self.skipped.append({"class": cls, "name": name, "shape": shape, "why": "OOM: " + str(e)[:120]})
            log(f"  skip {cls} {name} {shape}: OOM")
            torch.cuda.empty_cache()
            return None
        except Exception as e:
            self.skipped.append({"class": cls, "name": name, "shape": shape, "why": "error: " + repr(e)[:300]})
            log(f"  skip {cls} {name} {shape}: {e!r}"[:400])
            if self.n_errors == 0:
                traceback.print_exc()
            self.n_errors += 1
            if self.cuda:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
            return None
        med = quantile(ts, 0.5)
        s = {
            "class": cls,
            "name": name,
            "shape": shape,
            "flops": float(flops),
            "bytes": float(bytes_),
            "time_s": _r(med),
            "times_s": [_r(x) for x in ts],
            "p10": _r(quantile(ts, 0.1)),
            "p90": _r(quantile(ts, 0.9)),
            "copies": copies,
            "calls_per_replay": k,
            "graph": info["graph"],
        }
        if extra:
            s.update(extra)
        if exclude:
            s["exclude_from_fit"] = True
        self.samples.append(s)
        if census:
            self.census_todo.append((s, make_call))
        ach = []
        if flops:
            ach.append(f"{flops / med / 1e12:7.1f} TFLOP/s")
        if bytes_:
            ach.append(f"{bytes_ / med / 1e9:7.1f} GB/s")
        log(f"  {cls:17s} {name:22s} {json.dumps(shape, sort_keys=True):60s} {med * 1e6:10.2f} us  " + " ".join(ach))
        return s

    def class_budget_over(self, cls, t0):
        lim = self.budgets.get(cls, 60)
        if time.time() - t0 > lim or self.elapsed() > self.args.budget_s:
            return True
        return False

    # ------------------------------------------------------------------ classes
    def run_launch(self):
        x = torch.zeros(1, device=self.device, dtype=torch.float32)
        for i in range(3):
            self.measure("launch", "add_scalar_1elem", {"n": 1}, 1, 8, 8,
                         lambda: (lambda: x.add_(1.0)), max_copies=1,
                         extra={"note": "x.add_(1) on 1 element, in a CUDA graph: per-kernel launch gap + minimal kernel"})
        # eager interval: host-side dispatch of a tiny op (no graph)
        if self.cuda:
            n = 200
            for _ in range(20):
                x.add_(1.0)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(n):
                x.add_(1.0)
            torch.cuda.synchronize()
            self.eager_interval = (time.perf_counter() - t0) / n
        else:
            self.eager_interval = None

    def run_copy(self):
        t0 = time.time()
        sizes = [2**20 * 2**i for i in range(12)] if not self.smoke else [2**16, 2**18, 2**20, 2**22]
        for nbytes in sizes:
            if self.class_budget_over("copy", t0):
                self.skipped.append({"class": "copy", "name": "rest", "why": "class budget"})
                break
            n = nbytes // ELEM

            def mk(n=n):
                src = self.rand(n)
                dst = torch.empty_like(src)
                return lambda: dst.copy_(src)

            self.measure("copy", "d2d_copy", {"bytes": nbytes}, 0, 2 * nbytes, 2 * nbytes, mk,
                         max_copies=64)

    def run_gemm(self):
        t0 = time.time()
        if self.smoke:
            kns = [("tiny_a", 256, 512), ("tiny_b", 512, 256)]
            ms = [1, 8, 64, 256]
        else:
            kns, ms = GEMM_KN, GEMM_M
        for tag, K, N in kns:
            for M in ms:
                if self.class_budget_over("gemm", t0):
                    self.skipped.append({"class": "gemm", "name": tag, "shape": {"M": M}, "why": "class budget"})
                    continue
                flops = 2 * M * K * N
                bytes_ = (M * K + K * N + M * N) * ELEM

                def mk(M=M, K=K, N=N):
                    x = self.rand(M, K)
                    w = self.rand(N, K, scale=0.02)  # nn.Linear layout [out, in]
                    return lambda: F.linear(x, w)

                self.measure("gemm", tag, {"M": M, "K": K, "N": N}, flops, bytes_, bytes_, mk,
                             extra={"impl": "F.linear(x[M,K], w[N,K]) fp16 (cuBLAS)"})
            if self.cuda:
                torch.cuda.empty_cache()

    def _compile(self, fn, dynamic):
        if self.args.no_compile:
            return None
        try:
            import torch._dynamo as dynamo
            for key in ("recompile_limit", "cache_size_limit"):
                if hasattr(dynamo.config, key):
                    setattr(dynamo.config, key, 256)
            return torch.compile(fn, dynamic=dynamic)
        except Exception as e:
            self.notes.append(f"torch.compile unavailable: {e!r}"[:300])
            return None

    def _check_compiled(self, name, ref_fn, fn, args, tol):
        if fn is None:
            return None
        try:
            ref, got = ref_fn(*args), fn(*args)
            if not torch.allclose(ref.float(), got.float(), atol=tol, rtol=tol):
                raise RuntimeError(f"compiled {name} mismatch")
            return fn
        except Exception as e:
            self.notes.append(f"compiled {name} failed, not measured: {e!r}"[:300])
            log("  compile failed:", repr(e)[:300])
            return None

    def run_elementwise(self):
        I, D = (11008, 4096) if not self.smoke else (1376, 512)
        Ts = [2**i for i in range(15)] if not self.smoke else [1, 16, 256]

        def silu_mul(g, u):
            return F.silu(g) * u

        a = self.rand(3, I)
        cs = self._check_compiled("silu_mul static", silu_mul, self._compile(silu_mul, False), (a, a), 1e-2)
        cd = self._check_compiled("silu_mul dynamic", silu_mul, self._compile(silu_mul, True), (a, a), 1e-2)
        t0 = time.time()  # the class budget counts after the first compilation
        for T in Ts:
            if self.class_budget_over("elementwise", t0):
                self.skipped.append({"class": "elementwise", "name": "rest", "shape": {"T": T}, "why": "class budget"})
                break
            # fused SiLU(gate) * up: read 2, write 1
            nb = 3 * T * I * ELEM
            for fn, name, impl, excl in (
                (cs, "silu_mul_fused", "torch.compile(dynamic=False) of F.silu(g)*u, one static-shape kernel per T", False),
                (cd, "silu_mul_fused_dynamic",
                 "torch.compile(dynamic=True) of F.silu(g)*u: one dynamic-shape kernel; excluded from the fit "
                 "(inductor tunes it for the first call's size: codegen artefact, not hardware)", True),
                (silu_mul, "silu_mul_eager", "eager F.silu(g)*u: 2 kernels, 5 tensor passes; excluded from the fit", True),
            ):
                if fn is None:
                    continue

                def mk(T=T, fn=fn):
                    g, u = self.rand(T, I), self.rand(T, I)
                    return lambda: fn(g, u)

                self.measure("elementwise", name, {"T": T, "I": I}, 5 * T * I, nb, nb, mk, exclude=excl,
                             extra={"impl": impl}, census=name == "silu_mul_fused")
            # eager single kernels: silu (read 1 write 1), residual add (read 2 write 1)
            nb2 = 2 * T * I * ELEM

            def mk_s(T=T):
                g = self.rand(T, I)
                return lambda: F.silu(g)

            self.measure("elementwise", "silu_eager", {"T": T, "I": I}, 4 * T * I, nb2, nb2, mk_s,
                         extra={"impl": "eager F.silu: one kernel"}, census=True)
            nb3 = 3 * T * D * ELEM

            def mk_a(T=T):
                x, r = self.rand(T, D), self.rand(T, D)
                return lambda: x + r

            self.measure("elementwise", "residual_add", {"T": T, "D": D}, T * D, nb3, nb3, mk_a,
                         extra={"impl": "eager x + r: one kernel"}, census=True)

    def run_reduction(self):
        D, V = (4096, 32000) if not self.smoke else (512, 2000)
        Ts = [2**i for i in range(15)] if not self.smoke else [1, 16, 256]
        eps = 1e-5

        def rmsnorm(x, w):
            xf = x.float()
            y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
            return (y * w.float()).to(x.dtype)

        a, w = self.rand(3, D), self.rand(D)
        cr = self._check_compiled("rmsnorm static", rmsnorm, self._compile(rmsnorm, False), (a, w), 2e-2)
        crd = self._check_compiled("rmsnorm dynamic", rmsnorm, self._compile(rmsnorm, True), (a, w), 2e-2)
        eager = None
        if hasattr(F, "rms_norm"):
            eager = lambda x, w: F.rms_norm(x, (x.shape[-1],), w, eps)  # noqa: E731
        variants = [
            (cr, "rmsnorm", "torch.compile(dynamic=False) of x*rsqrt(mean(x^2)+eps)*w, fp32 math: one kernel per T",
             False),
            (crd, "rmsnorm_dynamic", "torch.compile(dynamic=True) of the same; excluded from the fit "
             "(dynamic-shape codegen tuned for the first call's size)", True),
            (eager, "rms_norm_eager", "eager F.rms_norm (as in the e2e model); in the fit only if the census "
             "finds one kernel", False),
        ]
        if cr is None:
            variants.append((rmsnorm, "rmsnorm_manual_eager", "eager manual rmsnorm, several kernels; excluded", True))
        t0 = time.time()  # the class budget counts after the first compilation
        for T in Ts:
            if self.class_budget_over("reduction", t0):
                self.skipped.append({"class": "reduction", "name": "rest", "shape": {"T": T}, "why": "class budget"})
                break
            nb = (2 * T * D + D) * ELEM
            for fn, name, impl, excl in variants:
                if fn is None:
                    continue

                def mk(T=T, fn=fn):
                    x, w = self.rand(T, D), self.rand(D)
                    return lambda: fn(x, w)

                self.measure("reduction", name, {"T": T, "D": D}, 4 * T * D, nb, nb, mk, extra={"impl": impl},
                             exclude=excl, census=not excl)
            if T <= (4096 if not self.smoke else 256):
                nb = 2 * T * V * ELEM

                def mk_sm(T=T):
                    x = self.rand(T, V)
                    return lambda: torch.softmax(x, dim=-1)

                self.measure("reduction", "softmax_vocab", {"T": T, "V": V}, 5 * T * V, nb, nb, mk_sm,
                             extra={"impl": "eager torch.softmax over the vocab, fp16 in/out: one kernel"},
                             census=True)

    def kernel_names(self, fn):
        """Names of the device kernels one call of ``fn`` launches (torch.profiler; CPU ops in smoke)."""
        from torch.profiler import ProfilerActivity, profile

        act = ProfilerActivity.CUDA if self.cuda else ProfilerActivity.CPU
        kind = torch.autograd.DeviceType.CUDA if self.cuda else torch.autograd.DeviceType.CPU
        fn()
        if self.cuda:
            torch.cuda.synchronize()
        with profile(activities=[act]) as prof:
            fn()
            if self.cuda:
                torch.cuda.synchronize()
        out = []
        for e in prof.events():
            if e.device_type != kind:
                continue
            if self.cuda and (e.name.startswith("Memcpy") or e.name.startswith("Memset")):
                continue
            if not self.cuda and getattr(e, "cpu_parent", None) is not None:
                continue  # smoke: top-level CPU ops only
            try:
                dur = e.time_range.elapsed_us() * 1e-6
            except Exception:
                dur = None
            out.append((e.name, dur))
        return out

    def run_census(self):
        """Kernels launched per measured op (last, so the profiler cannot disturb the timings)."""
        t0 = time.time()
        counts = {}
        for smp, make_call in self.census_todo:
            if self.class_budget_over("census", t0):
                self.notes.append("kernel census stopped by its budget")
                break
            try:
                call = make_call()
                ks = self.kernel_names(call)
                del call
            except Exception as e:
                self.notes.append(f"kernel census failed: {e!r}"[:300])
                log("  census failed:", repr(e)[:300])
                break
            smp["kernels_per_call"] = len(ks)
            smp["kernel_names"] = sorted({n[:100] for n, _ in ks})[:6]
            counts[smp["name"]] = counts.get(smp["name"], set()) | {len(ks)}
            if (self.cuda and smp["class"] in ("elementwise", "reduction") and len(ks) != 1
                    and not smp.get("exclude_from_fit")):
                smp["exclude_from_fit"] = True
                smp["exclude_reason"] = f"{len(ks)} kernels per call, the class model is per kernel"
            if self.cuda and smp["bytes"] * smp.get("copies", 1) > 2**30:
                torch.cuda.empty_cache()
        log("  kernels per call by op name: " + ", ".join(f"{k}={sorted(v)}" for k, v in counts.items()))

    def _sdpa_ctx(self):
        if not self.cuda:
            return None
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel
            return lambda: sdpa_kernel([SDPBackend.FLASH_ATTENTION])
        except Exception:
            return None

    def _attn_fn(self, gqa: bool, causal: bool):
        """An SDPA call forced to the flash backend where possible; reports what it used."""
        ctx = self._sdpa_ctx()
        import contextlib

        def call(q, k, v):
            with (ctx() if ctx else contextlib.nullcontext()):
                if gqa:
                    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

        return call

    def _probe_attention(self, gqa, causal, q, k, v):
        """Check the forced-flash call runs (and is right); else fall back to default SDPA."""
        fn = self._attn_fn(gqa, causal)
        backend = "flash (forced via sdpa_kernel)" if self.cuda else "default (cpu)"
        try:
            out = fn(q, k, v)
            kk, vv = k, v
            if gqa:
                rep = q.shape[1] // k.shape[1]
                kk, vv = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
            ref = F.scaled_dot_product_attention(q.float(), kk.float(), vv.float(), is_causal=causal)
            err = (out.float() - ref).norm() / ref.norm()
            if not torch.isfinite(err) or err > 1e-2:
                raise RuntimeError(f"attention mismatch rel err {float(err):.3g}")
            return fn, backend
        except Exception as e:
            self.notes.append(f"forced flash attention failed (gqa={gqa}, causal={causal}): {e!r}"[:300])
            log("  forced flash failed:", repr(e)[:200])

            def fb(q, k, v):
                if gqa:
                    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

            return fb, "default SDPA selection"

    def run_attention_decode(self):
        self._run_attention("attention_decode", "C", causal=False, probe=(2, 1, 64),
                            Ls=[512, 1024, 2048, 4096, 8192, 16384] if not self.smoke else [64, 256],
                            Bs=[1, 4, 16, 64] if not self.smoke else [1, 4],
                            impl="SDPA S=1, is_causal=False")

    def run_attention_prefill(self):
        self._run_attention("attention_prefill", "N", causal=True, probe=(1, 256, 256),
                            Ls=[128, 256, 512, 1024, 2048, 4096, 8192] if not self.smoke else [64, 128, 256],
                            Bs=[1, 4, 16] if not self.smoke else [1, 2], max_tokens=32768,
                            impl="SDPA is_causal=True")

    def _run_attention(self, cls, L_key, *, causal, probe, Ls, Bs, impl, max_tokens=None):
        """Time SDPA of ``cls`` over batch ``Bs`` x key length ``Ls`` (named ``L_key`` in the shape)
        for an MHA and a GQA head layout: decode (``causal`` False) has one query token, prefill
        (``causal`` True) as many queries as keys. ``probe`` = (batch, queries, keys) of the backend
        probe; ``max_tokens`` caps batch x keys."""
        t0 = time.time()
        d = 128
        variants = [("mha", 32, 32), ("gqa", 64, 8)] if not self.smoke else [("mha", 4, 4), ("gqa", 8, 2)]
        prefix = cls.split("_")[1]
        for vname, H, Hkv in variants:
            gqa = H != Hkv
            q = self.rand(probe[0], H, probe[1], d)
            k = self.rand(probe[0], Hkv, probe[2], d)
            fn, backend = self._probe_attention(gqa, causal, q, k, k.clone())
            for B in Bs:
                for L in Ls:
                    if max_tokens is not None and B * L > max_tokens:
                        continue
                    if self.class_budget_over(cls, t0):
                        self.skipped.append({"class": cls, "name": vname,
                                             "shape": {"B": B, L_key: L}, "why": "class budget"})
                        continue
                    S = L if causal else 1
                    flops = 4 * B * H * S * L * d // (2 if causal else 1)
                    bytes_ = (2 * B * H * S * d + 2 * B * Hkv * L * d) * ELEM

                    def mk(B=B, S=S, L=L, H=H, Hkv=Hkv):
                        qq = self.rand(B, H, S, d)
                        kk = self.rand(B, Hkv, L, d)
                        vv = self.rand(B, Hkv, L, d)
                        return lambda: fn(qq, kk, vv)

                    self.measure(cls, f"{prefix}_{vname}", {"B": B, "H": H, "Hkv": Hkv, L_key: L, "d": d},
                                 flops, bytes_, bytes_, mk, extra={"impl": f"{impl}, {backend}"})
            if self.cuda:
                torch.cuda.empty_cache()

    def run_e2e(self):
        t0 = time.time()
        if self.smoke:
            cfg = dict(layers=2, hidden=256, heads=4, kv_heads=4, head_dim=64, intermediate=688, vocab=1000)
            prefill_pts = [(1, 32), (2, 64)]
            decode_pts = [(1, 64), (4, 64), (1, 128)]
        else:
            cfg = dict(E2E_SHAPES[self.args.e2e_model])
            prefill_pts = [(1, 128), (1, 512), (1, 2048), (4, 512), (8, 1024)]
            decode_pts = [(b, c) for b in (1, 8, 32) for c in (512, 2048)]
        model = TinyLlama(cfg, self.device, self.smoke)
        res = {
            "config": dict(
                cfg,
                name=f"{self.args.e2e_model.replace('_', '-')}-shaped" if not self.smoke else "smoke",
                dtype="float16",
                rms_eps=1e-5,
                rope_theta=10000.0,
                weights="random normal(0, 0.02)",
                linears="separate q, k, v, o, gate, up, down (HF layout, F.linear, no bias)",
                attention="F.scaled_dot_product_attention (flash forced where possible); prefill is_causal=True",
                rmsnorm=model.rms_impl,
                silu_mul="eager F.silu(gate) * up (2 kernels)",
                rope="eager rotate-half (several kernels)",
                lm_head="last token of each sequence only" + (
                    ", tied to the embedding table (F.linear on the same tensor)" if cfg.get("tied") else ""),
                prefill_writes_kv_cache=False,
                prefill_modes="each point timed eagerly (host dispatch included) and replayed as a CUDA graph",
                decode=("one step, input 1 token per sequence at position ctx, writes K/V at ctx and attends over "
                        "ctx+1 cached keys; whole step captured in one CUDA graph and replayed"),
                kv_cache_layout="per layer K and V [batch, kv_heads, max_ctx+1, head_dim], random contents",
            ),
            "weights_bytes": model.weight_bytes,
            "prefill": [],
            "decode": [],
        }
        self.e2e = res
        with torch.no_grad():
            for B, S in prefill_pts:
                if self.class_budget_over("e2e", t0):
                    self.skipped.append({"class": "e2e", "name": "prefill", "shape": {"batch": B, "prompt": S}, "why": "budget"})
                    continue
                try:
                    tok = torch.randint(0, cfg["vocab"], (B, S), device=self.device)
                    ts = self._time_eager(lambda: model.prefill(tok), reps=3 if self.smoke else (10 if B * S <= 2048 else 6))
                    pt = {"batch": B, "prompt": S, "time_s": _r(quantile(ts, 0.5)), "times_s": [_r(x) for x in ts],
                          "p10": _r(quantile(ts, 0.1)), "p90": _r(quantile(ts, 0.9)), "mode": "eager"}
                    res["prefill"].append(pt)
                    log(f"  e2e prefill batch={B} prompt={S}: {pt['time_s'] * 1e3:.3f} ms (eager)")
                    ts, info = self.timer.time_calls([lambda: model.prefill(tok)], 1,
                                                     reps=3 if self.smoke else (10 if B * S <= 2048 else 6), warmup=1)
                    pt = {"batch": B, "prompt": S, "time_s": _r(quantile(ts, 0.5)), "times_s": [_r(x) for x in ts],
                          "p10": _r(quantile(ts, 0.1)), "p90": _r(quantile(ts, 0.9)),
                          "mode": "cuda_graph" if info["graph"] else "eager"}
                    res["prefill"].append(pt)
                    log(f"  e2e prefill batch={B} prompt={S}: {pt['time_s'] * 1e3:.3f} ms ({pt['mode']})")
                    if self.cuda:
                        torch.cuda.empty_cache()
                except torch.cuda.OutOfMemoryError:  # pragma: no cover
                    self.skipped.append({"class": "e2e", "name": "prefill", "shape": {"batch": B, "prompt": S}, "why": "OOM"})
                    torch.cuda.empty_cache()
            batches = sorted({b for b, _ in decode_pts})
            for B in batches:
                ctxs = sorted(c for b, c in decode_pts if b == B)
                try:
                    cache = model.new_cache(B, max(ctxs) + 1)
                except torch.cuda.OutOfMemoryError:  # pragma: no cover
                    self.skipped.append({"class": "e2e", "name": "decode", "shape": {"batch": B}, "why": "OOM (cache)"})
                    torch.cuda.empty_cache()
                    continue
                tok = torch.randint(0, cfg["vocab"], (B, 1), device=self.device)
                for C in ctxs:
                    if self.class_budget_over("e2e", t0):
                        self.skipped.append({"class": "e2e", "name": "decode", "shape": {"batch": B, "ctx": C}, "why": "budget"})
                        continue
                    step = lambda C=C: model.decode_step(tok, cache, C)  # noqa: E731
                    try:
                        ts, info = self.timer.time_calls([step], 1, reps=5 if self.smoke else 30, warmup=2)
                        pt = {"batch": B, "ctx": C, "time_s": _r(quantile(ts, 0.5)), "times_s": [_r(x) for x in ts],
                              "p10": _r(quantile(ts, 0.1)), "p90": _r(quantile(ts, 0.9)),
                              "mode": "cuda_graph" if info["graph"] else "eager"}
                        res["decode"].append(pt)
                        log(f"  e2e decode batch={B} ctx={C}: {pt['time_s'] * 1e3:.3f} ms ({pt['mode']})")
                        if B == batches[0] and C == ctxs[0] and self.cuda:
                            ts = self._time_eager(step, reps=10)
                            pe = {"batch": B, "ctx": C, "time_s": _r(quantile(ts, 0.5)), "times_s": [_r(x) for x in ts],
                                  "mode": "eager"}
                            res["decode"].append(pe)
                            log(f"  e2e decode batch={B} ctx={C}: {pe['time_s'] * 1e3:.3f} ms (eager, no graph)")
                    except torch.cuda.OutOfMemoryError:  # pragma: no cover
                        self.skipped.append({"class": "e2e", "name": "decode", "shape": {"batch": B, "ctx": C}, "why": "OOM"})
                del cache
                if self.cuda:
                    torch.cuda.empty_cache()
            # kernel census of one eager prefill and one eager decode step (profiler last: timings are done)
            try:
                prof = {}
                B0, S0 = prefill_pts[0]
                tok = torch.randint(0, cfg["vocab"], (B0, S0), device=self.device)
                prof[f"prefill_b{B0}_s{S0}"] = summarize_kernels(self.kernel_names(lambda: model.prefill(tok)))
                B1, C1 = decode_pts[0]
                cache = model.new_cache(B1, C1 + 1)
                tok1 = torch.randint(0, cfg["vocab"], (B1, 1), device=self.device)
                prof[f"decode_b{B1}_ctx{C1}"] = summarize_kernels(
                    self.kernel_names(lambda: model.decode_step(tok1, cache, C1)))
                del cache
                res["kernel_census"] = prof
                for k, v in prof.items():
                    log(f"  e2e {k}: {v['kernels']} kernels, profiled GPU busy {v['gpu_busy_s'] * 1e3:.3f} ms")
            except Exception as e:
                self.notes.append(f"e2e kernel census failed: {e!r}"[:300])
                log("  e2e census failed:", repr(e)[:300])
        del model
        if self.cuda:
            torch.cuda.empty_cache()

    def _time_eager(self, fn, reps):
        for _ in range(2):
            fn()
        if not self.cuda:
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            return ts
        torch.cuda.synchronize()
        ts = []
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            ts.append(a.elapsed_time(b) * 1e-3)
        return ts

    # ------------------------------------------------------------------ driver
    def versions(self):
        v = {"torch": torch.__version__, "python": platform.python_version(),
             "cuda_runtime": torch.version.cuda, "cudnn": None, "driver": None, "triton": None}
        try:
            v["cudnn"] = torch.backends.cudnn.version()
        except Exception:
            pass
        try:
            import triton  # noqa: F401
            v["triton"] = triton.__version__
        except Exception:
            pass
        if self.cuda:
            try:
                outp = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,clocks.max.mem,power.limit",
                                       "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
                parts = [p.strip() for p in outp.stdout.strip().splitlines()[0].split(",")]
                v["driver"] = parts[0]
                v["nvidia_smi"] = {"clocks_max_sm": parts[1], "clocks_max_mem": parts[2], "power_limit": parts[3]}
            except Exception as e:
                v["driver"] = f"unknown ({e!r})"[:100]
        return v

    def result(self):
        copy = [s for s in self.samples if s["class"] == "copy"]
        big = [s for s in copy if s["bytes"] >= 2 * 256 * 2**20] or copy
        bw = max((s["bytes"] / s["time_s"] for s in big), default=None)
        huge = sorted(s["bytes"] / s["time_s"] for s in copy if s["bytes"] >= 2 * 2**30)
        bw_huge = huge[len(huge) // 2] if huge else None
        launch = [s["time_s"] for s in self.samples if s["class"] == "launch"]
        return {
            "schema": "rooftop-calibration/1",
            "smoke": self.smoke,
            "device": {"name": self.dev_name, "key": self.ds["key"], "sm_count": self.sm_count,
                       "l2_bytes": self.l2, "total_memory_bytes": self.total_mem, "capability": self.capability},
            "datasheet": {"peak_flops": self.ds["peak_flops"], "bandwidth": self.ds["bandwidth"],
                          "note": "dense fp16 tensor FLOP/s and memory bandwidth from the datasheet, matched by device name"},
            "versions": self.versions_cache,
            "date": self.date,
            "dtype": "float16",
            "bytes_per_element": ELEM,
            "measured": {
                "copy_bandwidth_Bps": bw,
                "copy_bandwidth_note": "max over copies >= 256 MiB of (bytes read + bytes written) / median time",
                "copy_bandwidth_ge_1GiB_Bps": bw_huge,
                "copy_bandwidth_ge_1GiB_note": "median over copies of >= 1 GiB (2 GiB moved) of bytes moved / time",
                "launch_s": quantile(launch, 0.5) if launch else None,
                "eager_tiny_op_interval_s": getattr(self, "eager_interval", None),
            },
            "timing": {
                "method": ("CUDA graph of k calls cycling over `copies` distinct buffer sets (working set >= 4x L2), "
                           "replays queued back to back behind a GPU spin with CUDA events between them; "
                           "time_s = median over replays of replay_time / k; includes in-graph launch gaps")
                if self.cuda else "host perf_counter (smoke)",
                "target_working_set_bytes": self.target_ws,
            },
            "conventions": {
                "gemm": "F = 2MKN; bytes = (MK + KN + MN) * 2",
                "attention_prefill": ("causal counted as half of the full 4*B*H*N^2*d: F = 2*B*H*N^2*d; "
                                      "bytes = (2*B*H*N*d + 2*B*Hkv*N*d) * 2 (Q, O and K, V once)"),
                "attention_decode": "F = 4*B*H*C*d; bytes = (2*B*Hkv*C*d + 2*B*H*d) * 2",
                "elementwise": "bytes = inputs + output; FLOPs ~ 1 per element (add), 4 (silu), 5 (silu*up)",
                "reduction": "rmsnorm: bytes = (2*T*D + D) * 2, F = 4*T*D; softmax: bytes = 2*T*V*2, F = 5*T*V",
                "copy": "N bytes copied: bytes = 2N (read + write), F = 0",
                "launch": "not an op class: an almost empty kernel, gives the per-kernel launch gap",
            },
            "notes": self.notes,
            "samples": self.samples,
            "e2e": getattr(self, "e2e", None),
            "skipped": self.skipped,
            "class_wall_s": self.class_wall,
            "wall_s": round(self.elapsed(), 1),
        }

    def write(self):
        tmp = self.args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.result(), f, indent=1, sort_keys=True)
        os.replace(tmp, self.args.out)

    def run(self):
        self.date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.versions_cache = self.versions()
        log(f"device: {self.dev_name}  ({self.ds['key']}), L2 {self.l2 / 2**20:.0f} MiB, "
            f"SMs {self.sm_count}, torch {torch.__version__}, cuda {torch.version.cuda}, "
            f"driver {self.versions_cache.get('driver')}")
        s = self.args.budget_scale
        self.budgets = {"launch": 10 * s, "copy": 20 * s, "gemm": 60 * s, "elementwise": 100 * s, "reduction": 90 * s,
                        "attention_decode": 30 * s, "attention_prefill": 30 * s, "e2e": 60 * s, "census": 40 * s}
        classes = [c for c in ["launch", "copy", "gemm", "elementwise", "reduction", "attention_decode",
                               "attention_prefill", "e2e", "census"] if c in self.args.classes.split(",")]
        for cls in classes:
            log(f"== {cls} (elapsed {self.elapsed():.1f} s)")
            t0 = time.time()
            try:
                getattr(self, "run_" + cls)()
            except Exception as e:
                traceback.print_exc()
                self.notes.append(f"class {cls} aborted: {e!r}"[:400])
                if self.cuda:
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
            self.class_wall[cls] = round(time.time() - t0, 1)
            self.write()
        log(f"done in {self.elapsed():.1f} s -> {self.args.out}")
        self.summary()

    def summary(self):
        r = self.result()
        print("\n=== summary ===")
        print(f"device {r['device']['name']}  copy bandwidth {((r['measured']['copy_bandwidth_Bps'] or 0) / 1e12):.3f} TB/s"
              f"  launch {((r['measured']['launch_s'] or 0) * 1e6):.2f} us  eager interval "
              f"{((r['measured']['eager_tiny_op_interval_s'] or 0) * 1e6):.2f} us")
        by = {}
        for smp in self.samples:
            by.setdefault(smp["class"], []).append(smp)
        for cls, ss in by.items():
            bestf = max((x["flops"] / x["time_s"] for x in ss), default=0)
            bestb = max((x["bytes"] / x["time_s"] for x in ss), default=0)
            print(f"{cls:18s} n={len(ss):4d}  best {bestf / 1e12:8.1f} TFLOP/s  {bestb / 1e12:6.3f} TB/s  "
                  f"class wall {self.class_wall.get(cls, 0)} s")
        if self.skipped:
            print(f"skipped: {len(self.skipped)}")
        for n in self.notes:
            print("note:", n)


def summarize_kernels(ks):
    """{kernels, gpu_busy_s, by_name: [[name, count, total_s], ...] (top 15 by time)}."""
    by = {}
    for name, dur in ks:
        c, t = by.get(name, (0, 0.0))
        by[name] = (c + 1, t + (dur or 0.0))
    top = sorted(by.items(), key=lambda kv: -kv[1][1])[:15]
    return {"kernels": len(ks), "gpu_busy_s": _r(sum(d or 0.0 for _, d in ks)),
            "by_name": [[n[:120], c, _r(t)] for n, (c, t) in top]}


#: whole-model shapes the e2e class can time (``--e2e-model``); names are rooftop's conf/model/
E2E_SHAPES = {
    "llama2_7b": dict(layers=32, hidden=4096, heads=32, kv_heads=32, head_dim=128, intermediate=11008,
                      vocab=32000),
    # Llama-3.2-1B: GQA 32/8, the 128 256-token vocabulary, LM head tied to the embedding table
    "llama3_1b": dict(layers=16, hidden=2048, heads=32, kv_heads=8, head_dim=64, intermediate=8192,
                      vocab=128256, tied=True),
}


class TinyLlama:
    """Plain-torch Llama decoder with random fp16 weights (prefill + KV-cache decode step)."""

    def __init__(self, cfg, device, smoke):
        self.cfg = cfg
        self.device = device
        self.dtype = FP16
        D, H, Hkv, d, I, V = (cfg[k] for k in ("hidden", "heads", "kv_heads", "head_dim", "intermediate", "vocab"))
        self.D, self.H, self.Hkv, self.d, self.I, self.V = D, H, Hkv, d, I, V

        def w(*shape):
            return torch.empty(*shape, device=device, dtype=FP16).normal_(0.0, 0.02)

        def ones(n):
            return torch.ones(n, device=device, dtype=FP16)

        self.layers = []
        for _ in range(cfg["layers"]):
            self.layers.append(dict(
                wq=w(H * d, D), wk=w(Hkv * d, D), wv=w(Hkv * d, D), wo=w(D, H * d),
                wg=w(I, D), wu=w(I, D), wd=w(D, I), ln1=ones(D), ln2=ones(D)))
        self.embed = w(V, D)
        self.norm = ones(D)
        self.lm_head = self.embed if cfg.get("tied") else w(V, D)   # tied: one tensor, read as Wᵀ
        self.weight_bytes = sum(t.numel() * t.element_size() for L in self.layers for t in L.values()) + \
            (self.embed.numel() + self.norm.numel() + (0 if cfg.get("tied") else self.lm_head.numel())) * ELEM
        self.eps = 1e-5
        if hasattr(F, "rms_norm"):
            self.rms_impl = "F.rms_norm (eager)"
            self.rms = lambda x, w: F.rms_norm(x, (x.shape[-1],), w, self.eps)
        else:
            self.rms_impl = "manual eager x*rsqrt(mean(x^2)+eps)*w in fp32"
            self.rms = self._rms_manual
        maxpos = 16384
        inv = 1.0 / (10000.0 ** (torch.arange(0, d, 2, device=device, dtype=torch.float32) / d))
        f = torch.outer(torch.arange(maxpos, device=device, dtype=torch.float32), inv)
        emb = torch.cat([f, f], dim=-1)
        self.cos, self.sin = emb.cos().to(FP16), emb.sin().to(FP16)
        self.attn = self._attn_fn()

    def _rms_manual(self, x, w):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * w

    def _attn_fn(self):
        gqa = self.H != self.Hkv
        ctx = None
        if self.device.type == "cuda":
            try:
                from torch.nn.attention import SDPBackend, sdpa_kernel
                ctx = lambda: sdpa_kernel([SDPBackend.FLASH_ATTENTION])  # noqa: E731
            except Exception:
                ctx = None
        import contextlib

        def call(q, k, v, causal):
            with (ctx() if ctx else contextlib.nullcontext()):
                if gqa:
                    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

        return call

    @staticmethod
    def _rot(x):
        h = x.shape[-1] // 2
        return torch.cat([-x[..., h:], x[..., :h]], dim=-1)

    def _rope(self, x, cos, sin):  # x [B, H, S, d]; cos/sin [S, d]
        return x * cos + self._rot(x) * sin

    def lin(self, x, w):
        """A layer's linear (subclasses swap in quantized kernels)."""
        return F.linear(x, w)

    def _layer(self, x, L, cos, sin, cache=None, pos=None):
        """One decoder layer on ``x`` [B, S, D]; with ``cache`` the S tokens are written at
        ``pos`` and attend (causally when S > 1) to the cache up to them."""
        B, S, D = x.shape
        h = self.rms(x, L["ln1"])
        q = self.lin(h, L["wq"]).view(B, S, self.H, self.d).transpose(1, 2)
        k = self.lin(h, L["wk"]).view(B, S, self.Hkv, self.d).transpose(1, 2)
        v = self.lin(h, L["wv"]).view(B, S, self.Hkv, self.d).transpose(1, 2)
        q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
        if cache is None:
            o = self.attn(q, k, v, True)
        else:
            kc, vc = cache
            kc[:, :, pos:pos + S].copy_(k)
            vc[:, :, pos:pos + S].copy_(v)
            o = self.attn(q, kc[:, :, :pos + S], vc[:, :, :pos + S], S > 1)
        o = o.transpose(1, 2).reshape(B, S, self.H * self.d)
        x = x + self.lin(o, L["wo"])
        h = self.rms(x, L["ln2"])
        return x + self.lin(F.silu(self.lin(h, L["wg"])) * self.lin(h, L["wu"]), L["wd"])

    def prefill(self, tokens):
        B, S = tokens.shape
        x = self.embed[tokens]
        cos, sin = self.cos[:S], self.sin[:S]
        for L in self.layers:
            x = self._layer(x, L, cos, sin)
        x = self.rms(x[:, -1], self.norm)
        return F.linear(x, self.lm_head)

    def new_cache(self, B, maxlen):
        caches = []
        for _ in self.layers:
            kc = torch.empty(B, self.Hkv, maxlen, self.d, device=self.device, dtype=self.dtype).normal_()
            vc = torch.empty(B, self.Hkv, maxlen, self.d, device=self.device, dtype=self.dtype).normal_()
            caches.append((kc, vc))
        return caches

    def decode_step(self, tokens, caches, pos):
        x = self.embed[tokens]  # [B, 1, D]
        cos, sin = self.cos[pos:pos + 1], self.sin[pos:pos + 1]
        for L, c in zip(self.layers, caches):
            x = self._layer(x, L, cos, sin, cache=c, pos=pos)
        x = self.rms(x[:, -1], self.norm)
        return F.linear(x, self.lm_head)


def parse_args(ap: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """``ap``'s arguments, with ``--smoke`` defaulting ``--device`` to the CPU; seeds torch."""
    args = ap.parse_args(argv)
    if args.smoke and args.device is None:
        args.device = "cpu"
    torch.manual_seed(0)
    return args


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on whatever device is present (tests the script)")
    ap.add_argument("--e2e-model", default="llama2_7b", choices=sorted(E2E_SHAPES),
                    help="model shape the e2e class times (default llama2_7b)")
    ap.add_argument("--device", default=None, help="torch device (default: cuda if present, else cpu)")
    ap.add_argument("--classes",
                    default="launch,copy,gemm,elementwise,reduction,attention_decode,attention_prefill,e2e,census")
    ap.add_argument("--budget-s", type=float, default=450.0, help="overall wall-clock budget (s)")
    ap.add_argument("--budget-scale", type=float, default=1.0, help="scales the per-class budgets")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (fused elementwise/rmsnorm)")
    args = parse_args(ap, argv)
    with torch.no_grad():
        Calibrator(args).run()


if __name__ == "__main__":
    main()
