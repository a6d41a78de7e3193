"""``runtime=`` through the command: report.json names the runtime, every op's kernel and source,
and the engine beside the roofline bound; report.md says it in words; a profile on hardware it
does not run on is a one-paragraph exit 2 with nothing on disk."""
from __future__ import annotations

import json

from tests.conftest import run_cli

BASE = ("emit.enabled=false", "report.html=false", "model.weights=meta", "workload.prompt_len=64",
        "workload.gen_len=8", "hardware=h100_sxm")


def test_trtllm_run_names_runtime_kernels_and_roofline_gap(tmp_path):
    r = run_cli(*BASE, "runtime=trtllm", "quant=fp8", "kv.dtype=fp8", f"hydra.run.dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((tmp_path / "report.json").read_text())
    rt = rep["runtime"]
    assert rt["name"] == "trtllm"
    for phase in ("prefill", "decode"):
        ops = rep["phases"][phase]["ops"]
        assert ops and all(op.get("kernel") and op.get("kernel_source") for op in ops), phase
        g = rt["roofline"][phase]
        assert 0 < g["fraction_of_bound"] <= 1
        # the engine's step = the bound + the gap it splits into kernel groups and host time
        assert abs(g["time_s"] - g["bound_s"] - sum(g["gap_s"].values())) <= 1e-6 * g["time_s"]
    fp8 = [op for op in rep["phases"]["decode"]["ops"] if "FP8 GEMM" in op["kernel"]]
    assert fp8, "quant=fp8 GEMMs run TensorRT-LLM's FP8 kernel"
    md = (tmp_path / "report.md").read_text()
    assert "of the roofline bound here" in md


def test_engine_profile_on_the_wrong_hardware_kind_is_exit_2(tmp_path):
    r = run_cli(*BASE, "runtime=ort_cpu", f"hydra.run.dir={tmp_path}")
    assert r.returncode == 2, r.stderr[-2000:]
    msg = [ln for ln in r.stderr.splitlines() if ln.startswith("rooftop: error:")]
    assert len(msg) == 1 and "ort_cpu" in msg[0] and "Traceback" not in r.stderr
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == []
