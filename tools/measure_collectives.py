#!/usr/bin/env python3
"""Measure NCCL collectives and a tensor-parallel Llama-2-70B-shaped layer stack on one host.

One process per GPU (``torch.multiprocessing.spawn``; no torchrun needed), one process group per
device count in ``--world-sizes`` (default 2 4 8, those the host has). For every device count:

* ``all_reduce``, ``all_gather``, ``reduce_scatter``, ``all_to_all`` from 4 KiB to 1 GiB (doubling),
  eager (back-to-back calls between CUDA events) and captured in a CUDA graph (``k`` calls per
  graph, replayed), bf16; the size convention is nccl-tests' (all-gather: the whole gathered output,
  reduce-scatter: the whole input), so ``busbw = bus_factor x bytes / time`` compares to
  nccl-tests' ``busbw`` column;
* a Llama-2-70B-shaped decoder stack (hidden 8192, 64 heads, 8 KV heads, MLP 28672) sharded
  Megatron-style at tp = device count (QKV/gate-up by columns, O/down by rows, one all-reduce after
  O and one after down), prefill of 2048 tokens and decode at batch 1 and 32 over a 2048-token
  cache, with and without the all-reduces (their difference is the exposed communication time).
  One layer's weights are allocated and run ``--layers`` times (80 by default): each layer's weights
  (>= 0.2 GB per device) are far larger than the L2, so re-running one layer reads HBM like 80
  distinct layers would, at a fraction of the memory.

NVLink multicast stays off as the machine's environment sets it: this script sets (only if unset)
``NCCL_NVLS_ENABLE=0``, ``TORCH_SYMM_MEM_DISABLE_MULTICAST=1``, ``NVSHMEM_DISABLE_NVLS=1`` and never
uses symmetric memory or multicast objects. The environment is recorded in the JSON.

Exact command on a multi-GPU H200 host (about 10 minutes for 2/4/8 GPUs)::

    PYTHONUNBUFFERED=1 python3 tools/measure_collectives.py --out $OUT/collectives_h200.json
    python -m compiler.perf.calibration.collectives $OUT/collectives_h200.json --yaml conf/hardware/h200.yaml

Test on CPU (gloo, 2 processes, tiny sizes and a tiny layer stack; what CI runs)::

    python3 tools/measure_collectives.py --smoke --out /tmp/collectives_smoke.json

Output JSON: ``meta`` (device, date, versions, env), ``collectives`` rows ``{op, world_size, mode,
dtype, bytes, time_s, times_s, algbw_gbs, busbw_gbs}``, ``layer_stack`` rows ``{tp, phase, batch,
seq, context, layers, mode, time_s, time_no_comm_s, comm_time_s, allreduce_bytes, shape}``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
import traceback

NVLS_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
for _k, _v in NVLS_ENV.items():
    os.environ.setdefault(_k, _v)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
import torch.nn.functional as F  # noqa: E402

COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")
KIB = 1024

# Llama-2-70B (Touvron et al. 2023, Table 1; meta-llama/Llama-2-70b-hf config.json)
LLAMA2_70B = {"hidden": 8192, "heads": 64, "kv_heads": 8, "head_dim": 128, "intermediate": 28672,
              "layers": 80}
TINY = {"hidden": 64, "heads": 4, "kv_heads": 2, "head_dim": 16, "intermediate": 128, "layers": 2}


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def bus_factor(kind: str, n: int) -> float:
    return 2.0 * (n - 1) / n if kind == "all_reduce" else (n - 1) / n


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- timing

class Timer:
    """CUDA events on a GPU, the host clock on CPU; returns seconds for ``fn`` run ``reps`` times."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def time(self, fn, reps: int) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(reps):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) * 1e-3
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return time.perf_counter() - t0


def _agree(value: float, device) -> float:
    """The maximum of ``value`` over all ranks (every rank gets the same number)."""
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def _collective_fn(kind: str, nbytes: int, n: int, dtype, device):
    """A closure running one collective whose nccl-tests ``size`` is ``nbytes``."""
    esize = torch.tensor([], dtype=dtype).element_size()
    count = max(n, nbytes // esize // n * n)          # divisible by n
    if kind == "all_reduce":
        buf = torch.ones(count, dtype=dtype, device=device)
        return (lambda: dist.all_reduce(buf)), count * esize
    if kind == "all_gather":
        out = torch.empty(count, dtype=dtype, device=device)
        inp = torch.ones(count // n, dtype=dtype, device=device)
        ag = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        return (lambda: ag(out, inp)), count * esize
    if kind == "reduce_scatter":
        inp = torch.ones(count, dtype=dtype, device=device)
        out = torch.empty(count // n, dtype=dtype, device=device)
        rs = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
        return (lambda: rs(out, inp)), count * esize
    inp = torch.ones(count, dtype=dtype, device=device)
    out = torch.empty(count, dtype=dtype, device=device)
    return (lambda: dist.all_to_all_single(out, inp)), count * esize


def _graph_of(fn, k: int):
    """Capture ``k`` calls of ``fn`` in one CUDA graph (after a warm-up on a side stream)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(k):
            fn()
    torch.cuda.synchronize()
    return g


def measure_collectives(args, rank: int, n: int, device, timer: Timer) -> list[dict]:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    sizes = []
    s = args.min_bytes
    while s <= args.max_bytes:
        sizes.append(s)
        s *= 2
    modes = ["eager"] + (["graph"] if device.type == "cuda" and not args.no_graph else [])
    rows = []
    for kind in COLLECTIVES:
        for nbytes in sizes:
            fn, real = _collective_fn(kind, nbytes, n, dtype, device)
            # calls per timed repeat: >= ~2 ms of work, at least 5 calls
            for mode in modes:
                try:
                    for _ in range(3):
                        fn()
                    timer.sync()
                    dist.barrier()
                    # every rank must issue the same number of calls: agree on the probe time
                    probe = _agree(timer.time(fn, 2) / 2, device)
                    k = int(min(200, max(5, 2e-3 / max(probe, 1e-7))))
                    if mode == "graph":
                        g = _graph_of(fn, k)
                        run, per = g.replay, k
                    else:
                        run, per = fn, 1
                    times = []
                    for _ in range(args.repeats):
                        timer.sync()
                        dist.barrier()
                        reps = 1 if mode == "graph" else k
                        times.append(timer.time(run, reps) / (per * reps))
                    tmed = _agree(statistics.median(times), device)   # the slowest rank's time
                    rows.append({"op": kind, "world_size": n, "mode": mode, "dtype": str(dtype).split(".")[-1],
                                 "bytes": int(real), "time_s": tmed,
                                 "times_s": [float(x) for x in times], "calls_per_repeat": k,
                                 "algbw_gbs": real / tmed / 1e9,
                                 "busbw_gbs": bus_factor(kind, n) * real / tmed / 1e9})
                    if mode == "graph":
                        del g
                except Exception as e:  # noqa: BLE001 - record and go on with the other sizes
                    rows.append({"op": kind, "world_size": n, "mode": mode, "bytes": int(real),
                                 "error": f"{type(e).__name__}: {e}"[:300]})
            del fn
        if rank == 0:
            got = [r for r in rows if r["op"] == kind and "time_s" in r]
            if got:
                last = got[-1]
                log(f"n={n} {kind}: {len(got)} points; {last['bytes'] / 2**20:.0f} MiB "
                    f"{last['mode']} busbw {last['busbw_gbs']:.1f} GB/s")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# --------------------------------------------------------------------------- layer stack

class ShardedLayer:
    """One Megatron-sharded Llama decoder layer on one device (tp = world size)."""

    def __init__(self, shape: dict, tp: int, device, dtype, seed: int = 0):
        h, d = shape["hidden"], shape["head_dim"]
        self.heads = shape["heads"] // tp
        kv = shape["kv_heads"]
        self.kv = kv // tp if kv >= tp else 1            # KV heads replicated when kv_heads < tp
        self.d = d
        self.inter = shape["intermediate"] // tp
        gen = torch.Generator(device=device).manual_seed(seed)
        std = 0.02

        def w(*s):
            return (torch.randn(*s, generator=gen, device=device, dtype=torch.float32) * std).to(dtype)

        self.norm1 = torch.ones(h, device=device, dtype=dtype)
        self.norm2 = torch.ones(h, device=device, dtype=dtype)
        self.w_qkv = w(h, (self.heads + 2 * self.kv) * d)      # column-parallel
        self.w_o = w(self.heads * d, h)                        # row-parallel
        self.w_gu = w(h, 2 * self.inter)                       # column-parallel
        self.w_down = w(self.inter, h)                         # row-parallel
        self.weight_bytes = sum(t.numel() * t.element_size()
                                for t in (self.w_qkv, self.w_o, self.w_gu, self.w_down, self.norm1, self.norm2))

    def forward(self, x, k_cache, v_cache, batch: int, seq: int, comm: bool):
        """x: [batch*seq, hidden]; caches [batch, kv, ctx, d] (prefill: None)."""
        h = x
        y = F.rms_norm(h, (h.shape[-1],), self.norm1, 1e-5)
        qkv = y @ self.w_qkv
        q, k, v = qkv.split([self.heads * self.d, self.kv * self.d, self.kv * self.d], dim=-1)
        q = q.view(batch, seq, self.heads, self.d).transpose(1, 2)
        k = k.view(batch, seq, self.kv, self.d).transpose(1, 2)
        v = v.view(batch, seq, self.kv, self.d).transpose(1, 2)
        if k_cache is not None:   # decode: attend over the cache (same cost as after appending)
            k, v = k_cache, v_cache
        rep = self.heads // self.kv
        if rep > 1:
            k = k.repeat_interleave(rep, dim=1) if k_cache is None else k
            v = v.repeat_interleave(rep, dim=1) if k_cache is None else v
        try:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=k_cache is None,
                                               enable_gqa=k.shape[1] != q.shape[1])
        except TypeError:  # torch < 2.5 has no enable_gqa
            if k.shape[1] != q.shape[1]:
                k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
                v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=k_cache is None)
        a = a.transpose(1, 2).reshape(batch * seq, self.heads * self.d)
        o = a @ self.w_o
        if comm:
            dist.all_reduce(o)
        h = h + o
        y = F.rms_norm(h, (h.shape[-1],), self.norm2, 1e-5)
        g, u = (y @ self.w_gu).chunk(2, dim=-1)
        m = (F.silu(g) * u) @ self.w_down
        if comm:
            dist.all_reduce(m)
        return h + m


def measure_layer_stack(args, rank: int, n: int, device, timer: Timer) -> list[dict]:
    shape = dict(TINY if args.smoke else LLAMA2_70B)
    layers = args.layers or shape["layers"]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if shape["heads"] % n:
        return []
    layer = ShardedLayer(shape, n, device, dtype, seed=rank)
    ctx = args.context
    cases = [("prefill", 1, args.prefill, 0)] + [("decode", b, 1, ctx) for b in args.decode_batches]
    rows = []
    for phase, batch, seq, context in cases:
        x = torch.randn(batch * seq, shape["hidden"], device=device, dtype=dtype) * 0.1
        kc = vc = None
        if phase == "decode":
            kc = torch.randn(batch, layer.kv, context, layer.d, device=device, dtype=dtype) * 0.1
            vc = torch.randn_like(kc)

        def stack(comm, x=x, kc=kc, vc=vc, batch=batch, seq=seq):
            y = x
            for _ in range(layers):
                y = layer.forward(y, kc, vc, batch, seq, comm)
            return y

        modes = ["eager"] + (["graph"] if device.type == "cuda" and not args.no_graph and phase == "decode" else [])
        for mode in modes:
            res = {}
            for comm in (True, False):
                fn = (lambda comm=comm: stack(comm))
                with torch.no_grad():
                    if mode == "graph":
                        g = _graph_of(fn, 1)
                        run = g.replay
                    else:
                        run = fn
                        run()
                    times = []
                    for _ in range(args.repeats):
                        timer.sync()
                        dist.barrier()
                        times.append(timer.time(run, 1))
                res[comm] = _agree(statistics.median(times), device)
            ar_bytes = batch * seq * shape["hidden"] * torch.tensor([], dtype=dtype).element_size()
            rows.append({"tp": n, "phase": phase, "batch": batch, "seq": seq, "context": context,
                         "layers": layers, "mode": mode, "dtype": str(dtype).split(".")[-1],
                         "time_s": res[True], "time_no_comm_s": res[False],
                         "comm_time_s": res[True] - res[False],
                         "allreduces": 2 * layers, "allreduce_bytes": ar_bytes,
                         "weight_bytes_per_device_per_layer": layer.weight_bytes, "shape": shape})
            if rank == 0:
                log(f"tp={n} {phase} b={batch} s={seq} ctx={context} {mode}: {res[True] * 1e3:.3f} ms "
                    f"(no comm {res[False] * 1e3:.3f} ms)")
        del x, kc, vc
    del layer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


# --------------------------------------------------------------------------- workers

def _worker(rank: int, n: int, port: int, args, out_path: str):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    cuda = torch.cuda.is_available() and not args.smoke
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    backend = "nccl" if cuda else "gloo"
    kw = {"device_id": device} if cuda else {}
    try:
        dist.init_process_group(backend, rank=rank, world_size=n, **kw)
    except TypeError:
        dist.init_process_group(backend, rank=rank, world_size=n)
    timer = Timer(device)
    result = {"collectives": [], "layer_stack": [], "errors": []}
    try:
        if not args.skip_collectives:
            result["collectives"] = measure_collectives(args, rank, n, device, timer)
        if not args.skip_layers:
            result["layer_stack"] = measure_layer_stack(args, rank, n, device, timer)
    except Exception:  # noqa: BLE001
        result["errors"].append(traceback.format_exc()[-2000:])
        log(f"rank {rank} n={n} failed:\n{traceback.format_exc()}")
    finally:
        if rank == 0:
            with open(out_path, "w") as f:
                json.dump(result, f)
        try:
            dist.barrier()
        except Exception:  # noqa: BLE001
            pass
        dist.destroy_process_group()


def _meta(args) -> dict:
    cuda = torch.cuda.is_available() and not args.smoke
    meta = {"tool": "tools/measure_collectives.py", "date": _dt.date.today().isoformat(),
            "host": platform.node(), "python": platform.python_version(),
            "torch_version": torch.__version__, "backend": "nccl" if cuda else "gloo",
            "smoke": bool(args.smoke),
            "env": {k: os.environ.get(k) for k in sorted(set(NVLS_ENV) | {"NCCL_ALGO", "NCCL_PROTO",
                                                                        "CUDA_VISIBLE_DEVICES"})
                    if os.environ.get(k) is not None}}
    if cuda:
        meta["device"] = torch.cuda.get_device_name(0)
        meta["device_count"] = torch.cuda.device_count()
        try:
            v = torch.cuda.nccl.version()
            meta["nccl_version"] = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
        except Exception:  # noqa: BLE001
            pass
    else:
        meta["device"] = f"CPU ({platform.processor() or platform.machine()}), gloo"
    return meta


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output JSON path")
    ap.add_argument("--smoke", action="store_true",
                    help="CPU/gloo, 2 processes, 4-64 KiB, tiny layer stack (tests this script)")
    ap.add_argument("--world-sizes", type=int, nargs="+", default=None,
                    help="device counts (default 2 4 8 up to the GPUs present; smoke: 2)")
    ap.add_argument("--min-bytes", type=int, default=4 * KIB)
    ap.add_argument("--max-bytes", type=int, default=2**30)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--layers", type=int, default=0, help="layers in the stack (0: 80; smoke: 2)")
    ap.add_argument("--prefill", type=int, default=2048)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--decode-batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--no-graph", action="store_true", help="eager only")
    ap.add_argument("--skip-collectives", action="store_true")
    ap.add_argument("--skip-layers", action="store_true")
    args = ap.parse_args(argv)
    if args.smoke:
        args.max_bytes = min(args.max_bytes, 64 * KIB)
        args.repeats = min(args.repeats, 3)
        args.prefill, args.context = min(args.prefill, 16), min(args.context, 32)
        args.world_sizes = args.world_sizes or [2]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        print("measure_collectives: no CUDA device; use --smoke for the CPU/gloo test run",
              file=sys.stderr)
        return 2
    have = torch.cuda.device_count() if cuda else 2
    sizes = args.world_sizes or [n for n in (2, 4, 8) if n <= have]
    sizes = [n for n in sizes if n <= have or not cuda]
    if not sizes:
        print(f"measure_collectives: {have} device(s); need at least 2", file=sys.stderr)
        return 2
    out = {"schema": "rooftop-collectives/1", "meta": _meta(args), "collectives": [],
           "layer_stack": [], "errors": []}
    log(f"device {out['meta']['device']}, world sizes {sizes}, env {out['meta']['env']}")
    for n in sizes:
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tf:
            part = tf.name
        mp.spawn(_worker, args=(n, _free_port(), args, part), nprocs=n, join=True)
        with open(part) as f:
            res = json.load(f)
        os.unlink(part)
        for k in ("collectives", "layer_stack", "errors"):
            out[k].extend(res[k])
        _write(args.out, out)   # keep what is done if a later world size fails
    bad = [r for r in out["collectives"] if "error" in r]
    log(f"wrote {args.out}: {len(out['collectives']) - len(bad)} collective points "
        f"({len(bad)} failed), {len(out['layer_stack'])} layer-stack points")
    return 1 if out["errors"] else 0


def _write(path: str, data: dict):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
