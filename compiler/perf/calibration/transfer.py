"""One calibration per architecture, transferred to every device of it, with an honest error band.

Model (:mod:`compiler.perf.efficiency`): a kernel of F FLOPs and Bt bytes on a device of dense peak P
and bandwidth W takes ``max((F + flops_half)/(P c), (Bt + bytes_half)/(W m)) + launch``.

**Transfer rule.** A device never measured takes the efficiencies of the calibrated parameter
set of its architecture, scaled by what the datasheets say differs: the fractions ``c`` and ``m``
and the launch gap are kept (same SMs, same memory controller design, same driver), and the
roll-off sizes scale with the peaks — ``flops_half ∝ P`` (peak = SMs x clock x per-SM rate),
``bytes_half ∝ W`` — so that the ramp-up *time* of a kernel stays the architecture's. Under this
rule a device that dominates another on peak and bandwidth is never predicted slower (the time
above only falls as P and W grow), which the consistency test checks over the whole library.

**Joint fit.** "One Hopper calibration serves all": the measurements of every calibrated device
of an architecture are mapped onto one reference device by the same rule (a sample of F, Bt on
a device of P, W is a sample of F·P_ref/P, Bt·W_ref/W on the reference — exactly the same
predicted time) and fitted together; each device then gets the transferred parameters. The
devices' own fits (``compiler.perf.calibration.fit``) are kept for the per-device error tables.

**Error band.** For calibrated devices: the pooled |error| of every fitted kernel sample under
the shipped (joint) parameters. For transferred devices: the transfer experiment — fit on one
calibrated device only, transfer to the other, compare with its measurements, both ways — whose
larger error is the band. Devices of an architecture nobody measured keep their literature class
fractions (``source: literature``) but take the measured launch gap and roll-off times of the
calibrated architecture (a 4 µs eager launch against a measured 1 µs in-graph one would make a
faster chip look slower); their band is what such literature fractions scored on the measured
devices.

    python -m compiler.perf.calibration.transfer            # print the experiment
    python -m compiler.perf.calibration.transfer --write    # and write conf/hardware/*.yaml
    python tools/transfer_report.py                    # the same with the end-to-end Llama-2-7B errors
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from compiler.perf import efficiency as E
from compiler.perf.calibration import DATA_DIR
from compiler.perf.calibration import fit as calfit
from compiler.perf.hardware import hardware_by_name, available_hardware, ClassEfficiency, Efficiency, hardware_dir
from compiler.perf.hardware_yaml import efficiency_to_yaml_dict, update_yaml_blocks
from compiler.perf.cost import CostModel

REF_DTYPE = "fp16"

#: Literature class fractions (no device of the architecture measured). They are what the
#: library shipped before any calibration; ``literature_band`` scores them on measured devices.
LITERATURE_FRACTIONS: Dict[str, Tuple[float, float]] = {
    "gemm": (0.80, 0.85), "attention_prefill": (0.60, 0.80), "attention_decode": (0.50, 0.70),
    "elementwise": (0.50, 0.85), "reduction": (0.50, 0.80), "copy": (0.50, 0.90),
}
#: The literature files' roll-off: the work a 2 µs ramp covers (flops_half = P·2 µs, bytes_half = W·2 µs)
#: and a 4 µs (eager) launch gap — used only to score the old defaults.
LITERATURE_RAMP_S = 2e-6
LITERATURE_LAUNCH_S = 4e-6


def _hw(name: str):
    return hardware_by_name(name)


def calibrated_devices() -> Dict[str, Path]:
    """Devices with stored calibration measurements: {hardware name: data file}."""
    names = set(available_hardware())
    out = {}
    for p in sorted(DATA_DIR.glob("*.json")):
        if p.stem not in names:
            continue
        meas = json.loads(p.read_text())
        if meas.get("schema", "").startswith("rooftop-calibration") and not meas.get("smoke"):
            out[p.stem] = p
    return out


def rescale(meas: Mapping, P: float, W: float, P_ref: float, W_ref: float, tag: str = "") -> dict:
    """The measurements of a device of (P, W) as samples of the reference device (see doc)."""
    fs, bs = P_ref / P, W_ref / W
    out = dict(meas)
    out["samples"] = [dict(s, flops=float(s["flops"]) * fs, bytes=float(s["bytes"]) * bs,
                           device=tag or s.get("device", "")) for s in meas["samples"]]
    return out


@dataclass
class ArchFit:
    """Parameters of one architecture, in the reference device's terms."""
    reference: str
    devices: Tuple[str, ...]          # calibrated devices whose data went in
    launch_s: float                   # the architecture's launch gap (median of all launch samples)
    params: Dict[str, E.ClassParams]
    #: per-device launch gaps (unused by the shipped library: see fit_architecture)
    launch_by_device: Dict[str, float] = dataclasses.field(default_factory=dict)

    def for_device(self, hw) -> Tuple[float, Dict[str, E.ClassParams]]:
        ref = _hw(self.reference)
        fp = hw.peak(REF_DTYPE) / ref.peak(REF_DTYPE)
        fw = hw.memory_bandwidth / ref.memory_bandwidth
        launch = self.launch_by_device.get(hw.name, self.launch_s)
        return launch, {c: dataclasses.replace(p, flops_half=calfit._sig(p.flops_half * fp, 7),
                                                      bytes_half=calfit._sig(p.bytes_half * fw, 7))
                               for c, p in self.params.items()}

    def literature_for_device(self, hw) -> Tuple[float, Dict[str, E.ClassParams]]:
        """Literature class fractions with this architecture's measured launch gap and ramp-up
        times (flops_half/(P c), bytes_half/(W m) kept as times): how a device of an
        unmeasured architecture is priced."""
        ref = _hw(self.reference)
        out = {}
        for c, (cf, mf) in LITERATURE_FRACTIONS.items():
            jp = self.params[c]
            t_f = jp.flops_half / (ref.peak(REF_DTYPE) * jp.compute)
            t_b = jp.bytes_half / (ref.memory_bandwidth * jp.memory)
            out[c] = E.ClassParams(cf, mf, calfit._sig(t_f * hw.peak(REF_DTYPE) * cf, 7),
                                   calfit._sig(t_b * hw.memory_bandwidth * mf, 7))
        return self.launch_s, out


def _sig(p: E.ClassParams) -> E.ClassParams:
    return E.ClassParams(*(calfit._sig(v) for v in (p.compute, p.memory, p.flops_half, p.bytes_half)))


def fit_architecture(devices: Sequence[str], reference: Optional[str] = None,
                     data: Optional[Mapping[str, Path]] = None) -> ArchFit:
    """Joint fit of the named calibrated devices, in ``reference``'s terms (default: the first)."""
    data = dict(data or calibrated_devices())
    reference = reference or devices[0]
    ref = _hw(reference)
    P0, W0 = ref.peak(REF_DTYPE), ref.memory_bandwidth
    merged = {"samples": []}
    for d in devices:
        hw = _hw(d)
        merged["samples"] += rescale(calfit.load_measurements(data[d]), hw.peak(REF_DTYPE), hw.memory_bandwidth,
                                     P0, W0, tag=d)["samples"]
    priors = calfit.priors_from_yaml(calfit.REPO_ROOT / "conf" / "hardware" / f"{reference}.yaml", REF_DTYPE)
    # one launch gap for the architecture (median of every device's launch samples): a per-device
    # gap would let a dominated device look faster on launch-bound work
    launch, params = E.fit_all(merged, P0, W0, select=calfit.FIT_SELECTION, priors=priors)
    return ArchFit(reference, tuple(devices), calfit._sig(launch), {c: _sig(p) for c, p in params.items()})


# --------------------------------------------------------------------------- errors

def sample_errors(meas: Mapping, launch: float, params: Mapping[str, E.ClassParams], hw) -> Dict[str, np.ndarray]:
    """|pred/meas - 1| per fitted sample, per class, on device ``hw``."""
    out = {}
    for cls, p in params.items():
        f, b, t = E._arrays(E.class_samples(meas, cls, calfit.FIT_SELECTION))
        if len(t):
            out[cls] = np.abs(E.op_time(p, f, b, hw.peak(REF_DTYPE), hw.memory_bandwidth, launch) / t - 1.0)
    return out


def summarize(errs: Mapping[str, np.ndarray]) -> Dict[str, object]:
    allv = np.concatenate([v for v in errs.values()]) if errs else np.zeros(0)
    return {"classes": {c: {"n": int(len(v)), "median": float(np.median(v)), "p90": float(np.percentile(v, 90))}
                        for c, v in errs.items()},
            "pooled_median": float(np.median(allv)) if len(allv) else float("nan"),
            "pooled_p90": float(np.percentile(allv, 90)) if len(allv) else float("nan"),
            "worst_class_median": max((float(np.median(v)) for v in errs.values()), default=float("nan"))}


def old_default_params(hw) -> Tuple[float, Dict[str, E.ClassParams]]:
    """The pre-calibration library defaults for ``hw`` (fractions, 2 µs ramps, 4 µs launch)."""
    P, W = hw.peak(REF_DTYPE), hw.memory_bandwidth
    out = {}
    for c, (cf, mf) in LITERATURE_FRACTIONS.items():
        fh = 0.0 if c in E.MEMORY_ONLY_CLASSES else P * LITERATURE_RAMP_S
        out[c] = E.ClassParams(cf, mf, fh, W * LITERATURE_RAMP_S)
    return LITERATURE_LAUNCH_S, out


def e2e_errors(hw_name: str, launch: float, params: Mapping[str, E.ClassParams], data_file: Path,
               graph) -> Dict[str, float]:
    """Median |error| of the whole-model (Llama-2-7B-shaped, CUDA graphs) prefill and decode
    predictions of the cost model on ``hw_name`` with the given efficiencies."""
    hw = _hw(hw_name)
    eff = Efficiency(source="experiment", launch_overhead_s=launch,
                     classes={c: ClassEfficiency(p.compute, p.memory, p.flops_half, p.bytes_half)
                              for c, p in params.items()})
    hw = dataclasses.replace(hw, efficiency=eff)
    cm = CostModel(graph, hw)
    e2e = calfit.load_measurements(data_file)["e2e"]
    out = {}
    for phase in ("prefill", "decode"):
        pts = [p for p in e2e[phase] if p["mode"] == "cuda_graph"]
        if phase == "prefill":
            pred = [cm.phase_time(p["batch"], p["prompt"], 0, "prefill")[0] for p in pts]
        else:
            pred = [cm.phase_time(p["batch"], 1, p["ctx"], "decode")[0] for p in pts]
        out[phase] = float(np.median(np.abs(np.array(pred) / np.array([p["time_s"] for p in pts]) - 1)))
    return out


# --------------------------------------------------------------------------- experiment

def experiment(graph=None) -> dict:
    """Own fits, the joint Hopper fit, the transfer both ways, and the literature defaults,
    each scored on every calibrated device's measurements (and, given the Llama-2-7B ``graph``
    the measured e2e model has, on its prefill/decode timings)."""
    data = calibrated_devices()
    devs = [d for d in data if (_hw(d).architecture or "") == "hopper"]
    with_e2e = graph is not None
    res: dict = {"devices": devs, "rows": []}

    def score(label, dev, launch, params):
        hw = _hw(dev)
        meas = calfit.load_measurements(data[dev])
        row = {"label": label, "device": dev, **summarize(sample_errors(meas, launch, params, hw))}
        if with_e2e:
            row["e2e"] = e2e_errors(dev, launch, params, data[dev], graph)
        res["rows"].append(row)
        return row

    joint = fit_architecture(devs, reference="h100_sxm" if "h100_sxm" in devs else devs[0], data=data)
    res["joint"] = {"reference": joint.reference, "launch_s": joint.launch_s,
                    "launch_by_device": dict(joint.launch_by_device),
                    "params": {c: p.to_dict() for c, p in joint.params.items()}}
    for d in devs:
        own = fit_architecture([d], data=data)
        score("own fit", d, *own.for_device(_hw(d)))
        score("joint Hopper fit (shipped)", d, *joint.for_device(_hw(d)))
        for src in devs:
            if src != d:
                score(f"transferred from {src} only", d, *own_fit_cache(src, data).for_device(_hw(d)))
        others = [x for x in devs if x != d]
        if others:  # launch and ramp times from the other device only: no peeking at d's own data
            score("literature fractions (as shipped)", d, *own_fit_cache(others[0], data).literature_for_device(_hw(d)))
        score("old uncalibrated defaults", d, *old_default_params(_hw(d)))
    return res


_OWN: Dict[str, ArchFit] = {}


def own_fit_cache(dev: str, data) -> ArchFit:
    if dev not in _OWN:
        _OWN[dev] = fit_architecture([dev], data=data)
    return _OWN[dev]


def bands(res: dict) -> Dict[str, dict]:
    """Error bands per calibration source from an :func:`experiment` result."""
    rows = res["rows"]

    def pick(label_start):
        rs = [r for r in rows if r["label"].startswith(label_start)]
        med = max(r["pooled_median"] for r in rs)
        p90 = max(r["pooled_p90"] for r in rs)
        e2e = max((max(r["e2e"].values()) for r in rs if "e2e" in r), default=None)
        return {"median": med, "p90": max(p90, med), "e2e": e2e, "devices": sorted({r["device"] for r in rs})}

    return {"calibrated": pick("joint"), "transferred": pick("transferred"), "literature": pick("literature")}


def format_experiment(res: dict) -> str:
    lines = [f"{'device':9s} {'parameters':34s} {'pooled med':>10s} {'p90':>6s}  per class median |err| "
             "(gemm, att_prefill, att_decode, elementwise, reduction, copy)" + ("   e2e prefill / decode" if any("e2e" in r for r in res["rows"]) else "")]
    for r in res["rows"]:
        cl = r["classes"]
        per = " ".join(f"{cl[c]['median']:6.1%}" if c in cl else "     -" for c in E.CLASSES)
        e2e = f"   {r['e2e']['prefill']:6.1%} / {r['e2e']['decode']:6.1%}" if "e2e" in r else ""
        lines.append(f"{r['device']:9s} {r['label']:34s} {r['pooled_median']:10.1%} {r['pooled_p90']:6.1%}  {per}{e2e}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- writing the library

def _eff_dict(launch, params, source):
    eff = Efficiency(source=source, launch_overhead_s=launch,
                     classes={c: ClassEfficiency(p.compute, p.memory, p.flops_half, p.bytes_half)
                              for c, p in params.items()})
    return efficiency_to_yaml_dict(eff)


def _round(x, n=3):
    return float(f"{x:.{n}g}")


def write_library(res: dict, date: Optional[str] = None) -> List[Path]:
    """Write efficiency + calibration blocks into every GPU YAML of the library."""
    date = date or _dt.date.today().isoformat()
    data = calibrated_devices()
    devs = res["devices"]
    joint = fit_architecture(devs, reference=res["joint"]["reference"], data=data)
    b = bands(res)
    written = []
    when = {d: str(calfit.load_measurements(data[d]).get("date", ""))[:10] for d in devs}
    names = {d: calfit.load_measurements(data[d])["device"]["name"] for d in devs}
    measured = ", ".join(f"{names[d]} {when[d]}" for d in devs)
    for name in available_hardware():
        hw = _hw(name)
        path = hardware_dir() / f"{name}.yaml"
        if hw.kind != "gpu":
            continue
        if hw.architecture == "hopper":
            launch, params = joint.for_device(hw)
            if name in devs:
                src = "calibrated"
                band = b["calibrated"]
                basis = ("pooled |error| of every fitted kernel sample of " + ", ".join(devs)
                         + " under these parameters" + (f"; e2e Llama-2-7B ≤ {band['e2e']:.0%}" if band["e2e"] is not None else ""))
                method = (f"joint fit of the Hopper measurements ({measured}; "
                          "compiler/perf/calibration/data/<device>.json) mapped onto one parameter set, scaled to this "
                          "device's datasheet peak and bandwidth (compiler/perf/calibration/transfer.py)")
            else:
                src = "transferred"
                band = b["transferred"]
                basis = ("transfer experiment: fit on one measured Hopper, predict the other's kernels, both ways"
                         + (f"; e2e Llama-2-7B ≤ {band['e2e']:.0%}" if band["e2e"] is not None else ""))
                method = ("the joint Hopper calibration (" + "+".join(devs) + "), roll-off sizes scaled by this "
                          "device's datasheet peak and bandwidth; fractions and launch gap kept")
            eff_source = (f"{'calibrated on' if src == 'calibrated' else 'transferred from'} "
                          f"{'+'.join(devs)} (joint Hopper fit {date})")
            cal = {"source": src, "from": list(devs), "method": method, "date": date,
                   "error_band": {"median": _round(band["median"]), "p90": _round(band["p90"]), "basis": basis}}
        else:
            launch, params = joint.literature_for_device(hw)
            band = b["literature"]
            src = "literature"
            eff_source = (f"literature fractions (no {hw.architecture or hw.vendor} device measured); launch gap "
                          f"and ramp times from {'+'.join(devs)}")
            cal = {"source": "literature", "from": list(devs),
                   "method": ("class fractions are literature-typical (no " + (hw.architecture or hw.vendor)
                              + " device measured); the per-kernel launch gap and ramp-up times are the measured "
                              "Hopper ones (" + "+".join(devs) + ")"),
                   "date": date,
                   "error_band": {"median": _round(max(band["median"], 0.25)), "p90": _round(max(band["p90"], 0.6)),
                                  "basis": ("what these literature fractions scored on the measured Hoppers "
                                            f"(pooled median {band['median']:.0%}, p90 {band['p90']:.0%}), "
                                            "widened to at least 25 % / 60 % for an unmeasured architecture")}}
        eb = cal["error_band"]
        eff_source += f"; error band {eb['median']:.0%} median, {eb['p90']:.0%} p90 per kernel"
        update_yaml_blocks(path, {"efficiency": _eff_dict(launch, params, eff_source), "calibration": cal},
                           note="written by python -m compiler.perf.calibration.transfer --write")
        written.append(path)
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m compiler.perf.calibration.transfer", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true", help="write efficiency + calibration blocks of conf/hardware/*.yaml")
    ap.add_argument("--json", help="write the experiment as JSON here")
    ap.add_argument("--date", help="date written into the YAMLs (default today)")
    args = ap.parse_args(argv)
    res = experiment()
    print(format_experiment(res))
    print("bands:", json.dumps(bands(res), indent=None, default=float))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, sort_keys=True, default=float))
    if args.write:
        for p in write_library(res, args.date):
            print("wrote", p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
