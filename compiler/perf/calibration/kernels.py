"""Efficiencies of quantized / sparse GEMM kernel families, fitted to the H200 measurements of
``tools/measure_kernels.py`` (``compiler/perf/calibration/data/h200_kernels.json``).

Each family is one kernel (the PyTorch call it was measured with) priced by the same model as
the op classes (:mod:`compiler.perf.efficiency`): ``max((F + flops_half')/(P c), (Bt + bytes_half)/(W m))
+ launch`` with P = ``peak(peak_dtype, sparse)`` — the math the scheme runs (fp16/bf16 for
weight-only int4/int8, int8 for W8A8, fp8 for FP8, the 2:4 sparse fp16 peak for cuSPARSELt) — and
Bt the format's stored bytes (values + scales + metadata) plus activations. As for the classes,
``flops_half`` is stored sized for the fp16 reference peak (``flops_half' = flops_half · P /
peak(fp16)``). The fitted compute fraction says how far each kernel is from its math peak: the
int4 kernel (tinygemm) reaches a few percent of the fp16 peak, which is why it loses to dense
GEMMs beyond a few tokens.

    python -m compiler.perf.calibration.kernels              # print the fit and where each family loses
    python -m compiler.perf.calibration.kernels --write      # write kernel_families into conf/hardware/h200.yaml
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np

from compiler.perf import efficiency as E
from compiler.perf.calibration import DATA_DIR
from compiler.perf.calibration import fit as calfit
from compiler.perf.hardware import KernelFamilyEfficiency, available_hardware, hardware_by_name, hardware_dir
from compiler.perf.hardware_yaml import kernel_families_to_yaml_dict, update_yaml_blocks

KERNELS_FILE = DATA_DIR / "h200_kernels.json"
#: family -> (peak dtype, sparse peak?)
FAMILY_PEAK: Dict[str, Tuple[str, bool]] = {
    "dense_bf16": ("bf16", False),
    "dense_fp16": ("fp16", False),
    "w4a16": ("bf16", False),
    "w8a16_dequant_gemm": ("bf16", False),
    "w8a16_int8pack": ("bf16", False),
    "w8a8_int_mm": ("int8", False),
    "w8a8_pipeline": ("int8", False),
    "fp8_tensorwise": ("fp8", False),
    "fp8_rowwise": ("fp8", False),
    "fp8_pipeline": ("fp8", False),
    "sparse24_cusparselt": ("fp16", True),
}


def load(path=KERNELS_FILE) -> dict:
    return json.loads(Path(path).read_text())


def family_samples(meas: Mapping, family: str) -> List[dict]:
    return [s for s in meas["samples"] if s.get("family") == family and float(s["time_s"]) > 0]


def fit_families(meas: Mapping, hw, launch_s: Optional[float] = None) -> Dict[str, dict]:
    """{family: {kernel, peak_dtype, sparse, params (flops_half sized for fp16), n, median_err, p90_err}}."""
    launch = hw.efficiency.launch_overhead_s if launch_s is None else launch_s
    p16 = hw.peak("fp16")
    out = {}
    for fam, (dt, sparse) in FAMILY_PEAK.items():
        ss = family_samples(meas, fam)
        if len(ss) < 4:
            continue
        P = hw.peak(dt, sparse)
        p = E.fit_class(ss, P, hw.memory_bandwidth, launch, prior=E.DEFAULT_PRIORS["gemm"])
        p = E.ClassParams(*(calfit._sig(v) for v in (p.compute, p.memory, p.flops_half, p.bytes_half)))
        f, b, t = E._arrays(ss)
        rel = np.abs(E.op_time(p, f, b, P, hw.memory_bandwidth, launch) / t - 1)
        out[fam] = {"kernel": ss[0]["kernel"], "peak_dtype": dt, "sparse": sparse,
                    "params": E.ClassParams(p.compute, p.memory, calfit._sig(p.flops_half * p16 / P), p.bytes_half),
                    "n": len(ss), "median_err": float(np.median(rel)), "p90_err": float(np.percentile(rel, 90))}
    return out


def loss_points(meas: Mapping, family: str, reference: str) -> Dict[str, dict]:
    """Per linear shape: the M values where ``family`` is slower than ``reference`` and the
    time ratio at each measured M (family / reference)."""
    ref = {(s["shape"]["tag"], s["shape"]["M"]): s["time_s"] for s in family_samples(meas, reference)}
    out: Dict[str, dict] = {}
    for s in family_samples(meas, family):
        key = (s["shape"]["tag"], s["shape"]["M"])
        if key in ref:
            out.setdefault(s["shape"]["tag"], {})[s["shape"]["M"]] = s["time_s"] / ref[key]
    return {tag: {"ratio": dict(sorted(r.items())), "loses_at": sorted(m for m, x in r.items() if x > 1.0)}
            for tag, r in out.items()}


def summary(meas: Mapping) -> Dict[str, dict]:
    """Median over shapes of family/dense time ratio per M, for the table in docs/measurements/gpu_kernels.md."""
    out = {}
    for fam, ref in (("w4a16", "dense_bf16"), ("w8a16_dequant_gemm", "dense_bf16"), ("w8a16_int8pack", "dense_bf16"),
                     ("w8a8_int_mm", "dense_bf16"), ("w8a8_pipeline", "dense_bf16"), ("fp8_tensorwise", "dense_bf16"),
                     ("fp8_rowwise", "dense_bf16"), ("fp8_pipeline", "dense_bf16"),
                     ("sparse24_cusparselt", "dense_fp16")):
        lp = loss_points(meas, fam, ref)
        by_m: Dict[int, list] = {}
        for r in lp.values():
            for m, x in r["ratio"].items():
                by_m.setdefault(m, []).append(x)
        out[fam] = {"reference": ref, "median_ratio": {m: float(np.median(v)) for m, v in sorted(by_m.items())},
                    "shapes": len(lp)}
    return out


def to_yaml_block(fits: Mapping[str, dict], data_file: str, device: str, date: str) -> dict:
    fams = {}
    for fam, r in fits.items():
        p = r["params"]
        fams[fam] = KernelFamilyEfficiency(kernel=r["kernel"], peak_dtype=r["peak_dtype"], sparse=r["sparse"],
                                           compute=p.compute, memory=p.memory, flops_half=p.flops_half,
                                           bytes_half=p.bytes_half, n=r["n"], median_err=calfit._sig(r["median_err"], 3),
                                           source=f"measured on {device} {date} ({data_file}), in CUDA graphs")
    return kernel_families_to_yaml_dict(fams)


def format_fits(fits: Mapping[str, dict], summ: Mapping[str, dict]) -> str:
    lines = [f"{'family':22s} {'peak':6s} {'n':>4s} {'compute':>8s} {'memory':>7s} {'med err':>8s} {'p90':>7s}  kernel"]
    for fam, r in fits.items():
        p = r["params"]
        lines.append(f"{fam:22s} {r['peak_dtype'] + ('*' if r['sparse'] else ''):6s} {r['n']:4d} {p.compute:8.4f} "
                     f"{p.memory:7.3f} {r['median_err']:8.1%} {r['p90_err']:7.1%}  {r['kernel']}")
    lines.append("median over shapes of time / dense time, by M:")
    for fam, s in summ.items():
        lines.append(f"  {fam:22s} vs {s['reference']:10s} " + " ".join(
            f"{m}:{x:.2f}" for m, x in s["median_ratio"].items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m compiler.perf.calibration.kernels", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(KERNELS_FILE))
    ap.add_argument("--write", action="store_true", help="write kernel_families into the measured device's YAML "
                                                          "(and, transferred by the datasheet ratios, the other Hoppers')")
    args = ap.parse_args(argv)
    meas = load(args.data)
    dev = "h200"
    hw = hardware_by_name(dev)
    fits = fit_families(meas, hw)
    print(format_fits(fits, summary(meas)))
    if args.write:
        date = str(meas.get("date", ""))[:10]
        rel = calfit._display_path(args.data)
        for name in available_hardware():
            h = hardware_by_name(name)
            if h.architecture != hw.architecture:
                continue
            block = to_yaml_block(fits, rel, meas["device"]["name"], date)
            if name != dev:  # transferred: roll-off sizes scale with the peaks and bandwidth
                fw = h.memory_bandwidth / hw.memory_bandwidth
                fp = h.peak("fp16") / hw.peak("fp16")
                for v in block.values():
                    v["flops_half_gflop"] = calfit._sig(v["flops_half_gflop"] * fp, 7)
                    v["bytes_half_mb"] = calfit._sig(v["bytes_half_mb"] * fw, 7)
                    v["source"] = f"transferred from {dev}: " + v["source"]
            # families this fit does not produce (tools/compare_modern_kernels.py's kinds) stay
            kept = {k: v for k, v in kernel_families_to_yaml_dict(h.kernel_families).items() if k not in block}
            update_yaml_blocks(hardware_dir() / f"{name}.yaml", {"kernel_families": {**block, **kept}},
                               note="written by python -m compiler.perf.calibration.kernels --write")
            print("wrote", hardware_dir() / f"{name}.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
