"""Distributed sweeps on existing engines give the same per-point report.json, byte for byte, as
the sequential (basic launcher) sweep: joblib (local processes), submitit's local executor (the
Slurm launcher's test double) and Ray (a local cluster the test starts on 127.0.0.1 and stops)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli
from tests.onnx_models import make_kv_model

POINTS = ["workload.batch=1,16"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_kv_model(str(tmp_path_factory.mktemp("m") / "kv.onnx"), vocab=512, heads=4, head_dim=32)


def _sweep(out: Path, model, *launcher):
    r = run_cli("-m", *launcher, "model=onnx", f"model.path={model}", "hardware=h100_sxm", *POINTS,
                "emit.enabled=false", f"hydra.sweep.dir={out}", timeout=600)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    doc = json.loads((out / "sweep.json").read_text())
    return doc, {row["job"]: (out / row["report"]).read_bytes() for row in doc["rows"]}


@pytest.fixture(scope="module")
def sequential(model, tmp_path_factory):
    return _sweep(tmp_path_factory.mktemp("seq"), model)


def _same_as_sequential(sequential, doc, reports, launcher_name):
    seq_doc, seq_reports = sequential
    assert doc["launcher"] == launcher_name and seq_doc["launcher"] == "BasicLauncher"
    assert sorted(reports) == sorted(seq_reports) == [0, 1]
    for job, data in seq_reports.items():
        assert reports[job] == data, f"point {job}: report.json differs from the sequential sweep"
    strip = lambda d: {k: v for k, v in d.items() if k != "launcher"}  # noqa: E731
    assert strip(doc) == strip(seq_doc)


def test_joblib_launcher(sequential, model, tmp_path):
    doc, reports = _sweep(tmp_path, model, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    _same_as_sequential(sequential, doc, reports, "JoblibLauncher")


def test_submitit_local_launcher(sequential, model, tmp_path):
    doc, reports = _sweep(tmp_path, model, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10")
    _same_as_sequential(sequential, doc, reports, "LocalLauncher")
    assert (tmp_path / ".submitit").is_dir()       # the jobs really went through submitit


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_ray(temp_dir: str) -> None:
    """Stop the processes of the cluster this test started (found by its own temp dir), by pid."""
    import psutil
    procs = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(temp_dir in part for part in (p.info["cmdline"] or [])):
                procs.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=15)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.fixture(scope="module")
def ray_cluster():
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    assert ray_bin, "the ray CLI is missing although hydra-ray-launcher is installed"
    temp = tempfile.mkdtemp(prefix="rt-ray-", dir="/tmp")   # short: raylet socket paths are limited
    port = _free_port()
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    try:
        r = subprocess.run([ray_bin, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                            "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
                            f"--temp-dir={temp}"], env=env, capture_output=True, text=True, timeout=240)
        assert r.returncode == 0, r.stderr[-3000:]
        yield f"127.0.0.1:{port}"
    finally:
        _kill_ray(temp)
        time.sleep(1)
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_launcher_on_a_local_cluster(sequential, model, tmp_path, ray_cluster):
    doc, reports = _sweep(tmp_path, model, "hydra/launcher=ray", f"hydra.launcher.ray.init.address={ray_cluster}",
                          "+hydra.launcher.ray.init.object_store_memory=null")
    _same_as_sequential(sequential, doc, reports, "RayLauncher")
