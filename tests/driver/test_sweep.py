"""Multirun summary (sweep.json / sweep.md / sweep.html); the Optuna search recipes are in
tests/driver/test_search.py.

Points use a one-layer ONNX decoder (tests/onnx_models.make_kv_model) with emission off, so a point
costs well under a second; the sweeps run through the real ``rooftop -m`` command.
"""
from __future__ import annotations

import base64
import json
import re

import pytest

from compiler import schema
from compiler.driver.sweep import pareto_front, sweep_exit_code
from tests.conftest import run_cli
from tests.onnx_models import make_kv_model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {"mha": make_kv_model(str(d / "mha.onnx"), vocab=512, heads=4, head_dim=32),
            "gqa": make_kv_model(str(d / "gqa.onnx"), vocab=512, heads=4, head_dim=32, kv_heads=1)}


def _sweep(tmp_path, name, *args):
    out = tmp_path / name
    r = run_cli("-m", *args, f"hydra.sweep.dir={out}", timeout=600)
    doc = json.loads((out / "sweep.json").read_text()) if (out / "sweep.json").is_file() else None
    return r, out, doc


def _dominates(a, b, axes):
    s = [1 if ax["direction"] == "minimize" else -1 for ax in axes]
    va = [a[ax["metric"]] * k for ax, k in zip(axes, s)]
    vb = [b[ax["metric"]] * k for ax, k in zip(axes, s)]
    return all(x <= y for x, y in zip(va, vb)) and any(x < y for x, y in zip(va, vb))


def test_three_point_sweep_lists_every_point_and_the_failed_one(models, tmp_path):
    # a file whose contents are broken fails at import, after the sweep started (a missing file is
    # refused before it starts: tests/driver/test_every_run_ends_well.py)
    missing = str(tmp_path / "truncated.onnx")
    data = open(models["mha"], "rb").read()
    open(missing, "wb").write(data[: len(data) // 2])
    r, out, doc = _sweep(tmp_path, "sweep", "model=onnx", f"model.path={models['mha']},{models['gqa']},{missing}",
                         "hardware=h100_sxm", "workload.batch=8", "emit.enabled=false")
    assert r.returncode == 2, r.stderr          # the failed point's exit code (bad input)
    assert "sweep of 3 points (ok 2, gate 0, infeasible 0, failed 1)" in r.stdout
    assert schema.errors(doc, "sweep") == []
    assert doc["points"] == 3 and doc["counts"] == {"ok": 2, "gate": 0, "infeasible": 0, "failed": 1}
    rows = {next(o for o in row["overrides"] if o.startswith("model.path=")).split("=")[1]: row for row in doc["rows"]}
    failed = rows[missing]
    assert failed["status"] == "failed" and failed["exit_code"] == 2 and "truncated" in failed["error"]
    assert failed["report"] is None and not (out / failed["dir"] / "report.json").exists()
    assert doc["rows"][-1] is not None and doc["rows"][-1]["status"] == "failed"     # failures last
    for key in ("mha", "gqa"):
        row = rows[models[key]]
        rep = json.loads((out / row["report"]).read_text())
        assert row["status"] == "ok" and row["error"] is None
        assert row["ttft_s"] == rep["latency"]["ttft_s"] and row["tpot_s"] == rep["latency"]["tpot_s"]
        assert row["throughput_tok_s"] == rep["latency"]["throughput_tok_s"]
        assert row["memory_bytes"] == rep["memory"]["total_bytes"]
        assert row["max_batch"] == rep["capacity"]["max_batch"] and row["batch"] == 8
        assert row["hardware"] == "h100_sxm" and row["accuracy"] is None
    # GQA keeps a quarter of the KV cache: less memory per point
    assert rows[models["gqa"]]["memory_bytes"] < rows[models["mha"]]["memory_bytes"]
    ok = [row for row in doc["rows"] if row["status"] == "ok"]
    assert [row["throughput_tok_s"] for row in ok] == sorted((row["throughput_tok_s"] for row in ok), reverse=True)
    # the Pareto front, re-derived
    axes = doc["pareto"]["axes"]
    front = [row for row in ok if not any(_dominates(o, row, axes) for o in ok if o is not row)]
    assert sorted(row["job"] for row in front) == doc["pareto"]["jobs"]
    assert all(row["pareto"] == (row["job"] in doc["pareto"]["jobs"]) for row in doc["rows"])

    md = (out / "sweep.md").read_text()
    assert md.count("\n| ") == 1 + 3 and "truncated" in md and "## Points not ok" in md
    page = (out / "sweep.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", page)       # self-contained
    imgs = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(imgs) == 2                                                          # Pareto + throughput vs batch
    assert all(base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n" for b in imgs)
    assert "truncated" in page and page.count("<tr class=") == 3


def test_gate_and_failure_exit_codes_and_pareto_by_hand():
    rows = [{"job": 0, "status": "ok", "exit_code": 0}, {"job": 1, "status": "gate", "exit_code": 3}]
    assert sweep_exit_code(rows) == 3
    assert sweep_exit_code(rows + [{"job": 5, "status": "failed", "exit_code": 4},
                                   {"job": 2, "status": "failed", "exit_code": 2}]) == 2
    assert sweep_exit_code([{"job": 0, "status": "infeasible", "exit_code": 0}]) == 0
    axes = [{"metric": "t", "direction": "minimize"}, {"metric": "a", "direction": "maximize"}]
    pts = [(0, 1.0, 0.90), (1, 2.0, 0.95), (2, 2.0, 0.90), (3, 0.5, 0.80), (4, 1.0, 0.90)]
    rows = [{"job": j, "status": "ok", "t": t, "a": a} for j, t, a in pts]
    # #2 is dominated by #0; #0 and #4 are equal (neither dominates): both stay
    assert pareto_front(rows, axes) == [0, 1, 3, 4]


# the search recipes (conf/search/*.yaml): tests/driver/test_search.py
