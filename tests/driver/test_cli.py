"""The command-line contract: outputs, determinism, sweeps, bad input (exit 2, no artifacts), gates (exit 3)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.driver.contract import cli_completed

ARTIFACTS = ("model.onnx", "model.onnx.data", "report.json", "report.md", "report.html")


def _artifacts(d: Path) -> list[str]:
    return sorted(f for f in ARTIFACTS if (d / f).exists())


def test_default_run_writes_contract_outputs_deterministically(tmp_path):
    runs = []
    for i in range(2):
        d = tmp_path / f"run{i}"
        r = run_cli(f"hydra.run.dir={d}", "workload.prompt_len=64", "workload.gen_len=8")
        assert r.returncode == 0, r.stderr
        runs.append(d)
    assert _artifacts(runs[0]) == ["model.onnx", "report.html", "report.json", "report.md"]
    for f in ("model.onnx", "report.json", "report.md"):
        assert (runs[0] / f).read_bytes() == (runs[1] / f).read_bytes(), f
    rep = json.loads((runs[0] / "report.json").read_text())
    for key in ("schema_version", "model", "hardware", "workload", "passes", "phases", "memory",
                "capacity", "latency"):
        assert key in rep
    for phase in ("prefill", "decode"):
        ph = rep["phases"][phase]
        assert ph["time_s"] > 0 and ph["flops"] > 0 and ph["bytes"] > 0
        op = ph["ops"][0]
        assert set(op) >= {"name", "op", "flops", "bytes", "intensity", "attainable_flops", "bound", "time_s"}
    assert set(rep["memory"]) >= {"weights_bytes", "kv_cache_bytes", "kv_bytes_per_token", "activation_peak_bytes"}
    assert set(rep["latency"]) >= {"ttft_s", "tpot_s", "e2e_s", "throughput_tok_s"}
    assert rep["passes"] and all({"name", "changed", "stats", "cost_before", "cost_after"} <= set(p) for p in rep["passes"])
    assert rep["emit"]["emitted"] and rep["emit"]["verified"]["passed"] is True
    ver = rep["emit"]["verification"]
    assert ver["reference"].startswith("torch eager") and ver["compute_dtype"] == "float32"
    assert set(ver["outputs"]) == {"logits@prefill", "logits@decode1", "logits@decode2"}
    assert all(o["max_abs_err"] <= o["tolerance"] for o in ver["outputs"].values())
    assert [s["step"] for s in ver["inputs"]] == ["prefill", "decode1", "decode2"]


def test_multirun_sweep_over_hardware(tmp_path):
    r = run_cli("-m", "hardware=a100_80g,h100_sxm", "emit.enabled=false", "report.html=false", "model.weights=meta",
                "workload.prompt_len=32", "workload.gen_len=4", f"hydra.sweep.dir={tmp_path}")
    assert r.returncode == 0, r.stderr
    reports = sorted(tmp_path.glob("*/report.json"))
    assert len(reports) == 2
    hw = {json.loads(p.read_text())["hardware"]["name"] for p in reports}
    assert hw == {"a100_80g", "h100_sxm"}


@pytest.mark.parametrize("args, needle", [
    (["model=llama_9000"], "Valid model names"),
    (["hardware=tpu_v9"], "Valid hardware names"),
    (["pipeline=warp_speed"], "Valid pipeline names"),
    (["workload.batch=="], "malformed override"),
    (["workload.batch=zero"], "not an integer"),
    (["workload.batch=0"], "out of range"),
    (["model=onnx"], "model.path"),
    (["model=onnx", "model.path=/nonexistent/model.onnx"], "/nonexistent/model.onnx"),
    (["model.weights=meta", "emit.enabled=true"], "meta"),
    (["pipeline.passes=[dce,teleport]"], "teleport"),
])
def test_bad_input_exits_2_with_message_and_no_artifacts(args, needle, tmp_path):
    r = cli_completed(*args, f"hydra.run.dir={tmp_path}", "workload.prompt_len=16")   # in process: the entry point
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert needle in r.stderr
    assert "Traceback" not in r.stderr
    msg = [ln for ln in r.stderr.splitlines() if ln.startswith("rooftop: error:")]
    assert len(msg) == 1  # one paragraph
    assert _artifacts(tmp_path) == []


def test_truncated_and_corrupted_onnx_exit_2(tmp_path):
    # a real model file (built in-process: no CLI run needed for it), truncated, and plain garbage
    from tests.driver.test_robustness import token_encoder
    data = token_encoder(tmp_path / "good.onnx").read_bytes()
    for name, blob in [("trunc.onnx", data[: len(data) // 2]), ("garbage.onnx", b"\x00\xffnot onnx" * 50)]:
        f = tmp_path / name
        f.write_bytes(blob)
        out = tmp_path / ("out_" + name)
        r = cli_completed("model=onnx", f"model.path={f}", f"hydra.run.dir={out}")
        assert r.returncode == 2, r.stderr[-2000:]
        assert name in r.stderr and "Traceback" not in r.stderr
        assert not out.exists()       # not even .hydra/


def test_gate_exceeded_exits_3_and_keeps_report(tmp_path):
    r = run_cli(f"hydra.run.dir={tmp_path}", "emit.enabled=false", "gate.max_ttft_ms=1e-9",
                "workload.prompt_len=16", "model.weights=meta")
    assert r.returncode == 3, r.stderr
    assert "gate.max_ttft_ms" in r.stderr
    assert (tmp_path / "report.json").exists()


def test_failing_pass_is_named_with_its_predecessors():
    from compiler.errors import PassError
    from compiler.ir import Graph, TensorType
    from passes.base import FunctionPass, PassManager

    def broken(g):
        raise ValueError("boom")

    g = Graph()
    x = g.add_input("x", TensorType("float32", (2,)))
    g.set_outputs([g.add_op("Relu", [x]).outputs[0]])
    pm = PassManager([FunctionPass("first", lambda g: {}), FunctionPass("second", broken)], debug=True)
    with pytest.raises(PassError) as e:
        pm(g)
    assert "'second' failed: boom" in str(e.value) and "first" in str(e.value)


def test_calibrate_entry_point_writes_a_loadable_hardware_yaml(tmp_path):
    from compiler.perf.hardware import load_hardware_file
    from tests.conftest import ROOT
    out = tmp_path / "h100_sxm.yaml"
    r = run_cli("calibrate", str(ROOT / "compiler/perf/calibration/data/h100_sxm.json"),
                "--base-yaml", str(ROOT / "conf/hardware/h100_sxm.yaml"), "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    hw = load_hardware_file(out)
    assert hw.efficiency.source.startswith("calibrated on NVIDIA H100")
    assert 0.5 < hw.efficiency.for_class("gemm").compute < 0.9
