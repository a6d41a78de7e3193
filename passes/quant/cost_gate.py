"""Should a linear layer be stored 2:4 sparse? The predicted payoff of one GEMM, dense vs sparse,
for the configured workload.

A request costs one prefill (``B`` sequences of ``prompt_len`` tokens, no cache) plus
``gen_len`` decode steps (``B`` tokens against ``context_len`` cached ones). Per layer, with
``M = B·S`` activation rows:

    dense(M)  = max((F + F½)/(peak·e_c), (Bt + B½)/(BW·e_m)) + launch      (compiler/perf/cost.py roofline,
                                                                           the hardware's GEMM class)
    sparse(M) = dense(M) · r(M)

where ``r(M)`` is the measured time of the cuSPARSELt 2:4 GEMM relative to the dense fp16 GEMM of
the same shape (``torch.sparse.to_sparse_semi_structured`` vs ``F.linear``, in CUDA graphs, on an
NVIDIA H200; ``compiler/perf/calibration/data/h200_kernels.json``, median over the Llama-7B/8B/70B linear
shapes at each M, interpolated in log M). On the H200 the sparse kernel loses below M ≈ 200
(r ≈ 1.6–1.7 at M ≤ 32) and wins above (r ≈ 0.63 at M ≥ 2048). The same measured ratio is used on
other hardware and the decision says so; a device without 2:4 math (no ``sparse_peak_tflops``:
every CPU, where onnxruntime runs the pruned weight as the same dense MatMul) gains nothing, and
every layer is refused. Without the measurement file: a literature ratio (:data:`LITERATURE`). A
layer is pruned when
``sparse_prefill + gen_len · sparse_decode < dense_prefill + gen_len · dense_decode``.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import sympy

from compiler.ir.tensors import HW_DTYPE
from compiler.ir import B, P, S, Graph, OpNode
from compiler.resources import REPO_ROOT
from compiler.ir.ops import Classifier, op_cost
from compiler.perf.kernel_families import interp_log_m, ORT_DENSE_NM
from compiler.perf.hardware import hardware_by_name

LITERATURE = {"points": [[1, 1.25], [64, 1.25], [256, 1.0], [4096, 0.77]],
              "source": "literature (Mishra et al. 2021 arXiv:2104.08378: cuSPARSELt 1.3–1.6x on large GEMMs; "
                        "PyTorch semi-structured sparsity tutorial 2023: slower than dense at small batch) — not measured"}
MEASURED = "compiler/perf/calibration/data/h200_kernels.json"
SPARSE_FAMILY, DENSE_FAMILY = "sparse24_cusparselt", "dense_fp16"
DEFAULT_HARDWARE = "a100_80g"


_RATIO_CACHE: dict = {}


def measured_ratio(family: str = SPARSE_FAMILY, dense: str = DENSE_FAMILY) -> dict[str, Any]:
    """``{"points": [[M, time_family / time_dense], …], "source": …}`` from the H200 kernel
    measurements (median over shapes at each M), or the literature fallback."""
    key = (family, dense)
    if key in _RATIO_CACHE:
        return _RATIO_CACHE[key]
    import json
    from pathlib import Path
    path = REPO_ROOT / MEASURED
    try:
        data = json.loads(path.read_text())
        base = {(x["shape"]["M"], x["shape"]["K"], x["shape"]["N"]): x["time_s"] for x in data["samples"]
                if x.get("family") == dense}
        by_m: dict[int, list[float]] = {}
        for x in data["samples"]:
            k = (x["shape"]["M"], x["shape"]["K"], x["shape"]["N"]) if x.get("family") == family else None
            if k in base:
                by_m.setdefault(k[0], []).append(x["time_s"] / base[k])
        pts = [[m, float(np.median(v))] for m, v in sorted(by_m.items())]
        out = {"points": pts, "source": f"measured on {data.get('device', {}).get('name', 'NVIDIA H200') if isinstance(data.get('device'), dict) else 'NVIDIA H200'} "
                                        f"({family} vs {dense}, CUDA graphs; {MEASURED})"} if pts else dict(LITERATURE)
    except (OSError, ValueError, KeyError):
        out = dict(LITERATURE)
    _RATIO_CACHE[key] = out
    return out


def ratio_at(curve: Mapping, m: float) -> float:
    return float(interp_log_m(curve["points"], m))


def _roofline(flops, byts, peak, hw, cls_eff) -> float:
    t_c = (flops + cls_eff.flops_half) / (peak * cls_eff.compute)
    t_m = (byts + cls_eff.bytes_half) / (hw.memory_bandwidth * cls_eff.memory)
    return max(t_c, t_m) + hw.efficiency.launch_overhead_s


def decide(g: Graph, node: OpNode, weight: str, nm: tuple[int, int], context, workload: Mapping) -> dict[str, Any]:
    """The decision record for one layer (``pruned``, predicted times per phase, payoff, reason)."""
    hw = getattr(context, "hardware", None) or hardware_by_name(DEFAULT_HARDWARE)
    pts = getattr(context, "points", None) or ((1, 512, 0, "prefill"), (1, 1, 512, "decode"))
    points = {ph: (b, s, p) for b, s, p, ph in pts}
    gen = int(workload.get("gen_len", 128)) if workload else 128
    cls = Classifier(g)
    flops, byts = op_cost(g, node, cls)
    dt = HW_DTYPE.get(g.type(node.inputs[0]).dtype, "fp16")
    ge = hw.efficiency.for_class("gemm")
    x = g.type(node.inputs[0])
    rows = sympy.sympify(x.numel()) / x.shape[-1]
    curve = measured_ratio()
    out: dict[str, Any] = {"kernel": "cuSPARSELt 2:4 (torch.sparse.to_sparse_semi_structured)",
                           "ratio_source": curve["source"] + ("" if "H200" in hw.name.upper() or "h200" in hw.name
                                                              else f"; applied to {hw.name}")}
    if nm != (2, 4):
        out.update(pruned=True, reason=f"{nm[0]}:{nm[1]} has no sparse kernel: pruned for size, no speed change "
                                       f"predicted", predicted_payoff_s=0.0)
        return out
    if not hw.sparse_peak_flops:
        # no 2:4 math on this device (a CPU: onnxruntime runs the pruned weight as a dense MatMul
        # on the same bytes): pruning costs accuracy and buys no time
        out.update(kernel=(ORT_DENSE_NM if getattr(hw, "kind", "") == "cpu"
                           else "dense GEMM (no 2:4 sparse math on this device)"),
                   ratio_source=f"{hw.name} has no 2:4 sparse math units (sparse_peak_tflops is empty)",
                   pruned=False, predicted_payoff_s=0.0,
                   reason=f"refused: {hw.name} has no 2:4 sparse kernel — the pruned layer would run as the same "
                          f"dense GEMM, so no time is gained for the accuracy lost (sparsity.cost_aware=false prunes "
                          f"anyway, for the sparsity pattern alone)")
        return out
    total = {"dense": 0.0, "sparse": 0.0}
    for ph, n_steps in (("prefill", 1), ("decode", gen)):
        b, s, pp = points[ph]
        vals = {B: b, S: s, P: pp}
        f = float(sympy.sympify(flops).subs(vals))
        tot = float(sympy.sympify(byts.total).subs(vals))
        m = float(rows.subs(vals))
        td = _roofline(f, tot, hw.peak(dt), hw, ge)
        r = ratio_at(curve, m)
        out[f"{ph}"] = {"M": int(m), "dense_s": td, "sparse_s": td * r, "ratio": round(r, 4)}
        total["dense"] += n_steps * td
        total["sparse"] += n_steps * td * r
    out["predicted_request_dense_s"] = total["dense"]
    out["predicted_request_sparse_s"] = total["sparse"]
    out["predicted_payoff_s"] = total["dense"] - total["sparse"]
    out["pruned"] = total["sparse"] < total["dense"]
    out["reason"] = ("2:4 predicted faster for the workload (prefill + gen_len × decode)" if out["pruned"] else
                     "refused: 2:4 predicted slower for the workload (prefill + gen_len × decode)")
    return out
