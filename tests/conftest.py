"""Shared fixtures: Hydra-composed configs, imported graphs, CLI runner."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def compose(overrides=()):
    from hydra import compose as _compose, initialize_config_dir
    from omegaconf import OmegaConf
    from compiler.app import config_dir
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        cfg = _compose("config", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True) | {"hydra": None}


def model_cfg(name: str, **over) -> dict:
    from omegaconf import OmegaConf
    from compiler.app import config_dir
    cfg = OmegaConf.to_container(OmegaConf.load(config_dir() / "model" / f"{name}.yaml"))
    cfg.update(over)
    return cfg


def run_cli(*args, cwd=None, timeout=600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "compiler", *args], cwd=cwd or ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


_GRAPHS: dict = {}


def prepare(g):
    """Run the import part of the default recipe on ``g`` in place — conf/pipeline/cache.yaml:
    dce, remove_noops, fuse_eager_attention, lift_kv_cache (what importers once did implicitly).
    Returns {pass name: stats}."""
    from omegaconf import OmegaConf
    from passes import run_passes
    specs = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "pipeline" / "cache.yaml"))["passes"]
    return {r.name: r.stats for r in run_passes(g, specs).records}


def imported(name: str, **over):
    """Import a configured model once per test session (import passes and cleanup applied)."""
    key = (name, repr(sorted(over.items())))
    if key not in _GRAPHS:
        from compiler.importers.models import import_torch
        from passes.cleanup import fold_constants, remove_noops
        g = import_torch(model_cfg(name, **over))
        prepare(g)
        remove_noops(g)
        fold_constants(g)
        _GRAPHS[key] = g
    return _GRAPHS[key]


@pytest.fixture(scope="session")
def llama2_7b():
    return imported("llama2_7b")


# --- every report a test emits matches the shipped JSON Schema (compiler/schema/) ---------------

def assert_valid_report(report) -> None:
    """Fail the test unless ``report`` (a dict, or a path to report.json) matches
    compiler/schema/report.schema.json."""
    import json
    from compiler import schema
    if not isinstance(report, dict):
        with open(report, encoding="utf-8") as f:
            report = json.load(f)
    problems = schema.errors(report, "report")
    assert not problems, "report.json violates compiler/schema/report.schema.json:\n" + "\n".join(problems[:20])


@pytest.fixture(autouse=True)
def _validate_emitted_reports(request, monkeypatch):
    """In-process runs: validate each report before it is written. Subprocess runs: validate every
    report.json left under the test's tmp_path. Opt out with @pytest.mark.no_report_check (tests
    that write broken reports on purpose)."""
    if request.node.get_closest_marker("no_report_check"):
        yield
        return
    import reports.report as rr
    orig = rr.write_reports

    def checked(report, out_dir, *a, **kw):
        assert_valid_report(report)
        return orig(report, out_dir, *a, **kw)

    monkeypatch.setattr(rr, "write_reports", checked)
    tmp = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    for p in sorted(tmp.rglob("report.json")) if tmp is not None else ():
        assert_valid_report(p)


@pytest.fixture(scope="session")
def tiny_report(tmp_path_factory):
    """One in-process run of gpt2_tiny (default pipeline, no emission): (report dict, out dir)."""
    from compiler.pipeline import run
    out = tmp_path_factory.mktemp("tiny_report")
    report = run(compose(["model=gpt2_tiny", "emit.enabled=false", "report.html=false"]), str(out),
                 show_progress=False)
    assert_valid_report(report)
    return report, out
