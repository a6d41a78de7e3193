"""Packaging: building the wheel raises no setuptools warnings, every shipped folder is
a declared package, and the installed package finds conf/ and the calibration data."""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile

from tests.conftest import ROOT


def _declared() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])


def test_every_shipped_folder_is_a_declared_package():
    """A new conf group (conf/quant/, …) or sub-package must be added to pyproject.toml, or it
    would be left out of the wheel (with a setuptools warning)."""
    want = {"compiler.conf." + str(p.relative_to(ROOT / "conf")).replace(os.sep, ".")
            for p in (ROOT / "conf").rglob("*") if p.is_dir() and any(p.glob("*.yaml"))}
    want |= {"compiler.conf.hydra"} if (ROOT / "conf/hydra").is_dir() else set()
    for top in ("compiler", "passes", "reports"):
        for p in (ROOT / top).rglob("*"):
            if p.is_dir() and p.name != "__pycache__" and (any(p.glob("*.py")) or any(p.glob("*.json")) or any(p.glob("*.txt"))):
                want.add(str(p.relative_to(ROOT)).replace(os.sep, "."))
    want |= {"compiler", "passes", "reports"}
    assert sorted(want - _declared()) == []


def test_wheel_builds_without_warnings_and_finds_conf_and_calibration_data(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Warning" not in r.stdout + r.stderr and "absent from the `packages`" not in r.stdout + r.stderr
    whl = next(tmp_path.glob("rooftop-*.whl"))
    names = zipfile.ZipFile(whl).namelist()
    assert "compiler/conf/config.yaml" in names
    assert "compiler/conf/model/llama2_7b.yaml" in names and "compiler/conf/hardware/h100_sxm.yaml" in names
    assert "passes/fusion/attention.py" in names and "compiler/perf/calibration/data/h100_sxm.json" in names
    assert "compiler/frontends/safety.py" in names and "compiler/conf/runtime/vllm.yaml" in names
    # the installed layout (the wheel unpacked, no source tree on the path) finds its data
    site = tmp_path / "site"
    zipfile.ZipFile(whl).extractall(site)
    code = ("import compiler.driver.app as a, compiler.perf.calibration as c, compiler.perf.hardware as h;"
            "d = a.config_dir(); print(d); print(c.DATA_DIR);"
            "assert (c.DATA_DIR / 'h100_sxm.json').is_file();"
            "print(h.hardware_by_name('h100_sxm').name)")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(site)))
    assert r.returncode == 0, r.stderr[-2000:]
    conf_dir, data_dir, hw = r.stdout.split()
    assert conf_dir == str(site / "compiler/conf") and data_dir == str(site / "compiler/perf/calibration/data")
    assert hw == "h100_sxm"
