"""Cost-model calibration: the efficiency model, its fitter, and the stored GPU measurements.

The stored measurements (compiler/perf/calibration/data/*.json, written by tools/calibrate_gpu.py
on a real GPU) must be fitted by the model to a median absolute relative error of at most
15 % per op class, and the uncalibrated roofline must do worse (shown for contrast).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest

from compiler.perf import efficiency as E
from compiler.perf.calibration import DATA_DIR
from compiler.perf.calibration import fit as calfit

REPO = Path(__file__).resolve().parents[2]
TOL = 0.15
DATA_FILES = sorted(p for p in DATA_DIR.glob("*.json")
                    if json.loads(p.read_text()).get("schema", "").startswith("rooftop-calibration")
                    and not json.loads(p.read_text()).get("smoke"))


# --------------------------------------------------------------------------- op_time by hand

P, W, L = 1.0e15, 1.0e12, 2.0e-6
PRM = E.ClassParams(compute=0.8, memory=0.9, flops_half=1.0e9, bytes_half=1.0e6)


def test_op_time_memory_bound_by_hand():
    # compute term (1e9 + 1e9) / (0.8 * 1e15) = 2.5e-6 s; memory term (1e9 + 1e6) / (0.9 * 1e12)
    t = E.op_time(PRM, 1.0e9, 1.0e9, P, W, L)
    assert isinstance(t, float)
    assert t == pytest.approx((1.0e9 + 1.0e6) / 0.9e12 + 2.0e-6, rel=1e-12)


def test_op_time_compute_bound_by_hand():
    # compute term (1e13 + 1e9) / 0.8e15 = 12.50125 ms beats memory (1e8 + 1e6) / 0.9e12 = 0.112 ms
    t = E.op_time(PRM, 1.0e13, 1.0e8, P, W, L)
    assert t == pytest.approx(0.01250125 + 2.0e-6, rel=1e-12)


def test_op_time_matches_attainable_rates_form():
    # time = max(F / att_compute, Bt / att_memory) + launch, att = peak * eff * x / (x + half)
    f, b = 3.0e10, 4.0e7
    att_c = P * PRM.compute * f / (f + PRM.flops_half)
    att_m = W * PRM.memory * b / (b + PRM.bytes_half)
    assert E.op_time(PRM, f, b, P, W, L) == pytest.approx(max(f / att_c, b / att_m) + L, rel=1e-12)


def test_op_time_zero_flops_is_memory_time():
    p = E.ClassParams(1.0, 0.5, 0.0, 2.0e6)
    assert E.op_time(p, 0.0, 8.0e6, P, W, 0.0) == pytest.approx(10.0e6 / 0.5e12, rel=1e-12)


def test_op_time_vectorized_equals_scalar():
    rng = np.random.default_rng(1)
    f = 10 ** rng.uniform(3, 14, 50)
    b = 10 ** rng.uniform(3, 10, 50)
    vec = E.op_time(PRM, f, b, P, W, L)
    assert isinstance(vec, np.ndarray) and vec.shape == (50,)
    scal = np.array([E.op_time(PRM, float(x), float(y), P, W, L) for x, y in zip(f, b)])
    np.testing.assert_allclose(vec, scal, rtol=0, atol=0)


def test_roofline_time():
    assert E.roofline_time(2.0e12, 1.0e9, P, W) == pytest.approx(2.0e-3)
    assert E.roofline_time(1.0e9, 1.0e9, P, W) == pytest.approx(1.0e-3)
    np.testing.assert_allclose(E.roofline_time(np.array([2e12, 1e9]), np.array([1e9, 1e9]), P, W), [2e-3, 1e-3])


def test_class_params_validation():
    with pytest.raises(ValueError):
        E.ClassParams(1.2, 0.5, 0.0, 0.0)
    with pytest.raises(ValueError):
        E.ClassParams(0.5, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        E.ClassParams(0.5, 0.5, -1.0, 0.0)


# --------------------------------------------------------------------------- fitter on synthetic data

H100_P, H100_W = 989.4e12, 3.35e12


def _gemm_grid():
    ms = np.array([1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192], dtype=float)
    f, b = [], []
    for k, n in [(4096, 4096), (4096, 11008), (11008, 4096), (8192, 1024), (8192, 28672)]:
        f += list(2 * ms * k * n)
        b += list((ms * k + k * n + ms * n) * 2)
    return np.array(f), np.array(b)


@pytest.mark.parametrize("seed", [0, 1])
def test_fit_class_recovers_known_parameters(seed):
    true = E.ClassParams(compute=0.72, memory=0.83, flops_half=3.0e9, bytes_half=6.0e6)
    launch = 2.0e-6
    f, b = _gemm_grid()
    rng = np.random.default_rng(seed)
    t = E.op_time(true, f, b, H100_P, H100_W, launch) * np.exp(rng.normal(0.0, 0.03, f.shape))
    got = E.fit_class((f, b, t), H100_P, H100_W, launch)
    assert got.compute == pytest.approx(true.compute, rel=0.05)
    assert got.memory == pytest.approx(true.memory, rel=0.05)
    assert 1 / 2 < got.flops_half / true.flops_half < 2
    assert 1 / 2 < got.bytes_half / true.bytes_half < 2
    # the fitted curve follows the true one closely everywhere
    dev = np.abs(E.op_time(got, f, b, H100_P, H100_W, launch) / E.op_time(true, f, b, H100_P, H100_W, launch) - 1)
    assert np.max(dev) < 0.06


def test_fit_class_memory_only_and_unidentified_side():
    true = E.ClassParams(compute=0.0676, memory=0.88, flops_half=0.0, bytes_half=2.5e6)
    nbytes = 2.0 ** np.arange(12, 32)
    f = nbytes / 2.0  # ~0.5 FLOP per byte: never compute-bound
    rng = np.random.default_rng(3)
    t = E.op_time(true, f, nbytes, H100_P, H100_W, 2e-6) * np.exp(rng.normal(0.0, 0.02, f.shape))
    got = E.fit_class((f, nbytes, t), H100_P, H100_W, 2e-6, prior=E.DEFAULT_PRIORS["elementwise"],
                      fit_compute=False)
    assert got.compute == E.DEFAULT_PRIORS["elementwise"].compute and got.flops_half == 0.0
    assert got.memory == pytest.approx(0.88, rel=0.05)
    assert 1 / 1.5 < got.bytes_half / 2.5e6 < 1.5
    # with the compute side free, a side that never binds is reset to the prior, predictions unchanged
    got2 = E.fit_class((f, nbytes, t), H100_P, H100_W, 2e-6, prior=E.ClassParams(0.5, 0.9, 0.0, 0.0))
    assert not np.any(E.bound_side(got2, f, nbytes, H100_P, H100_W)) or got2.flops_half > 0


def test_fit_all_and_errors_on_synthetic_measurements():
    launch = 2.5e-6
    truth = {"gemm": E.ClassParams(0.7, 0.8, 2e9, 5e6), "copy": E.ClassParams(1.0, 0.9, 0.0, 3e6)}
    f, b = _gemm_grid()
    samples = [{"class": "launch", "flops": 1, "bytes": 8, "time_s": launch}]
    samples += [{"class": "gemm", "flops": x, "bytes": y, "time_s": E.op_time(truth["gemm"], x, y, H100_P, H100_W, launch)}
                for x, y in zip(f, b)]
    for n in 2.0 ** np.arange(20, 32):
        samples.append({"class": "copy", "flops": 0.0, "bytes": 2 * n,
                        "time_s": E.op_time(truth["copy"], 0.0, 2 * n, H100_P, H100_W, launch)})
    samples.append({"class": "copy", "flops": 0.0, "bytes": 1e9, "time_s": 1.0, "exclude_from_fit": True})
    meas = {"samples": samples, "datasheet": {"peak_flops": H100_P, "bandwidth": H100_W}}
    got_launch, params = E.fit_all(meas)
    assert got_launch == pytest.approx(launch)
    assert set(params) == {"gemm", "copy"}
    err = E.errors(meas, params, got_launch, H100_P, H100_W)
    roof = E.roofline_errors(meas, H100_P, H100_W, classes=["gemm", "copy"])
    assert err["gemm"] < 0.01 and err["copy"] < 0.01
    assert roof["gemm"] > err["gemm"] and roof["copy"] > err["copy"]


# --------------------------------------------------------------------------- stored GPU measurements


@functools.lru_cache(maxsize=None)
def _fit(path: Path, selected: bool = True):
    return calfit.fit_file(path, select=calfit.FIT_SELECTION if selected else None)


def _ids(paths):
    return [p.stem for p in paths]


def test_measurements_are_stored():
    # the H100 and H200 calibrations ship with the repo; the tests below must never silently skip
    assert {"h100_sxm", "h200"} <= {p.stem for p in DATA_FILES}


@pytest.mark.parametrize("path", DATA_FILES, ids=_ids(DATA_FILES))
def test_stored_measurements_are_well_formed(path):
    meas = json.loads(path.read_text())
    assert meas["device"]["name"] and meas["date"] and meas["dtype"] == "float16"
    for key in ("torch", "cuda_runtime", "driver"):
        assert key in meas["versions"]
    classes = {s["class"] for s in meas["samples"]}
    assert set(E.CLASSES) <= classes
    for s in meas["samples"]:
        assert s["time_s"] > 0 and len(s["times_s"]) >= 20
        assert s["p10"] <= s["time_s"] <= s["p90"]
    assert meas["measured"]["copy_bandwidth_Bps"] > 0
    e2e = meas["e2e"]
    assert e2e["config"]["layers"] > 0 and e2e["prefill"] and e2e["decode"]


@pytest.mark.parametrize("path", DATA_FILES, ids=_ids(DATA_FILES))
def test_calibrated_model_within_15_percent_per_class(path):
    res = _fit(path)
    print()
    print(calfit.format_table(res))
    for cls in E.CLASSES:
        assert cls in res.table, f"no {cls} samples in {path.name}"
        row = res.table[cls]
        assert row["calibrated"] <= TOL, (
            f"{cls}: calibrated median |rel err| {row['calibrated']:.1%} > {TOL:.0%} ({path.name})")
        # the uncalibrated roofline, for contrast, is worse
        assert row["roofline"] > row["calibrated"], f"{cls}: roofline {row['roofline']:.1%} not worse"


@pytest.mark.parametrize("path", DATA_FILES, ids=_ids(DATA_FILES))
def test_fitted_params_are_physical(path):
    res = _fit(path)
    assert 0.5e-6 <= res.launch_s <= 20e-6
    for cls, p in res.params.items():
        assert 0 < p.compute <= 1 and 0 < p.memory <= 1
    # large memory-bound kernels reach a sizeable fraction of the datasheet bandwidth
    assert res.params["copy"].memory > 0.5
    assert res.params["gemm"].compute > 0.3


def test_fit_cli_writes_hardware_yaml(tmp_path):
    import compiler.perf.hardware as hw_mod
    base = REPO / "conf" / "hardware" / "h100_sxm.yaml"
    data = DATA_DIR / "h100_sxm.json"
    assert base.exists() and data.exists()
    out = tmp_path / "h100_sxm.yaml"
    from compiler.driver import calibrate   # the command line (rooftop calibrate) over calfit
    assert calibrate.main([str(data), "--base-yaml", str(base), "--out", str(out)]) == 0
    hw = hw_mod.load_hardware_file(out)
    base_hw = hw_mod.load_hardware_file(base)
    assert hw.efficiency.source.startswith("calibrated on ")
    assert "compiler/perf/calibration/data/h100_sxm.json" in hw.efficiency.source
    assert hw.peak_flops == base_hw.peak_flops and hw.memory_bandwidth == base_hw.memory_bandwidth
    res = calfit.fit_file(data, base_yaml=base)
    for cls, p in res.params.items():
        ce = hw.efficiency.for_class(cls)
        assert ce.compute == pytest.approx(p.compute, rel=1e-9)
        assert ce.bytes_half == pytest.approx(p.bytes_half, rel=1e-9, abs=1e-9)
    assert hw.efficiency.launch_overhead_s == pytest.approx(res.launch_s, rel=1e-9)


@pytest.mark.parametrize("path", DATA_FILES, ids=_ids(DATA_FILES))
def test_fit_selection_names_exist_and_all_kernel_errors_are_reported(path):
    meas = json.loads(path.read_text())
    names = {(s["class"], s["name"]) for s in meas["samples"]}
    for cls, sel in calfit.FIT_SELECTION.items():
        assert cls in E.CLASSES
        for n in sel:
            assert (cls, n) in names, f"FIT_SELECTION names {cls}/{n}, absent from {path.name}"
    # every kernel of every class, fitted or not, gets an error line (nothing is hidden)
    res = _fit(path)
    listed = {(c, n) for c, d in res.breakdown.items() for n in d}
    assert {(s["class"], s["name"]) for s in meas["samples"] if s["class"] in E.CLASSES} == listed
    everything = _fit(path, selected=False)
    print()
    print("fit of every kernel not marked exclude_from_fit (no FIT_SELECTION):")
    print(calfit.format_table(everything, by_name=False))
