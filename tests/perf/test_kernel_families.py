"""Quantized / sparse GEMM kernel families measured on the H200 (tools/measure_kernels.py):
the stored data, the fitted family efficiencies in the hardware library, and whether the
family model predicts where int4 and 2:4 kernels lose to dense GEMMs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from compiler.perf import efficiency as E
from compiler.perf.calibration import kernels as K
from compiler.perf.hardware import hardware_by_name

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def meas():
    return K.load()


@pytest.fixture(scope="module")
def h200():
    return hardware_by_name("h200")


def test_stored_kernel_measurements_are_well_formed(meas):
    assert meas["device"]["name"] == "NVIDIA H200" and meas["device"]["capability"] == "9.0"
    assert meas["versions"]["torch"].startswith("2.11")
    for fam in K.FAMILY_PEAK:
        ss = K.family_samples(meas, fam)
        assert len(ss) >= 50, fam
        for s in ss:
            sh = s["shape"]
            assert s["graph"] is True  # timed inside CUDA graphs (cuSPARSELt's host cost excluded)
            assert s["flops"] == 2 * sh["M"] * sh["K"] * sh["N"]
            assert s["p10"] <= s["time_s"] <= s["p90"] and s["time_s"] > 0
    # every kernel was checked against a float reference before it was timed
    ck = meas["checks"]
    for key in ("w4a16_rel_err", "w8a16_int8pack_rel_err", "fp8_tensorwise_rel_err", "fp8_rowwise_rel_err",
                "sparse24_cusparselt_rel_err"):
        assert isinstance(ck[key], float) and ck[key] < 1e-2, key
    assert ck["w8a8_int_mm_rel_err"] == 0.0  # integer GEMM: exact
    assert ck["sparse24_cutlass_rel_err"].startswith("FAIL")  # CUTLASS 2:4 is sm8x-only in torch 2.11


def test_family_fit_is_what_the_library_ships(meas, h200):
    fits = K.fit_families(meas, h200)
    assert set(fits) == set(K.FAMILY_PEAK)
    for fam, r in fits.items():
        k = h200.kernel_family(fam)
        assert k is not None and k.kernel == r["kernel"] and k.peak_dtype == r["peak_dtype"]
        for f in ("compute", "memory", "flops_half", "bytes_half"):
            assert getattr(k, f) == pytest.approx(getattr(r["params"], f), rel=1e-6, abs=1e-9), (fam, f)
        assert r["median_err"] <= 0.12, (fam, r["median_err"])
    # the transferred Hoppers carry the same families, named as transferred
    k100 = hardware_by_name("h100_sxm").kernel_family("w4a16")
    assert k100.source.startswith("transferred from h200") and k100.compute == h200.kernel_family("w4a16").compute


def _pred(hw, fam, flops, nbytes):
    k = hw.kernel_family(fam)
    P = hw.peak(k.peak_dtype, k.sparse)
    p = E.ClassParams(k.compute, k.memory, k.flops_half * P / hw.peak("fp16"), k.bytes_half)
    return E.op_time(p, flops, nbytes, P, hw.memory_bandwidth, hw.efficiency.launch_overhead_s)


@pytest.mark.parametrize("fam,ref", [("w4a16", "dense_bf16"), ("sparse24_cusparselt", "dense_fp16")])
def test_family_model_predicts_where_the_kernel_loses(meas, h200, fam, ref):
    """Measured: int4 (tinygemm) beats dense bf16 only at M <= 4, 2:4 (cuSPARSELt) beats dense
    fp16 only from M ~ 256. The fitted families predict the winner at >= 85 % of the measured
    (shape, M) points, and at the extremes always."""
    refs = {(s["shape"]["tag"], s["shape"]["M"]): s for s in K.family_samples(meas, ref)}
    agree = total = 0
    for s in K.family_samples(meas, fam):
        key = (s["shape"]["tag"], s["shape"]["M"])
        if key not in refs:
            continue
        r = refs[key]
        pf, pr = _pred(h200, fam, s["flops"], s["bytes"]), _pred(h200, ref, r["flops"], r["bytes"])
        measured_loses = s["time_s"] > r["time_s"]
        total += 1
        agree += (pf > pr) == measured_loses
        M = s["shape"]["M"]
        if fam == "w4a16" and M in (1, 2):
            assert pf < pr and not measured_loses, key
        if fam == "w4a16" and M >= 64:
            assert pf > pr and measured_loses, key
        if fam.startswith("sparse") and M <= 32:
            assert pf > pr and measured_loses, key
        if fam.startswith("sparse") and M >= 8192:
            assert pf < pr and not measured_loses, key
    assert total >= 40 and agree / total >= 0.85, (agree, total)


def test_measure_kernels_script_runs_its_smoke_mode(tmp_path):
    """The measurement script itself (CPU smoke: the checks, the MoE step and the verify step on
    tiny shapes) runs and writes its JSON schema; the GPU-only kernels are recorded as failures."""
    out = tmp_path / "k.json"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "measure_kernels.py"), "--smoke", "--groups",
                        "checks,moe,verify", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.loads(out.read_text())
    assert d["schema"] == "rooftop-kernels/1" and d["smoke"] is True
    assert d["checks"]["w8a8_int_mm_rel_err"] == 0.0
    pts = d["moe"]["points"]
    assert [p["batch"] for p in pts] == [1, 4, 16]
    for p in pts:  # distinct experts never exceed E nor B*k, and never fall below k
        E_, k = d["moe"]["shapes"]["tiny_moe"]["experts"], d["moe"]["shapes"]["tiny_moe"]["top_k"]
        assert k <= p["distinct_experts"] <= min(E_, p["batch"] * k)
        assert p["expected_distinct_uniform"] == pytest.approx(E_ * (1 - (1 - k / E_) ** p["batch"]))
    assert [p["T"] for p in d["verify"]["points"]] == [1, 4, 16]
