"""rooftop's per-construct predictions against the H100 measurements of modern-architecture kernels
(compiler/perf/calibration/data/h100_modern_kernels.json; tools/MODERN_KERNELS_NOTES.md).

Per construct the measured unit is costed as the same unit of rooftop's IR on ``hardware=h100_sxm``:

- ``mla_decode``: one DeepSeek-V2-Lite / V3 attention block (q path, latent path, rope, cache
  write, absorbed core, W_UV, o_proj) in decode at (B, ctx) — the ``attention`` block of a
  one-layer import, decode phase (absorbed form); measured ``mla_decode_absorbed_bmm``;
- ``mla_prefill``: the same block at B = 1, S tokens (expanded form); ``mla_prefill_expanded``;
- ``window_prefill``: one sliding-window attention (32 q / 8 KV heads, d 128) of S = L tokens and
  window W, windowed kernel; ``attn_prefill_flash_window`` (FlashAttention-2 window);
- ``window_decode``: one decode step over a cache of L tokens with window W (a ring cache read of
  the last W); ``attn_decode_ring_sdpa``;
- ``moe``: one fine-grained MoE layer (router, grouped expert GEMMs, shared experts) at T tokens;
  ``moe_grouped_mm`` (Qwen3-30B-A3B, DeepSeek-V2-Lite, DeepSeek-V3) — decode for T ≤ 16 tokens
  (what a decode batch routes), prefill above;
- ``qk_norm_layer``: one Qwen3-8B decoder layer with per-head q/k RMSNorm (``qwen3_8b_layer_decode``
  at B, ctx 4096; ``qwen3_8b_layer_prefill`` at S).

Run: ``python tools/compare_modern_kernels.py [--json out.json] [--markdown out.md]`` — prints per
construct and phase the median and worst |predicted / measured − 1| and every point.
"""
from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from compiler.analysis.layers import op_blocks  # noqa: E402
from compiler.ir import P, S, B, Graph, TensorType  # noqa: E402
from compiler.ir.annotations import AttentionSpec, KVLayout  # noqa: E402
from compiler.perf.cost import CostModel  # noqa: E402
from compiler.perf.hardware import hardware_by_name  # noqa: E402

DATA = ROOT / "compiler/perf/calibration/data/h100_modern_kernels.json"
#: the decode / prefill split of MoE token counts (a decode batch routes ≤ 16 tokens here)
MOE_DECODE_MAX_T = 16


@functools.lru_cache(maxsize=1)
def data() -> dict:
    return json.loads(DATA.read_text())


def samples(family: str) -> list[dict]:
    return [s for s in data()["samples"] if s.get("family") == family]


@functools.lru_cache(maxsize=1)
def h100():
    return hardware_by_name("h100_sxm")


def _recipe(g: Graph) -> Graph:
    """The import passes (KV cache) and norm fusion — what the measured eager code runs as
    fused kernels (F.rms_norm); projections stay separate GEMMs as in the measured modules."""
    from passes import PassManager, make_pass
    from tests.conftest import prepare
    prepare(g)
    PassManager([make_pass(p) for p in ("remove_noops", "fold_constants", "fuse_norms", "dce")])(g)
    return g


@functools.lru_cache(maxsize=None)
def one_layer(model: str, dense: bool = True) -> CostModel:
    """A one-layer import of ``conf/model/<model>.yaml`` (meta weights, bf16) and its cost model."""
    from compiler.frontends.models import import_torch
    from tests.conftest import model_cfg
    cfg = model_cfg(model)
    conf = dict(cfg["config"], num_hidden_layers=1)
    if dense and "first_k_dense_replace" in conf:
        conf["first_k_dense_replace"] = 1
    g = import_torch(dict(cfg, config=conf, stack_layers=False))
    return CostModel(_recipe(g), h100())


def block_time(cm: CostModel, block: str, b, s, p, phase: str, layer: int = 0) -> float:
    """Time of the ops of ``block`` (or every block with ``"layer"``) of decoder layer ``layer``."""
    blocks = op_blocks(cm.graph)
    t = cm.evaluate(b, s, p, phase)["time"][:, 0]
    keep = [i for i, it in enumerate(cm.items)
            if blocks.get(it.node or it.name, (None, ""))[0] == layer
            and (block == "layer" or blocks[it.node or it.name][1] == block)]
    return float(t[keep].sum())


@functools.lru_cache(maxsize=None)
def window_attention(h: int, hkv: int, d: int, window: int) -> CostModel:
    """One cached sliding-window Attention op (bf16) and its cost model."""
    g = Graph("window_attention")
    q = g.add_input("q", TensorType("bfloat16", (B, h, S, d)))
    k = g.add_input("k", TensorType("bfloat16", (B, hkv, S, d)))
    v = g.add_input("v", TensorType("bfloat16", (B, hkv, S, d)))
    pk = g.add_input("past_key.0", TensorType("bfloat16", (B, hkv, P, d)))
    pv = g.add_input("past_value.0", TensorType("bfloat16", (B, hkv, P, d)))
    n = g.add_op("Attention", [q, k, v, "", pk, pv], ["y", "present_key.0", "present_value.0"], {"is_causal": 1},
                 attention=AttentionSpec(mask="window", window=window), kv_layout=KVLayout("contiguous"), layer=0)
    g.meta["kv_tensors"] = [pk, pv, "present_key.0", "present_value.0"]
    g.set_outputs(n.outputs)
    return CostModel(g, h100())


@functools.lru_cache(maxsize=None)
def moe_layer(model: str) -> CostModel:
    """One MoE block of ``model`` (transformers' own module, meta, bf16) and its cost model."""
    import torch
    import transformers
    from compiler.frontends import moe as moe_import
    from compiler.frontends.models import import_torch
    from tests.conftest import model_cfg
    conf = dict(model_cfg(model)["config"])
    hf = transformers.AutoConfig.for_model(conf.pop("model_type"), **conf)
    hf._experts_implementation = moe_import.ensure_registered()
    import importlib
    mod = importlib.import_module(type(hf).__module__.replace("configuration_", "modeling_"))
    cls = next(getattr(mod, n) for n in dir(mod) if n.endswith(("SparseMoeBlock", "MoE", "Moe")) and
               isinstance(getattr(mod, n), type) and issubclass(getattr(mod, n), torch.nn.Module))
    with torch.device("meta"):
        blk = cls(hf).to(torch.bfloat16).eval()
    g = import_torch({"name": f"{model}_moe", "outputs": ["y"],
                      "inputs": {"hidden_states": {"shape": ["B", "S", hf.hidden_size], "dtype": "bfloat16"}}},
                     blk, "custom")
    from passes import PassManager, make_pass
    PassManager([make_pass(p) for p in ("remove_noops", "fold_constants", "dce")])(g)
    return CostModel(g, h100())


def predictions() -> list[dict]:
    """Every measured point with rooftop's prediction: construct, phase, shape, measured, predicted."""
    rows: list[dict] = []

    def add(construct, phase, shape, meas, pred):
        rows.append({"construct": construct, "phase": phase, "shape": shape, "measured_s": meas,
                     "predicted_s": pred, "error": pred / meas - 1})

    for s in samples("mla_decode_absorbed_bmm"):
        sh = s["shape"]
        cm = one_layer(sh["model"])
        add("mla", "decode", sh, s["time_s"], block_time(cm, "attention", sh["B"], 1, sh["ctx"] - 1, "decode"))
    for s in samples("mla_prefill_expanded"):
        sh = s["shape"]
        cm = one_layer(sh["model"])
        add("mla", "prefill", sh, s["time_s"], block_time(cm, "attention", sh["B"], sh["S"], 0, "prefill"))
    for s in samples("attn_prefill_flash_window"):
        sh = s["shape"]
        cm = window_attention(sh["H"], sh["Hkv"], sh["d"], sh["W"])
        add("window", "prefill", sh, s["time_s"], float(cm.phase_time(sh["B"], sh["Sq"], 0, "prefill")[0]))
    for s in samples("attn_decode_ring_sdpa"):
        sh = s["shape"]
        cm = window_attention(sh["H"], sh["Hkv"], sh["d"], sh["W"])
        add("window", "decode", sh, s["time_s"], float(cm.phase_time(sh["B"], 1, sh["L"] - 1, "decode")[0]))
    for s in samples("moe_grouped_mm"):
        sh = s["shape"]
        cm = moe_layer(sh["model"])
        t = sh["tokens"]
        phase = "decode" if t <= MOE_DECODE_MAX_T else "prefill"
        add("moe", phase, sh, s["time_s"], float(cm.phase_time(t, 1, 0, phase)[0]) if phase == "decode"
            else float(cm.phase_time(1, t, 0, phase)[0]))
    for s in samples("qwen3_8b_layer_decode"):
        sh = s["shape"]
        cm = one_layer("qwen3_8b")
        add("qk_norm_layer", "decode", sh, s["time_s"], block_time(cm, "layer", sh["B"], 1, sh["context"], "decode"))
    for s in samples("qwen3_8b_layer_prefill"):
        sh = s["shape"]
        cm = one_layer("qwen3_8b")
        add("qk_norm_layer", "prefill", sh, s["time_s"], block_time(cm, "layer", sh["B"], sh["S"], 0, "prefill"))
    return rows


# ------------------------------------------------------------------------------------------------
# fitting the measured kernel kinds (hardware ``kernel_families`` entries)

#: kernel kind -> (measured family, what the kernel is)
KINDS = {
    "mla_absorbed_core": ("mla_core_bmm", "absorbed-MLA decode core over the latent cache: bmm(q_cat, cacheᵀ), "
                                          "softmax fp32, bmm(p, cache[:, :, :512]) (torch 2.11, cuBLAS)"),
    "attention_window_prefill": ("attn_prefill_flash_window", "FlashAttention-2 sliding-window prefill "
                                                              "(aten._flash_attention_forward window_size_left=W-1)"),
    "attention_window_decode": ("attn_decode_ring_sdpa", "SDPA decode over a ring cache of the last W entries"),
    "moe_grouped_gemm": ("moe_grouped_mm", "torch._grouped_mm per projection over the expert-sorted routed rows"),
}


def _kind_rows(kind: str, hw_base) -> list[tuple]:
    """Per measured sample: (other items' time, [(flops, bytes, fixed) of the kind's items], measured),
    the items costed on ``hw_base`` (whose kernel_families may not have the kind yet)."""
    family = KINDS[kind][0]
    out = []
    for smp in samples(family):
        sh = smp["shape"]
        if kind == "mla_absorbed_core":
            cm, pt, phase = one_layer(sh["model"]), (sh["B"], 1, sh["ctx"] - 1), "decode"
            keep = [i for i, it in enumerate(cm.items) if it.kind == kind]
            other = 0.0                        # the measured unit is the core alone
        elif kind.startswith("attention_window"):
            cm = window_attention(sh["H"], sh["Hkv"], sh["d"], sh["W"])
            phase = kind.rsplit("_", 1)[1]
            pt = (sh["B"], sh["Sq"], 0) if phase == "prefill" else (sh["B"], 1, sh["L"] - 1)
            keep, other = [0], 0.0
        else:
            cm = moe_layer(sh["model"])
            t = sh["tokens"]
            phase = "decode" if t <= MOE_DECODE_MAX_T else "prefill"
            pt = (t, 1, 0) if phase == "decode" else (1, t, 0)
            keep = [i for i, it in enumerate(cm.items) if it.kind == kind]
            tt = cm.evaluate(*pt, phase)["time"][:, 0]
            other = float(tt.sum() - tt[keep].sum())
        flops, w, a, kv, fx = cm._raw(*pt, phase)
        items = [(float(flops[i, 0]), float(w[i, 0] + a[i, 0] + kv[i, 0]), float(fx[i, 0])) for i in keep]
        out.append((other, items, float(smp["time_s"])))
    return out


def fit_kind(kind: str) -> dict:
    """Efficiency params of a kernel kind fitted to its measured samples (module doc): minimises the
    soft-L1 of log(predicted / measured) of the measured unit (the kind's items plus the unit's
    other ops, costed as usual) — compiler.perf.efficiency's loss and Nelder–Mead."""
    from compiler.perf import efficiency as E
    hw = h100()
    rows = _kind_rows(kind, hw)
    peak, bw, launch = hw.peak("bf16"), hw.memory_bandwidth, hw.efficiency.launch_overhead_s
    fs = float(np.median([f for _, it, _ in rows for f, _, _ in it if f > 0]))
    bs = float(np.median([b for _, it, _ in rows for _, b, _ in it if b > 0]))
    meas = np.array([m for *_, m in rows])

    def unpack(x):
        return (float(np.exp(min(x[0], 0.0))), float(np.exp(min(x[1], 0.0))), fs * float(np.exp(x[2])),
                bs * float(np.exp(x[3])))

    def predict(x):
        c, m, fh, bh = unpack(x)
        return np.array([other + sum(max((f + fh * fx) / (peak * c), (b + bh * fx) / (bw * m)) + launch * fx
                                     for f, b, fx in it) for other, it, _ in rows])

    def objective(x):
        return float(E._loss(np.log(np.maximum(predict(x), 1e-12)) - np.log(meas)))

    best = None
    for c0 in (0.1, 0.4, 0.8):
        for m0 in (0.3, 0.8):
            for h0 in (1e-3, 0.1, 3.0):
                x, fx_ = E._nelder_mead(objective, np.log([c0, m0, h0, h0]), step=np.array([0.3, 0.3, 1.0, 1.0]))
                if best is None or fx_ < best[1]:
                    best = (x, fx_)
    c, m, fh, bh = unpack(best[0])
    err = np.abs(predict(best[0]) / meas - 1)
    return {"kind": kind, "kernel": KINDS[kind][1], "peak_dtype": "bf16", "compute": c, "memory": m,
            "flops_half_gflop": fh / 1e9, "bytes_half_mb": bh / 1e6, "n": len(rows),
            "median_err": float(np.median(err)), "worst_err": float(err.max())}


def write_kinds() -> None:
    """Fit every kind, write it into the Hopper YAMLs (kernel_families; the other Hoppers get the
    H100's params with roll-off sizes scaled by their peak and bandwidth, as the kernel-family
    transfer does), then evaluate the constructs and state their error bands in the entries."""
    from compiler.perf import hardware as H
    fits = {k: fit_kind(k) for k in KINDS}
    date = str(data().get("date", ""))[:10]
    dev = data()["device"]["name"]

    def entries(name, bands):
        h = hardware_by_name(name)
        base = h100()
        fw, fp = h.memory_bandwidth / base.memory_bandwidth, h.peak("fp16") / base.peak("fp16")
        out = {}
        for kind, r in fits.items():
            src = (f"measured on {dev} {date} (compiler/perf/calibration/data/h100_modern_kernels.json, "
                   f"{KINDS[kind][0]}, {r['n']} points), in CUDA graphs; fit |error| median {r['median_err']:.1%}, "
                   f"worst {r['worst_err']:.1%} (in-sample)")
            if bands.get(kind):
                src += "; " + bands[kind]
            if name != "h100_sxm":
                src = "transferred from h100_sxm (peaks and bandwidth scaled): " + src
            out[kind] = {"kernel": r["kernel"], "peak_dtype": "bf16", "compute": round(r["compute"], 4),
                         "memory": round(r["memory"], 4),
                         "flops_half_gflop": float(f"{r['flops_half_gflop'] * (fp if name != 'h100_sxm' else 1):.6g}"),
                         "bytes_half_mb": float(f"{r['bytes_half_mb'] * (fw if name != 'h100_sxm' else 1):.6g}"),
                         "n": r["n"], "median_err": round(r["median_err"], 4), "source": src}
        return out

    def write(bands):
        for name in H.available_hardware():
            h = hardware_by_name(name)
            if h.architecture != h100().architecture:
                continue
            kept = {k: v for k, v in H.kernel_families_to_yaml_dict(h.kernel_families).items() if k not in KINDS}
            H.update_yaml_blocks(H.hardware_dir() / f"{name}.yaml", {"kernel_families": {**kept, **entries(name, bands)}},
                                 note="written by python -m compiler.perf.calibration.kernels --write and "
                                      "tools/compare_modern_kernels.py --write")
    write({})
    for f in (h100, one_layer, window_attention, moe_layer):
        f.cache_clear()
    summ = summary(predictions())
    construct_of = {"mla_absorbed_core": "mla", "attention_window_prefill": "window", "attention_window_decode": "window",
                    "moe_grouped_gemm": "moe"}
    bands = {}
    for kind, c in construct_of.items():
        parts = [f"{ph} median {v['median']:.1%} worst {v['worst']:.1%} (n={v['points']})" for ph, v in summ[c].items()]
        bands[kind] = f"whole {c} construct vs measurement: " + ", ".join(parts) + " (docs/measurements/modern_kernels.md)"
    write(bands)
    print(json.dumps(summ, indent=1))


def summary(rows: list[dict]) -> dict:
    """Per construct and phase: points, median and worst |error|."""
    out: dict = {}
    for r in rows:
        out.setdefault(r["construct"], {}).setdefault(r["phase"], []).append(abs(r["error"]))
    return {c: {ph: {"points": len(v), "median": statistics.median(v), "worst": max(v)} for ph, v in sorted(p.items())}
            for c, p in sorted(out.items())}


def markdown(rows: list[dict], summ: dict) -> str:
    lines = ["| construct | phase | points | median |error| | worst |error| |", "|---|---|---:|---:|---:|"]
    for c, ph in summ.items():
        for p, v in ph.items():
            lines.append(f"| {c} | {p} | {v['points']} | {v['median']:.1%} | {v['worst']:.1%} |")
    lines += ["", "| construct | phase | shape | measured | predicted | error |", "|---|---|---|---:|---:|---:|"]
    for r in rows:
        shape = ", ".join(f"{k}={v}" for k, v in r["shape"].items() if v is not None)
        lines.append(f"| {r['construct']} | {r['phase']} | {shape} | {r['measured_s'] * 1e6:.1f} µs | "
                     f"{r['predicted_s'] * 1e6:.1f} µs | {r['error']:+.1%} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write every point and the summary as JSON")
    ap.add_argument("--markdown", help="write the tables as Markdown")
    ap.add_argument("--fit", action="store_true", help="fit the measured kernel kinds and print them as "
                                                        "kernel_families YAML entries")
    ap.add_argument("--write", action="store_true", help="fit the kinds, write them into conf/hardware/h100_sxm.yaml "
                                                          "(measured) and the other Hoppers' YAML (transferred), then "
                                                          "state each construct's error band in their sources")
    a = ap.parse_args(argv)
    if a.write:
        write_kinds()
        return
    if a.fit:
        for kind in KINDS:
            r = fit_kind(kind)
            print(f"  {kind}:\n    kernel: {r['kernel']}\n    peak_dtype: bf16\n    compute: {r['compute']:.4g}\n"
                  f"    memory: {r['memory']:.4g}\n    flops_half_gflop: {r['flops_half_gflop']:.4g}\n"
                  f"    bytes_half_mb: {r['bytes_half_mb']:.4g}\n    n: {r['n']}\n    median_err: {r['median_err']:.4f}"
                  f"\n    # worst_err {r['worst_err']:.4f}")
        return
    rows = predictions()
    summ = summary(rows)
    for c, ph in summ.items():
        for p, v in ph.items():
            print(f"{c:14s} {p:8s} n={v['points']:3d} median {v['median']:6.1%} worst {v['worst']:6.1%}")
    if a.json:
        Path(a.json).write_text(json.dumps({"summary": summ, "points": rows}, indent=1, default=str) + "\n")
    if a.markdown:
        Path(a.markdown).write_text(markdown(rows, summ))


if __name__ == "__main__":
    main()
